"""vfl_cli.models.nn: gradients, flat parameters, spec validation, training."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from vfl_cli.errors import DataError, VflError
from vfl_cli.models.nn import (
    BinaryHead,
    Dense,
    Dropout,
    Layer,
    LeakyReLU,
    MSEHead,
    ReLU,
    Sequential,
    Sigmoid,
    SoftmaxHead,
    Tanh,
    build_sequential,
    fit,
    make_head,
    make_optimizers,
    predict,
)
from vfl_cli.models.optim import Optimizer, make_optimizer

EPS = 1e-6
shapes = st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 4))
seeds = st.integers(0, 2**16)


def _numeric_grad(f: Callable[[], float], array: np.ndarray) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to ``array`` (changed in place)."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + EPS
        up = f()
        array[index] = saved - EPS
        down = f()
        array[index] = saved
        grad[index] = (up - down) / (2 * EPS)
    return grad


def _check_layer(
    layer: Layer, x: np.ndarray, seed: int, reseed: Callable[[], None] = lambda: None
) -> None:
    """Check input and parameter gradients of ``sum(forward(x) * R)`` for a random R."""
    reseed()
    out = layer.forward(x)
    weights = np.random.default_rng(seed + 1).normal(size=out.shape)

    def scalar() -> float:
        reseed()
        return float(np.sum(layer.forward(x) * weights))

    reseed()
    layer.forward(x)
    grad_in = layer.backward(weights)
    analytic = [g.copy() for g in layer.grads()]
    np.testing.assert_allclose(grad_in, _numeric_grad(scalar, x), rtol=1e-5, atol=1e-7)
    for param, grad in zip(layer.params(), analytic, strict=True):
        np.testing.assert_allclose(grad, _numeric_grad(scalar, param), rtol=1e-5, atol=1e-7)


def _inputs(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, d))
    # Keep away from ReLU's kink so central differences are valid.
    return np.where(np.abs(x) < 0.05, 0.1, x)


# --- gradient checks ----------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(shapes, seeds, st.sampled_from(["xavier", "he"]))
def test_dense_gradients(shape: tuple[int, int, int], seed: int, init: str) -> None:
    n, d, k = shape
    layer = Dense(d, k, init=init, seed=seed)
    layer.b[...] = np.random.default_rng(seed + 2).normal(size=k)
    _check_layer(layer, _inputs(n, d, seed), seed)


@settings(max_examples=15, deadline=None)
@given(shapes, seeds, st.sampled_from([ReLU, LeakyReLU, Tanh, Sigmoid]))
def test_activation_gradients(shape: tuple[int, int, int], seed: int, cls: type[Layer]) -> None:
    n, d, _ = shape
    _check_layer(cls(), _inputs(n, d, seed) * 3, seed)


@settings(max_examples=15, deadline=None)
@given(shapes, seeds, st.floats(0.0, 0.9))
def test_dropout_gradients_with_a_fixed_mask(
    shape: tuple[int, int, int], seed: int, rate: float
) -> None:
    n, d, _ = shape
    layer = Dropout(rate, rng=seed)

    def reseed() -> None:
        layer.rng = np.random.default_rng(seed)

    _check_layer(layer, _inputs(n, d, seed), seed, reseed)


def _check_head(head_name: str, out: np.ndarray, y: np.ndarray) -> None:
    head = make_head(head_name)
    loss, grad = head.loss_grad(out, y)
    assert np.isfinite(loss) and grad.shape == out.shape
    numeric = _numeric_grad(lambda: head.loss_grad(out, y)[0], out)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), seeds)
def test_binary_head_gradient(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    _check_head("binary", rng.normal(scale=3, size=(n, 1)), rng.integers(0, 2, n).astype(float))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), st.integers(2, 5), seeds)
def test_softmax_head_gradient(n: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    _check_head("multiclass", rng.normal(scale=3, size=(n, k)), rng.integers(0, k, n).astype(float))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 8), seeds)
def test_mse_head_gradient(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    _check_head("regression", rng.normal(size=(n, 1)), rng.normal(size=n))


@settings(max_examples=10, deadline=None)
@given(shapes, seeds)
def test_network_gradient_end_to_end(shape: tuple[int, int, int], seed: int) -> None:
    n, d, k = shape
    spec = [{"type": "dense", "units": 4}, {"type": "tanh"}, {"type": "dense", "units": k + 1}]
    model = build_sequential(spec, d, seed=seed)
    x = _inputs(n, d, seed)
    y = np.random.default_rng(seed).integers(0, k + 1, n).astype(float)
    head = SoftmaxHead()
    flat = model.get_flat()

    def loss_at(vec: np.ndarray) -> float:
        model.set_flat(vec)
        return head.loss(model.forward(x), y)

    model.set_flat(flat)
    _, grad = head.loss_grad(model.forward(x), y)
    model.backward(grad)
    analytic = model.get_flat_grads()
    numeric = _numeric_grad(lambda: loss_at(flat), flat)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_binary_head_is_stable_on_extreme_logits() -> None:
    loss, grad = BinaryHead().loss_grad(np.array([[800.0], [-800.0]]), np.array([0.0, 1.0]))
    assert loss == pytest.approx(800.0)
    np.testing.assert_allclose(grad[:, 0], [0.5, -0.5])
    loss, _ = SoftmaxHead().loss_grad(np.array([[1000.0, 0.0]]), np.array([1.0]))
    assert loss == pytest.approx(1000.0)


def test_heads_known_answers() -> None:
    loss, _ = BinaryHead().loss_grad(np.zeros((2, 1)), np.array([0.0, 1.0]))
    assert loss == pytest.approx(np.log(2))
    loss, _ = SoftmaxHead().loss_grad(np.zeros((1, 4)), np.array([2.0]))
    assert loss == pytest.approx(np.log(4))
    loss, grad = MSEHead().loss_grad(np.array([[3.0]]), np.array([1.0]))
    assert loss == pytest.approx(2.0) and grad[0, 0] == pytest.approx(2.0)


# --- flat parameters, spec, modes ---------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 6), st.lists(st.integers(1, 5), min_size=1, max_size=3), seeds)
def test_get_flat_set_flat_round_trip(d: int, widths: list[int], seed: int) -> None:
    spec: list[dict[str, object]] = []
    for units in widths:
        spec += [{"type": "dense", "units": units}, {"type": "relu"}]
    model = build_sequential(spec, d, seed=seed)
    flat = model.get_flat()
    assert flat.dtype == np.float64 and flat.shape == (model.n_params,)
    new = np.random.default_rng(seed).normal(size=flat.size)
    live = model.params()
    model.set_flat(new)
    np.testing.assert_array_equal(model.get_flat(), new)
    assert model.params()[0] is live[0]  # written in place
    rebuilt = build_sequential(model.spec, d, seed=seed + 1)  # same architecture from its spec
    rebuilt.set_flat(model.get_flat())
    x = _inputs(3, d, seed)
    np.testing.assert_array_equal(rebuilt.forward(x), model.forward(x))


def test_set_flat_refuses_wrong_length_and_nan() -> None:
    model = build_sequential([{"type": "dense", "units": 2}], 3)
    before = model.get_flat()
    with pytest.raises(VflError, match="has 8 parameters"):
        model.set_flat(np.zeros(7))
    with pytest.raises(VflError, match="NaN"):
        model.set_flat(np.full(8, np.nan))
    np.testing.assert_array_equal(model.get_flat(), before)


def test_build_is_deterministic_and_counts_parameters() -> None:
    spec = [
        {"type": "dense", "units": 16, "init": "he"},
        {"type": "relu"},
        {"type": "dense", "units": 1},
    ]
    a, b = build_sequential(spec, 30, seed=7), build_sequential(spec, 30, seed=7)
    np.testing.assert_array_equal(a.get_flat(), b.get_flat())
    assert a.n_params == 30 * 16 + 16 + 16 + 1
    assert a.out_dim == 1
    assert not np.array_equal(a.get_flat(), build_sequential(spec, 30, seed=8).get_flat())


@pytest.mark.parametrize(
    "spec, message",
    [
        ([], "non-empty list"),
        (
            [{"type": "conv"}],
            r"layer 0: unknown type 'conv'; allowed types: dense, relu, tanh, sigmoid, dropout, leaky_relu",
        ),
        ([{"units": 3}], "layer 0: unknown type None"),
        (
            [{"type": "dense", "units": 2}, {"type": "dropout"}],
            r"layer 1 \(dropout\): missing field 'rate'; allowed fields: rate",
        ),
        (
            [{"type": "relu", "units": 3}],
            r"layer 0 \(relu\): unknown field 'units'; allowed fields: none",
        ),
        ([{"type": "dense", "units": 0}], r"layer 0 \(dense\): units must be a whole number >= 1"),
        (
            [{"type": "dense", "units": 2, "init": "glorot"}],
            r"layer 0 \(dense\): unknown init 'glorot'; allowed: xavier, he, zeros",
        ),
        (
            [{"type": "relu"}, {"type": "dropout", "rate": 1.0}],
            r"layer 1 \(dropout\): rate must be a number in \[0, 1\)",
        ),
        (["dense"], "layer 0: must be a dict"),
    ],
)
def test_spec_errors_name_the_layer_and_what_is_allowed(spec: list[object], message: str) -> None:
    with pytest.raises(VflError, match=message):
        build_sequential(spec, 4)  # type: ignore[arg-type]


def test_dropout_is_off_in_eval_mode_and_scales_in_training() -> None:
    layer = Dropout(0.5, rng=0)
    x = np.ones((2000, 10))
    np.testing.assert_array_equal(layer.forward(x, train=False), x)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), np.ones_like(x))
    out = layer.forward(x, train=True)
    assert set(np.unique(out)) == {0.0, 2.0}
    assert out.mean() == pytest.approx(1.0, abs=0.03)
    model = build_sequential([{"type": "dense", "units": 8}, {"type": "dropout", "rate": 0.5}], 3)
    xs = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_array_equal(model.forward(xs, train=False), model.forward(xs, train=False))
    assert not np.array_equal(model.forward(xs, train=True), model.forward(xs, train=False))


def test_backward_before_forward_and_bad_shapes_are_refused() -> None:
    with pytest.raises(VflError, match="backward called before forward"):
        Dense(2, 1, seed=0).backward(np.zeros((1, 1)))
    layer = Dense(2, 1, seed=0)
    layer.forward(np.zeros((3, 2)))
    with pytest.raises(VflError, match=r"gradient has shape \(2, 1\)"):
        layer.backward(np.zeros((2, 1)))
    with pytest.raises(DataError, match="expects 4 input columns, got 3"):
        build_sequential([{"type": "dense", "units": 1}], 4).forward(np.zeros((1, 3)))
    with pytest.raises(VflError, match="unknown head 'poisson'"):
        make_head("poisson")


# --- training -----------------------------------------------------------------------------


def _breast() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = load_breast_cancer(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(
        X, y.astype(float), test_size=0.3, random_state=0, stratify=y
    )
    scaler = StandardScaler().fit(X_tr)
    return scaler.transform(X_tr), scaler.transform(X_te), y_tr, y_te


MLP = [
    {"type": "dense", "units": 16, "init": "he"},
    {"type": "relu"},
    {"type": "dropout", "rate": 0.1},
    {"type": "dense", "units": 1},
]


def test_mlp_learns_breast_cancer_and_is_deterministic() -> None:
    X_tr, X_te, y_tr, y_te = _breast()
    runs = []
    for _ in range(2):
        model = build_sequential(MLP, X_tr.shape[1], seed=3)
        history = fit(
            model, "binary", X_tr, y_tr, lambda: make_optimizer("adam", lr=0.01), 15, 32, seed=5
        )
        runs.append((history, model.get_flat()))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert runs[0][0][-1] < runs[0][0][0]
    auc = roc_auc_score(y_te, predict(model, "binary", X_te))
    assert auc > 0.97


def test_fit_resumes_exactly_with_saved_optimiser_state() -> None:
    X_tr, _, y_tr, _ = _breast()
    def factory() -> Optimizer:
        return make_optimizer("adam", lr=0.01)

    whole = build_sequential(MLP, X_tr.shape[1], seed=1)
    fit(whole, "binary", X_tr, y_tr, factory, 4, 64, seed=2)
    part = build_sequential(MLP, X_tr.shape[1], seed=1)
    opts = make_optimizers(part, factory)
    fit(part, "binary", X_tr, y_tr, factory, 2, 64, seed=2, optimizers=opts)
    states, flat = [o.state_dict() for o in opts], part.get_flat()
    resumed = build_sequential(MLP, X_tr.shape[1], seed=99)
    resumed.set_flat(flat)
    restored = make_optimizers(resumed, factory)
    for opt, state in zip(restored, states, strict=True):
        opt.load_state_dict(state)
    fit(resumed, "binary", X_tr, y_tr, factory, 2, 64, seed=2, optimizers=restored, start_epoch=2)
    np.testing.assert_allclose(resumed.get_flat(), whole.get_flat(), rtol=0, atol=1e-12)


def test_softmax_head_learns_three_classes() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 3.0], [3.0, -2.0], [-3.0, -2.0]])
    y = rng.integers(0, 3, 300)
    X = centres[y] + rng.normal(size=(300, 2))
    spec = [{"type": "dense", "units": 8}, {"type": "tanh"}, {"type": "dense", "units": 3}]
    model = build_sequential(spec, 2, seed=0)
    history = fit(
        model, "multiclass", X, y, lambda: make_optimizer("adam", lr=0.05), 20, 32, seed=0
    )
    proba = predict(model, "multiclass", X)
    assert proba.shape == (300, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert np.mean(proba.argmax(axis=1) == y) > 0.95
    assert history[-1] < 0.3


def test_regression_head_fits_a_line() -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.3
    model = build_sequential([{"type": "dense", "units": 1, "init": "zeros"}], 3)
    fit(model, "regression", X, y, lambda: make_optimizer("sgd", lr=0.1), 30, 20, seed=0)
    np.testing.assert_allclose(model.get_flat(), [1.0, -2.0, 0.5, 0.3], atol=1e-3)


def test_fit_refuses_bad_input() -> None:
    model = build_sequential([{"type": "dense", "units": 1}], 2)
    def sgd() -> Optimizer:
        return make_optimizer("sgd")

    with pytest.raises(DataError, match="labels 0 and 1"):
        fit(model, "binary", np.zeros((3, 2)), [0, 1, 2], sgd, 1, None, 0)
    with pytest.raises(DataError, match=r"y has shape \(2,\), expected \(3,\)"):
        fit(model, "binary", np.zeros((3, 2)), [0, 1], sgd, 1, None, 0)
    with pytest.raises(VflError, match="epochs must be"):
        fit(model, "binary", np.zeros((3, 2)), [0, 1, 1], sgd, 0, None, 0)
    with pytest.raises(VflError, match="multiclass head needs a network with >= 2 outputs"):
        fit(model, "multiclass", np.zeros((3, 2)), [0, 1, 1], sgd, 1, None, 0)
    with pytest.raises(VflError, match="got 1 optimisers for 2 parameter arrays"):
        pass_ = make_optimizers(model, sgd)
        fit(model, "binary", np.zeros((3, 2)), [0, 1, 1], sgd, 1, None, 0, optimizers=pass_[:1])


def test_sequential_needs_layers() -> None:
    with pytest.raises(VflError, match="at least one layer"):
        Sequential([])
