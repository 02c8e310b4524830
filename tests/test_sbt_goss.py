"""GOSS row sampling (``goss_top``, ``goss_other``) in SecureBoost and its plaintext reference.

The encrypted job must equal the plaintext reference given the same secret seed (the active
party's ``goss_seed``, read here from its own job state) to 1e-6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import drive
from test_protocol_secureboost import PARAMS, sbt_defaults, setup, synthetic

from vfl_cli import jobs
from vfl_cli.errors import VflError
from vfl_cli.models import trees
from vfl_cli.models.binning import fit_binning
from vfl_cli.models.features import split_rows
from vfl_cli.protocol import sbt_data
from vfl_cli.protocol.registry import get_protocol
from vfl_cli.workspace import Workspace

GOSS = {**PARAMS, "trees": 2, "active_trees": 0, "goss_top": 0.3, "goss_other": 0.2,
        "min_samples_leaf": 3}


def reference_raw(wss: list[Path], params: dict, goss_seed: int) -> np.ndarray:
    """The plaintext reference on the joined aligned rows: raw scores of every aligned row."""
    full = {**sbt_defaults(), **params}
    Xbs, nbs, blocks, y = [], [], [], None
    for ws in wss:
        w = Workspace(ws)
        state, _ = jobs.load_state(w, "al")
        df = w.read_data().iloc[state.arrays["aligned_rows"]].reset_index(drop=True)
        split = split_rows(len(df), full["test_fraction"], full["seed"], ids=state.arrays["aligned_ids"])
        grow, _ = sbt_data._validation(split.train, full)
        b = fit_binning(df.iloc[grow], w.features, max_bins=full["max_bins"])
        Xbs.append(b.transform(df))
        nbs += [c.n_bins for c in b.columns]
        blocks.append(len(w.features))
        if w.label_column:
            y = df[w.label_column].to_numpy(dtype=float)
    Xb = np.hstack(Xbs)
    p = sbt_data.boost_params(full)
    k = int(y.max()) + 1 if p.objective == "multiclass" else 2
    booster = trees.fit(Xb[grow], np.array(nbs), y[grow], p, n_classes=k, blocks=blocks,
                        active_trees=full["active_trees"], goss_seed=goss_seed)
    return booster.raw(Xb)


@pytest.mark.parametrize("objective", ["binary", "regression"])
def test_goss_job_equals_the_plaintext_reference(tmp_path: Path, objective: str) -> None:
    wss = setup(tmp_path, synthetic(tmp_path, objective=objective))
    params = {**GOSS, "objective": objective}
    jobs.start_job(Workspace(wss[0]), "secureboost", {"alignment": "al", **params}, job="sb")
    drive(wss, "sb")
    state, _ = jobs.load_state(Workspace(wss[0]), "sb")
    assert state.results["model"]["split_counts"].get("p1", 0) > 0
    seed = state.data["goss_seed"]
    assert seed > 2**40  # drawn from the active party's CSPRNG, not the public seed
    ref = reference_raw(wss, params, seed)
    assert np.max(np.abs(state.arrays["raw"] - ref)) < 1e-6
    # the seed matters: another seed samples other rows and gives another model
    assert np.max(np.abs(reference_raw(wss, params, seed + 1) - ref)) > 1e-3


def test_goss_weights() -> None:
    p = trees.BoostParams(goss_top=0.2, goss_other=0.1)
    g = np.random.default_rng(0).normal(size=(100, 2))
    w = trees.row_weights(p, 0, g, 5)
    top = np.argsort(-np.abs(g).sum(axis=1), kind="stable")[:20]
    assert (w[top] == 1).all() and (w == 1).sum() == 20
    assert (w > 1).sum() == 10 and np.allclose(w[w > 1], 80 / 10)
    assert w.sum() == pytest.approx(100)  # the others' weight stands for all the others
    assert not np.array_equal(w, trees.row_weights(p, 1, g, 5))  # new draws every round
    assert np.array_equal(trees.row_weights(trees.BoostParams(), 0, g, 5), np.ones(100))


@pytest.mark.parametrize("bad", [{"goss_top": 0.9, "goss_other": 0.2},
                                 {"goss_top": 0.2, "subsample": 0.5}])
def test_goss_mistakes_are_refused(bad: dict) -> None:
    with pytest.raises(VflError, match="goss_top"):
        get_protocol("secureboost").check_params({"alignment": "al", **bad}, [])
