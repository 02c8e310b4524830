"""Feature selection in SecureBoost jobs: a woe-binning job and a rule (IV threshold, top-k per
party, or a list), applied by each party to its own columns with its own IV figures.

Through the real ``vfl`` command (``train start --param binning=...``, ``columns --features``),
512-bit keys, 400 rows of default_credit with party-specific column names, so that a scan of a
party's files for the other party's column names means something.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import drive, error_line, introduce, make_party, received, run
from test_protocol_woe_binning import _parts, _run

from vfl_cli import jobs
from vfl_cli.workspace import Workspace

BIN = {"method": "quantile", "bins": 5, "monotone": False, "test_fraction": 0.25, "seed": 7,
       "min_bin_rows": 1}
SBT = ["--param", "trees=2", "--param", "depth=2", "--param", "active_trees=0",
       "--param", "min_samples_leaf=5", "--param", "max_bins=8", "--test-fraction", "0.25",
       "--seed", "7"]


def _setup(root: Path) -> list[Path]:
    _parts(root)
    for file, prefix in (("guest.csv", "bank_col_"), ("host.csv", "bureau_col_")):
        df = pd.read_csv(root / file)
        df.columns = [c if c in ("id", "y") else prefix + c for c in df.columns]
        df.to_csv(root / file, index=False)
    wss = [make_party(root, "bank", "active", root / "guest.csv", label_column="y"),
           make_party(root, "bureau", "passive", root / "host.csv")]
    introduce(root, "bank", "bureau")
    jobs.start_job(Workspace(wss[0]), "psi", {}, job="al")
    drive(wss, "al")
    return wss


def _splits(results: dict[str, Any], active: bool) -> list[str]:
    """The columns the party's part of the model splits on."""
    if not active:
        return [s["feature"] for s in results["model"]["splits"]]
    found: list[str] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict) and x.get("split"):
            found.append(x["split"][0])
        elif isinstance(x, (list, dict)):
            for v in (x.values() if isinstance(x, dict) else x):
                walk(v)

    walk(results["model"]["rounds"])
    return found


def _check_no_names(holder: Path, job: str, names: list[str]) -> None:
    """No file of ``holder`` (raw bytes) and no artifact of ``job`` it received (opened as the
    recipient: manifest, meta and every member's bytes) carries any of ``names``."""
    needles = [n.encode() for n in names]
    arts = received(holder, job)
    assert arts
    for art in arts:
        blob = b"".join(m.data for m in art.members.values()) + repr(art.meta).encode()
        assert not any(n in blob for n in needles), art.kind
    for f in holder.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(n in data for n in needles), f


@pytest.fixture(scope="module")
def wss(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _setup(tmp_path_factory.mktemp("sbtsel"))


@pytest.fixture(scope="module")
def ivs(wss: list[Path]) -> list[dict[str, float]]:
    return [r["iv"] for r in _run(wss, "wb", BIN)]


def test_iv_threshold_keeps_each_partys_own_columns(wss: list[Path], ivs: list[dict[str, float]]
                                                    ) -> None:
    # a threshold that keeps the best two columns of each party at least, and drops some
    threshold = min(sorted(iv.values())[-2] for iv in ivs)
    run("-w", str(wss[0]), "train", "start", "--protocol", "secureboost", "--alignment", "al",
        "--job", "sb", "--param", "binning=wb", "--param", f"select_iv={threshold!r}", *SBT)
    drive(wss, "sb")
    dropped, used = 0, 0
    for ws, iv, active in zip(wss, ivs, (True, False), strict=True):
        w = Workspace(ws)
        expected = [c for c in w.features if iv[c] >= threshold]
        assert len(expected) >= 2
        dropped += len(w.features) - len(expected)
        info = jobs.load_info(w, "sb")
        assert info["features"] == expected
        state, _ = jobs.load_state(w, "sb")
        assert state.done and state.results["model"]["features"] == expected
        split_on = _splits(state.results, active)
        assert set(split_on) <= set(expected)
        used += len(split_on)
    assert dropped > 0 and used > 0  # the rule did drop columns; the model did split
    # which columns a party keeps, and their names, never reach the other party
    for holder, other in ((wss[0], wss[1]), (wss[1], wss[0])):
        _check_no_names(holder, "sb", Workspace(other).features)
    proposal = jobs.load_info(Workspace(wss[1]), "sb")["params"]
    assert proposal["binning"] == "wb" and proposal["select_iv"] == threshold


def test_list_and_top_k_each_party_chooses_locally(wss: list[Path], ivs: list[dict[str, float]]
                                                   ) -> None:
    bank, bureau = Workspace(wss[0]), Workspace(wss[1])
    mine = bank.features[1:]  # the active party's list: on the command line
    theirs = bureau.features[:3]  # the passive party's list: its column choice before accepting
    run("-w", str(wss[1]), "columns", "--features", ",".join(theirs))
    try:
        run("-w", str(wss[0]), "train", "start", "--protocol", "secureboost", "--alignment",
            "al", "--job", "sb2", "--features", ",".join(mine), "--param", "binning=wb",
            "--param", "select_top=2", *SBT)
        drive(wss, "sb2")
    finally:
        run("-w", str(wss[1]), "columns", "--all")
    for ws, iv, listed, active in ((wss[0], ivs[0], mine, True), (wss[1], ivs[1], theirs, False)):
        best = set(sorted(listed, key=lambda c: -iv[c])[:2])
        expected = [c for c in listed if c in best]
        state, _ = jobs.load_state(Workspace(ws), "sb2")
        assert jobs.load_info(Workspace(ws), "sb2")["features"] == expected
        assert set(_splits(state.results, active)) <= set(expected)
    _check_no_names(wss[0], "sb2", theirs)


def test_select_iv_without_binning_is_refused(wss: list[Path]) -> None:
    before = sorted(p.name for p in (wss[0] / "jobs").iterdir())
    err = run("-w", str(wss[0]), "train", "start", "--protocol", "secureboost", "--alignment",
              "al", "--job", "sb3", "--param", "select_iv=0.1", ok=False)
    assert err.exit_code == 1
    assert error_line(err).startswith("Error: secureboost select_iv / select_top need binning")
    assert sorted(p.name for p in (wss[0] / "jobs").iterdir()) == before


def test_binning_must_be_a_woe_binning_job(wss: list[Path]) -> None:
    err = run("-w", str(wss[0]), "train", "start", "--protocol", "secureboost", "--alignment",
              "al", "--job", "sb4", "--param", "binning=al", ok=False)
    assert err.exit_code == 1
    assert "not a woe-binning job" in error_line(err)
    assert not (wss[0] / "jobs" / "sb4").exists()


def test_own_cut_points_bin_the_partys_columns_and_stay_local(wss: list[Path]) -> None:
    bank, bureau = Workspace(wss[0]), Workspace(wss[1])
    column = bureau.features[0]
    values = pd.read_csv(bureau.config["data"])[column].dropna()
    cuts = sorted({round(float(values.quantile(q)), 3) + 0.0007 for q in (0.3, 0.6, 0.85)})
    run("-w", str(wss[1]), "binning", "cuts", "set", "--", column, ",".join(map(repr, cuts)))
    try:
        run("-w", str(wss[0]), "train", "start", "--protocol", "secureboost", "--alignment",
            "al", "--job", "sb5", *SBT)
        drive(wss, "sb5")
        narrow = ["--param", "max_bins=4"]  # 3 cuts: 5 bins with the missing one
        # the proposer's own bins fit max_bins=4; the bureau's rule does not: it refuses
        run("-w", str(wss[0]), "train", "start", "--protocol", "secureboost", "--alignment",
            "al", "--job", "sb6", *SBT, *narrow)
        drive_err = None
        try:
            drive(wss, "sb6", limit=3)
        except Exception as exc:  # noqa: BLE001 - the bureau's refusal, as the engine reports it
            drive_err = str(exc)
        assert drive_err is not None and "raise max_bins" in drive_err
    finally:
        run("-w", str(wss[1]), "binning", "cuts", "clear", "--all")
    state, _ = jobs.load_state(bureau, "sb5")
    mine = next(c for c in state.results["model"]["binning"]["columns"] if c["name"] == column)
    assert mine["cuts"] == cuts
    assert "bin_rules" in jobs.load_info(bureau, "sb5")["local"]
    assert "bin_rules" not in jobs.load_info(bank, "sb5").get("local", {})
    needles = [repr(c).encode() for c in cuts] + [np.float64(c).tobytes() for c in cuts]
    for art in received(wss[0], "sb5"):
        blob = b"".join(m.data for m in art.members.values()) + repr(art.meta).encode()
        assert not any(n in blob for n in needles), art.kind
