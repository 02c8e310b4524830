"""WOE feature selection, WOE-encoded hetero-lr and the scorecard, through real workspaces.

A row's points summed over both parties' bins equal the joint model's log-odds mapped to
points (600 at odds 50:1, 20 to double), up to the fixed-point precision of the encrypted
partial scores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import drive, error_line, run
from test_protocol_woe_binning import _run, _setup

from vfl_cli import jobs
from vfl_cli.models.features import aligned_rows, split_rows
from vfl_cli.scorecard import Scaling, points_of_rows, scorecard_of_job
from vfl_cli.woe_select import select_by_iv
from vfl_cli.workspace import Workspace

BIN = {"method": "quantile", "bins": 6, "monotone": True, "test_fraction": 0.25, "seed": 7,
       "min_bin_rows": 1}
LR = {"alignment": "al", "epochs": 3, "learning_rate": 0.2, "test_fraction": 0.25, "seed": 7,
      "binning": "wb", "woe": True, "select_top": 3}


def _aligned(ws: Path) -> object:
    w = Workspace(ws)
    state, _ = jobs.load_state(w, "al")
    return aligned_rows(w.read_data(), state.arrays, w.config["id_column"], "al")


def _test_rows(ws: Path) -> object:
    w = Workspace(ws)
    state, _ = jobs.load_state(w, "al")
    df = aligned_rows(w.read_data(), state.arrays, w.config["id_column"], "al")
    split = split_rows(len(df), LR["test_fraction"], LR["seed"], ids=state.arrays["aligned_ids"])
    return df.iloc[split.test]


def test_select_by_iv_keeps_order_threshold_and_top() -> None:
    iv = {"a": 0.5, "b": 0.01, "c": 0.2, "d": 0.3}
    assert select_by_iv(iv, ["a", "b", "c", "d", "e"], threshold=0.02) == ["a", "c", "d", "e"]
    assert select_by_iv(iv, ["a", "b", "c", "d"], top=2) == ["a", "d"]


def test_scaling_defaults() -> None:
    s = Scaling()
    assert s.score(np.array([-math.log(50.0)]))[0] == pytest.approx(600.0)
    assert s.score(np.array([-math.log(100.0)]))[0] == pytest.approx(620.0)


def test_woe_lr_scorecard_points_sum_to_the_joint_score(tmp_path: Path) -> None:
    wss = _setup(tmp_path)
    results = _run(wss, "wb", BIN)
    shown = run("-w", str(wss[1]), "binning", "show", "wb", "--json")
    assert json.loads(shown.stdout)["iv"].keys() == results[1]["iv"].keys()
    run("-w", str(wss[1]), "binning", "show", "wb", "--csv", str(tmp_path / "bins.csv"))
    assert (tmp_path / "bins.csv").read_text().startswith("column,bin,label,rows")

    jobs.start_job(Workspace(wss[0]), "hetero-lr", LR, job="lr")
    drive(wss, "lr")
    total = 0.0
    for ws, res in zip(wss, results, strict=True):
        info = jobs.load_info(Workspace(ws), "lr")
        best = sorted(res["iv"], key=lambda c: -res["iv"][c])[:3]
        assert sorted(info["features"]) == sorted(best)
        assert all(s["kind"] == "woe" for s in info["encoders"].values())
        card = scorecard_of_job(Workspace(ws), "lr")
        total = total + points_of_rows(card, _test_rows(ws))
    state, _ = jobs.load_state(Workspace(wss[0]), "lr")
    expected = Scaling().score(state.arrays["test_scores"])
    np.testing.assert_allclose(total, expected, rtol=0, atol=1e-6)

    # a predict job maps each party's rows to WOE with the model's encoders: same points
    jobs.start_job(Workspace(wss[0]), "predict", {"model": "lr", "alignment": "al"}, job="pr")
    drive(wss, "pr")
    arrays = jobs.load_state(Workspace(wss[0]), "pr")[0].arrays
    p = arrays["scores"]
    every = sum(points_of_rows(scorecard_of_job(Workspace(ws), "lr"), _aligned(ws))
                for ws in wss)
    np.testing.assert_allclose(every, Scaling().score(np.log(p / (1 - p))), rtol=0, atol=1e-5)
    # the predict job's points: the scorecards' per-bin points summed over both parties
    np.testing.assert_allclose(arrays["points"], every, rtol=0, atol=1e-6)
    _check_point_exports(tmp_path, wss, every)
    run("-w", str(wss[0]), "report", "pr", "--out", str(tmp_path / "pr.html"))
    assert 'id="score-distribution"' in (tmp_path / "pr.html").read_text()

    run("-w", str(wss[1]), "scorecard", "export", "lr", "--out", str(tmp_path / "p.csv"))
    assert "points" in (tmp_path / "p.csv").read_text().splitlines()[0]
    err = run("-w", str(wss[1]), "scorecard", "show", "wb", ok=False)
    assert error_line(err).startswith("Error: job wb is not a finished hetero-lr job")


def test_scorecard_recipe_runs_binning_before_training() -> None:
    from conftest import ROOT

    from vfl_cli.recipes import load_recipe

    stages = load_recipe(ROOT / "recipes" / "scorecard_default_credit.toml").stages()
    assert [(s.name, s.protocol) for s in stages] == [
        ("align", "psi"), ("binning", "woe-binning"), ("train", "hetero-lr")]
    binning, train = stages[1].params, stages[2].params
    assert binning["alignment"] == train["alignment"] == "scorecard_default_credit-align"
    assert train["binning"] == "scorecard_default_credit-binning" and train["woe"] is True
    assert (binning["test_fraction"], binning["seed"]) == (train["test_fraction"], train["seed"])


def _check_point_exports(tmp_path: Path, wss: list[Path], every: np.ndarray) -> None:
    """`vfl predict export`: the active party's CSV has each row's total points; each party's
    --own-points CSV holds its scorecard's points of the row's bins, and the two add up."""
    import pandas as pd

    run("-w", str(wss[0]), "predict", "export", "pr", "--out", str(tmp_path / "s.csv"))
    scores = pd.read_csv(tmp_path / "s.csv")
    assert list(scores.columns) == ["id", "score", "points"]
    np.testing.assert_allclose(scores["points"], every, rtol=0, atol=1e-6)
    own = []
    for ws in wss:
        out = tmp_path / f"own-{ws.name}.csv"
        run("-w", str(ws), "predict", "export", "pr", "--out", str(out), "--own-points")
        table = pd.read_csv(out)
        card = scorecard_of_job(Workspace(ws), "lr")
        mine = points_of_rows(card, _aligned(ws))
        np.testing.assert_allclose(table["own_points"], mine, rtol=0, atol=1e-6)
        w = Workspace(ws)
        df = _aligned(ws)
        for name, c in card["columns"].items():  # per column: the points of the row's bin
            from vfl_cli.models.binning import ColumnBins

            bins = ColumnBins.from_json(c["bins"]).transform(df[name])
            np.testing.assert_allclose(table[name], np.asarray(c["points"])[bins], atol=1e-6)
        assert ("(base points)" in table.columns) == (w.role == "active")
        own.append(table)
    assert (own[0]["id"].astype(str) == own[1]["id"].astype(str)).all()
    np.testing.assert_allclose(own[0]["own_points"] + own[1]["own_points"], scores["points"],
                               rtol=0, atol=1e-6)
    err = run("-w", str(wss[1]), "predict", "export", "pr", "--out", str(tmp_path / "x.csv"),
              ok=False)
    assert error_line(err).startswith("Error: ")
