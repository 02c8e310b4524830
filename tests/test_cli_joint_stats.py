"""``vfl stats joint start`` and ``vfl stats joint show`` through the real command: the figures
equal np.corrcoef and the plaintext label rate of the joined rows; user mistakes give one
``Error:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FATE, TEST_KEY_BITS, carry, drive, error_line, introduce, make_party, run
from test_protocol_joint_stats import setup_parties, training_frames

from vfl_cli import jobs
from vfl_cli.workspace import Workspace


def test_start_and_show_end_to_end(tmp_path: Path) -> None:
    wss = setup_parties(tmp_path)
    bank, bureau = (str(w) for w in wss)
    started = run("-w", bank, "stats", "joint", "start", "--alignment", "al", "--job", "js",
                  "--pearson", "x1,x3", "--peer-columns", "2,4", "--reveal-to", "both",
                  "--bins", "5", "--min-bin-rows", "5", "--seed", "7")
    assert "js.002.columns.bank-to-bureau.zip" in started.stderr
    drive(wss, "js")
    a, p = training_frames(wss, {"test_fraction": 0.2, "seed": 7})
    ref = np.corrcoef(np.column_stack([a[["x1", "x3"]], p[["x1", "x3"]]]).T)[:2, 2:]
    mine = json.loads(run("-w", bank, "stats", "joint", "show", "js", "--json").stdout)
    theirs = json.loads(run("-w", bureau, "stats", "joint", "show", "js", "--json").stdout)
    np.testing.assert_allclose(mine["pearson"]["bureau"]["r"], ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(theirs["pearson"]["bank"]["r"], ref.T, atol=1e-6, rtol=0)
    assert mine["pearson"]["bureau"]["theirs"] == [2, 4] and theirs["columns"] == ["x1", "x3"]
    assert mine["columns"] == ["x1", "x3"]
    y = a["y"].to_numpy()
    line = theirs["label_rate"][1]  # x0's first bin of values
    in_bin = p["x0"] <= float(line["label"].split(", ")[1].rstrip("]"))
    assert line["column"] == "x0" and line["rows"] == int(in_bin.sum())
    assert line["rate"] == pytest.approx(y[in_bin.to_numpy()].mean())
    # the tables and the CSV copy
    shown = run("-w", bureau, "stats", "joint", "show", "js")
    assert "bank#2" in shown.stdout and "bank#4" in shown.stdout and "events" in shown.stdout
    assert "label rates for" in run("-w", bank, "stats", "joint", "show", "js").stderr
    out = tmp_path / "joint.csv"
    run("-w", bureau, "stats", "joint", "show", "js", "--csv", str(out))
    lines = pd.read_csv(out)
    cross = lines[lines["other"].astype(str).str.startswith("bank#")]
    assert len(cross) == 4 and (lines["what"] == "label-rate").sum() == len(theirs["label_rate"])
    again = run("-w", bureau, "stats", "joint", "show", "js", "--csv", str(out), ok=False)
    assert "already exists" in error_line(again)


@pytest.fixture
def with_text(tmp_path: Path) -> list[Path]:
    """The bank has a text column (one-hot encoded for jobs); aligned with the bureau."""
    guest = pd.read_csv(FATE / "default_credit_hetero_guest.csv", nrows=120)
    host = pd.read_csv(FATE / "default_credit_hetero_host.csv", nrows=120)
    guest["segment"] = np.where(guest["x0"] > 0, "retail", "business")
    guest[["id", "y", "x0", "x1", "segment"]].to_csv(tmp_path / "g.csv", index=False)
    host[["id", "x0", "x1"]].to_csv(tmp_path / "h.csv", index=False)
    bank = tmp_path / "bank"
    run("init", str(bank), "--name", "bank", "--role", "active", "--data", str(tmp_path / "g.csv"),
        "--id-column", "id", "--label-column", "y", "--encode", "segment=onehot")
    run("-w", str(bank), "keygen", "--key-bits", str(TEST_KEY_BITS), "--insecure-test-keys")
    run("-w", str(bank), "keys", "export", "--out", str(tmp_path / "bank.card"))
    bureau = make_party(tmp_path, "bureau", "passive", tmp_path / "h.csv")
    introduce(tmp_path, "bank", "bureau")
    jobs.start_job(Workspace(bank), "psi", {}, job="al")
    drive([bank, bureau], "al")
    return [bank, bureau]


@pytest.mark.parametrize("args, message", [
    (["--pearson", "x1,salary"], "Error: 'salary' is not a column of bank; its columns are: "),
    (["--pearson", "segment"], "Error: column 'segment' of bank holds text; Pearson correlation"),
    (["--peer-columns", "1,b"], "Error: --peer-columns is 'all' or column numbers from 1"),
    (["--pearson", "none", "--no-label-rate"], "Error: a joint-stats job needs pearson=true"),
])
def test_user_mistakes(with_text: list[Path], args: list[str], message: str) -> None:
    bank = with_text[0]
    result = run("-w", str(bank), "stats", "joint", "start", "--alignment", "al", "--job", "js",
                 *args, ok=False)
    assert error_line(result).startswith(message)
    assert not (bank / "jobs" / "js").exists() and not list((bank / "outbox").glob("js.*"))


def test_show_refuses_another_job_and_an_unfinished_one(with_text: list[Path]) -> None:
    bank = str(with_text[0])
    assert "is a psi job, not a joint-stats job" in error_line(
        run("-w", bank, "stats", "joint", "show", "al", ok=False))
    run("-w", bank, "stats", "joint", "start", "--alignment", "al", "--job", "js",
        "--pearson", "x0", "--peer-columns", "1")
    assert "is not finished on bank" in error_line(
        run("-w", bank, "stats", "joint", "show", "js", ok=False))


def test_the_passive_party_refuses_a_column_number_it_lacks(tmp_path: Path) -> None:
    wss = setup_parties(tmp_path)
    bank, bureau = (str(w) for w in wss)
    run("-w", bank, "stats", "joint", "start", "--alignment", "al", "--job", "js",
        "--peer-columns", "2,9")
    carry(wss[0], wss[1])
    refused = run("-w", bureau, "job", "accept", "js", ok=False)
    assert error_line(refused) == ("Error: the job names column number 9 of bureau, which has "
                                   "columns 1..5; stop the job with 'vfl job cancel js' (a "
                                   "notice for bank)")
    assert not list((wss[1] / "outbox").glob("js.*"))  # nothing sent
    run("-w", bureau, "job", "cancel", "js", "--reason", "no column 9")
    assert carry(wss[1], wss[0])  # the notice, for the bank
