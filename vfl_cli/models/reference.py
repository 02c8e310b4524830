"""Plaintext, centralised reference trainers for the federated models.

Tests and benchmarks train these on the *joined* data (all parties' columns in one matrix) and
compare the federated result with them. They follow the federated protocols step for step: the
same loss gradient, the same optimiser (:mod:`vfl_cli.models.optim`), the same mini-batches
(:func:`minibatches`) and zero initial weights, so a correct protocol matches them up to the
precision of its fixed-point encoding.

Taylor-approximated logistic loss
---------------------------------
Paillier encryption can add and multiply by plaintexts but cannot evaluate a sigmoid, so the
encrypted logistic-regression protocol uses the second-order Taylor expansion of the log-loss
around ``z = 0``. With labels ``s = 2y - 1`` in ``{-1, 1}``::

    log(1 + exp(-s z))  ~  log 2 - s z / 2 + z^2 / 8          (as s^2 = 1)

    d/dz                =  0.25 z - 0.5 s                      (the {-1, 1} form)
                        =  0.25 z + 0.5 - y                    (the {0, 1} form, s = 2y - 1)

This module (and the protocols) use the ``{0, 1}`` form, :func:`taylor_logistic_residual`:
``0.25 z + 0.5`` is the first-order expansion of ``sigmoid(z)``, so the residual reads like the
exact ``sigmoid(z) - y``. Both forms are the same number; ``tests/test_models_optim.py`` checks
that and the derivative of :func:`taylor_logistic_loss`.

Weights are ``[coef..., intercept]`` during training; the intercept is never regularised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfl_cli.checks import whole
from vfl_cli.errors import DataError, VflError
from vfl_cli.models.optim import (
    BlockCG,
    Optimizer,
    cg_converged,
    cg_scalars,
    make_optimizer,
    newton_decrement,
    own_curvature_step,
)

__all__ = [
    "BLOCK_METHODS",
    "ReferenceFit",
    "fit_linear",
    "fit_linear_blocks",
    "fit_logistic",
    "fixed_minibatches",
    "minibatches",
    "sigmoid",
    "taylor_logistic_loss",
    "taylor_logistic_residual",
]


def sigmoid(z: np.ndarray) -> np.ndarray:
    """The logistic function, computed without overflow for large ``|z|``."""
    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    positive = z >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-z[positive]))
    exp_z = np.exp(z[~positive])
    out[~positive] = exp_z / (1.0 + exp_z)
    return out


def taylor_logistic_residual(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Derivative of the Taylor-approximated log-loss with respect to the score.

    Args:
        z: Linear scores ``X w + b``.
        y: Labels in ``{0, 1}``.

    Returns:
        ``0.25 z + 0.5 - y`` (equal to ``0.25 z - 0.5 s`` with ``s = 2y - 1``).
    """
    return 0.25 * np.asarray(z, dtype=np.float64) + 0.5 - np.asarray(y, dtype=np.float64)


def taylor_logistic_loss(z: np.ndarray, y: np.ndarray) -> float:
    """Mean Taylor-approximated log-loss, ``log 2 - s z / 2 + z^2 / 8`` with ``s = 2y - 1``.

    Args:
        z: Linear scores.
        y: Labels in ``{0, 1}``.

    Returns:
        The mean loss, as a float.
    """
    z = np.asarray(z, dtype=np.float64)
    s = 2.0 * np.asarray(y, dtype=np.float64) - 1.0
    return float(np.mean(np.log(2.0) - 0.5 * s * z + 0.125 * z * z))


def _squared_loss(z: np.ndarray, y: np.ndarray) -> float:
    return float(0.5 * np.mean((z - y) ** 2))


def _squared_residual(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    residual: np.ndarray = z - y
    return residual


def minibatches(
    n_samples: int, batch_size: int | None, *, seed: int, epoch: int
) -> list[np.ndarray]:
    """Row indices of each mini-batch of one epoch.

    Each epoch draws its own permutation from ``(seed, epoch)``, so any epoch can be recomputed
    on its own (a resumed job) and all parties derive the same batches from the shared seed.
    A batch size of None or ``>= n_samples`` gives one full batch in row order.

    Args:
        n_samples: Number of (aligned) samples.
        batch_size: Rows per batch; the last batch may be smaller.
        seed: Seed agreed for the job.
        epoch: Epoch number, from 0.

    Returns:
        A list of integer index arrays that together cover every row once.

    Raises:
        VflError: If ``n_samples`` or ``batch_size`` is not positive.
    """
    if n_samples < 1:
        raise VflError(f"need at least one sample to make batches, got {n_samples}")
    if batch_size is not None and batch_size < 1:
        raise VflError(f"batch_size must be >= 1 (or None for full batch), got {batch_size}")
    if batch_size is None or batch_size >= n_samples:
        return [np.arange(n_samples)]
    order = np.random.default_rng([seed, epoch]).permutation(n_samples)
    return [order[start : start + batch_size] for start in range(0, n_samples, batch_size)]


@dataclass
class ReferenceFit:
    """A trained reference model.

    Attributes:
        coef: Feature weights, shape ``(n_features,)``.
        intercept: Intercept (0.0 when fitted without one).
        loss_history: Mean training loss (without penalties) after each epoch, on all rows.
        exchanges: Full-batch exchanges run (:func:`fit_linear_blocks`; 0 otherwise).
        converged: Whether :func:`fit_linear_blocks` stopped on its convergence test.
    """

    coef: np.ndarray
    intercept: float
    loss_history: list[float] = field(default_factory=list)
    exchanges: int = 0
    converged: bool = False

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """Linear scores ``X @ coef + intercept`` (the prediction of a linear model)."""
        scores: np.ndarray = np.asarray(X, dtype=np.float64) @ self.coef + self.intercept
        return scores

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probability of class 1 of a logistic model: the exact sigmoid of the scores."""
        return sigmoid(self.decision_function(X))


def fixed_minibatches(n_samples: int, batch_size: int | None, *, seed: int, epoch: int) -> list[np.ndarray]:
    """Mini-batches whose rows are drawn once per job; only the order of the batches changes.

    The rows are split into ``n_samples // batch_size`` batches of ``batch_size`` rows, the
    remainder joining the last one, so no batch is smaller than ``batch_size``. Each row stays in
    the same batch in every epoch: a party that sees one equation system per batch (hetero-lr)
    sees the same system again each epoch instead of a new one over other rows, which would
    let it stack epochs until every row's value is solvable.

    Args:
        n_samples: Number of (aligned) samples.
        batch_size: Rows per batch (at least), or None for one full batch.
        seed: Seed agreed for the job (draws the membership).
        epoch: Epoch number, from 0 (draws the order of the batches).

    Returns:
        A list of integer index arrays that together cover every row once.

    Raises:
        VflError: If ``n_samples`` or ``batch_size`` is not positive.
    """
    if n_samples < 1:
        raise VflError(f"need at least one sample to make batches, got {n_samples}")
    if batch_size is not None and batch_size < 1:
        raise VflError(f"batch_size must be >= 1 (or None for full batch), got {batch_size}")
    if batch_size is None or batch_size * 2 > n_samples:
        return [np.arange(n_samples)]
    order = np.random.default_rng([seed]).permutation(n_samples)
    count = n_samples // batch_size
    batches = [order[i * batch_size : (i + 1) * batch_size] for i in range(count - 1)]
    batches.append(order[(count - 1) * batch_size :])
    turn = np.random.default_rng([seed, epoch]).permutation(count)
    return [batches[int(i)] for i in turn]


def _check_xy(X: Any, y: Any, *, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(X, dtype=np.float64)
    target = np.asarray(y, dtype=np.float64)
    if features.ndim != 2:
        raise DataError(f"X must be a 2-D matrix, got shape {features.shape}")
    if target.shape != (features.shape[0],):
        raise DataError(f"y has shape {target.shape}, expected ({features.shape[0]},) to match X")
    if features.shape[0] == 0:
        raise DataError("X has no rows")
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(target))):
        raise DataError("X or y contains NaN or infinite values")
    if binary and not np.all((target == 0.0) | (target == 1.0)):
        raise DataError("y must hold only 0 and 1 for logistic regression")
    return features, target


def initial_intercept(y: np.ndarray, *, binary: bool) -> float:
    """Where the intercept starts: the best constant model (mean, or log-odds of the mean).

    Starting there instead of at 0 saves the many first steps that would only move the
    intercept; the protocols start the same way (the active party knows its labels).
    """
    mean = float(np.mean(y)) if len(y) else 0.0
    if not binary:
        return mean
    p = min(max(mean, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def _fit(
    X: Any,
    y: Any,
    optimizer: Optimizer,
    epochs: int,
    batch_size: int | None,
    seed: int,
    *,
    fit_intercept: bool,
    binary: bool,
    residual: Callable[[np.ndarray, np.ndarray], np.ndarray],
    loss: Callable[[np.ndarray, np.ndarray], float],
    fixed: bool = False,
) -> ReferenceFit:
    features, target = _check_xy(X, y, binary=binary)
    if not whole(epochs, 1):
        raise VflError(f"epochs must be a whole number >= 1, got {epochs!r}")
    n, d = features.shape
    if fit_intercept:
        features = np.hstack([features, np.ones((n, 1))])
    weights = np.zeros(features.shape[1])
    mask = np.ones(features.shape[1], dtype=bool)
    if fit_intercept:
        mask[-1] = False
        weights[-1] = initial_intercept(target, binary=binary)
    history: list[float] = []
    for epoch in range(epochs):
        batching = fixed_minibatches if fixed else minibatches
        for rows in batching(n, batch_size, seed=seed, epoch=epoch):
            batch = features[rows]
            grad = batch.T @ residual(batch @ weights, target[rows]) / len(rows)
            weights = optimizer.step(weights, grad, mask=mask)
        history.append(loss(features @ weights, target))
    intercept = float(weights[-1]) if fit_intercept else 0.0
    return ReferenceFit(coef=weights[:d].copy(), intercept=intercept, loss_history=history)


def fit_logistic(
    X: Any,
    y: Any,
    optimizer: Optimizer,
    epochs: int,
    batch_size: int | None,
    seed: int,
    *,
    fit_intercept: bool = True,
    fixed_batches: bool = False,
) -> ReferenceFit:
    """Train logistic regression on the Taylor-approximated log-loss, as the protocol does.

    Each mini-batch step uses the gradient ``X_b.T @ (0.25 z + 0.5 - y) / len(b)`` (see the
    module docstring), starting from zero weights.

    Args:
        X: Joined features, shape ``(n, d)``.
        y: Labels in ``{0, 1}``, shape ``(n,)``.
        optimizer: A fresh optimiser (it is stepped, so its state changes).
        epochs: Passes over the data, >= 1.
        batch_size: Rows per mini-batch, or None for full batch.
        seed: Seed of the mini-batch order (see :func:`minibatches`).
        fit_intercept: Whether to learn an intercept.
        fixed_batches: Use :func:`fixed_minibatches` (as hetero-lr and hetero-linear do).

    Returns:
        The fit; ``loss_history`` holds the Taylor loss after each epoch.

    Raises:
        DataError: If ``X``/``y`` are malformed or ``y`` is not 0/1.
        VflError: If ``epochs`` or ``batch_size`` is invalid or training diverges.
    """
    return _fit(
        X,
        y,
        optimizer,
        epochs,
        batch_size,
        seed,
        fit_intercept=fit_intercept,
        fixed=fixed_batches,
        binary=True,
        residual=taylor_logistic_residual,
        loss=taylor_logistic_loss,
    )


def fit_linear(
    X: Any,
    y: Any,
    optimizer: Optimizer,
    epochs: int,
    batch_size: int | None,
    seed: int,
    *,
    fit_intercept: bool = True,
    fixed_batches: bool = False,
) -> ReferenceFit:
    """Train linear regression on the squared loss ``mean((z - y)^2) / 2``.

    Each mini-batch step uses the gradient ``X_b.T @ (z - y) / len(b)``, from zero weights.

    Args:
        X: Joined features, shape ``(n, d)``.
        y: Targets, shape ``(n,)``.
        optimizer: A fresh optimiser (it is stepped, so its state changes).
        epochs: Passes over the data, >= 1.
        batch_size: Rows per mini-batch, or None for full batch.
        seed: Seed of the mini-batch order (see :func:`minibatches`).
        fit_intercept: Whether to learn an intercept.
        fixed_batches: Use :func:`fixed_minibatches` (as hetero-lr and hetero-linear do).

    Returns:
        The fit; ``loss_history`` holds ``mean((z - y)^2) / 2`` after each epoch.

    Raises:
        DataError: If ``X``/``y`` are malformed.
        VflError: If ``epochs`` or ``batch_size`` is invalid or training diverges.
    """
    return _fit(
        X,
        y,
        optimizer,
        epochs,
        batch_size,
        seed,
        fit_intercept=fit_intercept,
        fixed=fixed_batches,
        binary=False,
        residual=_squared_residual,
        loss=_squared_loss,
    )


#: What :func:`fit_linear_blocks` can replay: the protocol's default step, the same direction with
#: an exact joint step (an oracle: the protocol has no such scalar), block-preconditioned CG.
BLOCK_METHODS = ("newton", "newton-exact-step", "cg")


def fit_linear_blocks(blocks: Sequence[Any], y: Any, *, epochs: int = 10, tol: float = 3e-4,
                      method: str = "newton", momentum: float = 0.3, step: float = 0.8,
                      ridge: float = 1e-3, binary: bool = False, label_sigma: float = 0.0,
                      seed: int = 0) -> ReferenceFit:
    """Replay full-batch hetero-linear (or hetero-lr) with its parties' column blocks, without encryption.

    ``blocks[0]`` is the active party's (standardised) columns, the others the passive parties';
    ``y`` the (standardised) label; A's block gets the intercept column. With ``binary``, y is
    0/1 and the residual is hetero-lr's centred one, ``d = s(a)(1 - s(a)) U + s(a) - y`` with
    ``a`` A's own score and ``U`` the passive parties' (curvature 1/4 in the steps); the passive
    parties see the offsets with Gaussian noise of deviation ``label_sigma`` (drawn from
    ``seed``), discounted in their decrement test, as in the protocol. ``method``:

    * ``newton`` (the protocol's default at full batch): every party steps at the same weights
      with :func:`~vfl_cli.models.optim.own_curvature_step` (its own columns' curvature, the
      step scaled for the party count) under heavy-ball ``momentum``; training stops when A's
      block and every passive block (as of the passive party's previous gradient, the flag
      its partial scores carry) have a Newton decrement below ``tol``, or at ``epochs``.
    * ``newton-exact-step``: the same block directions (no momentum), scaled each exchange by
      the exact minimiser of the joint loss along them. It needs the joint ``d^T H d``, which no
      party holds: a yardstick for "is the step size the problem", not a protocol.
    * ``cg`` (hetero-linear's default at full batch since 2026-12-02): block-preconditioned
      conjugate gradients (preconditioner: each party's own curvature), exchange by exchange as
      the protocol runs it (:class:`~vfl_cli.models.optim.BlockCG`): the first exchange measures
      the gradient, each later one takes the exact CG step (two joint scalars: the sum of the
      parties' decrements and ``||X p||^2`` of the joint direction); training stops when the
      last two steps removed less than ``tol / 2`` of loss
      (:func:`~vfl_cli.models.optim.cg_converged`), or at ``epochs``. Exact on the quadratic in
      at most one more exchange than columns.

    Returns:
        The fit (``coef`` all blocks' weights in order, without the intercept), ``loss_history``
        ``mean((z - y)^2) / 2`` after each exchange, ``exchanges`` and ``converged``.

    Raises:
        VflError: For an unknown method or fewer than two blocks.
    """
    if method not in BLOCK_METHODS:
        raise VflError(f"unknown method {method!r}; allowed: {', '.join(BLOCK_METHODS)}")
    if len(blocks) < 2:
        raise VflError("need the active party's block and at least one passive party's")
    if binary and method != "newton":
        raise VflError("the binary replay has the protocol's method only (newton)")
    target = np.asarray(y, dtype=np.float64)
    parts = [np.asarray(b, dtype=np.float64) for b in blocks]
    parts[0] = np.hstack([parts[0], np.ones((len(target), 1))])
    ws = [np.zeros(b.shape[1]) for b in parts]
    ws[0][-1] = initial_intercept(target, binary=binary)
    if method == "cg":
        history, converged = _block_cg(parts, target, ws, epochs=epochs, tol=tol, ridge=ridge)
    else:
        noise = _BlockNoise(binary, label_sigma, np.random.default_rng(seed))
        history, converged = _block_newton(parts, target, ws, noise, epochs=epochs, tol=tol, method=method,
                                           momentum=momentum, step=step, ridge=ridge)
    weights = np.concatenate(ws)
    return ReferenceFit(coef=np.delete(weights, parts[0].shape[1] - 1), intercept=float(ws[0][-1]),
                        loss_history=history, exchanges=len(history), converged=converged)


def _block_grads(parts: list[np.ndarray], ws: list[np.ndarray], y: np.ndarray) -> tuple[list[np.ndarray], float]:
    residual = sum((b @ w for b, w in zip(parts, ws, strict=True)), np.zeros(len(y))) - y
    return [b.T @ residual / len(y) for b in parts], float(0.5 * np.mean(residual * residual))


@dataclass
class _BlockNoise:
    """hetero-lr's residual (centred) and the label noise the passive parties' offsets carry."""

    binary: bool
    sigma: float
    rng: np.random.Generator

    def grads(self, parts: list[np.ndarray], ws: list[np.ndarray], y: np.ndarray) -> tuple[list[np.ndarray], float]:
        if not self.binary:
            return _block_grads(parts, ws, y)
        own = parts[0] @ ws[0]
        scores = sum((b @ w for b, w in zip(parts[1:], ws[1:], strict=True)), np.zeros(len(y)))
        p = sigmoid(own)
        d = p * (1.0 - p) * scores + p - y
        noisy = d + self.rng.normal(0.0, self.sigma, size=len(y)) if self.sigma > 0 else d
        loss = float(np.mean(d * d))  # the Brier score of the centred model, as A's loss
        return [parts[0].T @ d / len(y)] + [b.T @ noisy / len(y) for b in parts[1:]], loss

    @property
    def curvature(self) -> float:
        return 0.25 if self.binary else 1.0


def _block_newton(parts: list[np.ndarray], y: np.ndarray, ws: list[np.ndarray], noise: _BlockNoise, *,
                  epochs: int, tol: float, method: str, momentum: float, step: float,
                  ridge: float) -> tuple[list[float], bool]:
    k, c = len(parts), noise.curvature
    opts = [make_optimizer("sgd", lr=1.0, momentum=momentum if method == "newton" else 0.0) for _ in parts]
    history: list[float] = []
    passive_flags = [False] * (k - 1)  # what the passive parties' partial scores say: last round's
    for _ in range(epochs):
        grads, _ = noise.grads(parts, ws, y)
        here = []
        for j, (b, g) in enumerate(zip(parts, grads, strict=True)):
            dec, mean, sd = newton_decrement(b, g, curvature=c, noise=noise.sigma if j else 0.0, ridge=ridge)
            here.append(tol > 0 and dec - mean < max(tol, 2.0 * sd))
        heavy = momentum if method == "newton" else 0.0
        dirs = [own_curvature_step(b, g, curvature=c, parties=k, step=step, ridge=ridge, momentum=heavy)
                for b, g in zip(parts, grads, strict=True)]
        if method == "newton-exact-step":
            scores = sum((b @ d for b, d in zip(parts, dirs, strict=True)), np.zeros(len(y)))
            slope = sum(float(g @ d) for g, d in zip(grads, dirs, strict=True))
            dirs = [d * slope / max(float(scores @ scores) / len(y), 1e-300) for d in dirs]
        for j, opt in enumerate(opts):
            ws[j][:] = opt.step(ws[j], dirs[j])
        history.append(noise.grads(parts, ws, y)[1] if not noise.binary or not noise.sigma
                       else _BlockNoise(True, 0.0, noise.rng).grads(parts, ws, y)[1])
        if here[0] and all(passive_flags):
            return history, True
        passive_flags = here[1:]
    return history, False


def _block_cg(parts: list[np.ndarray], y: np.ndarray, ws: list[np.ndarray], *, epochs: int, tol: float,
              ridge: float) -> tuple[list[float], bool]:
    """hetero-linear's block CG exchange by exchange (:class:`~vfl_cli.models.optim.BlockCG`):
    the first exchange only measures the gradient, each later one the gradient at the trial
    point ``w + p`` and the joint curvature along ``p``; stop on :func:`cg_converged`."""
    n = len(y)
    grads, loss = _block_grads(parts, ws, y)
    cgs = [BlockCG().start(b, g, ridge) for b, g in zip(parts, grads, strict=True)]
    history, decreases, rz_prev = [loss], [], None
    for _ in range(1, epochs):
        rz = sum(c.rz for c in cgs)
        beta, _ = cg_scalars(rz, rz_prev, None)
        dirs = [c.direction(beta) for c in cgs]
        scores = sum((b @ d for b, d in zip(parts, dirs, strict=True)), np.zeros(n))
        _, alpha = cg_scalars(rz, rz_prev, float(scores @ scores) / n)
        trial, _ = _block_grads(parts, [w + d for w, d in zip(ws, dirs, strict=True)], y)
        for j, (b, c) in enumerate(zip(parts, cgs, strict=True)):
            ws[j], cgs[j] = c.advance(b, ws[j], trial[j], alpha, beta, ridge)
        rz_prev = rz
        decreases.append(alpha * rz)
        history.append(_block_grads(parts, ws, y)[1])
        if cg_converged(decreases, tol):
            return history, True
    return history, False
