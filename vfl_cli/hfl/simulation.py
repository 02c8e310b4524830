"""All parties of multi-node training in one process, for tests, benchmarks and tuning.

:func:`simulate` runs the round loop a real job runs across files (nodes train and send deltas,
the server weights and aggregates them), but with every party's data in memory. It is a
plaintext reference: a protocol run must give the same master model for the same seeds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vfl_cli.checks import whole
from vfl_cli.errors import VflError
from vfl_cli.hfl.aggregation import ActorCritic, aggregate
from vfl_cli.hfl.model import init_model, model_loss
from vfl_cli.hfl.strategy import WEIGHTINGS, ActorCriticStrategy, make_strategy
from vfl_cli.hfl.worker import local_train, node_seed

__all__ = ["WEIGHTINGS", "SimulationResult", "simulate"]


@dataclass
class SimulationResult:
    """What a simulated job produced.

    Attributes:
        master: Final master model vector.
        weights: The node weights used to aggregate in each round, shape ``(rounds, n_nodes)``
            (for Actor-Critic: the exploratory sample).
        policy: Actor-Critic only: the mean policy ``softmax(mu)`` of each round, the weights
            without exploration noise; equal to ``weights`` for FedAvg.
        val_loss: Validation loss of the master model before round 1 and after each round.
        rewards: Actor-Critic learning records per round (empty for FedAvg).
        actor_critic: The trained weighting policy (None for FedAvg).
    """

    master: np.ndarray
    weights: np.ndarray
    policy: np.ndarray
    val_loss: list[float] = field(default_factory=list)
    rewards: list[dict[str, float]] = field(default_factory=list)
    actor_critic: ActorCritic | None = None


def simulate(
    spec: Sequence[Mapping[str, Any]],
    nodes: Sequence[tuple[np.ndarray, np.ndarray]],
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    rounds: int,
    weighting: str = "fedavg",
    epochs: int = 1,
    batch_size: int | None = 32,
    lr: float = 0.1,
    server_lr: float = 1.0,
    head: str = "binary",
    seed: int = 0,
    actor_critic: Mapping[str, Any] | None = None,
) -> SimulationResult:
    """Run ``rounds`` rounds of multi-node training.

    Node ``i`` in round ``t`` trains with seed ``(seed, t, i)`` folded into one integer, so
    weightings compared with the same seed see the same local randomness.

    Args:
        spec: Model architecture.
        nodes: ``(X_i, y_i)`` per node.
        X_val: The server's validation features.
        y_val: The server's validation targets.
        rounds: Number of rounds, >= 1.
        weighting: ``fedavg`` or ``actor-critic``.
        epochs: Local epochs per round.
        batch_size: Local mini-batch size (None for full batch).
        lr: Local learning rate.
        server_lr: Server learning rate.
        head: Loss head name.
        seed: Seed of the initial model, local training and the Actor-Critic.
        actor_critic: Extra :class:`ActorCritic` arguments.

    Returns:
        The :class:`SimulationResult`.

    Raises:
        VflError: If the weighting is unknown or an argument is invalid.
    """
    if weighting not in WEIGHTINGS:
        raise VflError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")
    if not whole(rounds, 1):
        raise VflError(f"rounds must be a whole number >= 1, got {rounds!r}")
    if len(nodes) < 1:
        raise VflError("need at least one node")
    in_dim = int(np.asarray(nodes[0][0]).shape[1])
    master = init_model(spec, in_dim, seed=seed)
    strategy = make_strategy(weighting, len(nodes), seed=seed, actor_critic=actor_critic)
    val_loss = [model_loss(spec, master, X_val, y_val, head)]
    history: list[np.ndarray] = []
    policy: list[np.ndarray] = []
    rewards: list[dict[str, float]] = []
    for t in range(rounds):
        deltas = [
            local_train(
                master, spec, X, y, epochs, batch_size, lr, node_seed(seed, t, i), head=head
            )
            for i, (X, y) in enumerate(nodes)
        ]
        weights = strategy.weigh([d.n_samples for d in deltas], [d.stats for d in deltas])
        master = aggregate(master, deltas, weights, server_lr)
        val_loss.append(model_loss(spec, master, X_val, y_val, head))
        learned = strategy.learn(weights, val_loss[-2], val_loss[-1])
        if learned.record is not None:
            rewards.append(learned.record)
        policy.append(learned.policy)
        history.append(weights)
    return SimulationResult(
        master=master,
        weights=np.array(history),
        policy=np.array(policy),
        val_loss=val_loss,
        rewards=rewards,
        actor_critic=strategy.ac if isinstance(strategy, ActorCriticStrategy) else None,
    )
