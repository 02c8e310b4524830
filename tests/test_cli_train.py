"""Training, evaluation, model cards and prediction by hand through the real command."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from conftest import carry, error_line, run


def step_until_done(parties: list[Path], job: str, limit: int = 200) -> None:
    for _ in range(limit):
        moved = [carry(a, b) for a in parties for b in parties if a != b]
        done = 0
        for ws in parties:
            if not (ws / "jobs" / job / "job.json").exists():
                if any((ws / "inbox").glob(f"{job}.001.*")):
                    run("-w", str(ws), "job", "accept", job)
                continue
            out = json.loads(run("-w", str(ws), "step", "--job", job, "--json").stdout)
            done += out[0]["done"]
        if done == len(parties):
            return
        assert any(moved) or done, "no progress"
    raise AssertionError("job did not finish")


def test_align_train_evaluate_predict_by_hand(two_parties, sample, tmp_path: Path) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "align", "start", "--job", "al")
    step_until_done([bank, bureau], "al")
    run("-w", str(bank), "train", "start", "--protocol", "hetero-lr", "--alignment", "al", "--epochs", "3",
        "--batch-size", "96", "--learning-rate", "0.1", "--job", "tr")
    step_until_done([bank, bureau], "tr")

    metrics = json.loads(run("-w", str(bank), "evaluate", "tr", "--json").stdout)
    assert metrics["test"]["auc"] > 0.9 and {"ks", "accuracy", "f1", "log_loss"} <= set(metrics["test"])
    assert "only the active party" in error_line(run("-w", str(bureau), "evaluate", "tr", ok=False))

    card = json.loads(run("-w", str(bureau), "model", "show", "tr", "--json").stdout)
    # the columns a job uses are read from the file at its start and kept in its job.json
    assert set(card["weights"]) == set(json.loads((bureau / "jobs" / "tr" / "job.json").read_text())["features"])
    assert len(card["weights"]) == 20
    run("-w", str(bank), "model", "export", "tr", "--out", str(tmp_path / "bank-model.json"))
    exported = json.loads((tmp_path / "bank-model.json").read_text())
    assert "(intercept)" in exported["weights"] and "standardiser" in exported

    # score new rows: each party aligns another file of its own, then predicts
    new_a = tmp_path / "new_a.csv"
    new_p = tmp_path / "new_p.csv"
    pd.read_csv(sample("breast_active.csv")).head(120).to_csv(new_a, index=False)
    pd.read_csv(sample("breast_passive.csv")).head(150).to_csv(new_p, index=False)
    run("-w", str(bank), "align", "start", "--job", "new", "--data", str(new_a))
    carry(bank, bureau)
    run("-w", str(bureau), "align", "respond", "new", "--data", str(new_p))
    step_until_done([bank, bureau], "new")
    run("-w", str(bank), "predict", "start", "--model", "tr", "--alignment", "new", "--job", "pr")
    step_until_done([bank, bureau], "pr")
    run("-w", str(bank), "predict", "export", "pr", "--out", str(tmp_path / "scores.csv"))
    scores = pd.read_csv(tmp_path / "scores.csv", dtype={"id": str})
    expected = set(pd.read_csv(new_a, dtype=str)["id"]) & set(pd.read_csv(new_p, dtype=str)["id"])
    assert set(scores["id"]) == expected and scores["score"].between(0, 1).all()
    # the new file holds labels, so the active party also gets metrics on these rows
    assert json.loads(run("-w", str(bank), "evaluate", "pr", "--json").stdout)["test"]["auc"] > 0.9
    message = error_line(run("-w", str(bureau), "predict", "export", "pr", "--out", str(tmp_path / "x.csv"), ok=False))
    assert "only the active party" in message


def test_predict_with_an_unfinished_model_is_refused(two_parties) -> None:
    bank, _ = two_parties
    message = error_line(run("-w", str(bank), "predict", "start", "--model", "nope", "--alignment", "nope", ok=False))
    assert "no job 'nope'" in message
