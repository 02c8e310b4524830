"""DP-FedAvg for multi-node training: per-node clipping, Gaussian noise, an RDP accountant.

Node-level differential privacy (McMahan et al., ICLR 2018, "Learning Differentially Private
Recurrent Language Models"): every node clips its delta to L2 norm ``clip`` and adds its share of
Gaussian noise, ``N(0, (z * clip)^2 / N)`` per entry with ``N`` nodes, drawn from its own CSPRNG.
Under secure aggregation the server only ever sees the weighted sum, whose noise is the sum of
the shares; nobody sees one node's noise-free delta.

Accounting: one round is a Gaussian mechanism on the weighted sum ``sum_i w_i d_i``. Taking one
node's delta away (its weight kept) moves the sum by at most ``max_i w_i * clip``, and the sum's
noise has standard deviation ``z * clip * sqrt(sum_i w_i^2 / N)`` per entry, so the round's noise
multiplier is :func:`effective_multiplier`. The Gaussian mechanism with multiplier ``z`` is
``(alpha, alpha / (2 z^2))``-RDP for every order ``alpha > 1`` (Mironov, 2017); RDP adds up over
rounds, and :func:`epsilon` converts to ``(epsilon, delta)``-DP with the conversion of Balle et
al. (2020), the one TensorFlow Privacy and Opacus use. No sampling amplification is claimed:
every node takes part in every round.

What the guarantee does not cover: the sample counts ``n_i`` (sent in the clear) and, with
Actor-Critic weighting, the per-node statistics; so the protocol refuses DP with Actor-Critic.
A node knows its own noise share, so a coalition of nodes removes its shares from the sum.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

import numpy as np

from vfl_cli.errors import VflError

__all__ = [
    "RDP_ORDERS",
    "clip_delta",
    "effective_multiplier",
    "epsilon",
    "gaussian_rdp",
    "private_delta",
]

#: Orders at which the accountant tracks Renyi DP (those of TensorFlow Privacy, trimmed).
RDP_ORDERS: tuple[float, ...] = (
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 24.0, 32.0,
    48.0, 64.0, 128.0, 256.0,
)


def clip_delta(values: np.ndarray, bound: float) -> np.ndarray:
    """``values`` scaled down to L2 norm at most ``bound`` (unchanged when already inside)."""
    norm = float(np.linalg.norm(values))
    return values if norm <= bound else values * (bound / norm)


def private_delta(
    values: np.ndarray,
    clip: float,
    noise_multiplier: float,
    n_nodes: int,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """One node's DP-FedAvg contribution: clipped to ``clip``, plus its share of the noise.

    Args:
        values: The node's delta.
        clip: L2 bound of the delta.
        noise_multiplier: ``z``; the whole sum's noise is ``z * clip`` per entry (equal weights).
        n_nodes: Number of nodes that add a share to the sum.
        rng: For tests only; by default a generator seeded from the OS CSPRNG, which no other
            party knows (a seed in the job's parameters would let anyone remove the noise).

    Returns:
        The clipped, noised delta (float64).
    """
    if clip <= 0 or noise_multiplier < 0 or n_nodes < 1:
        raise VflError("DP-FedAvg needs clip > 0, noise_multiplier >= 0 and at least one node")
    gen = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
    std = noise_multiplier * clip / math.sqrt(n_nodes)
    return clip_delta(np.asarray(values, dtype=np.float64), clip) + gen.normal(
        0.0, std, size=np.shape(values)
    )


def effective_multiplier(weights: Sequence[float], noise_multiplier: float) -> float:
    """The noise multiplier of one round's weighted sum for the node the sum depends on most.

    ``z * sqrt(sum w_i^2 / N) / max w_i``: equal to ``z`` with equal weights, smaller when one
    node weighs more than the others.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or float(w.max()) <= 0:
        raise VflError("DP accounting needs at least one positive weight")
    return float(noise_multiplier * math.sqrt(float(np.sum(w**2)) / w.size) / float(w.max()))


def gaussian_rdp(noise_multiplier: float, orders: Sequence[float] = RDP_ORDERS) -> np.ndarray:
    """Renyi DP of one Gaussian mechanism at each order: ``alpha / (2 z^2)`` (inf for z = 0)."""
    a = np.asarray(orders, dtype=np.float64)
    if noise_multiplier <= 0:
        return np.full(a.shape, np.inf)
    return a / (2.0 * noise_multiplier**2)


def epsilon(
    rdp: Sequence[float], delta: float, orders: Sequence[float] = RDP_ORDERS
) -> tuple[float, float]:
    """``(epsilon, best order)`` of a composed RDP curve at ``delta``.

    ``eps = min_alpha rdp(alpha) + log((alpha - 1) / alpha) - (log delta + log alpha) / (alpha - 1)``
    (Balle et al., 2020, Theorem 21), never below 0.
    """
    if not 0 < delta < 1:
        raise VflError(f"delta must lie in (0, 1), not {delta!r}")
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    eps = r + np.log((a - 1) / a) - (math.log(delta) + np.log(a)) / (a - 1)
    best = int(np.argmin(eps))
    return max(0.0, float(eps[best])), float(a[best])
