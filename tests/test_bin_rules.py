"""A party's own cut points and category columns in woe-binning (``vfl binning cuts``): they
apply to its columns, the joint WOE equals the plaintext reference on those bins, and they
never leave the party (not in the signed proposal, not in any artifact, only in its own
workspace and job.json). One test per user mistake.
"""

from __future__ import annotations

import glob
import json
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import error_line, run
from test_protocol_woe_binning import _joined, _run, _setup

from vfl_cli import jobs
from vfl_cli.artifacts.container import read_artifact
from vfl_cli.models.binning import fit_binning
from vfl_cli.models.woe import WoeEncoder, fit_woe
from vfl_cli.workspace import Workspace

CUTS = (-0.8172931, 0.1234567, 1.3579246)  # distinctive: searched for as bytes and text
PARAMS = {"method": "quantile", "bins": 6, "monotone": False, "test_fraction": 0.2, "seed": 7,
          "min_bin_rows": 1}


def _needles(values: tuple[float, ...]) -> list[bytes]:
    out = []
    for v in values:
        out += [np.float64(v).tobytes(), np.float32(v).tobytes(), repr(v).encode(),
                f"{v:.6g}".encode(), f"{v:.4f}".encode()]
    return out


def _every_file_sent_or_received(root: Path) -> list[bytes]:
    """Every artifact of every party, as bytes, and their opened payloads."""
    blobs = []
    for ws in ("bank", "bureau"):
        w = Workspace(root / ws)
        for f in glob.glob(str(root / ws / "archive" / "**" / "*.zip"), recursive=True):
            raw = Path(f).read_bytes()
            blobs.append(raw)
            if "/received/" not in f:  # sent by this party: sealed for the peer, its bytes only
                continue
            art = read_artifact(Path(f)).open(w.signer, w.name).artifact
            blobs.append(repr(art.meta).encode() + b"".join(m.data for m in art.members.values()))
    return blobs


@pytest.fixture(scope="module")
def cut_job(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("cuts")
    wss = _setup(root)
    run("-w", str(wss[1]), "binning", "cuts", "set", "x0", ",".join(map(str, reversed(CUTS))))
    run("-w", str(wss[1]), "binning", "cuts", "set", "x1", "--category")
    run("-w", str(wss[0]), "binning", "cuts", "set", "x0", "0.25,-0.5")
    results = _run(wss, "wb", PARAMS)
    return {"root": root, "wss": wss, "results": results}


def test_cut_points_and_categories_apply(cut_job: dict) -> None:
    wss, results = cut_job["wss"], cut_job["results"]
    bureau = {c["name"]: c for c in results[1]["encoder"]["binning"]["columns"]}
    assert tuple(bureau["x0"]["cuts"]) == CUTS
    assert bureau["x1"]["kind"] == "category" and bureau["x1"]["categories"]
    bank = {c["name"]: c for c in results[0]["encoder"]["binning"]["columns"]}
    assert tuple(bank["x0"]["cuts"]) == (-0.5, 0.25)
    # the joint figures equal fit_woe on the joined rows with the same rules
    joined, y, cols = _joined(wss, PARAMS)
    rules = {"bank": ({"x0": [0.25, -0.5]}, []), "bureau": ({"x0": list(CUTS)}, ["x1"])}
    for ws, res in zip(wss, results, strict=True):
        name = Workspace(ws).config["name"]
        df = joined[[f"{name}:{c}" for c in cols[name]]].rename(columns=lambda c: c.split(":")[1])
        cuts, cats = rules[name]
        binning = fit_binning(df, cols[name], method="quantile", max_bins=6, cuts=cuts,
                              categorical=cats)
        ref, figures = fit_woe(binning, df, y)
        got = WoeEncoder.from_json(res["encoder"])
        assert got.binning == ref.binning
        for c in cols[name]:
            np.testing.assert_allclose(got.woe[c], ref.woe[c], rtol=0, atol=1e-12)
            assert res["iv"][c] == pytest.approx(figures[c].iv, abs=1e-12)


def test_rules_never_leave_the_party(cut_job: dict) -> None:
    root = cut_job["root"]
    needles = _needles(CUTS)
    blobs = _every_file_sent_or_received(root)
    assert len(blobs) >= 8  # proposal, labels, sums, result: sent and received
    assert not any(n in b for n in needles for b in blobs)
    # the proposal's parameters are the public ones only
    info = jobs.load_info(Workspace(root / "bank"), "wb")
    assert not {"cuts", "bin_rules", "local"} & set(info["params"])
    # the rules are in the party's own job.json (local) and its 0600 rules file
    mine = jobs.load_info(Workspace(root / "bureau"), "wb")
    assert tuple(mine["local"]["bin_rules"]["cuts"]["x0"]) == CUTS
    mode = stat.S_IMODE(os.stat(root / "bureau" / "binning.json").st_mode)
    assert mode == 0o600
    # the active party's view of the bureau's columns: opaque numbers, no cut point
    shown = repr(cut_job["results"][0]["passive"]).encode()
    assert not any(n in shown for n in needles)


def test_cuts_show_and_clear(cut_job: dict) -> None:
    bureau = str(cut_job["wss"][1])
    shown = json.loads(run("-w", bureau, "binning", "cuts", "show", "--json").stdout)
    assert shown["cuts"] == {"x0": list(CUTS)} and shown["categorical"] == ["x1"]
    run("-w", bureau, "binning", "cuts", "clear", "x1")
    shown = json.loads(run("-w", bureau, "binning", "cuts", "show", "--json").stdout)
    assert shown["categorical"] == []
    # a job already run keeps the rules it started with
    assert jobs.load_info(Workspace(cut_job["wss"][1]), "wb")["local"]["bin_rules"][
        "categorical"] == ["x1"]
    run("-w", bureau, "binning", "cuts", "clear", "--all")
    assert "No binning rules" in run("-w", bureau, "binning", "cuts", "show").stdout


@pytest.mark.parametrize("args,expected", [
    (["set", "x0", "1,abc"], "cut points must be numbers"),
    (["set", "x0", "1,inf"], "finite"),
    (["set", "x0"], "give either cut points"),
    (["set", "x0", "1,2", "--category"], "give either cut points"),
    (["set", "nope", "1,2"], "has no feature column 'nope'"),
    (["set", "id", "1,2"], "has no feature column 'id'"),
    (["clear", "x3"], "has no binning rule"),
    (["clear"], "name a COLUMN"),
])
def test_user_mistakes(tmp_path: Path, args: list[str], expected: str) -> None:
    data = tmp_path / "host.csv"
    pd.DataFrame({"id": [1, 2, 3], "x0": [0.1, 0.2, 0.3], "x3": [1, 2, 3]}).to_csv(data, index=False)
    ws = tmp_path / "p"
    run("init", str(ws), "--name", "p", "--role", "passive", "--data", str(data), "--id-column", "id")
    run("-w", str(ws), "binning", "cuts", "set", "x0", "5,7")
    before = (ws / "binning.json").read_bytes()
    err = run("-w", str(ws), "binning", "cuts", *args, ok=False)
    assert expected in error_line(err)
    assert (ws / "binning.json").read_bytes() == before  # nothing overwritten
