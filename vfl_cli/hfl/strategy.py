"""How the parameter server weights the nodes' deltas: one small Strategy base, one hook per phase.

Written the way Flower writes its server strategies: the aggregation maths are pure functions in
:mod:`vfl_cli.hfl.aggregation`, and a weighting is a small subclass of :class:`Strategy` with
one hook per phase of a round:

* :meth:`Strategy.weigh` (after the deltas arrived): the node weights of this round, from each
  node's sample count and (for strategies with ``needs_stats``) its statistics;
* :meth:`Strategy.learn` (after the server scored the new master model): what the strategy
  learns from the round's validation loss, and the round's policy to record.

The same objects run in the file-based job (:mod:`vfl_cli.protocol.hfl`, which keeps
:meth:`Strategy.state_dict` in its job state between rounds) and in the in-process
:func:`vfl_cli.hfl.simulation.simulate`, so both give the same weights for the same seeds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vfl_cli.errors import VflError
from vfl_cli.hfl.aggregation import ActorCritic, fedavg_weights

__all__ = [
    "WEIGHTINGS",
    "ActorCriticStrategy",
    "FedAvg",
    "Learned",
    "Strategy",
    "make_strategy",
    "restore_strategy",
]


@dataclass(frozen=True)
class Learned:
    """What a round taught the strategy: the policy to record and, if it learns, its record."""

    policy: np.ndarray
    record: dict[str, float] | None = None


class Strategy(ABC):
    """A weighting of the nodes' deltas, one hook per round phase."""

    name: ClassVar[str]
    #: The nodes must send their per-node statistics (``loss_before``, ...) with their deltas.
    needs_stats: ClassVar[bool] = False

    @abstractmethod
    def weigh(self, counts: Sequence[int], stats: Sequence[Mapping[str, float]]) -> np.ndarray:
        """The weights (summing to 1) of this round's deltas."""

    def learn(self, weights: np.ndarray, loss_before: float, loss_after: float) -> Learned:
        """Learn from the round's change of validation loss; by default nothing to learn."""
        return Learned(np.asarray(weights, dtype=np.float64))

    def state_dict(self) -> dict[str, Any] | None:
        """What must survive between rounds (JSON-able), or None for a stateless strategy."""
        return None


class FedAvg(Strategy):
    """Weights proportional to each node's sample count (McMahan et al. 2017)."""

    name = "fedavg"

    def weigh(self, counts: Sequence[int], stats: Sequence[Mapping[str, float]]) -> np.ndarray:
        return fedavg_weights(counts)


class ActorCriticStrategy(Strategy):
    """Weights sampled from a policy an Actor-Critic network learns from the validation loss."""

    name = "actor-critic"
    needs_stats = True

    def __init__(self, ac: ActorCritic) -> None:
        self.ac = ac

    def weigh(self, counts: Sequence[int], stats: Sequence[Mapping[str, float]]) -> np.ndarray:
        return self.ac.act(counts, list(stats))

    def learn(self, weights: np.ndarray, loss_before: float, loss_after: float) -> Learned:
        record = self.ac.learn(loss_before - loss_after)
        # After learn(), prev_probs is the mean policy of the round just played.
        probs = self.ac.prev_probs
        policy = probs.copy() if probs is not None else np.asarray(weights, dtype=np.float64)
        return Learned(policy, record)

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.ac.config(), "state": _json(self.ac.state_dict())}


#: The weightings a job or a simulation may name.
WEIGHTINGS: tuple[str, ...] = (FedAvg.name, ActorCriticStrategy.name)


def make_strategy(
    weighting: str, n_nodes: int, *, seed: int, actor_critic: Mapping[str, Any] | None = None
) -> Strategy:
    """A fresh strategy for ``n_nodes`` nodes.

    Raises:
        VflError: an unknown weighting.
    """
    if weighting == FedAvg.name:
        return FedAvg()
    if weighting == ActorCriticStrategy.name:
        return ActorCriticStrategy(ActorCritic(n_nodes, seed=seed, **dict(actor_critic or {})))
    raise VflError(f"unknown weighting {weighting!r}; allowed: {', '.join(WEIGHTINGS)}")


def restore_strategy(saved: Mapping[str, Any] | None) -> Strategy:
    """The strategy whose :meth:`Strategy.state_dict` is ``saved`` (None: FedAvg)."""
    if saved is None:
        return FedAvg()
    ac = ActorCritic(**saved["config"])
    ac.load_state_dict(saved["state"])
    return ActorCriticStrategy(ac)


def _json(value: Any) -> Any:
    """Actor-Critic state as JSON: arrays to nested lists, numpy scalars to Python numbers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Mapping):
        return {k: _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
