"""Plaintext optimisers a party applies to its own model weights.

In every protocol each party ends a round holding the plaintext gradient of *its own* weights
(decrypted, unmasked or computed locally); the update itself is local and nothing here is sent
to a peer. So this module is ordinary numpy, shared by all protocols and by the plaintext
reference trainers in :mod:`vfl_cli.models.reference`.

Conventions, the same for every optimiser:

* ``step`` returns new weights and never changes its arguments in place.
* Regularisation is the optimiser's job, so every protocol gets it the same way:

  - ``l2`` adds ``l2 * w`` to the gradient before the step (the penalty ``l2 / 2 * ||w||^2``);
  - ``l1`` is applied *after* the step as the proximal operator of ``lr_t * l1 * ||w||_1``,
    i.e. soft-thresholding ``w <- sign(w) * max(|w| - lr_t * l1, 0)``, where ``lr_t`` is the
    scheduled learning rate of this step. Unlike adding ``l1 * sign(w)`` to the gradient this
    sets small weights exactly to zero instead of making them oscillate around it. For Adam the
    threshold is the same ``lr_t * l1`` (not Adam's per-coordinate step size), a common
    approximation of the proximal step.
  - Neither penalty touches weights where ``mask`` is False: pass False for the intercept.
* The learning-rate schedule is evaluated at ``t``, the number of steps already taken
  (0 for the first step): one step per mini-batch.
* ``state_dict()`` holds everything that changes while training (step count, momentum, Adam
  moments); the hyper-parameters are in ``config()``. A job stores both and resumes with
  ``opt = make_optimizer(**config); opt.load_state_dict(state)``.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vfl_cli.checks import np_whole
from vfl_cli.errors import VflError

__all__ = [
    "SCHEDULES",
    "Adam",
    "BlockCG",
    "EarlyStopping",
    "LearningRateSchedule",
    "Optimizer",
    "SGD",
    "cg_converged",
    "cg_scalars",
    "make_optimizer",
    "newton_decrement",
    "own_curvature_step",
]

SCHEDULES = ("constant", "inverse_time", "step")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise VflError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise VflError(f"{name} must be finite, got {number}")
    return number


def _positive(name: str, value: Any) -> float:
    number = _number(name, value)
    if number <= 0.0:
        raise VflError(f"{name} must be > 0, got {number:g}")
    return number


def _non_negative(name: str, value: Any) -> float:
    number = _number(name, value)
    if number < 0.0:
        raise VflError(f"{name} must be >= 0, got {number:g}")
    return number


def _fraction(name: str, value: Any) -> float:
    number = _number(name, value)
    if not 0.0 <= number < 1.0:
        raise VflError(f"{name} must be in [0, 1), got {number:g}")
    return number


def _positive_int(name: str, value: Any) -> int:
    if not np_whole(value, 1):
        raise VflError(f"{name} must be a whole number >= 1, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LearningRateSchedule:
    """How the learning rate changes with the step count ``t`` (0 for the first step).

    Attributes:
        name: ``constant`` (``lr``), ``inverse_time`` (``lr / (1 + decay * t)``) or ``step``
            (``lr * gamma ** (t // step_size)``).
        decay: Decay rate of ``inverse_time``.
        step_size: Steps between two reductions of ``step``.
        gamma: Factor of each ``step`` reduction.
    """

    name: str = "constant"
    decay: float = 0.01
    step_size: int = 100
    gamma: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in SCHEDULES:
            raise VflError(
                f"unknown learning-rate schedule {self.name!r}; allowed: {', '.join(SCHEDULES)}"
            )
        _non_negative("decay", self.decay)
        _positive_int("step_size", self.step_size)
        gamma = _positive("gamma", self.gamma)
        if gamma > 1.0:
            raise VflError(f"gamma must be in (0, 1], got {gamma:g}")

    def rate(self, lr: float, t: int) -> float:
        """Learning rate of step ``t``.

        Args:
            lr: Initial learning rate.
            t: Number of steps already taken.

        Returns:
            The scheduled learning rate.
        """
        if self.name == "inverse_time":
            return lr / (1.0 + self.decay * t)
        if self.name == "step":
            return lr * self.gamma ** (t // self.step_size)
        return lr


class Optimizer(ABC):
    """A stateful update rule for one weight array.

    Args:
        lr: Initial learning rate, > 0.
        l1: L1 penalty, applied by soft-thresholding after each step (see module docstring).
        l2: L2 penalty, added to the gradient as ``l2 * w``.
        schedule: Learning-rate schedule name, one of :data:`SCHEDULES`.
        decay: ``inverse_time`` decay rate.
        step_size: ``step`` schedule: steps between reductions.
        gamma: ``step`` schedule: reduction factor.

    Raises:
        VflError: If a hyper-parameter is out of range or the schedule is unknown.
    """

    name: ClassVar[str]

    def __init__(
        self,
        lr: float,
        *,
        l1: float = 0.0,
        l2: float = 0.0,
        schedule: str = "constant",
        decay: float = 0.01,
        step_size: int = 100,
        gamma: float = 0.5,
    ) -> None:
        self.lr = _positive("lr", lr)
        self.l1 = _non_negative("l1", l1)
        self.l2 = _non_negative("l2", l2)
        self.schedule = LearningRateSchedule(
            name=schedule, decay=decay, step_size=step_size, gamma=gamma
        )
        self.t = 0

    def learning_rate(self) -> float:
        """The learning rate the next step will use."""
        return self.schedule.rate(self.lr, self.t)

    def step(self, weights: np.ndarray, grad: np.ndarray, *, mask: Any = None) -> np.ndarray:
        """Apply one update.

        Args:
            weights: Current weights, any shape.
            grad: Gradient of the (unregularised) loss, same shape as ``weights``.
            mask: Booleans broadcastable to ``weights``: True where the L1/L2 penalties apply.
                Pass False for an intercept. None means every weight is penalised.

        Returns:
            The new weights (a new array).

        Raises:
            VflError: If the shapes disagree (with each other, the mask or the optimiser state)
                or the gradient is not finite (usually a learning rate that is too high).
        """
        w = np.asarray(weights, dtype=np.float64)
        g = np.asarray(grad, dtype=np.float64)
        if w.shape != g.shape:
            raise VflError(f"gradient has shape {g.shape} but the weights have shape {w.shape}")
        if not np.all(np.isfinite(g)):
            raise VflError(
                "gradient contains NaN or infinite values; training diverged, "
                "lower the learning rate or standardise the features"
            )
        penalised = self._penalty_mask(mask, w.shape)
        if self.l2:
            g = g + self.l2 * penalised * w
        lr = self.learning_rate()
        new: np.ndarray = w - self._delta(g, lr)
        if self.l1:
            threshold = lr * self.l1 * penalised
            new = np.sign(new) * np.maximum(np.abs(new) - threshold, 0.0)
        self.t += 1
        return new

    @staticmethod
    def _penalty_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
        if mask is None:
            return np.ones(shape)
        array = np.asarray(mask, dtype=bool)
        try:
            return np.broadcast_to(array, shape).astype(np.float64)
        except ValueError as exc:
            raise VflError(
                f"regularisation mask has shape {array.shape}, weights have shape {shape}"
            ) from exc

    @staticmethod
    def _check_state_shape(state: np.ndarray | None, shape: tuple[int, ...], what: str) -> None:
        if state is not None and state.shape != shape:
            raise VflError(
                f"optimiser {what} has shape {state.shape} but the weights have shape {shape}; "
                "use one optimiser per weight array"
            )

    @abstractmethod
    def _delta(self, grad: np.ndarray, lr: float) -> np.ndarray:
        """Update internal state with ``grad`` and return the amount to subtract."""

    def config(self) -> dict[str, Any]:
        """Hyper-parameters, such that ``make_optimizer(**opt.config())`` makes a fresh copy."""
        return {
            "name": self.name,
            "lr": self.lr,
            "l1": self.l1,
            "l2": self.l2,
            "schedule": self.schedule.name,
            "decay": self.schedule.decay,
            "step_size": self.schedule.step_size,
            "gamma": self.schedule.gamma,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes during training, as plain values and numpy arrays (copies).

        Arrays not created yet (before the first step) are None.
        """
        return {"name": self.name, "t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; arrays may be nested lists (from JSON).

        Raises:
            VflError: If the state belongs to another optimiser or is malformed.
        """
        self.t = self._state_step(state)

    def _state_step(self, state: dict[str, Any]) -> int:
        # Checked before anything else, and nothing is changed until the whole state is valid.
        if state.get("name") != self.name:
            raise VflError(
                f"optimiser state is for {state.get('name')!r}, this optimiser is {self.name!r}"
            )
        t = state.get("t")
        if not np_whole(t, 0):
            raise VflError(f"optimiser state field 't' must be a whole number >= 0, got {t!r}")
        return int(t)

    @staticmethod
    def _state_array(state: dict[str, Any], key: str) -> np.ndarray | None:
        if key not in state:
            raise VflError(f"optimiser state has no field {key!r}")
        value = state[key]
        if value is None:
            return None
        try:
            array = np.array(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise VflError(f"optimiser state field {key!r} is not a numeric array") from exc
        if not np.all(np.isfinite(array)):
            raise VflError(f"optimiser state field {key!r} contains NaN or infinite values")
        return array


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (heavy-ball) momentum.

    ``v <- momentum * v + g``, ``w <- w - lr_t * v`` (the PyTorch form; with ``momentum=0`` plain
    ``w <- w - lr_t * g``).

    Args:
        lr: Initial learning rate, > 0.
        momentum: Momentum factor in ``[0, 1)``.
        **kwargs: Regularisation and schedule, see :class:`Optimizer`.
    """

    name = "sgd"

    def __init__(self, lr: float = 0.1, momentum: float = 0.0, **kwargs: Any) -> None:
        super().__init__(lr, **kwargs)
        self.momentum = _fraction("momentum", momentum)
        self.velocity: np.ndarray | None = None

    def _delta(self, grad: np.ndarray, lr: float) -> np.ndarray:
        if not self.momentum:
            return lr * grad
        self._check_state_shape(self.velocity, grad.shape, "velocity")
        previous = self.velocity if self.velocity is not None else np.zeros_like(grad)
        self.velocity = self.momentum * previous + grad
        return lr * self.velocity

    def config(self) -> dict[str, Any]:  # noqa: D102
        return {**super().config(), "momentum": self.momentum}

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        velocity = None if self.velocity is None else self.velocity.copy()
        return {**super().state_dict(), "velocity": velocity}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        t = self._state_step(state)
        velocity = self._state_array(state, "velocity")
        self.t, self.velocity = t, velocity


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with bias correction.

    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
    ``w <- w - lr_t * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - b1^(t+1))`` and
    ``v_hat = v / (1 - b2^(t+1))``.

    Args:
        lr: Initial learning rate, > 0.
        beta1: Decay of the first moment, in ``[0, 1)``.
        beta2: Decay of the second moment, in ``[0, 1)``.
        eps: Added to the denominator, > 0.
        **kwargs: Regularisation and schedule, see :class:`Optimizer`.
    """

    name = "adam"

    def __init__(
        self,
        lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        **kwargs: Any,
    ) -> None:
        super().__init__(lr, **kwargs)
        self.beta1 = _fraction("beta1", beta1)
        self.beta2 = _fraction("beta2", beta2)
        self.eps = _positive("eps", eps)
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def _delta(self, grad: np.ndarray, lr: float) -> np.ndarray:
        self._check_state_shape(self.m, grad.shape, "first moment")
        m = self.m if self.m is not None else np.zeros_like(grad)
        v = self.v if self.v is not None else np.zeros_like(grad)
        self.m = self.beta1 * m + (1.0 - self.beta1) * grad
        self.v = self.beta2 * v + (1.0 - self.beta2) * grad * grad
        step = self.t + 1
        m_hat = self.m / (1.0 - self.beta1**step)
        v_hat = self.v / (1.0 - self.beta2**step)
        return lr * m_hat / (np.sqrt(v_hat) + self.eps)

    def config(self) -> dict[str, Any]:  # noqa: D102
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def state_dict(self) -> dict[str, Any]:  # noqa: D102
        return {
            **super().state_dict(),
            "m": None if self.m is None else self.m.copy(),
            "v": None if self.v is None else self.v.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: D102
        t = self._state_step(state)
        m = self._state_array(state, "m")
        v = self._state_array(state, "v")
        if (m is None) != (v is None) or (m is not None and v is not None and m.shape != v.shape):
            raise VflError("optimiser state fields 'm' and 'v' must both be arrays of one shape")
        if v is not None and np.any(v < 0):
            raise VflError("optimiser state field 'v' must be >= 0")
        self.t, self.m, self.v = t, m, v


_OPTIMIZERS: dict[str, type[Optimizer]] = {"adam": Adam, "sgd": SGD}


def _allowed_params(cls: type[Optimizer]) -> list[str]:
    names: list[str] = []
    for klass in (cls, Optimizer):
        for param in inspect.signature(klass.__init__).parameters.values():
            if param.name != "self" and param.kind is not param.VAR_KEYWORD and param.name not in names:
                names.append(param.name)
    return names


def make_optimizer(name: str, **params: Any) -> Optimizer:
    """Build an optimiser from its name and hyper-parameters (e.g. from a job config).

    Args:
        name: ``sgd`` or ``adam`` (case-insensitive).
        **params: Hyper-parameters of that optimiser, see :class:`SGD`, :class:`Adam` and
            :class:`Optimizer`.

    Returns:
        A fresh optimiser with step count 0.

    Raises:
        VflError: If the name, a parameter name or a parameter value is not allowed.
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _OPTIMIZERS:
        raise VflError(f"unknown optimizer {name!r}; allowed: {', '.join(sorted(_OPTIMIZERS))}")
    cls = _OPTIMIZERS[key]
    allowed = _allowed_params(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise VflError(
            f"unknown parameter {unknown[0]!r} for optimizer {key!r}; allowed: {', '.join(allowed)}"
        )
    return cls(**params)


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the loss has not improved for ``patience`` epochs.

    An epoch improves when its loss is below the best loss so far minus ``tol`` (an absolute
    tolerance, as in scikit-learn). A NaN loss never improves, so a diverging run stops too.
    The decision is a pure function of the loss history, so it survives a job being resumed.

    Attributes:
        tol: Minimum decrease that counts as an improvement, >= 0.
        patience: Epochs without improvement before stopping, >= 1.
    """

    tol: float = 1e-4
    patience: int = 5

    def __post_init__(self) -> None:
        _non_negative("tol", self.tol)
        _positive_int("patience", self.patience)

    def best_epoch(self, history: Sequence[float]) -> int:
        """Index of the best epoch in ``history`` under the ``tol`` rule (-1 when empty)."""
        best_index, best = -1, math.inf
        for index, value in enumerate(history):
            loss = float(value)
            if math.isnan(loss):
                continue
            if best_index < 0 or loss < best - self.tol:
                best_index, best = index, loss
        return best_index

    def should_stop(self, history: Sequence[float]) -> bool:
        """Whether training should stop after the last loss in ``history``.

        Args:
            history: Loss after each epoch so far, oldest first.

        Returns:
            True if the last ``patience`` epochs all failed to improve on the best before them.
        """
        if not history:
            return False
        return len(history) - 1 - self.best_epoch(history) >= self.patience


def own_curvature_step(X: np.ndarray, grad: np.ndarray, *, curvature: float, parties: int,
                       step: float = 0.8, ridge: float = 1e-3, momentum: float = 0.3) -> np.ndarray:
    """One party's block-diagonal Newton direction: ``step_k (c X^T X / n + ridge I)^-1 grad``.

    ``X`` is the party's own training columns, ``c`` the loss's curvature per row (1 for the
    squared loss, 1/4, the logistic loss's bound, for hetero-lr): nothing in it comes from
    another party, so preconditioning adds nothing to what the protocol sends. On the joint
    quadratic, the block-diagonal curvature ``D`` of ``k`` parties bounds the joint one by
    ``H <= k D``, so the eigenvalues of ``D^-1 H`` are at most ``k``; heavy-ball steps with
    ``momentum`` ``b`` (which the caller applies) converge when ``step_k * k < 2 (1 + b)``.
    ``step_k = min(step, 0.8 * 2 (1 + b) / k)`` keeps a fifth below that bound: ``step`` (0.8)
    for two parties, 0.69 for three, 0.52 for four at the protocol's momentum 0.3; no learning
    rate to tune. (Until 2026-12-01 it was ``step / max(1, k / 2)``, the bound of plain steps,
    ``2 / k``: the same for two parties, smaller for more; on motor's three parties the larger
    step is further down the training loss at every exchange,
    ``tests/benchmarks/bench_defaults_replay.py``.)

    Args:
        X: The party's training rows of its own (standardised) columns, ``(n, p)``.
        grad: The party's gradient, ``(p,)``, mean over the batch.
        curvature: The loss's second derivative per row (or its bound).
        parties: Parties in the job (the block count ``k``).
        step: Step for two parties (and the largest for any count).
        ridge: Added to the diagonal (constant columns have zero curvature).
        momentum: The heavy-ball momentum the caller applies to these directions
            (hetero-linear's ``NEWTON_MOMENTUM``); 0 for plain steps.

    Returns:
        The direction to subtract from the weights (times ``step_k``).
    """
    scale = min(step, 0.8 * 2.0 * (1.0 + momentum) / max(1, parties))
    return np.asarray(scale * np.linalg.solve(own_curvature(X, curvature, ridge), grad))


def own_curvature(X: np.ndarray, curvature: float, ridge: float = 1e-3) -> np.ndarray:
    """``c X^T X / n + ridge I``: the block of the loss's Hessian a party computes from its own columns."""
    n = max(1, len(X))
    return np.asarray(curvature * (X.T @ X) / n + ridge * np.eye(X.shape[1]))


def newton_decrement(X: np.ndarray, grad: np.ndarray, *, curvature: float, noise: float = 0.0,
                     ridge: float = 1e-3) -> tuple[float, float, float]:
    """A party's squared Newton decrement ``g^T H^-1 g`` on its own block, and what noise adds.

    ``g^T H^-1 g / 2`` is the decrease of the loss a full Newton step on this party's weights
    alone would bring (with ``H`` from :func:`own_curvature`): a unit-free convergence measure
    (the label is standardised, the loss is per row). When the gradient carries Gaussian noise
    ``X^T e / n`` with ``e ~ N(0, noise^2)`` per row (hetero-lr's label noise), the decrement of
    the noise alone has mean ``noise^2 / n tr(H^-1 S)`` and deviation about
    ``noise^2 / n sqrt(2 tr((H^-1 S)^2))``, ``S = X^T X / n``; both are returned so that a party
    can tell a gradient that is still moving from one that is only noise.

    Returns:
        ``(decrement, noise_mean, noise_sd)``.
    """
    n = max(1, len(X))
    H = own_curvature(X, curvature, ridge)
    dec = float(grad @ np.linalg.solve(H, grad))
    if noise <= 0:
        return dec, 0.0, 0.0
    M = np.linalg.solve(H, (X.T @ X) / n)
    scale = noise * noise / n
    return dec, float(scale * np.trace(M)), float(scale * math.sqrt(2.0 * float(np.trace(M @ M))))


@dataclass
class BlockCG:
    """One party's share of block-preconditioned conjugate gradients on the joint squared loss.

    Hetero-linear's default at full batch (the protocol's doc says what is sent). Every party
    keeps, for its own block of the joint weights: the gradient ``g`` at its current weights (the
    CG iterate), ``z = D^-1 g`` with ``D`` its own curvature (:func:`own_curvature`), the last
    direction ``p`` and its share ``rz = g^T z`` of the joint preconditioned residual norm
    ``RZ = sum_j rz_j``. Per exchange the parties evaluate the joint gradient at a trial point
    ``w + p`` (``p = -z + beta p_prev``, ``beta = RZ / RZ_prev``) and, from the joint curvature
    along ``p`` (``||X p||^2 / n``, the direction's scores squared), the exact step
    ``alpha = RZ / (||X p||^2 / n)``. The loss is quadratic, so the gradient at ``w + alpha p`` is
    ``g + alpha (g_T - g)``: every party computes its own from its trial gradient ``g_T`` and the
    scalar ``alpha`` alone. The loss falls by ``alpha RZ / 2`` at each step (exact line search).

    The state is JSON (lists), kept in the party's job state between its steps.
    """

    g: list[float] | None = None
    z: list[float] | None = None
    p: list[float] | None = None  # the last direction (None before the first step)
    rz: float = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"cg": {"g": self.g, "z": self.z, "p": self.p, "rz": self.rz}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BlockCG:
        d = state.get("cg") or {}
        return cls(d.get("g"), d.get("z"), d.get("p"), float(d.get("rz", 0.0)))

    @property
    def started(self) -> bool:
        return self.z is not None

    def start(self, X: np.ndarray, grad: np.ndarray, ridge: float = 1e-3) -> BlockCG:
        """After the first exchange: the gradient at the initial weights."""
        z = np.linalg.solve(own_curvature(X, 1.0, ridge), grad)
        return BlockCG(list(map(float, grad)), list(map(float, z)), None, float(grad @ z))

    def direction(self, beta: float) -> np.ndarray:
        """``p = -z + beta p_prev`` (``beta`` 0 for the first direction)."""
        z = np.asarray(self.z, dtype=np.float64)
        return -z if self.p is None or beta == 0.0 else -z + beta * np.asarray(self.p, dtype=np.float64)

    def advance(self, X: np.ndarray, w: np.ndarray, trial_grad: np.ndarray, alpha: float, beta: float,
                ridge: float = 1e-3) -> tuple[np.ndarray, BlockCG]:
        """The step ``w + alpha p`` and the state there, from the gradient at the trial ``w + p``."""
        p = self.direction(beta)
        g = np.asarray(self.g, dtype=np.float64)
        g = g + alpha * (trial_grad - g)
        z = np.linalg.solve(own_curvature(X, 1.0, ridge), g)
        return w + alpha * p, BlockCG(list(map(float, g)), list(map(float, z)), list(map(float, p)), float(g @ z))


def cg_scalars(rz_sum: float, rz_prev: float | None, curvature: float | None) -> tuple[float, float]:
    """``(beta, alpha)`` of a block-CG step from the joint scalars: ``beta = RZ / RZ_prev`` (0 at
    the first step), ``alpha = RZ / curvature`` with ``curvature = ||X p||^2 / n`` (0 when the
    direction vanishes: converged). ``curvature`` None: beta only."""
    beta = rz_sum / rz_prev if rz_prev and rz_prev > 0 else 0.0
    if curvature is None:
        return beta, 0.0
    alpha = rz_sum / curvature if curvature > 1e-300 and rz_sum > 0 else 0.0
    return beta, alpha


def cg_converged(decreases: Sequence[float], tol: float) -> bool:
    """The joint stop test of block CG: the last two steps' ``alpha RZ`` (twice the loss they
    removed, a Newton decrement's units) sum to less than ``tol``.

    One step's decrease is no guide (on motor it falls to 1.2e-4 at the 8th exchange, +2.0%
    over least squares, and rises again to 3.8e-4); the excess loss at an iterate is the sum of
    all later decreases, so two in a row below ``tol`` bound it better than one.
    """
    return tol > 0 and len(decreases) >= 2 and decreases[-1] + decreases[-2] < tol
