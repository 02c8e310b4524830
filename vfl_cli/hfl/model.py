"""The shared model of multi-node training: a network spec plus one flat parameter vector.

Every party of multi-node training (nodes, the parameter server, prediction workers) holds the
model as the pair ``(spec, flat)``: the architecture as a :mod:`vfl_cli.models.nn` spec list and
the parameters as one float64 vector in :meth:`~vfl_cli.models.nn.Sequential.get_flat` order.
Deltas, aggregation and updates are arithmetic on that vector.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vfl_cli.errors import VflError
from vfl_cli.models.nn import Head, Sequential, build_sequential, make_head

__all__ = [
    "LOGISTIC_SPEC",
    "init_model",
    "mlp_spec",
    "model_loss",
    "model_predict",
    "network",
]

Spec = Sequence[Mapping[str, Any]]

#: Logistic regression: a network with no hidden layer, one logit, zero initial weights.
LOGISTIC_SPEC: list[dict[str, Any]] = [{"type": "dense", "units": 1, "init": "zeros"}]


def mlp_spec(hidden: int = 16, outputs: int = 1, dropout: float = 0.0) -> list[dict[str, Any]]:
    """A one-hidden-layer ReLU network spec.

    Args:
        hidden: Hidden units.
        outputs: Output units (1 for the binary and regression heads, k for multiclass).
        dropout: Dropout rate after the hidden layer (0 for none).

    Returns:
        The spec list.
    """
    spec: list[dict[str, Any]] = [
        {"type": "dense", "units": hidden, "init": "he"},
        {"type": "relu"},
    ]
    if dropout:
        spec.append({"type": "dropout", "rate": dropout})
    spec.append({"type": "dense", "units": outputs})
    return spec


def network(spec: Spec, in_dim: int, flat: Any, seed: int = 0) -> Sequential:
    """The network ``spec`` with the parameters ``flat``.

    Args:
        spec: Architecture.
        in_dim: Number of feature columns.
        flat: Parameter vector.
        seed: Seed of the dropout masks (initial weights are overwritten by ``flat``).

    Returns:
        The network.

    Raises:
        VflError: If the spec is invalid or ``flat`` does not fit it.
    """
    model = build_sequential(spec, in_dim, seed=seed)
    model.set_flat(_flat(flat, model.n_params))
    return model


def _flat(flat: Any, n_params: int) -> np.ndarray:
    vec = np.asarray(flat, dtype=np.float64)
    if vec.shape != (n_params,):
        raise VflError(
            f"model vector has shape {vec.shape}, the spec needs ({n_params},); "
            "was it made for another spec or number of feature columns?"
        )
    return vec


def init_model(spec: Spec, in_dim: int, seed: int = 0) -> np.ndarray:
    """Initial parameter vector of ``spec`` (what the server starts the master model from).

    Args:
        spec: Architecture.
        in_dim: Number of feature columns.
        seed: Seed of the initial weights.

    Returns:
        The flat float64 parameter vector.
    """
    return build_sequential(spec, in_dim, seed=seed).get_flat()


def model_predict(spec: Spec, flat: Any, X: Any, head: Head | str = "binary") -> np.ndarray:
    """Predictions of the model ``(spec, flat)`` in eval mode (see :func:`~vfl_cli.models.nn.predict`)."""
    features = np.asarray(X, dtype=np.float64)
    if features.ndim != 2:
        raise VflError(f"X must be a 2-D matrix, got shape {features.shape}")
    model = network(spec, features.shape[1], flat)
    return make_head(head).predict(model.forward(features, train=False))


def model_loss(spec: Spec, flat: Any, X: Any, y: Any, head: Head | str = "binary") -> float:
    """Mean loss of the model ``(spec, flat)`` on ``(X, y)`` in eval mode."""
    features = np.asarray(X, dtype=np.float64)
    if features.ndim != 2:
        raise VflError(f"X must be a 2-D matrix, got shape {features.shape}")
    model = network(spec, features.shape[1], flat)
    loss_head = make_head(head)
    target = loss_head.check_targets(y, model.out_dim)
    return loss_head.loss(model.forward(features, train=False), target)
