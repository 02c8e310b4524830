"""Alignment jobs through the real command: by hand, three parties, FATE files, refusals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from conftest import carry, error_line, fate, introduce, make_party, run

from vfl_cli import jobs as engine
from vfl_cli.protocol import psi
from vfl_cli.workspace import Workspace


def show(ws: Path, job: str) -> dict:
    return json.loads(run("-w", str(ws), "job", "show", job, "--json").stdout)


def aligned_ids(ws: Path, job: str, tmp_path: Path) -> list[str]:
    out = tmp_path / f"{ws.name}-{job}.csv"
    run("-w", str(ws), "align", "export", job, "--out", str(out))
    return pd.read_csv(out, dtype=str)[json.loads((ws / "vfl.json").read_text())["id_column"]].tolist()


def align_by_hand(active: Path, passives: list[Path], job: str = "a1") -> None:
    run("-w", str(active), "align", "start", "--job", job)
    for p in passives:
        carry(active, p)
        run("-w", str(p), "align", "respond", job)
        carry(p, active)
    run("-w", str(active), "align", "finish", job)
    for p in passives:
        carry(active, p)
        run("-w", str(p), "align", "finish", job)


def test_two_parties_by_hand(two_parties, sample, tmp_path: Path) -> None:
    bank, bureau = two_parties
    align_by_hand(bank, [bureau])
    a_ids = pd.read_csv(sample("breast_active.csv"), dtype=str)["id"]
    b_ids = pd.read_csv(sample("breast_passive.csv"), dtype=str)["id"]
    expected = set(a_ids) & set(b_ids)
    got_a, got_b = aligned_ids(bank, "a1", tmp_path), aligned_ids(bureau, "a1", tmp_path)
    assert got_a == got_b and set(got_a) == expected
    assert got_a != sorted(got_a)  # a shuffle, not a sorted or file order
    ra, rb = show(bank, "a1")["results"], show(bureau, "a1")["results"]
    assert ra["intersection_size"] == rb["intersection_size"] == len(expected)
    assert ra["fingerprint"] == rb["fingerprint"]
    # The documented keyed MAC of the ordered ids, never a plain hash a reader could test.
    key = bytes.fromhex(engine.load_state(Workspace(bank), "a1")[0].data["digest_key"])
    assert ra["fingerprint"] == psi.alignment_fingerprint(got_a, key, "a1").hex()
    assert set(ra) == {"intersection_size", "fingerprint"}
    for plain in (sorted(expected), got_a):
        assert hashlib.sha256("\n".join(plain).encode()).hexdigest() != ra["fingerprint"]


def test_export_holds_only_own_columns(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    align_by_hand(bank, [bureau])
    out = tmp_path / "bureau.csv"
    run("-w", str(bureau), "align", "export", "a1", "--out", str(out))
    cols = pd.read_csv(out, nrows=1).columns
    assert "label" not in cols and "radius_error" in cols and "mean_radius" not in cols


def test_no_artifact_holds_plain_ids(two_parties) -> None:
    bank, bureau = two_parties
    align_by_hand(bank, [bureau])
    data = pd.read_csv(json.loads((bank / "vfl.json").read_text())["data"], dtype=str)["id"]
    for f in list((bank / "archive" / "sent").glob("*")) + list((bureau / "archive" / "sent").glob("*")):
        blob = f.read_bytes()
        assert not any(i.encode() in blob for i in data[:50]), f.name


def _write(path: Path, df: pd.DataFrame) -> Path:
    df.to_csv(path, index=False)
    return path


def test_three_parties_motor(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    frames = {name: pd.read_csv(fate(f"motor_hetero_{name}.csv"), dtype={"idx": str})
              for name in ("guest", "host_1", "host_2")}
    files = {}
    for name, df in frames.items():
        keep = df.sample(frac=0.8, random_state=int(rng.integers(1000)))
        files[name] = _write(tmp_path / f"{name}.csv", keep)
    a = make_party(tmp_path, "plant", "active", files["guest"], id_column="idx", label_column="motor_speed")
    p1 = make_party(tmp_path, "sensor1", "passive", files["host_1"], id_column="idx")
    p2 = make_party(tmp_path, "sensor2", "passive", files["host_2"], id_column="idx")
    introduce(tmp_path, "plant", "sensor1", "sensor2")
    align_by_hand(a, [p1, p2])
    ids = [set(pd.read_csv(f, dtype=str)["idx"]) for f in files.values()]
    expected = ids[0] & ids[1] & ids[2]
    got = [aligned_ids(ws, "a1", tmp_path) for ws in (a, p1, p2)]
    assert got[0] == got[1] == got[2] and set(got[0]) == expected
    # a passive party learns only the all-party intersection, not its pairwise one
    assert show(p1, "a1")["results"]["intersection_size"] == len(expected) < len(ids[0] & ids[1])


def test_fate_sample_id_files(tmp_path: Path) -> None:
    guest = fate("breast_hetero_guest_sample_id.csv")
    host = fate("breast_hetero_host_sample_id.csv")
    a = make_party(tmp_path, "a", "active", guest, id_column="mock_id", label_column="y")
    p = make_party(tmp_path, "p", "passive", host, id_column="sample_id")
    introduce(tmp_path, "a", "p")
    align_by_hand(a, [p])
    expected = set(pd.read_csv(guest, dtype=str)["mock_id"]) & set(pd.read_csv(host, dtype=str)["sample_id"])
    assert set(aligned_ids(a, "a1", tmp_path)) == expected


def test_duplicate_ids_are_refused_and_listed(tmp_path: Path) -> None:
    # vfl init refuses such a file already (test_data_mistakes.py); another file of a party is
    # checked when a job uses it
    a = make_party(tmp_path, "a", "active", fate("breast_hetero_guest.csv"), label_column="y")
    make_party(tmp_path, "p", "passive", fate("breast_hetero_host.csv"))
    introduce(tmp_path, "a", "p")
    message = error_line(run("-w", str(a), "align", "start", "--data",
                             str(fate("breast_hetero_guest_repeated_id.csv")), ok=False))
    assert "'133'" in message and "more than once" in message
    assert not list((a / "outbox").glob("*.zip"))
    assert not list((a / "jobs").iterdir())


def test_empty_ids_are_refused(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.csv", pd.DataFrame({"id": ["a", "b", "c"], "x": [1, 2, 3]}))
    f = _write(tmp_path / "d.csv", pd.DataFrame({"id": ["a", "", "c"], "x": [1, 2, 3]}))
    a = make_party(tmp_path, "a", "active", good, label_column="x")
    make_party(tmp_path, "p", "passive", good)
    introduce(tmp_path, "a", "p")
    assert "empty" in error_line(run("-w", str(a), "align", "start", "--data", str(f), ok=False)).lower()


def test_export_before_finish_says_what_to_do(two_parties, tmp_path: Path) -> None:
    bank, _ = two_parties
    run("-w", str(bank), "align", "start", "--job", "a1")
    message = error_line(run("-w", str(bank), "align", "export", "a1", "--out", str(tmp_path / "x.csv"), ok=False))
    assert "not finished" in message and not (tmp_path / "x.csv").exists()


def _parties_on_copies(tmp_path: Path, sample) -> tuple[Path, Path, Path]:
    """Two parties whose data files are copies this test may edit; returns (bank, bureau, bureau's file)."""
    a_file = _write(tmp_path / "a.csv", pd.read_csv(sample("breast_active.csv"), dtype=str))
    p_file = _write(tmp_path / "p.csv", pd.read_csv(sample("breast_passive.csv"), dtype=str))
    bank = make_party(tmp_path, "bank", "active", a_file, label_column="label")
    bureau = make_party(tmp_path, "bureau", "passive", p_file)
    introduce(tmp_path, "bank", "bureau")
    return bank, bureau, p_file


def _until_passive_concludes(tmp_path: Path, sample) -> tuple[Path, Path, Path]:
    """Two parties on editable copies, run until only the passive party's last step is left."""
    bank, bureau, p_file = _parties_on_copies(tmp_path, sample)
    run("-w", str(bank), "align", "start", "--job", "a1")
    carry(bank, bureau)
    run("-w", str(bureau), "align", "respond", "a1")
    carry(bureau, bank)
    run("-w", str(bank), "align", "finish", "a1")
    carry(bank, bureau)
    return bank, bureau, p_file


def test_ids_changed_between_steps_are_refused(tmp_path: Path, sample) -> None:
    _, bureau, p_file = _until_passive_concludes(tmp_path, sample)
    df = pd.read_csv(p_file, dtype=str)
    df.loc[0, "id"] = "someone-else"
    _write(p_file, df)
    state = (bureau / "jobs" / "a1" / "state.json").read_bytes()
    message = error_line(run("-w", str(bureau), "align", "finish", "a1", ok=False))
    assert "id column changed" in message and "again from the start" in message
    assert (bureau / "jobs" / "a1" / "state.json").read_bytes() == state


def test_other_columns_may_change_between_steps(tmp_path: Path, sample) -> None:
    bank, bureau, p_file = _until_passive_concludes(tmp_path, sample)
    df = pd.read_csv(p_file, dtype=str)
    df[df.columns[1]] = "0"  # a feature column, not the ids
    _write(p_file, df)
    run("-w", str(bureau), "align", "finish", "a1")
    assert show(bureau, "a1")["results"]["fingerprint"] == show(bank, "a1")["results"]["fingerprint"]


def test_a_file_edited_after_alignment_is_refused_by_later_stages(tmp_path: Path, sample) -> None:
    bank, bureau, p_file = _parties_on_copies(tmp_path, sample)
    align_by_hand(bank, [bureau])
    df = pd.read_csv(p_file, dtype=str)
    _write(p_file, df.iloc[::-1])  # re-sorted: every row now holds another person
    out = tmp_path / "out.csv"
    message = error_line(run("-w", str(bureau), "align", "export", "a1", "--out", str(out), ok=False))
    assert "changed since alignment job a1" in message and "run the alignment again" in message
    assert not out.exists()
    run("-w", str(bank), "train", "start", "--protocol", "hetero-lr", "--alignment", "a1", "--epochs", "1",
        "--job", "t1")
    carry(bank, bureau)
    message = error_line(run("-w", str(bureau), "job", "accept", "t1", ok=False))
    assert "changed since alignment job a1" in message
    assert not list((bureau / "outbox").glob("t1.*"))
    _write(p_file, df)  # put back as aligned: the same commands work
    run("-w", str(bureau), "align", "export", "a1", "--out", str(out))
    assert len(pd.read_csv(out)) == show(bureau, "a1")["results"]["intersection_size"]
