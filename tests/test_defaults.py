"""Defaults (issue #15): hetero-linear trains on the active party's standardised label, and the
``newton`` optimiser is each party's own-curvature (block-diagonal Newton) step.

Jobs run in-process through the job engine with 512-bit keys, as in test_protocol_hetero_linear.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fate, introduce, make_party
from test_protocol_hetero_linear import align, joined, motor_parties, standardised, train

from vfl_cli import jobs
from vfl_cli.metrics import regression_metrics
from vfl_cli.models.features import split_rows
from vfl_cli.models.optim import make_optimizer, own_curvature_step
from vfl_cli.models.reference import fit_linear, fit_linear_blocks
from vfl_cli.protocol import hetero_linear as hl
from vfl_cli.workspace import Workspace

PARAMS = {"epochs": 3, "test_fraction": 0.25, "seed": 11}


def motor(tmp_path: Path) -> tuple[Path, Path]:
    frames = {n: pd.read_csv(fate(f"motor_hetero_{n}.csv"), dtype={"idx": str}).sample(n=300, random_state=2)
              for n in ("guest", "host_1")}
    paths = {}
    for n, df in frames.items():
        paths[n] = tmp_path / f"{n}.csv"
        # the label in other units (x 1000 + 500): the default must not care
        if n == "guest":
            df = df.assign(motor_speed=df["motor_speed"] * 1000.0 + 500.0)
        df.to_csv(paths[n], index=False)
    a = make_party(tmp_path, "plant", "active", paths["guest"], id_column="idx", label_column="motor_speed")
    p = make_party(tmp_path, "s1", "passive", paths["host_1"], id_column="idx")
    introduce(tmp_path, "plant", "s1")
    align(a, [p])
    return a, p


def test_standardised_label_equals_the_reference_mapped_back(tmp_path: Path) -> None:
    assert hl.DEFAULTS["standardise_label"] is True
    a, p = motor(tmp_path)
    states = train(a, [p], "hetero-linear", {**PARAMS, "optimizer": "adam"})
    df, (ca, cp) = joined(a, [p])
    ids = jobs.load_state(Workspace(a), "al")[0].arrays["aligned_ids"]
    split = split_rows(len(df), PARAMS["test_fraction"], PARAMS["seed"], ids=ids)
    X = standardised(df[ca + cp].to_numpy(float), split.train)
    y = df["motor_speed"].to_numpy(float)
    mean, scale = y[split.train].mean(), y[split.train].std()
    ref = fit_linear(X[split.train], (y[split.train] - mean) / scale,
                     make_optimizer("adam", lr=hl.DEFAULTS["learning_rate"]),
                     PARAMS["epochs"], None, PARAMS["seed"], fixed_batches=True)
    active = states["plant"][0]
    got = np.concatenate([active.arrays["weights"][:-1], states["s1"][0].arrays["weights"]])
    np.testing.assert_allclose(got, ref.coef, atol=1e-6)
    # the intercept's gradient is ~0 on a centred label, and Adam divides it by its own size: the
    # fixed-point rounding of the encrypted sums shows there (measured 2.5e-4), not elsewhere
    np.testing.assert_allclose(active.arrays["weights"][-1], ref.intercept, atol=1e-3)
    # metrics are in the label's own units: the scores were mapped back by the active party
    z = mean + scale * (X[split.test] @ ref.coef + ref.intercept)
    want = regression_metrics(y[split.test], z)
    assert active.results["metrics"]["test"]["rmse"] > 100  # label units, not standardised ones
    assert abs(active.results["metrics"]["test"]["rmse"] - want["rmse"]) < 1e-4 * want["rmse"]
    np.testing.assert_allclose(active.arrays["label_scale"], [scale])
    # nothing about the label's scale reaches the passive party's state
    assert "label_scale" not in states["s1"][0].arrays and "label_mean" not in states["s1"][0].arrays


def test_predict_maps_scores_back_to_label_units(tmp_path: Path) -> None:
    from conftest import drive

    a, p = motor(tmp_path)
    states = train(a, [p], "hetero-linear", PARAMS)
    jobs.start_job(Workspace(a), "predict", {"model": "tr", "alignment": "al"}, job="pr")
    drive([a, p], "pr")
    scored, _ = jobs.load_state(Workspace(a), "pr")
    y = joined(a, [p])[0]["motor_speed"].to_numpy(float)
    rmse = scored.results["metrics"]["test"]["rmse"]  # every aligned row (train and test)
    # in the label's units: standardised scores would miss by about the label's mean (~500)
    assert rmse < y.std()
    trained = states["plant"][0].results["metrics"]["test"]["rmse"]
    assert 0.5 * trained < rmse < 2.0 * trained


def block_newton(blocks: list[np.ndarray], y: np.ndarray, epochs: int) -> list[np.ndarray]:
    """Plain numpy: full-batch squared loss, each block stepping by its own curvature with
    heavy-ball momentum (the first block holds the intercept column), all from the joint
    residual of the last weights."""
    w = [np.zeros(b.shape[1]) for b in blocks]
    v = [np.zeros(b.shape[1]) for b in blocks]
    for _ in range(epochs):
        d = sum(b @ wb for b, wb in zip(blocks, w, strict=True)) - y
        v = [hl.NEWTON_MOMENTUM * vb + own_curvature_step(b, b.T @ d / len(y), curvature=1.0,
                                                           parties=len(blocks))
             for b, vb in zip(blocks, v, strict=True)]
        w = [wb - vb for wb, vb in zip(w, v, strict=True)]
    return w


def test_default_newton_step_equals_the_plaintext_block_newton(tmp_path: Path) -> None:
    a, p = motor(tmp_path)
    states = train(a, [p], "hetero-linear", {**PARAMS, "optimizer": "newton"})
    df, (ca, cp) = joined(a, [p])
    ids = jobs.load_state(Workspace(a), "al")[0].arrays["aligned_ids"]
    split = split_rows(len(df), PARAMS["test_fraction"], PARAMS["seed"], ids=ids)
    tr = split.train
    XA = np.hstack([standardised(df[ca].to_numpy(float), tr)[tr], np.ones((len(tr), 1))])
    XP = standardised(df[cp].to_numpy(float), tr)[tr]
    y = df["motor_speed"].to_numpy(float)[tr]
    z = (y - y.mean()) / y.std()
    wa, wp = block_newton([XA, XP], z, PARAMS["epochs"])
    np.testing.assert_allclose(states["plant"][0].arrays["weights"], wa, atol=1e-4)
    np.testing.assert_allclose(states["s1"][0].arrays["weights"], wp, atol=1e-4)
    # in as many exchanges, further down the training loss than the old default (Adam 0.05)
    X = np.hstack([XA[:, :-1], XP])
    adam = fit_linear(X, z, make_optimizer("adam", lr=0.05), PARAMS["epochs"], None, PARAMS["seed"],
                      fixed_batches=True)
    newton_mse = np.mean((XA @ wa + XP @ wp - z) ** 2)
    adam_mse = np.mean((X @ adam.coef + adam.intercept - z) ** 2)
    assert newton_mse < adam_mse


def test_job_show_gives_hand_offs_and_bytes(tmp_path: Path) -> None:
    import json

    from conftest import run

    a, p = motor(tmp_path)
    train(a, [p], "hetero-linear", {**PARAMS, "epochs": 2})
    shown = {ws.name: json.loads(run("-w", str(ws), "job", "show", "tr", "--json").stdout)["handoffs"]
             for ws in (a, p)}
    active, passive = shown["plant"], shown["s1"]
    # what one party sent the other received, file for file and byte for byte
    assert active["received"] == passive["sent"] > 0 and active["sent"] == passive["received"] > 0
    assert active["bytes_received"] == passive["bytes_sent"] > 0
    assert active["bytes_sent"] == passive["bytes_received"] > 0
    # full batch: the passive party sends a partial and a gradient per epoch, then its scores
    assert passive["sent"] >= 2 * 2 + 1


def test_own_curvature_step_of_one_party_is_the_newton_step() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 3.0]) + rng.normal(size=200)
    grad = X.T @ (X @ np.zeros(4) - y) / 200
    w = -own_curvature_step(X, grad, curvature=1.0, parties=1, step=1.0, ridge=0.0)
    np.testing.assert_allclose(w, np.linalg.lstsq(X, y, rcond=None)[0], atol=1e-10)
    # more parties, smaller steps: a fifth below the heavy-ball bound 2 (1 + b) / k that the block
    # bound H <= k D allows (b: the momentum applied to them), and never above 0.8
    for parties, momentum, scale in ((2, 0.3, 0.8), (3, 0.3, 2.08 / 3), (4, 0.3, 0.52), (4, 0.0, 0.4)):
        g = own_curvature_step(X, grad, curvature=1.0, parties=parties, ridge=0.0, momentum=momentum)
        np.testing.assert_allclose(g, scale * -w, atol=1e-10)
    assert hl.NEWTON_MOMENTUM == 0.3  # the momentum own_curvature_step's default assumes


def test_history_gives_the_loss_per_hand_off(tmp_path: Path) -> None:
    a, p = motor(tmp_path)
    states = train(a, [p], "hetero-linear", {**PARAMS, "epochs": 3})
    history = states["plant"][0].results["history"]
    # full batch: one round of four hand-offs per epoch, the loss at the weights each starts
    # from (block CG, the default: the first exchange only measures the gradient)
    assert [h["handoffs"] for h in history] == [4, 8, 12]
    assert history[2]["loss"] < history[1]["loss"] == pytest.approx(history[0]["loss"])


def test_default_job_stops_on_convergence_at_least_squares(tmp_path: Path) -> None:
    """No training parameter: block CG at full batch stops by itself (the last two steps'
    joint decrements below tol) before the cap, at the least-squares fit of the same split."""
    from sklearn.linear_model import LinearRegression

    assert hl.DEFAULTS["optimizer"] == "auto" and hl.optimizer_name(hl.DEFAULTS, linear=True) == "cg"
    assert hl.optimizer_name(hl.DEFAULTS) == "newton"  # hetero-lr
    a = make_party(tmp_path, "school", "active", fate("student_hetero_guest.csv"), id_column="id", label_column="y")
    p = make_party(tmp_path, "home", "passive", fate("student_hetero_host.csv"), id_column="id")
    introduce(tmp_path, "school", "home")
    align(a, [p])
    split_params = {"test_fraction": 0.25, "seed": 11}
    states = train(a, [p], "hetero-linear", split_params)
    card = states["school"][0].results
    assert card["model"]["converged"] is True, card["history"]
    assert card["model"]["epochs_run"] < hl.DEFAULTS["epochs"]
    assert all(h["decrement"] >= 0 for h in card["history"])
    df, (ca, cp) = joined(a, [p])
    ids = jobs.load_state(Workspace(a), "al")[0].arrays["aligned_ids"]
    split = split_rows(len(df), split_params["test_fraction"], split_params["seed"], ids=ids)
    X = standardised(df[ca + cp].to_numpy(float), split.train)
    y = df["y"].to_numpy(float)
    ref = LinearRegression().fit(X[split.train], y[split.train]).predict(X[split.test])
    want = regression_metrics(y[split.test], ref)["rmse"]
    assert card["metrics"]["test"]["rmse"] < 1.02 * want
    # tol = 0: no convergence test, every epoch runs
    states = train(a, [p], "hetero-linear", {**split_params, "tol": 0.0, "epochs": 4}, job="t0")
    assert states["school"][0].results["model"]["epochs_run"] == 4
    assert states["school"][0].results["model"]["converged"] is False


def test_newton_decrement_discounts_the_label_noise() -> None:
    """What noise alone adds to a party's decrement has the mean and deviation the passive party
    subtracts (Monte Carlo over the noise on the residuals)."""
    from vfl_cli.models.optim import newton_decrement

    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    sigma = 0.3
    decs = [newton_decrement(X, X.T @ rng.normal(0, sigma, 300) / 300, curvature=0.25, noise=sigma)
            for _ in range(3000)]
    got = np.array([d[0] for d in decs])
    _, mean, sd = decs[0]
    assert abs(got.mean() - mean) < 0.05 * mean
    assert abs(got.std() - sd) < 0.1 * sd
    assert newton_decrement(X, np.zeros(6), curvature=1.0) == (0.0, 0.0, 0.0)


def test_a_declared_label_sigma_is_checked() -> None:
    from types import SimpleNamespace

    from vfl_cli.errors import InvalidArtifact

    ok = SimpleNamespace(meta={"label_sigma": 0.25}, kind="hetero/residual", sender="a")
    assert hl.received_sigma(ok) == 0.25
    assert hl.received_sigma(SimpleNamespace(meta={}, kind="k", sender="a")) == 0.0
    for bad in (-1.0, "0.1", True, float("nan"), 1e9):
        with pytest.raises(InvalidArtifact, match="label_sigma"):
            hl.received_sigma(SimpleNamespace(meta={"label_sigma": bad}, kind="hetero/residual", sender="a"))


def test_three_party_newton_job_equals_the_block_replay(tmp_path: Path) -> None:
    """The encrypted own-curvature step (three parties: step 0.69, momentum 0.3, the decrement test) is what
    reference.fit_linear_blocks replays, weights and exchange count, so the replay's figures
    (bench_defaults_replay.py, motor) stand for the protocol's."""
    a, (p1, p2) = motor_parties(tmp_path, 300)
    # the own-curvature step (the default until block CG; its equality with the job is
    # test_protocol_hetero_linear's test_default_block_cg_job_equals_the_block_replay)
    params = {"epochs": 4, "test_fraction": 0.25, "seed": 11, "optimizer": "newton"}
    states = train(a, [p1, p2], "hetero-linear", params)
    df, cols = joined(a, [p1, p2])
    ids = jobs.load_state(Workspace(a), "al")[0].arrays["aligned_ids"]
    tr = split_rows(len(df), params["test_fraction"], params["seed"], ids=ids).train
    y = df["motor_speed"].to_numpy(float)[tr]
    blocks = [standardised(df[c].to_numpy(float), tr)[tr] for c in cols]
    ref = fit_linear_blocks(blocks, (y - y.mean()) / y.std(), epochs=params["epochs"])
    got = np.concatenate([states["plant"][0].arrays["weights"][:-1], states["s1"][0].arrays["weights"],
                          states["s2"][0].arrays["weights"]])
    np.testing.assert_allclose(got, ref.coef, atol=1e-4)
    assert states["plant"][0].arrays["weights"][-1] == pytest.approx(ref.intercept, abs=1e-4)
    assert states["plant"][0].results["model"]["epochs_run"] == ref.exchanges
