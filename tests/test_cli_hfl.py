"""``vfl hfl`` and the hfl recipes through the command line.

The shipped recipes run through ``vfl recipe run`` with every party's ``vfl`` command invoked
in-process (the runner's subprocess call is swapped for CliRunner, so seven parties' dozens of
commands take seconds, not minutes); the benchmark runs them as real separate processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import ROOT, error_line, run

from vfl_cli import recipes
from vfl_cli.cli import cli
from vfl_cli.errors import VflError


def small(name: str, tmp_path: Path, **replace: str) -> Path:
    """A shipped hfl recipe with test keys, absolute data paths and the given replacements."""
    text = (ROOT / "recipes" / name).read_text().replace('"../sample_data/', f'"{ROOT}/sample_data/')
    text = text.replace("key_bits = 2048", "key_bits = 512")
    for old, new in replace.items():
        if old not in text:
            raise AssertionError(f"{old!r} is not in {name}")
        text = text.replace(old, new)
    out = tmp_path / name
    out.write_text(text)
    return out


@pytest.fixture
def in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def vfl(self: recipes.Runner, party: str | None, *args: str) -> Any:
        argv = ["--quiet"] + (["-w", str(self.ws(party))] if party else []) + list(args)
        self.commands += 1
        result = CliRunner().invoke(cli, argv)
        if result.exit_code != 0:
            raise VflError(f"{party}: 'vfl {' '.join(args[:3])}' failed: {result.output.strip()[-300:]}")
        out = result.stdout.strip()
        return json.loads(out) if out else None

    monkeypatch.setattr(recipes.Runner, "vfl", vfl)


@pytest.mark.parametrize("name", ["hfl_fedavg.toml", "hfl_actor_critic.toml"])
def test_recipe_runs_and_reports_metrics_and_node_weights(name: str, tmp_path: Path, in_process: None) -> None:
    recipe = small(name, tmp_path, **{"rounds = 10": "rounds = 3", "full_every = 5": "full_every = 2"})
    work = tmp_path / "work"
    run("recipe", "run", str(recipe), "--workdir", str(work))
    report = json.loads((work / "report.json").read_text())
    assert report["protocol"] == "hfl"
    assert {"auc", "accuracy"} <= set(report["metrics"]["test"])
    weights = report["node_weights"]
    assert len(weights) == 3 and all(len(w) == 5 and abs(sum(w) - 1) < 1e-9 for w in weights)
    if "fedavg" in name:  # FedAvg weights are the sample shares: node0 holds 140 of 340 rows
        assert weights[0][0] == pytest.approx(140 / 340)
    assert report["model"]["spec"][0] == {"type": "dense", "units": 16, "init": "he"}
    assert [layer["shape"] for layer in report["model"]["layers"]] == [[30, 16], [16], [16, 1]]
    job = report["jobs"]["train"]
    # the server's view of the weights, and the predictor's model serving new rows
    shown = json.loads(run("-w", str(work / "hq"), "hfl", "show-weights", job, "--json").stdout)
    assert shown["node_weights"] == weights and shown["nodes"] == [f"node{i}" for i in range(5)]
    out = tmp_path / "scores.csv"
    run("-w", str(work / "serving"), "hfl", "predict", job, "--out", str(out))
    scores = pd.read_csv(out, dtype={"id": str})
    assert len(scores) == 60 and scores["score"].between(0, 1).all()
    server_scores = tmp_path / "server_scores.csv"
    data = ROOT / "sample_data" / "hfl" / "predictor.csv"
    run("-w", str(work / "hq"), "hfl", "predict", job, "--data", str(data), "--out", str(server_scores))
    # after the final full update the predictor's replica is the master: the same scores
    assert pd.read_csv(server_scores)["score"].tolist() == scores["score"].tolist()
    status = json.loads(run("-w", str(work / "serving"), "hfl", "status", job, "--json").stdout)
    assert status["done"] and status["update_version"] == 4
    run("-w", str(work / "node2"), "model", "show", job)  # every party holds the whole model
    assert "only the server" in error_line(run("-w", str(work / "node1"), "hfl", "show-weights", job, ok=False))


def test_secure_aggregation_recipe(tmp_path: Path, in_process: None) -> None:
    # Secure aggregation is the recipes' setting and the default.
    recipe = small("hfl_actor_critic.toml", tmp_path, **{"rounds = 10": "rounds = 2"})
    work = tmp_path / "work"
    run("recipe", "run", str(recipe), "--workdir", str(work))
    report = json.loads((work / "report.json").read_text())
    assert len(report["node_weights"]) == 2 and report["metrics"]["test"]["auc"] > 0.5
    job = report["jobs"]["train"]
    results = json.loads(run("-w", str(work / "hq"), "job", "show", job, "--json").stdout)["results"]
    assert results["privacy"]["secure_aggregation"] is True
    assert results["privacy"]["server_sees"] == "each round's weighted sum"
    status = json.loads(run("-w", str(work / "hq"), "hfl", "status", report["jobs"]["train"], "--json").stdout)
    assert status["round"] == 2 and status["done"]


def test_start_refuses_bad_options_and_predict_without_a_model(tmp_path: Path) -> None:
    from conftest import introduce, make_party

    data = ROOT / "sample_data" / "hfl"
    hq = make_party(tmp_path, "hq", "server", data / "server.csv", label_column="label")
    make_party(tmp_path, "node1", "worker", data / "node1.csv", label_column="label")
    pred = make_party(tmp_path, "serving", "predictor", data / "predictor.csv")
    introduce(tmp_path, "hq", "node1", "serving")
    message = error_line(run("-w", str(hq), "hfl", "start", "--realtime-k", "0", ok=False))
    assert "realtime_k must be a finite number in (0, 1]" in message
    message = error_line(run("-w", str(hq), "hfl", "start", "--with", "serving", ok=False))
    assert "at least one worker" in message
    message = error_line(run("-w", str(hq), "hfl", "start", "--job", "j", ok=False))
    assert "at least min_nodes = 3 workers per aggregate, this job has 1 (node1)" in message
    run("-w", str(hq), "hfl", "start", "--job", "j", "--rounds", "2", "--model", "mlp", "--hidden", "4",
        "--param", "min_nodes=1")
    assert json.loads((hq / "jobs" / "j" / "job.json").read_text())["params"]["hidden"] == [4]
    run("-w", str(pred), "job", "list")  # the predictor has not accepted yet
    message = error_line(run("-w", str(pred), "hfl", "predict", "j", "--out", str(tmp_path / "s.csv"), ok=False))
    assert "no job 'j'" in message
