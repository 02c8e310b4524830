"""Small numpy neural networks: layers, heads (losses), a spec format and a plaintext trainer.

These are the plaintext building blocks of the protocols that train networks: the bottom and top
models of split neural networks, and the shared model of multi-node (horizontal) training in
:mod:`vfl_cli.hfl`. Nothing here is sent to a peer or touches a file; a protocol decides what
leaves a party (a representation, a gradient, a delta of :meth:`Sequential.get_flat`).

Conventions:

* Everything is float64. A batch is a matrix of shape ``(n, features)``.
* Every layer keeps its parameters and their gradients as explicit arrays (:meth:`Layer.params`,
  :meth:`Layer.grads`). ``forward`` caches what ``backward`` needs; ``backward(grad_out)`` fills
  the parameter gradients (overwriting, not accumulating) and returns the gradient with respect
  to the layer's input.
* A :class:`Sequential` network's parameters can be read and written as one flat float64 vector
  (:meth:`Sequential.get_flat` / :meth:`Sequential.set_flat`), in layer order, each array in C
  order. Deltas, aggregation and model updates use that vector.
* A head turns the network output (logits) into a loss and the gradient of the *mean* loss over
  the batch with respect to that output, so parameter gradients are already batch means.
* Randomness (initialisation, dropout masks) comes from seeds, so a build and a training run are
  reproducible; :func:`fit` re-seeds dropout from ``(seed, epoch, layer)`` so any epoch can be
  recomputed on its own.

Spec format (what a job config holds), a list of layer dicts::

    [{"type": "dense", "units": 16, "init": "he"}, {"type": "relu"},
     {"type": "dropout", "rate": 0.1}, {"type": "dense", "units": 1}]

Logistic regression is ``[{"type": "dense", "units": 1}]`` with the ``binary`` head.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from vfl_cli.checks import np_whole
from vfl_cli.errors import DataError, VflError
from vfl_cli.models.optim import Optimizer
from vfl_cli.models.reference import minibatches, sigmoid

__all__ = [
    "HEADS",
    "INITS",
    "LAYER_FIELDS",
    "BinaryHead",
    "Dense",
    "Dropout",
    "Head",
    "Layer",
    "LeakyReLU",
    "MSEHead",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "SoftmaxHead",
    "Tanh",
    "build_sequential",
    "fit",
    "make_head",
    "make_optimizers",
    "predict",
]

INITS = ("xavier", "he", "zeros")

# Allowed fields per layer type: (required, optional). "type" itself is always required.
LAYER_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "dense": (("units",), ("init",)),
    "relu": ((), ()),
    "tanh": ((), ()),
    "sigmoid": ((), ()),
    "dropout": (("rate",), ()),
    "leaky_relu": ((), ("slope",)),
}


def _as_matrix(x: Any, name: str) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2:
        raise DataError(
            f"{name} must be a 2-D matrix (samples x features), got shape {array.shape}"
        )
    return array


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


# --- layers -------------------------------------------------------------------------------


class Layer(ABC):
    """One layer: ``forward`` caches its input, ``backward`` returns the input gradient."""

    kind: ClassVar[str]

    def params(self) -> list[np.ndarray]:
        """The layer's parameter arrays (the live arrays, not copies); empty if none."""
        return []

    def grads(self) -> list[np.ndarray]:
        """Gradients of the last ``backward``, one per parameter array, same shapes."""
        return []

    def penalty_masks(self) -> list[bool]:
        """Per parameter array: whether L1/L2 penalties apply (False for biases)."""
        return []

    def out_dim(self, in_dim: int) -> int:
        """Width of the output given the input width (unchanged unless the layer says)."""
        return in_dim

    def spec(self) -> dict[str, Any]:
        """The spec dict that builds this layer (see :func:`build_sequential`)."""
        return {"type": self.kind}

    @abstractmethod
    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        """Output of the layer for the batch ``x``; caches what ``backward`` needs."""

    @abstractmethod
    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Gradient with respect to the input, given the gradient with respect to the output.

        Raises:
            VflError: If called before ``forward`` or with a gradient of the wrong shape.
        """

    def _check_backward(self, cached: np.ndarray | None, grad_out: np.ndarray) -> np.ndarray:
        if cached is None:
            raise VflError(f"{self.kind} layer: backward called before forward")
        grad = np.asarray(grad_out, dtype=np.float64)
        if grad.shape != cached.shape:
            raise VflError(
                f"{self.kind} layer: gradient has shape {grad.shape}, "
                f"the layer's output has shape {cached.shape}"
            )
        return grad


class Dense(Layer):
    """Fully connected layer ``x @ W + b``.

    Args:
        in_dim: Input width, >= 1.
        out_dim: Output width (units), >= 1.
        init: ``xavier`` (Glorot uniform, for tanh/sigmoid/linear), ``he`` (normal with
            variance ``2 / in_dim``, for ReLU) or ``zeros``. Biases start at zero.
        seed: Seed or generator of the initial weights.

    Raises:
        VflError: If a width is not a whole number >= 1 or the init is unknown.
    """

    kind = "dense"

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        init: str = "xavier",
        seed: int | np.random.Generator | None = None,
    ) -> None:
        for name, value in (("in_dim", in_dim), ("units", out_dim)):
            if not np_whole(value, 1):
                raise VflError(f"dense layer: {name} must be a whole number >= 1, got {value!r}")
        if init not in INITS:
            raise VflError(f"dense layer: unknown init {init!r}; allowed: {', '.join(INITS)}")
        self.in_dim, self.units, self.init = int(in_dim), int(out_dim), init
        rng = _rng(seed)
        if init == "xavier":
            limit = math.sqrt(6.0 / (self.in_dim + self.units))
            weights = rng.uniform(-limit, limit, size=(self.in_dim, self.units))
        elif init == "he":
            weights = rng.normal(0.0, math.sqrt(2.0 / self.in_dim), size=(self.in_dim, self.units))
        else:
            weights = np.zeros((self.in_dim, self.units))
        self.W: np.ndarray = weights.astype(np.float64)
        self.b: np.ndarray = np.zeros(self.units)
        self.dW: np.ndarray = np.zeros_like(self.W)
        self.db: np.ndarray = np.zeros_like(self.b)
        self._x: np.ndarray | None = None
        self._out_shape: tuple[int, int] | None = None

    def params(self) -> list[np.ndarray]:
        return [self.W, self.b]

    def grads(self) -> list[np.ndarray]:
        return [self.dW, self.db]

    def penalty_masks(self) -> list[bool]:
        return [True, False]

    def out_dim(self, in_dim: int) -> int:
        return self.units

    def spec(self) -> dict[str, Any]:
        return {"type": "dense", "units": self.units, "init": self.init}

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        x = _as_matrix(x, "dense layer input")
        if x.shape[1] != self.in_dim:
            raise DataError(f"dense layer expects {self.in_dim} input columns, got {x.shape[1]}")
        self._x = x
        out: np.ndarray = x @ self.W + self.b
        self._out_shape = (x.shape[0], self.units)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        if self._x is None or self._out_shape is None:
            raise VflError("dense layer: backward called before forward")
        grad = np.asarray(grad_out, dtype=np.float64)
        if grad.shape != self._out_shape:
            raise VflError(
                f"dense layer: gradient has shape {grad.shape}, "
                f"the layer's output has shape {self._out_shape}"
            )
        # In place, so references handed out by grads() stay valid.
        self.dW[...] = self._x.T @ grad
        self.db[...] = grad.sum(axis=0)
        grad_in: np.ndarray = grad @ self.W.T
        return grad_in


class ReLU(Layer):
    """``max(x, 0)``; the gradient at exactly 0 is taken as 0."""

    kind = "relu"

    def __init__(self) -> None:
        self._x: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        self._x = np.asarray(x, dtype=np.float64)
        out: np.ndarray = np.maximum(self._x, 0.0)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad = self._check_backward(self._x, grad_out)
        x = self._x if self._x is not None else grad
        out: np.ndarray = grad * (x > 0.0)
        return out


class LeakyReLU(Layer):
    """``x`` for ``x > 0``, else ``slope x`` (default 0.01): unlike ReLU a unit never stops learning
    (a ReLU whose inputs are all negative has zero gradient for good)."""

    kind = "leaky_relu"

    def __init__(self, slope: float = 0.01) -> None:
        if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not 0.0 < float(slope) < 1.0:
            raise VflError(f"slope must be a number in (0, 1), got {slope!r}")
        self.slope = float(slope)
        self._x: np.ndarray | None = None

    def spec(self) -> dict[str, Any]:
        return {"type": self.kind, "slope": self.slope}

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        self._x = np.asarray(x, dtype=np.float64)
        out: np.ndarray = np.where(self._x > 0.0, self._x, self.slope * self._x)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad = self._check_backward(self._x, grad_out)
        x = self._x if self._x is not None else grad
        out: np.ndarray = grad * np.where(x > 0.0, 1.0, self.slope)
        return out


class Tanh(Layer):
    """Hyperbolic tangent."""

    kind = "tanh"

    def __init__(self) -> None:
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        self._y = np.tanh(np.asarray(x, dtype=np.float64))
        return self._y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad = self._check_backward(self._y, grad_out)
        y = self._y if self._y is not None else grad
        out: np.ndarray = grad * (1.0 - y * y)
        return out


class Sigmoid(Layer):
    """The logistic function, computed without overflow."""

    kind = "sigmoid"

    def __init__(self) -> None:
        self._y: np.ndarray | None = None

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        self._y = sigmoid(np.asarray(x, dtype=np.float64))
        return self._y

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad = self._check_backward(self._y, grad_out)
        y = self._y if self._y is not None else grad
        out: np.ndarray = grad * y * (1.0 - y)
        return out


class Dropout(Layer):
    """Inverted dropout: in training, zero each unit with probability ``rate`` and scale the
    survivors by ``1 / (1 - rate)``; in eval mode (``train=False``) the identity.

    Args:
        rate: Probability of dropping a unit, in ``[0, 1)``.
        rng: Seed or generator of the masks.

    Raises:
        VflError: If the rate is outside ``[0, 1)``.
    """

    kind = "dropout"

    def __init__(self, rate: float, rng: int | np.random.Generator | None = None) -> None:
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float, np.integer, np.floating))
            or not 0.0 <= float(rate) < 1.0
        ):
            raise VflError(f"dropout layer: rate must be a number in [0, 1), got {rate!r}")
        self.rate = float(rate)
        self.rng = _rng(rng)
        self._mask: np.ndarray | None = None

    def spec(self) -> dict[str, Any]:
        return {"type": "dropout", "rate": self.rate}

    def forward(self, x: np.ndarray, train: bool = True) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not train or self.rate == 0.0:
            self._mask = np.ones_like(x)
            return x
        keep = 1.0 - self.rate
        self._mask = (self.rng.random(x.shape) < keep) / keep
        out: np.ndarray = x * self._mask
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        grad = self._check_backward(self._mask, grad_out)
        mask = self._mask if self._mask is not None else grad
        out: np.ndarray = grad * mask
        return out


class Sequential:
    """Layers applied in order, with flat access to all parameters.

    Args:
        layers: The layers, first applied first.
        in_dim: Input width, used to check inputs and to rebuild the network from
            :attr:`spec`; None if unknown.

    Raises:
        VflError: If there are no layers.
    """

    def __init__(self, layers: Sequence[Layer], in_dim: int | None = None) -> None:
        if not layers:
            raise VflError("a network needs at least one layer")
        self.layers: list[Layer] = list(layers)
        self.in_dim = in_dim

    @property
    def spec(self) -> list[dict[str, Any]]:
        """The spec list that rebuilds this architecture with :func:`build_sequential`."""
        return [layer.spec() for layer in self.layers]

    @property
    def out_dim(self) -> int | None:
        """Output width, if the input width is known."""
        if self.in_dim is None:
            return None
        width = self.in_dim
        for layer in self.layers:
            width = layer.out_dim(width)
        return width

    def forward(self, X: np.ndarray, train: bool = True) -> np.ndarray:
        """Network output for the batch ``X``.

        Args:
            X: Inputs, shape ``(n, in_dim)``.
            train: Training mode (dropout active) or eval mode (dropout off).

        Returns:
            The output (logits for a classification head), shape ``(n, out_dim)``.

        Raises:
            DataError: If ``X`` is not a matrix of the expected width.
        """
        out = _as_matrix(X, "X")
        if self.in_dim is not None and out.shape[1] != self.in_dim:
            raise DataError(f"the network expects {self.in_dim} input columns, got {out.shape[1]}")
        for layer in self.layers:
            out = layer.forward(out, train=train)
        return out

    def backward(self, grad_out: np.ndarray) -> np.ndarray:
        """Back-propagate from the output gradient; fills every layer's gradients.

        Args:
            grad_out: Gradient of the loss with respect to the last ``forward`` output.

        Returns:
            The gradient with respect to the network input (what a split network's bottom
            model needs from the top model).

        Raises:
            VflError: If called before ``forward`` or the gradient shape is wrong.
        """
        grad = np.asarray(grad_out, dtype=np.float64)
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return grad

    def params(self) -> list[np.ndarray]:
        """All parameter arrays in flat-vector order (live arrays)."""
        return [p for layer in self.layers for p in layer.params()]

    def grads(self) -> list[np.ndarray]:
        """Gradients of the last ``backward``, aligned with :meth:`params`."""
        return [g for layer in self.layers for g in layer.grads()]

    def penalty_masks(self) -> list[bool]:
        """Per parameter array: True where L1/L2 penalties apply (weights, not biases)."""
        return [m for layer in self.layers for m in layer.penalty_masks()]

    @property
    def n_params(self) -> int:
        """Number of scalar parameters (the length of :meth:`get_flat`)."""
        return int(sum(p.size for p in self.params()))

    def get_flat(self) -> np.ndarray:
        """All parameters as one new float64 vector (layer order, each array in C order)."""
        params = self.params()
        if not params:
            return np.zeros(0)
        return np.concatenate([p.ravel() for p in params]).astype(np.float64)

    def get_flat_grads(self) -> np.ndarray:
        """All gradients of the last ``backward`` as one vector, aligned with :meth:`get_flat`."""
        grads = self.grads()
        if not grads:
            return np.zeros(0)
        return np.concatenate([g.ravel() for g in grads]).astype(np.float64)

    def set_flat(self, vec: np.ndarray) -> None:
        """Overwrite all parameters from one vector (the inverse of :meth:`get_flat`).

        The arrays are written in place, so references from :meth:`params` stay valid.

        Args:
            vec: Float vector of length :attr:`n_params`.

        Raises:
            VflError: If the length is wrong or a value is not finite; nothing is changed then.
        """
        flat = np.asarray(vec, dtype=np.float64)
        if flat.ndim != 1 or flat.size != self.n_params:
            raise VflError(
                f"parameter vector has shape {flat.shape}, this network has {self.n_params} "
                "parameters; was it made for another architecture or input width?"
            )
        if not np.all(np.isfinite(flat)):
            raise VflError("parameter vector contains NaN or infinite values")
        start = 0
        for p in self.params():
            p[...] = flat[start : start + p.size].reshape(p.shape)
            start += p.size


# --- heads --------------------------------------------------------------------------------


class Head(ABC):
    """A loss on the network output: ``loss_grad`` gives the mean loss and its gradient."""

    name: ClassVar[str]

    @abstractmethod
    def check_targets(self, y: Any, n_outputs: int | None = None) -> np.ndarray:
        """Validate targets and return them as a numpy vector.

        Raises:
            DataError: If the targets do not fit this head.
        """

    @abstractmethod
    def loss_grad(self, output: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean loss over the batch and its gradient with respect to ``output``.

        Args:
            output: Network output, shape ``(n, k)``.
            y: Targets, shape ``(n,)``.

        Returns:
            ``(loss, grad)`` with ``grad`` of the same shape as ``output``.
        """

    @abstractmethod
    def predict(self, output: np.ndarray) -> np.ndarray:
        """Predictions from the network output (probabilities or values)."""

    def loss(self, output: np.ndarray, y: np.ndarray) -> float:
        """Mean loss only."""
        return self.loss_grad(output, y)[0]

    @staticmethod
    def _check_output(output: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = _as_matrix(output, "network output")
        if y.shape != (out.shape[0],):
            raise DataError(f"targets have shape {y.shape}, expected ({out.shape[0]},)")
        return out


def _vector(y: Any) -> np.ndarray:
    target = np.asarray(y, dtype=np.float64)
    if target.ndim != 1:
        raise DataError(f"targets must be one-dimensional, got shape {target.shape}")
    if not np.all(np.isfinite(target)):
        raise DataError("targets contain NaN or infinite values")
    return target


class BinaryHead(Head):
    """Sigmoid + binary cross-entropy on one logit column, computed on the logits.

    ``loss = mean(softplus(z) - y z)`` (equal to ``-y log p - (1 - y) log(1 - p)`` with
    ``p = sigmoid(z)``, but finite for any ``z``); gradient ``(sigmoid(z) - y) / n``.
    """

    name = "binary"

    def check_targets(self, y: Any, n_outputs: int | None = None) -> np.ndarray:
        target = _vector(y)
        if not np.all((target == 0.0) | (target == 1.0)):
            raise DataError("the binary head needs labels 0 and 1 only")
        if n_outputs is not None and n_outputs != 1:
            raise VflError(
                f"the binary head needs a network with 1 output, this one has {n_outputs}"
            )
        return target

    def loss_grad(self, output: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        y = np.asarray(y, dtype=np.float64)
        out = self._check_output(output, y)
        if out.shape[1] != 1:
            raise VflError(f"the binary head needs 1 output column, got {out.shape[1]}")
        z = out[:, 0]
        # softplus(z) = max(z, 0) + log1p(exp(-|z|)): stable for any z.
        losses = np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z))) - y * z
        grad = ((sigmoid(z) - y) / len(y))[:, None]
        return float(np.mean(losses)), grad

    def predict(self, output: np.ndarray) -> np.ndarray:
        out = _as_matrix(output, "network output")
        return sigmoid(out[:, 0])


class SoftmaxHead(Head):
    """Softmax + cross-entropy over ``k`` logit columns, integer labels ``0 .. k-1``.

    ``loss = mean(logsumexp(z) - z[y])``; gradient ``(softmax(z) - onehot(y)) / n``.
    """

    name = "multiclass"

    def check_targets(self, y: Any, n_outputs: int | None = None) -> np.ndarray:
        target = _vector(y)
        if not np.all(target == np.round(target)) or np.any(target < 0):
            raise DataError("the multiclass head needs integer class labels 0 .. k-1")
        if n_outputs is not None:
            if n_outputs < 2:
                raise VflError(
                    f"the multiclass head needs a network with >= 2 outputs, this one has {n_outputs}"
                )
            if target.size and target.max() >= n_outputs:
                raise DataError(
                    f"label {int(target.max())} found but the network has only {n_outputs} outputs"
                )
        return target

    @staticmethod
    def _log_softmax(z: np.ndarray) -> np.ndarray:
        shifted = z - z.max(axis=1, keepdims=True)
        out: np.ndarray = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return out

    def loss_grad(self, output: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        y = np.asarray(y)
        out = self._check_output(output, y)
        labels = y.astype(np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= out.shape[1]):
            raise DataError(f"labels must be in 0 .. {out.shape[1] - 1}")
        log_p = self._log_softmax(out)
        rows = np.arange(len(labels))
        loss = -float(np.mean(log_p[rows, labels]))
        grad = np.exp(log_p)
        grad[rows, labels] -= 1.0
        return loss, grad / len(labels)

    def predict(self, output: np.ndarray) -> np.ndarray:
        proba: np.ndarray = np.exp(self._log_softmax(_as_matrix(output, "network output")))
        return proba


class MSEHead(Head):
    """Squared error on one output column: ``loss = mean((z - y)^2) / 2``, grad ``(z - y) / n``."""

    name = "regression"

    def check_targets(self, y: Any, n_outputs: int | None = None) -> np.ndarray:
        if n_outputs is not None and n_outputs != 1:
            raise VflError(
                f"the regression head needs a network with 1 output, this one has {n_outputs}"
            )
        return _vector(y)

    def loss_grad(self, output: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        y = np.asarray(y, dtype=np.float64)
        out = self._check_output(output, y)
        if out.shape[1] != 1:
            raise VflError(f"the regression head needs 1 output column, got {out.shape[1]}")
        residual = out[:, 0] - y
        return float(0.5 * np.mean(residual**2)), (residual / len(y))[:, None]

    def predict(self, output: np.ndarray) -> np.ndarray:
        return _as_matrix(output, "network output")[:, 0].copy()


HEADS: dict[str, type[Head]] = {
    "binary": BinaryHead,
    "multiclass": SoftmaxHead,
    "regression": MSEHead,
}


def make_head(name: str | Head) -> Head:
    """A head from its name (``binary``, ``multiclass``, ``regression``); heads pass through.

    Raises:
        VflError: If the name is unknown.
    """
    if isinstance(name, Head):
        return name
    if name not in HEADS:
        raise VflError(f"unknown head {name!r}; allowed: {', '.join(HEADS)}")
    return HEADS[name]()


# --- spec ---------------------------------------------------------------------------------


def _spec_error(index: int, kind: str | None, message: str) -> VflError:
    where = f"layer {index}" + (f" ({kind})" if kind else "")
    return VflError(f"network spec, {where}: {message}")


def build_sequential(spec: Sequence[Mapping[str, Any]], in_dim: int, seed: int = 0) -> Sequential:
    """Build a network from a spec list (see the module docstring).

    Layer ``i`` draws its initial weights (or dropout masks) from ``default_rng([seed, i])``,
    so the same spec, width and seed always give the same network.

    Args:
        spec: One dict per layer with ``type`` in :data:`LAYER_FIELDS` and that type's fields:
            ``dense``: ``units`` (required), ``init`` (``xavier``, ``he`` or ``zeros``);
            ``dropout``: ``rate`` (required); ``relu``, ``tanh``, ``sigmoid``: none.
        in_dim: Number of input columns.
        seed: Seed of initialisation and dropout.

    Returns:
        The network.

    Raises:
        VflError: If the spec is not a non-empty list of dicts, a type or field is unknown, a
            required field is missing or a value is out of range; the message names the layer
            index and what is allowed.
    """
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or len(spec) == 0:
        raise VflError(
            "network spec must be a non-empty list of layer dicts, e.g. "
            '[{"type": "dense", "units": 16}, {"type": "relu"}, {"type": "dense", "units": 1}]'
        )
    if not np_whole(in_dim, 1):
        raise VflError(f"input width must be a whole number >= 1, got {in_dim!r}")
    layers: list[Layer] = []
    width = int(in_dim)
    for index, item in enumerate(spec):
        kind = _layer_kind(index, item)
        try:
            layer = _make_layer(kind, item, width, np.random.default_rng([seed, index]))
        except VflError as exc:
            raise _spec_error(index, kind, str(exc).split(": ", 1)[-1]) from exc
        width = layer.out_dim(width)
        layers.append(layer)
    return Sequential(layers, in_dim=int(in_dim))


def _layer_kind(index: int, item: object) -> str:
    """The type of layer ``index`` of a spec, once its fields are known and complete."""
    if not isinstance(item, Mapping):
        raise _spec_error(index, None, f"must be a dict with a 'type', got {item!r}")
    kind = item.get("type")
    if kind not in LAYER_FIELDS:
        raise _spec_error(index, None, f"unknown type {kind!r}; allowed types: {', '.join(LAYER_FIELDS)}")
    required, optional = LAYER_FIELDS[kind]
    allowed_fields = ", ".join(required + optional) or "none"
    for key in item:
        if key != "type" and key not in required + optional:
            raise _spec_error(index, kind, f"unknown field {key!r}; allowed fields: {allowed_fields}")
    for key in required:
        if key not in item:
            raise _spec_error(index, kind, f"missing field {key!r}; allowed fields: {allowed_fields}")
    return str(kind)


def _make_layer(kind: str, item: Mapping[str, Any], width: int, rng: np.random.Generator) -> Layer:
    """One layer of a checked spec entry; its own checks raise VflError."""
    if kind == "dense":
        return Dense(width, item["units"], init=item.get("init", "xavier"), seed=rng)
    if kind == "dropout":
        return Dropout(item["rate"], rng=rng)
    if kind == "leaky_relu":
        return LeakyReLU(item.get("slope", 0.01))
    simple: dict[str, type[Layer]] = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}
    return simple[kind]()


# --- training -----------------------------------------------------------------------------


def make_optimizers(model: Sequential, factory: Callable[[], Optimizer]) -> list[Optimizer]:
    """One fresh optimiser per parameter array of ``model`` (the state of each is its own)."""
    return [factory() for _ in model.params()]


def _epochs(epochs: Any) -> int:
    if not np_whole(epochs, 1):
        raise VflError(f"epochs must be a whole number >= 1, got {epochs!r}")
    return int(epochs)


def _full_loss(model: Sequential, head: Head, X: np.ndarray, y: np.ndarray) -> float:
    return head.loss(model.forward(X, train=False), y)


def fit(
    model: Sequential,
    head: Head | str,
    X: Any,
    y: Any,
    optimizer_factory: Callable[[], Optimizer],
    epochs: int,
    batch_size: int | None,
    seed: int,
    *,
    optimizers: list[Optimizer] | None = None,
    start_epoch: int = 0,
) -> list[float]:
    """Train ``model`` in place with mini-batch gradient descent.

    Each epoch uses the mini-batches of :func:`vfl_cli.models.reference.minibatches` for
    ``(seed, epoch)`` and re-seeds every dropout layer from ``(seed, epoch, layer index)``, so
    the run is deterministic and a resumed run (``start_epoch`` and saved ``optimizers``)
    continues exactly as an uninterrupted one would.

    Args:
        model: The network, trained in place.
        head: The loss head or its name.
        X: Inputs, shape ``(n, in_dim)``.
        y: Targets, shape ``(n,)`` (0/1, class indices or values depending on the head).
        optimizer_factory: Makes one optimiser per parameter array, e.g.
            ``lambda: make_optimizer("adam", lr=0.01)``; biases are never penalised.
        epochs: Number of epochs to run, >= 1.
        batch_size: Rows per mini-batch, or None for full batch.
        seed: Seed of the batch order and dropout masks.
        optimizers: Optimisers to continue with (one per parameter array, e.g. restored with
            ``load_state_dict``); they are stepped in place. None makes fresh ones.
        start_epoch: Number of the first epoch (for resuming).

    Returns:
        Mean loss on all rows, in eval mode, after each epoch.

    Raises:
        DataError: If ``X`` or ``y`` is malformed or does not fit the head.
        VflError: If ``epochs``, ``batch_size`` or the optimisers are invalid, or training
            diverges.
    """
    head = make_head(head)
    features = _as_matrix(X, "X")
    if features.shape[0] == 0:
        raise DataError("X has no rows")
    if not np.all(np.isfinite(features)):
        raise DataError("X contains NaN or infinite values")
    target = head.check_targets(y, model.out_dim)
    if target.shape != (features.shape[0],):
        raise DataError(f"y has shape {target.shape}, expected ({features.shape[0]},) to match X")
    n_epochs = _epochs(epochs)
    params = model.params()
    if optimizers is None:
        optimizers = make_optimizers(model, optimizer_factory)
    if len(optimizers) != len(params):
        raise VflError(
            f"got {len(optimizers)} optimisers for {len(params)} parameter arrays; "
            "use make_optimizers(model, factory)"
        )
    masks = model.penalty_masks()
    dropouts = [(i, layer) for i, layer in enumerate(model.layers) if isinstance(layer, Dropout)]
    history: list[float] = []
    for epoch in range(start_epoch, start_epoch + n_epochs):
        for index, layer in dropouts:
            layer.rng = np.random.default_rng([seed, epoch, index])
        for rows in minibatches(features.shape[0], batch_size, seed=seed, epoch=epoch):
            output = model.forward(features[rows], train=True)
            _, grad = head.loss_grad(output, target[rows])
            model.backward(grad)
            for p, g, opt, mask in zip(params, model.grads(), optimizers, masks, strict=True):
                p[...] = opt.step(p, g, mask=mask)
        history.append(_full_loss(model, head, features, target))
    return history


def predict(model: Sequential, head: Head | str, X: Any) -> np.ndarray:
    """Predictions in eval mode (dropout off).

    Args:
        model: The network.
        head: The head or its name: ``binary`` gives P(class 1) of shape ``(n,)``,
            ``multiclass`` probabilities of shape ``(n, k)``, ``regression`` values ``(n,)``.
        X: Inputs, shape ``(n, in_dim)``.

    Returns:
        The predictions.
    """
    return make_head(head).predict(model.forward(X, train=False))
