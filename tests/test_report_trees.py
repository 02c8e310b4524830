"""The report of a SecureBoost job: loss per round, splits and gains, each party its own view."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run
from test_protocol_secureboost import PARAMS, setup, synthetic, train

from vfl_cli.report_trees import tree_summary


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sbtr")
    wss = setup(root, synthetic(root))
    state = train(wss, {**PARAMS, "active_trees": 0, "validation_fraction": 0.2})
    out: dict[str, Any] = {"state": state, "root": root}
    for ws in wss:
        run("-w", str(ws), "report", "sb", "--out", str(root / f"{ws.name}.html"))
        out[ws.name] = (root / f"{ws.name}.html").read_text()
    return out


def test_active_report_draws_loss_per_round_and_importances(pages: dict[str, Any]) -> None:
    page = pages["bank"]
    for fig in ("tree-loss", "tree-importance-parties", "tree-importance-columns"):
        assert f'id="{fig}"' in page, fig
    assert 'id="training-curve"' not in page  # no epoch axis for trees
    assert "validation rows" in page  # validation loss drawn beside the training loss
    counts = pages["state"].results["model"]["split_counts"]
    assert "Splits and gain per party" in page and "p1" in page and counts["p1"] > 0
    assert "p0_0" in page  # its own columns by name
    assert not any(f"p1_{c}" in page for c in range(3))  # the passive party's: by party only


def test_passive_report_shows_its_own_splits_only(pages: dict[str, Any]) -> None:
    page = pages["p1"]
    assert 'id="tree-importance-columns"' in page and "Splits per column of p1" in page
    assert any(f"p1_{c}" in page for c in range(3))
    assert 'id="tree-loss"' not in page and "total gain" not in page  # A's knowledge
    assert not any(f"p0_{c}" in page for c in range(3))


def test_summary_is_json_and_matches_the_card(pages: dict[str, Any]) -> None:
    results = pages["state"].results
    summary = tree_summary(results["model"], results["history"])
    assert summary is not None
    json.dumps(summary)
    assert len(summary["loss_per_round"]) == len(results["history"])
    assert all("valid_loss" in h for h in summary["loss_per_round"])
    own = sum(summary["own_split_counts_by_column"].values())
    assert own == summary["split_counts_by_party"]["bank"]
    assert tree_summary({"weights": {"a": 1.0}}) is None



def test_active_party_gain_per_own_column(pages: dict[str, Any]) -> None:
    results = pages["state"].results
    summary = tree_summary(results["model"], results["history"])
    assert summary is not None
    gains = summary["own_gain_by_column"]
    assert set(gains) == set(summary["own_split_counts_by_column"]) and all(g > 0 for g in gains.values())
    # the gains of its own splits, split by column, add up to its total gain
    assert sum(gains.values()) == pytest.approx(summary["gain_by_party"]["bank"], rel=1e-9)
    assert "Splits and gain per column of bank" in pages["bank"]


def test_recipe_report_json_holds_each_partys_tree_summary(pages: dict[str, Any]) -> None:
    from vfl_cli.recipes import PartySpec, Recipe, Runner, party_summaries

    root = pages["root"]
    parties = [PartySpec("bank", "active", root / "part0.csv", "id", "y"),
               PartySpec("p1", "passive", root / "part1.csv", "id")]
    recipe = Recipe(Path("r.toml"), "r", "secureboost", parties, {"recipe": {}, "train": {}})
    out = party_summaries(Runner(recipe, root), "sb")
    bank, p1 = out["trees"]["bank"], out["trees"]["p1"]
    assert bank["split_counts_by_party"]["p1"] == p1["own_splits"] > 0
    assert len(bank["loss_per_round"]) == len(pages["state"].results["history"])
    assert set(p1) == {"party", "own_split_counts_by_column", "own_splits"}  # no loss, no gain
    assert all(c.startswith("p1_") for c in p1["own_split_counts_by_column"])
    assert all(c.startswith("p0_") for c in bank["own_split_counts_by_column"])
