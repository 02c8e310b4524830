"""vfl_cli.models.optim and vfl_cli.models.reference: update rules, state, reference trainers."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from vfl_cli.errors import DataError, VflError
from vfl_cli.models.optim import (
    SGD,
    Adam,
    BlockCG,
    EarlyStopping,
    LearningRateSchedule,
    cg_converged,
    cg_scalars,
    make_optimizer,
)
from vfl_cli.models.reference import (
    fit_linear,
    fit_linear_blocks,
    fit_logistic,
    minibatches,
    sigmoid,
    taylor_logistic_loss,
    taylor_logistic_residual,
)

# --- update rules -------------------------------------------------------------------------


def test_sgd_step_known_answer_and_inputs_untouched() -> None:
    w = np.array([1.0, -2.0])
    g = np.array([0.5, 0.5])
    new = SGD(lr=0.1).step(w, g)
    np.testing.assert_allclose(new, [0.95, -2.05])
    np.testing.assert_array_equal(w, [1.0, -2.0])
    np.testing.assert_array_equal(g, [0.5, 0.5])


def test_sgd_momentum_accumulates() -> None:
    opt = SGD(lr=0.1, momentum=0.5)
    w = opt.step(np.zeros(1), np.ones(1))  # v = 1
    w = opt.step(w, np.ones(1))  # v = 0.5 + 1 = 1.5
    np.testing.assert_allclose(w, [-0.1 - 0.15])


def test_adam_first_step_is_lr_times_sign() -> None:
    opt = Adam(lr=0.01)
    new = opt.step(np.zeros(3), np.array([3.0, -0.2, 0.0]))
    np.testing.assert_allclose(new, [-0.01, 0.01, 0.0], atol=1e-8)
    assert opt.t == 1


def test_l2_is_added_to_gradient_except_where_masked() -> None:
    w = np.array([2.0, 2.0])
    new = SGD(lr=0.5, l2=0.1).step(w, np.zeros(2), mask=[True, False])
    np.testing.assert_allclose(new, [2.0 - 0.5 * 0.1 * 2.0, 2.0])


def test_l1_soft_thresholds_after_the_step_except_where_masked() -> None:
    opt = SGD(lr=1.0, l1=0.3)
    new = opt.step(np.array([0.2, -1.0, 0.2]), np.zeros(3), mask=np.array([True, True, False]))
    # |0.2| < 0.3 -> exactly zero; -1.0 shrinks by 0.3; the unmasked intercept is untouched.
    np.testing.assert_array_equal(new, [0.0, -0.7, 0.2])


def test_matrix_weights_work() -> None:
    opt = Adam(lr=0.1, l2=0.01)
    w = np.ones((3, 2))
    assert opt.step(w, np.ones((3, 2)), mask=[True, False]).shape == (3, 2)


@pytest.mark.parametrize(
    ("schedule", "rates"),
    [
        (LearningRateSchedule("constant"), [1.0, 1.0, 1.0, 1.0]),
        (LearningRateSchedule("inverse_time", decay=0.5), [1.0, 1 / 1.5, 0.5, 1 / 2.5]),
        (LearningRateSchedule("step", step_size=2, gamma=0.1), [1.0, 1.0, 0.1, 0.1]),
    ],
)
def test_schedules(schedule: LearningRateSchedule, rates: list[float]) -> None:
    assert [schedule.rate(1.0, t) for t in range(4)] == pytest.approx(rates)


def test_optimizer_follows_its_schedule() -> None:
    opt = SGD(lr=1.0, schedule="inverse_time", decay=1.0)
    w = opt.step(np.zeros(1), np.ones(1))  # lr 1
    w = opt.step(w, np.ones(1))  # lr 1/2
    np.testing.assert_allclose(w, [-1.5])
    assert opt.learning_rate() == pytest.approx(1 / 3)


# --- factory and validation ---------------------------------------------------------------


def test_make_optimizer_and_config_round_trip() -> None:
    opt = make_optimizer("Adam", lr=0.2, beta1=0.8, l2=0.1, schedule="step", step_size=5)
    assert isinstance(opt, Adam)
    copy = make_optimizer(**opt.config())
    assert copy.config() == opt.config()
    assert isinstance(make_optimizer("sgd", momentum=0.9), SGD)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("rmsprop", {}, "unknown optimizer 'rmsprop'; allowed: adam, sgd"),
        ("sgd", {"beta1": 0.9}, "unknown parameter 'beta1' for optimizer 'sgd'; allowed: lr, "),
        ("sgd", {"schedule": "cosine"}, "allowed: constant, inverse_time, step"),
        ("sgd", {"lr": 0}, "lr must be > 0, got 0"),
        ("sgd", {"lr": "fast"}, "lr must be a number"),
        ("sgd", {"momentum": 1.0}, "momentum must be in [0, 1)"),
        ("adam", {"beta2": -0.1}, "beta2 must be in [0, 1)"),
        ("adam", {"l1": -1}, "l1 must be >= 0"),
        ("sgd", {"schedule": "step", "step_size": 0}, "step_size must be a whole number >= 1"),
        ("sgd", {"gamma": 2.0}, "gamma must be in (0, 1]"),
    ],
)
def test_make_optimizer_rejects(name: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(VflError) as info:
        make_optimizer(name, **params)
    assert message in str(info.value)


def test_step_rejects_bad_shapes_and_divergence() -> None:
    opt = Adam()
    with pytest.raises(VflError, match="gradient has shape"):
        opt.step(np.zeros(2), np.zeros(3))
    with pytest.raises(VflError, match="NaN or infinite"):
        opt.step(np.zeros(2), np.array([np.inf, 0.0]))
    with pytest.raises(VflError, match="mask"):
        opt.step(np.zeros(2), np.zeros(2), mask=[True, False, True])
    opt.step(np.zeros(2), np.ones(2))
    with pytest.raises(VflError, match="one optimiser per weight array"):
        opt.step(np.zeros(4), np.ones(4))


# --- state --------------------------------------------------------------------------------

_CONFIGS = [
    {"name": "sgd", "lr": 0.1},
    {"name": "sgd", "lr": 0.1, "momentum": 0.9, "l1": 0.01, "schedule": "inverse_time"},
    {"name": "adam", "lr": 0.05, "l2": 0.1, "schedule": "step", "step_size": 2},
]
_finite = st.floats(-100, 100, allow_nan=False)


@settings(max_examples=30, deadline=None)
@given(
    config=st.sampled_from(_CONFIGS),
    grads=st.lists(st.lists(_finite, min_size=3, max_size=3), min_size=1, max_size=6),
    split=st.integers(0, 6),
)
def test_state_round_trips_through_json(
    config: dict[str, Any], grads: list[list[float]], split: int
) -> None:
    mask = np.array([True, True, False])
    split = min(split, len(grads))
    original = make_optimizer(**config)
    w = np.array([0.5, -0.5, 1.0])
    for g in grads[:split]:
        w = original.step(w, np.array(g), mask=mask)
    state = original.state_dict()
    as_json = json.loads(
        json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in state.items()})
    )
    resumed = make_optimizer(**json.loads(json.dumps(original.config())))
    resumed.load_state_dict(as_json)
    w_original, w_resumed = w, w.copy()
    for g in grads[split:]:
        w_original = original.step(w_original, np.array(g), mask=mask)
        w_resumed = resumed.step(w_resumed, np.array(g), mask=mask)
    np.testing.assert_array_equal(w_original, w_resumed)
    assert resumed.t == original.t == len(grads)


def test_state_dict_is_a_copy_and_load_checks_it() -> None:
    opt = Adam()
    opt.step(np.zeros(2), np.ones(2))
    state = opt.state_dict()
    state["m"][0] = 99.0
    assert opt.m is not None and opt.m[0] != 99.0
    with pytest.raises(VflError, match="state is for 'adam', this optimiser is 'sgd'"):
        SGD().load_state_dict(state)
    with pytest.raises(VflError, match="no field 'v'"):
        Adam().load_state_dict({"name": "adam", "t": 1, "m": [0.0]})
    with pytest.raises(VflError, match="'t'"):
        Adam().load_state_dict({"name": "adam", "t": -1, "m": None, "v": None})
    fresh = Adam().state_dict()
    assert fresh == {"name": "adam", "t": 0, "m": None, "v": None}


# --- early stopping -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("history", "stop"),
    [
        ([], False),
        ([1.0], False),
        ([1.0, 0.9, 0.8, 0.7], False),
        ([1.0, 0.5, 0.5, 0.5], True),  # two epochs without improvement
        ([1.0, 0.5, 0.49995, 0.49991], True),  # improvements smaller than tol do not count
        ([1.0, 0.5, 0.6, 0.4], False),
        ([1.0, float("nan"), float("nan")], True),
    ],
)
def test_early_stopping(history: list[float], stop: bool) -> None:
    assert EarlyStopping(tol=1e-4, patience=2).should_stop(history) is stop


def test_early_stopping_validates() -> None:
    with pytest.raises(VflError, match="patience"):
        EarlyStopping(patience=0)
    assert EarlyStopping(tol=0.0, patience=1).best_epoch([3.0, 1.0, 2.0]) == 1


# --- reference trainers -------------------------------------------------------------------


def test_taylor_residual_forms_agree_and_match_the_loss() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=50)
    y = rng.integers(0, 2, size=50).astype(float)
    s = 2 * y - 1
    residual = taylor_logistic_residual(z, y)
    np.testing.assert_allclose(residual, 0.25 * z - 0.5 * s)
    # Derivative of the mean loss with respect to z_i is residual_i / n.
    h = 1e-6
    for i in range(3):
        dz = np.zeros_like(z)
        dz[i] = h
        numeric = (taylor_logistic_loss(z + dz, y) - taylor_logistic_loss(z - dz, y)) / (2 * h)
        assert numeric * len(z) == pytest.approx(residual[i], abs=1e-6)
    # Near z = 0 it is the exact log-loss residual sigmoid(z) - y, up to O(z^3).
    small = np.linspace(-0.2, 0.2, 9)
    np.testing.assert_allclose(
        taylor_logistic_residual(small, 1.0), sigmoid(small) - 1.0, atol=1e-3
    )


def test_minibatches_cover_rows_once_and_are_deterministic() -> None:
    batches = minibatches(10, 4, seed=3, epoch=0)
    assert [len(b) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    again = minibatches(10, 4, seed=3, epoch=0)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    other = np.concatenate(minibatches(10, 4, seed=3, epoch=1))
    assert not np.array_equal(np.concatenate(batches), other)
    assert np.array_equal(minibatches(10, None, seed=3, epoch=0)[0], np.arange(10))
    with pytest.raises(VflError, match="batch_size"):
        minibatches(10, 0, seed=3, epoch=0)


def test_fit_logistic_reaches_the_closed_form_taylor_optimum() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 4))
    y = (X @ [1.0, -2.0, 0.5, 0.0] + 0.3 * rng.normal(size=120) > 0).astype(float)
    l2 = 0.05
    fit = fit_logistic(X, y, SGD(lr=1.0, momentum=0.5, l2=l2), 300, None, seed=0)
    # Zero gradient: X1.T (X1 w / 4 - s / 2) / n + l2 * M w = 0, M masks out the intercept.
    n = len(y)
    X1 = np.hstack([X, np.ones((n, 1))])
    M = np.diag([1.0, 1.0, 1.0, 1.0, 0.0])
    w = np.linalg.solve(X1.T @ X1 / (4 * n) + l2 * M, X1.T @ (2 * y - 1) / (2 * n))
    np.testing.assert_allclose(np.append(fit.coef, fit.intercept), w, atol=1e-8)
    assert fit.loss_history[-1] <= fit.loss_history[0]


def test_fit_logistic_auc_close_to_sklearn_on_breast_data() -> None:
    X, y = load_breast_cancer(return_X_y=True)
    y = 1 - y  # malignant = 1, as in sample_data/
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.3, random_state=0, stratify=y
    )
    scaler = StandardScaler().fit(X_train)
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    sklearn_model = LogisticRegression().fit(X_train, y_train)
    sk_auc = roc_auc_score(y_test, sklearn_model.decision_function(X_test))
    opt = make_optimizer("adam", lr=0.05, schedule="step", step_size=100, gamma=0.5)
    fit = fit_logistic(X_train, y_train, opt, epochs=60, batch_size=64, seed=0)
    auc = roc_auc_score(y_test, fit.predict_proba(X_test))
    assert abs(auc - sk_auc) < 0.005, (auc, sk_auc)
    again = fit_logistic(X_train, y_train, make_optimizer(**opt.config()), 60, 64, seed=0)
    np.testing.assert_array_equal(fit.coef, again.coef)


@pytest.fixture(scope="module")
def least_squares() -> tuple[np.ndarray, np.ndarray, LinearRegression]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5)) * [1.0, 2.0, 0.5, 1.0, 3.0]
    y = X @ rng.normal(size=5) + 1.5 + 0.1 * rng.normal(size=200)
    return X, y, LinearRegression().fit(X, y)


@pytest.mark.parametrize(
    ("params", "epochs", "batch_size"),
    [
        ({"name": "sgd", "lr": 0.05}, 600, None),
        ({"name": "sgd", "lr": 0.05, "momentum": 0.9}, 300, None),
        ({"name": "adam", "lr": 0.1, "schedule": "inverse_time", "decay": 0.01}, 1500, None),
        ({"name": "adam", "lr": 0.05, "schedule": "step", "step_size": 200, "gamma": 0.3}, 300, 32),
    ],
)
def test_fit_linear_converges_to_sklearn(
    least_squares: tuple[np.ndarray, np.ndarray, LinearRegression],
    params: dict[str, Any],
    epochs: int,
    batch_size: int | None,
) -> None:
    X, y, sk = least_squares
    fit = fit_linear(X, y, make_optimizer(**params), epochs, batch_size, seed=0)
    np.testing.assert_allclose(fit.coef, sk.coef_, atol=1e-3)
    assert fit.intercept == pytest.approx(sk.intercept_, abs=1e-3)


def test_fit_rejects_bad_data() -> None:
    with pytest.raises(DataError, match="only 0 and 1"):
        fit_logistic(np.zeros((3, 2)), [0, 1, 2], SGD(), 1, None, seed=0)
    with pytest.raises(DataError, match="y has shape"):
        fit_linear(np.zeros((3, 2)), [0.0, 1.0], SGD(), 1, None, seed=0)
    with pytest.raises(VflError, match="epochs"):
        fit_linear(np.zeros((3, 2)), [0.0, 1.0, 2.0], SGD(), 0, None, seed=0)


# --- block replay of full-batch hetero-linear (issue #15: motor's gap) --------------------------


def _correlated_blocks(seed: int = 3) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Three parties whose columns are strongly correlated across parties (as motor's are)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, 9))
    X[:, 3] = 0.97 * X[:, 0] + 0.1 * X[:, 3]  # A's column 0 nearly repeated by P1 and P2
    X[:, 6] = -0.95 * X[:, 0] + 0.2 * X[:, 6]
    X[:, 7] = 0.9 * X[:, 4] + 0.3 * X[:, 7]
    X = (X - X.mean(0)) / X.std(0)
    y = X @ rng.normal(size=9) + 0.3 * rng.normal(size=600)
    y = (y - y.mean()) / y.std()
    ls = np.linalg.lstsq(np.hstack([X, np.ones((600, 1))]), y, rcond=None)[0]
    return [X[:, :3], X[:, 3:6], X[:, 6:]], y, ls


def _excess(fit: Any, blocks: list[np.ndarray], y: np.ndarray, ls: np.ndarray) -> float:
    X = np.hstack(blocks)
    best = np.mean((X @ ls[:-1] + ls[-1] - y) ** 2)
    return float(np.mean((X @ fit.coef + fit.intercept - y) ** 2) / best - 1)


def test_block_newton_on_independent_blocks_reaches_least_squares() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 6))
    X = (X - X.mean(0)) / X.std(0)
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0]) + 0.1 * rng.normal(size=500)
    fit = fit_linear_blocks([X[:, :3], X[:, 3:]], y, epochs=40, tol=1e-12)
    sk = LinearRegression().fit(X, y)
    np.testing.assert_allclose(fit.coef, sk.coef_, atol=1e-4)
    assert fit.intercept == pytest.approx(sk.intercept_, abs=1e-4)
    assert fit.loss_history[-1] <= fit.loss_history[0]


def test_block_newton_stalls_across_correlated_parties_where_block_cg_is_exact() -> None:
    """The finding behind motor's +3.9%: the parties' own-curvature steps are slow when columns
    are correlated across parties, and an exact joint step size along them does not help (the
    problem is conditioning, not the step); conjugate directions are exact in <= p + 1 steps."""
    blocks, y, ls = _correlated_blocks()
    newton = fit_linear_blocks(blocks, y, epochs=10, tol=0.0)
    exact_step = fit_linear_blocks(blocks, y, epochs=10, tol=0.0, method="newton-exact-step")
    cg = fit_linear_blocks(blocks, y, epochs=10, tol=0.0, method="cg")
    assert newton.exchanges == exact_step.exchanges == cg.exchanges == 10
    assert _excess(newton, blocks, y, ls) > 0.01
    assert _excess(exact_step, blocks, y, ls) > 0.01
    assert _excess(cg, blocks, y, ls) < 1e-6
    np.testing.assert_allclose(cg.coef, ls[:-1], atol=1e-4)


def test_block_newton_stops_on_the_decrement_test() -> None:
    blocks, y, _ = _correlated_blocks()
    fit = fit_linear_blocks(blocks, y, epochs=50, tol=3e-4)
    assert fit.converged and fit.exchanges < 50 and len(fit.loss_history) == fit.exchanges
    capped = fit_linear_blocks(blocks, y, epochs=2, tol=3e-4)
    assert not capped.converged and capped.exchanges == 2


def test_block_replay_refuses_unknown_method_and_one_block() -> None:
    blocks, y, _ = _correlated_blocks()
    with pytest.raises(VflError, match="unknown method"):
        fit_linear_blocks(blocks, y, method="bfgs")
    with pytest.raises(VflError, match="at least one passive"):
        fit_linear_blocks(blocks[:1], y)


def test_binary_block_replay_tracks_logistic_regression_and_its_noise_is_seeded() -> None:
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    blocks = [X[:, :10], X[:, 10:]]
    clean = fit_linear_blocks(blocks, y, epochs=10, binary=True)
    sk = LogisticRegression(C=100.0, max_iter=5000).fit(X, y)
    assert roc_auc_score(y, X @ clean.coef + clean.intercept) > roc_auc_score(y, sk.decision_function(X)) - 0.005
    noisy = [fit_linear_blocks(blocks, y, epochs=5, binary=True, label_sigma=0.3, seed=s) for s in (1, 1, 2)]
    np.testing.assert_array_equal(noisy[0].coef, noisy[1].coef)
    assert not np.allclose(noisy[0].coef, noisy[2].coef)
    # A's own gradient is exact: its weights move only through the passive party's noisy steps
    assert np.abs(noisy[0].coef[10:] - noisy[2].coef[10:]).max() > np.abs(noisy[0].coef[:10] - noisy[2].coef[:10]).max()
    with pytest.raises(VflError, match="binary replay"):
        fit_linear_blocks(blocks, y, binary=True, method="cg")


def test_block_cg_from_trial_gradients_is_textbook_pcg() -> None:
    """BlockCG (hetero-linear's default) takes each step from the gradient at the trial point
    w + p: the same iterates as textbook preconditioned CG with the block-diagonal
    preconditioner, computed on the joined matrix."""
    from scipy.linalg import block_diag

    from vfl_cli.models.optim import own_curvature

    blocks, y, _ = _correlated_blocks()
    parts = [np.hstack([blocks[0], np.ones((len(y), 1))]), *blocks[1:]]
    X, n = np.hstack(parts), len(y)
    H, M = X.T @ X / n, block_diag(*[own_curvature(b, 1.0) for b in parts])
    w = np.zeros(X.shape[1])
    r = X.T @ (X @ w - y) / n
    z = np.linalg.solve(M, r)
    p, rz = -z, r @ z
    splits = np.cumsum([b.shape[1] for b in parts])[:-1]
    cgs = [BlockCG().start(b, g) for b, g in zip(parts, np.split(r, splits), strict=True)]
    ws, rz_prev = np.split(w, splits), None
    for _ in range(6):
        # the textbook step
        alpha = rz / (p @ H @ p)
        w, r = w + alpha * p, r + alpha * H @ p
        z = np.linalg.solve(M, r)
        new = r @ z
        # the parties' step: beta, the trial point's gradient, the curvature of the joint direction
        beta, _ = cg_scalars(sum(c.rz for c in cgs), rz_prev, None)
        dirs = [c.direction(beta) for c in cgs]
        scores = sum(b @ d for b, d in zip(parts, dirs, strict=True))
        RZ = sum(c.rz for c in cgs)
        _, step = cg_scalars(RZ, rz_prev, float(scores @ scores) / n)
        trial = np.concatenate(ws) + np.concatenate(dirs)
        g_trial = np.split(X.T @ (X @ trial - y) / n, splits)
        moved = [c.advance(b, wj, g, step, beta) for c, b, wj, g in zip(cgs, parts, ws, g_trial, strict=True)]
        ws, cgs, rz_prev = [m[0] for m in moved], [m[1] for m in moved], RZ
        assert step == pytest.approx(alpha, rel=1e-9)
        np.testing.assert_allclose(np.concatenate(ws), w, atol=1e-10)
        assert sum(c.rz for c in cgs) == pytest.approx(new, rel=1e-7, abs=1e-14)
        p, rz = -z + (new / rz) * p, new
    # the state is JSON and comes back the same
    again = BlockCG.from_state(json.loads(json.dumps(cgs[1].state_dict())))
    assert again == cgs[1] and again.started and not BlockCG().started


def test_block_cg_stop_test_needs_two_small_steps() -> None:
    assert not cg_converged([], 3e-4) and not cg_converged([1e-5], 3e-4)
    assert not cg_converged([0.4, 1.2e-4, 3.8e-4], 3e-4)  # motor's pattern: one small step, then a big one
    assert cg_converged([0.4, 1e-4, 1e-4], 3e-4)
    assert not cg_converged([1e-9, 1e-9], 0.0)  # tol 0: never
    assert cg_scalars(2.0, None, 4.0) == (0.0, 0.5) and cg_scalars(2.0, 4.0, 0.0) == (0.5, 0.0)
