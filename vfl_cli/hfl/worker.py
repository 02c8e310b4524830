"""Training workers (nodes) of multi-node training: local training and the delta update.

A node holds rows (all of the model's feature columns, its own samples) and receives the
server's master model as a flat vector. It keeps that vector as its *snapshot*, trains a local
copy on its rows, and sends back the *delta* ``trained - snapshot`` together with its sample
count and a few scalar statistics that the server's weighting may use.

What leaves the node: the delta (a function of its rows; without secure aggregation the server
sees it in the clear), ``n_samples``, and the statistics of :data:`STAT_NAMES` (local mean
losses before and after training, and the delta's norm). No row, label or per-sample value
leaves the node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfl_cli.checks import np_whole
from vfl_cli.errors import DataError, VflError
from vfl_cli.hfl.model import network
from vfl_cli.models.nn import Head, fit, make_head
from vfl_cli.models.optim import make_optimizer

__all__ = ["STAT_NAMES", "Delta", "local_train", "node_seed"]

#: Per-node statistics every :class:`Delta` carries (scalars, safe to show the server).
STAT_NAMES = ("loss_before", "loss_after", "delta_norm")


@dataclass(frozen=True)
class Delta:
    """A node's update: its locally trained model minus the snapshot it started from.

    Attributes:
        values: ``trained - snapshot``, float64, one entry per model parameter.
        n_samples: Number of rows the node trained on.
        stats: Scalar statistics, at least :data:`STAT_NAMES`: ``loss_before`` (mean local
            loss of the snapshot), ``loss_after`` (of the trained model, both in eval mode) and
            ``delta_norm`` (Euclidean norm of ``values``).
    """

    values: np.ndarray
    n_samples: int
    stats: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.float64)
        if values.ndim != 1:
            raise VflError(f"a delta must be a vector, got shape {values.shape}")
        if not np.all(np.isfinite(values)):
            raise VflError("delta contains NaN or infinite values; local training diverged")
        if not np_whole(self.n_samples):
            raise VflError(f"n_samples must be a whole number, got {self.n_samples!r}")
        if self.n_samples < 1:
            raise VflError(f"n_samples must be >= 1, got {self.n_samples}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "n_samples", int(self.n_samples))
        object.__setattr__(self, "stats", {k: float(v) for k, v in self.stats.items()})

    def stat_vector(self, names: Sequence[str] = STAT_NAMES) -> np.ndarray:
        """The statistics ``names`` as a float vector.

        Raises:
            VflError: If a statistic is missing.
        """
        missing = [name for name in names if name not in self.stats]
        if missing:
            raise VflError(
                f"delta lacks the statistic {missing[0]!r}; it has: {', '.join(self.stats) or 'none'}"
            )
        return np.array([self.stats[name] for name in names], dtype=np.float64)


def node_seed(seed: int, round_: int, node: int) -> int:
    """Local training seed of node ``node`` in round ``round_``: the job's seed, round and node
    folded into one integer, so that a job and its simulation train with the same randomness."""
    return (seed * 1000 + round_) * 100 + node


def local_train(
    model_flat: Any,
    spec: Sequence[Mapping[str, Any]],
    X: Any,
    y: Any,
    epochs: int,
    batch_size: int | None,
    lr: float,
    seed: int,
    *,
    head: Head | str = "binary",
    optimizer: str = "sgd",
    l2: float = 0.0,
) -> Delta:
    """Train the received model on the node's rows and return the delta update.

    The snapshot is ``model_flat`` as received; a fresh optimiser is used every round (its
    state would otherwise be a second, unaggregated model). Deterministic given ``seed``.

    Args:
        model_flat: The master model as received (the snapshot).
        spec: Architecture, e.g. :data:`~vfl_cli.hfl.model.LOGISTIC_SPEC`.
        X: The node's features, shape ``(n, d)``.
        y: The node's targets, shape ``(n,)``.
        epochs: Local epochs, >= 1.
        batch_size: Rows per mini-batch, or None for full batch.
        lr: Learning rate of the local optimiser.
        seed: Seed of the batch order and dropout (vary it per node and round).
        head: Loss head or its name (``binary``, ``multiclass``, ``regression``).
        optimizer: ``sgd`` or ``adam``.
        l2: L2 penalty on weights (not biases).

    Returns:
        The :class:`Delta`.

    Raises:
        DataError: If ``X`` or ``y`` is malformed.
        VflError: If the model does not fit the spec, a hyper-parameter is invalid or
            training diverges.
    """
    features = np.asarray(X, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] == 0:
        raise DataError(f"X must be a non-empty 2-D matrix, got shape {features.shape}")
    snapshot = np.array(model_flat, dtype=np.float64)
    model = network(spec, features.shape[1], snapshot, seed=seed)
    loss_head = make_head(head)
    target = loss_head.check_targets(y, model.out_dim)
    loss_before = loss_head.loss(model.forward(features, train=False), target)
    history = fit(
        model,
        loss_head,
        features,
        target,
        lambda: make_optimizer(optimizer, lr=lr, l2=l2),
        epochs,
        batch_size,
        seed,
    )
    values = model.get_flat() - snapshot
    stats = {
        "loss_before": float(loss_before),
        "loss_after": float(history[-1]),
        "delta_norm": float(np.linalg.norm(values)),
    }
    return Delta(values=values, n_samples=int(features.shape[0]), stats=stats)
