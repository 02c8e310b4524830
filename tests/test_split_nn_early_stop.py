"""split-nn stops on held-out validation rows and keeps the last or the best model (issue #15).

The active party scores the validation rows once per epoch, tells the passive party in its
backward message when to keep the model it is about to step (``keep``: every check with
``keep_model = "last"``, the default; the best so far with ``"best"``), and stops after
``patience`` epochs without a better validation loss; both parties then restore the kept model.
Jobs run in-process through the job engine with 512-bit keys on small data, against the plaintext
reference (``split_spec.central_fit``), which stops the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import carry
from conftest import run as run_cli
from test_protocol_split_nn import PARAMS, SPEC, known_private_seeds, reference, shares_sum, small_parties, train

from vfl_cli import jobs
from vfl_cli.errors import VflError
from vfl_cli.models import split_spec as ss
from vfl_cli.models.features import validation_split
from vfl_cli.protocol import split_nn
from vfl_cli.workspace import Workspace

__all__ = ["known_private_seeds"]  # the autouse fixture: the parties' private seeds, known to the reference

#: Full batches at a high learning rate: the validation loss turns up within a few epochs.
STOPPING = dict(PARAMS, model=SPEC, batch_size=0, epochs=25, learning_rate=0.3, patience=3,
                validation_fraction=0.25, keep_model="best")


def test_training_stops_on_the_validation_rows_and_both_parties_keep_the_best_model(tmp_path: Path, sample) -> None:
    bank, bureau = small_parties(tmp_path, sample("breast_active.csv"), sample("breast_passive.csv"), "label", 120)
    states = train(bank, bureau, STOPPING)
    a, p = states["bank"], states["bureau"]
    run = a.results["model"]["epochs_run"]
    history = a.results["history"]
    assert run < STOPPING["epochs"] and len(history) == run  # stopped before the cap
    val = [h["val_loss"] for h in history]
    kept = a.results["model"]["validation"]["kept_epoch"]
    # the kept epoch is the last improvement by more than the tolerance, followed by `patience` checks without one
    assert run - 1 - kept == STOPPING["patience"]
    assert val[kept] == a.results["model"]["validation"]["best_loss"] == min(val[:kept + 1])
    assert all(v > val[kept] - ss.VALIDATION_TOL for v in val[kept + 1:])
    assert p.results["model"]["validation"]["kept_epoch"] == kept  # told to P by the keep flags
    # both restored the same model: the reference's, which stops by the same rule
    model, losses, _ = reference(bank, bureau, STOPPING, "label")
    np.testing.assert_allclose([h["loss"] for h in history], losses, atol=1e-6)
    np.testing.assert_allclose(shares_sum(a, p), model.W_P, atol=1e-6)
    np.testing.assert_allclose(a.arrays["W_A"], model.W_A, atol=1e-6)
    np.testing.assert_allclose(a.arrays["net_top"], model.top.get_flat(), atol=1e-6)
    np.testing.assert_allclose(p.arrays["net_passive"], model.bottom_p.get_flat(), atol=1e-6)
    # the hand-offs end with the stop: one backward message per epoch trained
    sent = list((bank / "archive" / "sent").glob("tr.*backward*.zip"))
    assert len(sent) == run
    shown = run_cli("-w", str(bureau), "model", "show", "tr")
    assert f"kept the model of epoch {kept + 1}, best on" in " ".join((shown.stdout + shown.stderr).split())


def test_keep_model_last_keeps_the_model_of_the_last_check(tmp_path: Path, sample) -> None:
    """The default: the stop is the same rule, but both parties keep the model as it was at the last
    validation check (before that epoch's step), not the best scored one."""
    bank, bureau = small_parties(tmp_path, sample("breast_active.csv"), sample("breast_passive.csv"), "label", 120)
    params = dict(STOPPING, keep_model="last")
    states = train(bank, bureau, params)
    a, p = states["bank"], states["bureau"]
    run, history = a.results["model"]["epochs_run"], a.results["history"]
    assert run < params["epochs"]  # stopped by the same rule as "best"
    val = [h["val_loss"] for h in history]
    best = int(np.argmin(val))
    assert run - 1 - best == params["patience"]  # patience checks after the best loss
    assert a.results["model"]["validation"]["kept_epoch"] == p.results["model"]["validation"]["kept_epoch"] == run - 1
    assert a.results["model"]["validation"]["keep"] == "last"
    model, losses, _ = reference(bank, bureau, params, "label")
    np.testing.assert_allclose([h["loss"] for h in history], losses, atol=1e-6)
    np.testing.assert_allclose(shares_sum(a, p), model.W_P, atol=1e-6)
    np.testing.assert_allclose(p.arrays["net_passive"], model.bottom_p.get_flat(), atol=1e-6)
    # not the best one: the kept model differs from the one "best" keeps on the same job
    best_model, _, _ = reference(bank, bureau, dict(params, keep_model="best"), "label")
    assert not np.allclose(best_model.W_P, model.W_P)


def test_without_validation_rows_every_epoch_trains_and_the_last_model_is_kept(tmp_path: Path, sample) -> None:
    bank, bureau = small_parties(tmp_path, sample("breast_active.csv"), sample("breast_passive.csv"), "label", 120)
    params = dict(STOPPING, epochs=6, validation_fraction=0.0)
    states = train(bank, bureau, params)
    a, p = states["bank"], states["bureau"]
    assert a.results["model"]["epochs_run"] == 6 and "validation" not in a.results["model"]
    assert all("val_loss" not in h for h in a.results["history"])
    model, _, _ = reference(bank, bureau, params, "label")
    np.testing.assert_allclose(shares_sum(a, p), model.W_P, atol=1e-6)


def test_the_validation_rows_are_public_label_free_and_never_trained_on() -> None:
    val, fit = validation_split(100, 0.1)
    assert (val, fit) == (slice(0, 10), slice(10, 100))
    assert validation_split(100, 0.0) == (slice(0, 0), slice(0, 100))
    assert validation_split(2, 0.5) == (slice(0, 0), slice(0, 2))  # too few rows to spare one


def test_a_keep_flag_where_no_check_is_due_is_refused(tmp_path: Path, sample, monkeypatch) -> None:
    """A backward message saying 'keep' in a mini-batch that carried no validation rows is refused
    by P (quarantined, nothing sent): P keeps only what a check of A's could have chosen."""
    bank, bureau = small_parties(tmp_path, sample("breast_active.csv"), sample("breast_passive.csv"), "label", 120)
    params = dict(PARAMS, model=SPEC, batch_size=30)  # 3 mini-batches per epoch: the first has no check
    jobs.start_job(Workspace(bank), "split-nn", {"alignment": "al", **params}, job="tr")
    carry(bank, bureau)
    jobs.accept_job(Workspace(bureau), "tr")  # forward, round 0
    carry(bureau, bank)
    jobs.step(Workspace(bank), "tr")  # activation request
    carry(bank, bureau)
    jobs.step(Workspace(bureau), "tr")  # activation
    carry(bureau, bank)
    meta = split_nn.Backward.meta
    monkeypatch.setattr(split_nn.Backward, "meta", lambda self: {**meta(self), "keep": True})
    jobs.step(Workspace(bank), "tr")  # backward, round 0, saying keep
    carry(bank, bureau)
    reports = jobs.step(Workspace(bureau), "tr")
    assert reports[0].rejected and "keep" in reports[0].rejected[0]["reason"] and not reports[0].sent


@pytest.mark.parametrize(("key", "value"), [("validation_fraction", 0.7), ("validation_fraction", -0.1),
                                            ("patience", 0)])
def test_out_of_range_stopping_parameters_are_refused(key: str, value: float) -> None:
    with pytest.raises(VflError, match=key):
        split_nn.check_params({"alignment": "al", key: value}, [{"role": "active"}, {"role": "passive"}])
