"""SecureBoost: the encrypted job through real workspaces equals the plaintext reference.

Jobs run in-process through the job engine (the code the CLI calls) with 512-bit keys.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import drive, introduce, make_party, received

from vfl_cli import jobs
from vfl_cli.models import trees
from vfl_cli.models.binning import fit_binning
from vfl_cli.models.features import split_rows
from vfl_cli.protocol import sbt_data
from vfl_cli.workspace import Workspace

PARAMS = {"trees": 3, "depth": 2, "max_bins": 8, "learning_rate": 0.3, "l2": 1.0,
          "min_samples_leaf": 5, "test_fraction": 0.25, "seed": 3}


def synthetic(root: Path, n: int = 160, passives: int = 1, objective: str = "binary"
              ) -> list[pd.DataFrame]:
    """Continuous columns (no tied gains); the label needs every party's columns."""
    rng = np.random.default_rng(11)
    frames = [pd.DataFrame({"id": np.arange(n)})]
    score = np.zeros(n)
    for j in range(1 + passives):
        block = rng.normal(size=(n, 3))
        score += block[:, 0] - 0.5 * block[:, 1]
        frames.append(pd.DataFrame(block, columns=[f"p{j}_{c}" for c in range(3)]))
    if objective == "binary":
        y = (score + rng.normal(scale=0.5, size=n) > 0).astype(int)
    elif objective == "multiclass":
        y = np.digitize(score, np.quantile(score, [1 / 3, 2 / 3]))
    else:
        y = score + rng.normal(scale=0.3, size=n)
    parts = [pd.concat([frames[0], frames[1], pd.DataFrame({"y": y})], axis=1)]
    parts += [pd.concat([frames[0], f], axis=1) for f in frames[2:]]
    for i, df in enumerate(parts):
        df.to_csv(root / f"part{i}.csv", index=False)
    return parts


def setup(root: Path, parts: list[pd.DataFrame]) -> list[Path]:
    names = ["bank"] + [f"p{i}" for i in range(1, len(parts))]
    wss = [make_party(root, "bank", "active", root / "part0.csv", label_column="y")]
    wss += [make_party(root, n, "passive", root / f"part{i}.csv")
            for i, n in enumerate(names[1:], 1)]
    introduce(root, *names)
    jobs.start_job(Workspace(wss[0]), "psi", {}, job="al")
    drive(wss, "al")
    return wss


def reference(wss: list[Path], params: dict) -> tuple[np.ndarray, np.ndarray]:
    """The plaintext reference on the joined aligned rows: (test scores, test rows' labels)."""
    blocks, Xbs, nbs, y = [], [], [], None
    full = {**sbt_defaults(), **params}
    for ws in wss:
        w = Workspace(ws)
        state, _ = jobs.load_state(w, "al")
        df = w.read_data().iloc[state.arrays["aligned_rows"]].reset_index(drop=True)
        split = split_rows(len(df), full["test_fraction"], full["seed"],
                           ids=state.arrays["aligned_ids"])
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
                        active_trees=full["active_trees"])
    return booster.raw(Xb[split.test]), y[split.test]


def sbt_defaults() -> dict:
    from vfl_cli.protocol.registry import get_protocol

    return get_protocol("secureboost").check_params({"alignment": "al"}, [])


def train(wss: list[Path], params: dict, job: str = "sb") -> dict:
    jobs.start_job(Workspace(wss[0]), "secureboost", {"alignment": "al", **params}, job=job)
    drive(wss, job)
    state, _ = jobs.load_state(Workspace(wss[0]), job)
    assert state.done
    return state


@pytest.mark.parametrize("extra", [{}, {"active_trees": 0, "subsample": 0.8, "colsample": 0.7}])
def test_binary_equals_the_plaintext_reference(tmp_path: Path, extra: dict) -> None:
    wss = setup(tmp_path, synthetic(tmp_path))
    state = train(wss, {**PARAMS, **extra})
    ours = np.array(state.results["test_scores"])
    ref, _ = reference(wss, {**PARAMS, **extra})
    assert np.max(np.abs(ours - ref[:, 0])) < 1e-6
    counts = state.results["model"]["split_counts"]
    assert counts.get("p1", 0) > 0, counts  # the passive party's columns are used


def test_multiclass_with_two_passive_parties(tmp_path: Path) -> None:
    wss = setup(tmp_path, synthetic(tmp_path, passives=2, objective="multiclass"))
    params = {**PARAMS, "objective": "multiclass", "trees": 2}
    train(wss, params)
    state, _ = jobs.load_state(Workspace(wss[0]), "sb")
    raw = state.arrays["raw"]
    ref, _ = reference(wss, params)
    test = split_rows(len(raw), 0.25, 3,
                       ids=jobs.load_state(Workspace(wss[0]), "al")[0].arrays["aligned_ids"]).test
    assert np.max(np.abs(raw[test] - ref)) < 1e-6
    owners = state.results["model"]["split_counts"]
    assert {"p1", "p2"} & set(owners), owners
    for ws in wss[1:]:
        part, _ = jobs.load_state(Workspace(ws), "sb")
        assert part.done


def test_regression_equals_the_plaintext_reference(tmp_path: Path) -> None:
    wss = setup(tmp_path, synthetic(tmp_path, objective="regression"))
    params = {**PARAMS, "objective": "regression"}
    state = train(wss, params)
    test = split_rows(len(state.arrays["raw"]), 0.25, 3,
                       ids=jobs.load_state(Workspace(wss[0]), "al")[0].arrays["aligned_ids"]).test
    ref, _ = reference(wss, params)
    assert np.max(np.abs(state.arrays["raw"][test, 0] - ref[:, 0])) < 1e-6


def test_early_stopping_and_model_show_export_per_party(tmp_path: Path) -> None:
    from conftest import run

    wss = setup(tmp_path, synthetic(tmp_path))
    params = {**PARAMS, "trees": 30, "learning_rate": 1.0, "validation_fraction": 0.3,
              "early_stopping_rounds": 1}
    state = train(wss, params)
    history = state.results["history"]
    assert len(history) < 30 and all("valid_loss" in h for h in history)
    best = int(np.argmin([h["valid_loss"] for h in history]))
    assert len(history) == best + 2  # the best round, then one round without improvement
    shown = run("-w", str(wss[0]), "model", "show", "sb").output
    assert "leaf" in shown and "split held by p1" in shown
    passive = run("-w", str(wss[1]), "model", "show", "sb").output
    assert "p1_0" in passive or "p1_1" in passive or "p1_2" in passive
    run("-w", str(wss[1]), "model", "export", "sb", "--out", str(tmp_path / "p1.json"))
    exported = (tmp_path / "p1.json").read_text()
    assert '"splits"' in exported and '"value"' not in exported  # leaf weights: the bank's


def test_last_passive_splits_ride_with_the_next_rounds_gradients(tmp_path: Path) -> None:
    """At most depth exchanges (2 x depth hand-offs) per round, one more at the end; the
    merged hand-off's leaf values (from the decrypted left sums) still equal the reference."""
    wss = setup(tmp_path, synthetic(tmp_path))
    params = {**PARAMS, "trees": 6, "depth": 3}
    state = train(wss, params)
    passive_rounds = params["trees"]  # active_trees = 1 comes on top
    assert state.data["t"] <= passive_rounds * params["depth"] + 1, state.data["t"]
    ref, _ = reference(wss, params)
    assert np.max(np.abs(np.array(state.results["test_scores"]) - ref[:, 0])) < 1e-6
    passive, _ = jobs.load_state(Workspace(wss[1]), "sb")
    last_layer = {r for r, nid, _, _ in passive.data["model"] if 3 <= nid < 7}  # the third layer
    assert len(last_layer - {params["trees"]}) >= 2, passive.data["model"]  # merged twice


def test_multiclass_last_passive_splits_ride_with_the_next_rounds_gradients(tmp_path: Path) -> None:
    """Three class trees per round with one passive party: a row held in ``m`` trees travels
    with ``2^m - 1`` left variants, so a round takes ``depth`` exchanges (2 x depth hand-offs),
    one more at the end, and the scores still equal the reference."""
    wss = setup(tmp_path, synthetic(tmp_path, objective="multiclass"))
    params = {**PARAMS, "objective": "multiclass", "trees": 4, "depth": 2, "active_trees": 0}
    state = train(wss, params)
    assert state.data["t"] <= params["trees"] * params["depth"] + 1, state.data["t"]
    raw = state.arrays["raw"]
    test = split_rows(len(raw), 0.25, 3,
                      ids=jobs.load_state(Workspace(wss[0]), "al")[0].arrays["aligned_ids"]).test
    ref, _ = reference(wss, params)
    assert np.max(np.abs(raw[test] - ref)) < 1e-6
    merged = [a for a in received(wss[1], "sb") if a.kind == "sbt/layer" and a.meta.get("merged")]
    assert merged, "no merged hand-off"
    assert all("gh_left" in a.members for a in merged)


def test_held_variants_and_the_mask_each_row_takes() -> None:
    size = sbt_data.tree_size(2)  # 7 nodes per class tree
    # three rows, two class trees; held nodes: 1 (tree 0) and 8 (tree 1, its node 1)
    held_node = np.array([[1, 8], [1, 9], [2, 8]])
    pending = [[1, 0], [8, 0]]
    sample = np.array([True, True, True])
    rows, masks = sbt_data.held_variants(held_node, pending, sample, size)
    assert rows.tolist() == [0, 0, 0, 1, 2] and masks.tolist() == [1, 2, 3, 1, 1]
    # after the splits: row 0 left in tree 0 (node 3) and right in tree 1 (node 11: 8's right);
    # row 1 right in tree 0; row 2 left in tree 1 (node 10)
    after = np.array([[3, 11], [4, 9], [2, 10]])
    assert sbt_data.taken_masks(held_node, pending, sample, size, after).tolist() == [1, 0, 1]
