"""The parameter server's aggregation: FedAvg and Actor-Critic node weighting.

Each round the server holds the master model ``m`` (a flat vector) and receives one delta
``d_i`` per node (see :mod:`vfl_cli.hfl.worker`). It chooses weights ``w_i >= 0`` with
``sum(w) = 1`` and sets ``m <- m + server_lr * sum_i w_i d_i``. The weighted sum is the *only*
function of the deltas the update needs (:func:`weighted_sum`, then :func:`apply_sum`), so under
secure aggregation the server can receive that sum alone. The weights themselves are computed
from per-node scalars (sample counts, reported statistics) and, for Actor-Critic, from the
validation loss of the aggregated model, never from an individual delta.

FedAvg
------
``w_i = n_i / sum_j n_j`` (:func:`fedavg_weights`), McMahan et al. 2017.

Actor-Critic weighting (seed 002)
---------------------------------
A policy learns, online and one round at a time, how much to trust each node. With ``N``
nodes, FedAvg prior ``q_i = n_i / sum n`` and round ``t``:

*State* ``s_t``: the previous round's probabilities ``p_{t-1}`` (``p_0 = q``) and, per node
``i``, a feature row (:func:`node_features`):

  - ``log(n_i / mean n)``: its relative sample count,
  - ``log(x_i / median_j x_j)``, clipped to ``[-3, 3]``, for each statistic ``x`` the nodes
    report with their deltas (``loss_before``, ``loss_after``, ``delta_norm``): how the node
    compares with the others. A node with noisy or poisoned labels fits the master model worse
    (high ``loss_before``) and cannot fit its own rows as well (high ``loss_after``).

  The critic sees the log mean ``loss_before`` and ``loss_after`` over nodes (how far training
  has come) and the previous scaled reward.

*Actor*: one small network ``f`` (features -> 8 tanh -> 1), shared by all nodes, so the policy
does not depend on node order and what it learns about one node's statistics applies to any
node showing them. The policy's mean logits are::

    mu_i = memory * log p_{t-1,i} + (1 - memory) * log q_i + bound * tanh(f(x_i) / bound)

so each round's probabilities are the previous round's, adjusted by the actor's scores (a
multiplicative-weights update: a node that keeps looking bad keeps losing weight), pulled
slightly back towards FedAvg (``memory = 0.9``), with at most ``bound = 2`` change of a logit
per round. An untrained actor (zero output layer) gives exactly FedAvg.

*Action*: exploratory logits ``a = mu + sigma * eps`` (``sigma = 0.75``); the weights are
``p_t = softmax(a)``, used to aggregate. ``eps ~ N(0, I)`` is drawn from ``(seed, t // 2)`` and
negated in odd rounds (antithetic pairs), so a slowly drifting error of the critic cancels
within each pair instead of pushing the actor one way. The next state carries the mean policy
``softmax(mu)``, so exploration noise does not accumulate in the weights.
``act(explore=False)`` returns ``softmax(mu)`` without exploring or learning.

*Reward*: the improvement of the aggregated model on the server's validation data,
``r_t = L_val(m_t) - L_val(m_{t+1})``, divided by ``g_t``, the FedAvg-weighted decrease of the
nodes' local losses this round. ``g_t`` is known before the action, so it is a per-state
positive scale (the policy gradient keeps its direction) that keeps rewards comparable while
training converges.

*Critic* ``V`` (inputs above -> 8 tanh -> 1) estimates the scaled reward of the current policy.
The first reward sets its output bias: there is no baseline yet, so the actor is not updated
in round 0.

*Update*, once per round: advantage ``A = r_t / g_t - V(s_t)``. Critic: one Adam step
(lr 0.05) down the gradient of ``(V(s_t) - r_t / g_t)^2 / 2``. Actor: one plain SGD step (lr
0.2) up ``A * log pi(a | s) + 0.01 * H(softmax(mu))``, where ``grad_mu log pi = eps / sigma`` for
the Gaussian policy on the logits and the entropy ``H`` keeps the policy from collapsing onto
one node. SGD rather than Adam, because Adam takes full-size steps on the first, nearly
uninformative gradients and its momentum keeps them going. A node whose extra weight is
followed by a worse validation loss than the critic expected has its score lowered, and so
has any node with the same statistics.

Everything the server must keep between rounds is in :meth:`ActorCritic.state_dict` (plain
values and numpy arrays), so a file-based job can persist it and resume.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vfl_cli.checks import whole
from vfl_cli.errors import VflError
from vfl_cli.hfl.worker import STAT_NAMES, Delta
from vfl_cli.models.nn import Sequential, build_sequential
from vfl_cli.models.optim import SGD, Adam, Optimizer

__all__ = [
    "ActorCritic",
    "aggregate",
    "apply_sum",
    "fedavg_weights",
    "node_features",
    "weighted_sum",
]

_WEIGHT_SUM_TOLERANCE = 1e-9


# --- weights and sums ---------------------------------------------------------------------


def fedavg_weights(n_samples: Sequence[int] | np.ndarray) -> np.ndarray:
    """FedAvg weights: each node's share of all samples.

    Args:
        n_samples: Rows each node trained on, all >= 1.

    Returns:
        Float64 weights summing to 1.

    Raises:
        VflError: If the list is empty or a count is not a whole number >= 1.
    """
    counts = np.asarray(n_samples)
    if counts.ndim != 1 or counts.size == 0:
        raise VflError("fedavg_weights needs one sample count per node, got none")
    if not np.issubdtype(counts.dtype, np.integer) and not np.all(counts == np.round(counts)):
        raise VflError(f"sample counts must be whole numbers, got {counts.tolist()}")
    if np.any(counts < 1):
        raise VflError(f"every node needs at least one sample, got counts {counts.tolist()}")
    weights = counts.astype(np.float64)
    out: np.ndarray = weights / weights.sum()
    return out


def _check_weights(weights: Any, n_nodes: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_nodes,):
        raise VflError(f"got {w.size} weights for {n_nodes} deltas")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise VflError(f"weights must be finite and >= 0, got {w.tolist()}")
    if abs(float(w.sum()) - 1.0) > _WEIGHT_SUM_TOLERANCE:
        raise VflError(f"weights must sum to 1, they sum to {float(w.sum())!r}")
    return w


def _values(delta: Delta | np.ndarray) -> np.ndarray:
    return delta.values if isinstance(delta, Delta) else np.asarray(delta, dtype=np.float64)


def weighted_sum(deltas: Sequence[Delta | np.ndarray], weights: Any) -> np.ndarray:
    """``sum_i w_i d_i``: the only function of the deltas the server needs.

    Under secure aggregation this sum is computed on ciphertexts and only its decryption is
    revealed; the server then calls :func:`apply_sum`.

    Args:
        deltas: One delta (or delta vector) per node, all the same length.
        weights: One weight per node, >= 0, summing to 1.

    Returns:
        The weighted sum, float64.

    Raises:
        VflError: If there are no deltas, their lengths differ or the weights are invalid.
    """
    if not deltas:
        raise VflError("no deltas to aggregate")
    vectors = [_values(d) for d in deltas]
    size = vectors[0].shape
    for index, vec in enumerate(vectors):
        if vec.ndim != 1 or vec.shape != size:
            raise VflError(
                f"delta {index} has shape {vec.shape}, delta 0 has shape {size}; "
                "all nodes must train the same model"
            )
    w = _check_weights(weights, len(vectors))
    total = np.zeros(size, dtype=np.float64)
    for wi, vec in zip(w, vectors, strict=True):
        total += wi * vec
    return total


def apply_sum(master: Any, summed: Any, server_lr: float = 1.0) -> np.ndarray:
    """New master model ``master + server_lr * summed``.

    Args:
        master: Current master model vector.
        summed: The weighted sum of the deltas (:func:`weighted_sum`).
        server_lr: Server learning rate (1.0 is plain FedAvg).

    Returns:
        The new master vector (a new array).

    Raises:
        VflError: If the shapes differ, ``server_lr`` is not positive or a value is not finite.
    """
    m = np.asarray(master, dtype=np.float64)
    s = np.asarray(summed, dtype=np.float64)
    if m.ndim != 1 or m.shape != s.shape:
        raise VflError(f"master model has shape {m.shape} but the delta sum has shape {s.shape}")
    if isinstance(server_lr, bool) or not isinstance(server_lr, (int, float)) or server_lr <= 0:
        raise VflError(f"server_lr must be a number > 0, got {server_lr!r}")
    new: np.ndarray = m + float(server_lr) * s
    if not np.all(np.isfinite(new)):
        raise VflError("aggregated model contains NaN or infinite values")
    return new


def aggregate(
    master: Any,
    deltas: Sequence[Delta | np.ndarray],
    weights: Any,
    server_lr: float = 1.0,
) -> np.ndarray:
    """One server step: ``master + server_lr * sum_i w_i d_i``.

    Args:
        master: Current master model vector.
        deltas: One delta per node.
        weights: One weight per node, >= 0, summing to 1 (:func:`fedavg_weights`,
            :meth:`ActorCritic.act`).
        server_lr: Server learning rate.

    Returns:
        The new master model vector.

    Raises:
        VflError: If shapes or weights are invalid.
    """
    return apply_sum(master, weighted_sum(deltas, weights), server_lr)


# --- Actor-Critic -------------------------------------------------------------------------


def node_features(
    n_samples: Sequence[int] | np.ndarray,
    stats: Sequence[Mapping[str, float]],
    stat_names: Sequence[str] = STAT_NAMES,
) -> np.ndarray:
    """What the actor network sees of each node (see the module docstring).

    Every column compares a node with the others, so the features mean the same whatever the
    loss scale and however far training has come.

    Args:
        n_samples: Rows per node.
        stats: Reported statistics per node (``Delta.stats``), each holding ``stat_names``.
        stat_names: Which statistics to use; each must be >= 0.

    Returns:
        Matrix of shape ``(n_nodes, 1 + len(stat_names))``: ``log(n_i / mean n)``, then
        ``log(x_i / median x)`` clipped to ``[-3, 3]`` per statistic.

    Raises:
        VflError: If counts and statistics disagree in number, a statistic is missing, or a
            value is not finite and >= 0.
    """
    counts = np.asarray(n_samples, dtype=np.float64)
    n = counts.size
    if counts.ndim != 1 or len(stats) != n:
        raise VflError(
            f"got {n} sample counts and {len(stats)} statistics; give one of each per node"
        )
    if np.any(counts < 1):
        raise VflError(f"every node needs at least one sample, got counts {counts.tolist()}")
    columns = [np.log(counts / counts.mean())]
    for name in stat_names:
        values = []
        for index, node in enumerate(stats):
            if name not in node:
                raise VflError(f"node {index} did not report the statistic {name!r}")
            values.append(float(node[name]))
        x = np.array(values)
        if not np.all(np.isfinite(x)) or np.any(x < 0):
            raise VflError(f"statistic {name!r} must be finite and >= 0, got {x.tolist()}")
        floor = 1e-12 + 1e-6 * float(np.max(x))
        x = np.maximum(x, floor)
        columns.append(np.clip(np.log(x / np.median(x)), -3.0, 3.0))
    return np.stack(columns, axis=1)


class ActorCritic:
    """Learned node weighting for the parameter server (seed 002); see the module docstring.

    Use once per round::

        weights = ac.act(n_samples, stats)          # before aggregating
        new_master = aggregate(master, deltas, weights)
        ac.learn(val_loss(master) - val_loss(new_master))

    The defaults were tuned on simulations (``tests/benchmarks/bench_hfl.py``) and documented
    in ``docs/protocols/hfl.md``.

    Args:
        n_nodes: Number of nodes (fixed for the job, in a fixed order).
        hidden: Hidden units of the actor and the critic.
        actor_lr: SGD learning rate of the actor.
        critic_lr: Adam learning rate of the critic.
        sigma: Standard deviation of the exploration noise on the logits.
        memory: Weight of the previous round's log-probabilities in the mean logits (the rest
            goes to the FedAvg prior), in ``[0, 1)``.
        bound: Largest change the actor may make to a node's logit in one round.
        entropy: Weight of the entropy bonus that keeps the policy from collapsing onto one node.
        stat_names: Per-node statistics the state uses (each node must report them, plus
            ``loss_before`` and ``loss_after``, which scale the reward).
        seed: Seed of the initial networks and of each round's exploration noise.

    Raises:
        VflError: If a parameter is out of range.
    """

    def __init__(
        self,
        n_nodes: int,
        *,
        hidden: int = 8,
        actor_lr: float = 0.2,
        critic_lr: float = 0.05,
        sigma: float = 0.75,
        memory: float = 0.9,
        bound: float = 2.0,
        entropy: float = 0.01,
        stat_names: Sequence[str] = STAT_NAMES,
        seed: int = 0,
    ) -> None:
        if not whole(n_nodes, 2):
            raise VflError(f"Actor-Critic weighting needs at least 2 nodes, got {n_nodes!r}")
        if not whole(hidden, 1):
            raise VflError(f"hidden must be a whole number >= 1, got {hidden!r}")
        positive = {"actor_lr": actor_lr, "critic_lr": critic_lr, "sigma": sigma, "bound": bound}
        for name, value in positive.items():
            if not _finite(value) or value <= 0:
                raise VflError(f"{name} must be a number > 0, got {value!r}")
        if not _finite(memory) or not 0.0 <= memory < 1.0:
            raise VflError(f"memory must be in [0, 1), got {memory!r}")
        if not _finite(entropy) or entropy < 0:
            raise VflError(f"entropy must be a number >= 0, got {entropy!r}")
        if not whole(seed):
            raise VflError(f"seed must be a whole number, got {seed!r}")
        self.n_nodes = n_nodes
        self.hidden = hidden
        self.actor_lr = float(actor_lr)
        self.critic_lr = float(critic_lr)
        self.sigma = float(sigma)
        self.memory = float(memory)
        self.bound = float(bound)
        self.entropy = float(entropy)
        self.stat_names = tuple(stat_names)
        self.seed = seed
        self.actor = self._network(1 + len(self.stat_names), seed)
        self.critic = self._network(_CRITIC_INPUTS, seed + 1)
        self.actor_opts, self.critic_opts = self._optimizers()
        self.round = 0
        self.prev_probs: np.ndarray | None = None
        self.last_reward = 0.0
        self.pending: dict[str, np.ndarray] | None = None

    def _optimizers(self) -> tuple[list[Optimizer], list[Optimizer]]:
        # Plain SGD for the actor: its step is proportional to the evidence of the round. Adam
        # would take a full-size step on the first, nearly uninformative gradients and its
        # momentum would keep pushing that way for several rounds.
        actor: list[Optimizer] = [SGD(lr=self.actor_lr) for _ in self.actor.params()]
        critic: list[Optimizer] = [Adam(lr=self.critic_lr) for _ in self.critic.params()]
        return actor, critic

    def _network(self, n_in: int, seed: int) -> Sequential:
        # A zero output layer: the untrained actor changes nothing (FedAvg), the untrained
        # critic predicts 0.
        spec: list[dict[str, Any]] = [
            {"type": "dense", "units": self.hidden, "init": "xavier"},
            {"type": "tanh"},
            {"type": "dense", "units": 1, "init": "zeros"},
        ]
        return build_sequential(spec, n_in, seed=seed)

    def config(self) -> dict[str, Any]:
        """Constructor arguments, such that ``ActorCritic(**config)`` makes a fresh copy."""
        return {
            "n_nodes": self.n_nodes,
            "hidden": self.hidden,
            "actor_lr": self.actor_lr,
            "critic_lr": self.critic_lr,
            "sigma": self.sigma,
            "memory": self.memory,
            "bound": self.bound,
            "entropy": self.entropy,
            "stat_names": list(self.stat_names),
            "seed": self.seed,
        }

    # -- the policy ---------------------------------------------------------------------

    def _noise(self) -> np.ndarray:
        # Antithetic pairs: rounds 2k and 2k+1 explore in opposite directions. A slowly
        # drifting error of the critic then cancels within each pair instead of steadily
        # pushing the actor towards whatever was explored while rewards were falling.
        eps = np.random.default_rng([self.seed, self.round // 2]).standard_normal(self.n_nodes)
        return -eps if self.round % 2 else eps

    def _mean_logits(
        self, counts: np.ndarray, stats: Sequence[Mapping[str, float]]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        prior = fedavg_weights(counts)
        prev = prior if self.prev_probs is None else self.prev_probs
        features = node_features(counts, stats, self.stat_names)
        raw = self.actor.forward(features, train=False)[:, 0]
        base = self.memory * np.log(prev) + (1.0 - self.memory) * np.log(prior)
        mu = base + self.bound * np.tanh(raw / self.bound)
        return mu, features, prior, raw

    def act(
        self,
        n_samples: Sequence[int] | np.ndarray,
        stats: Sequence[Mapping[str, float]],
        *,
        explore: bool = True,
    ) -> np.ndarray:
        """This round's node probabilities (the aggregation weights).

        With ``explore`` (training) the action is sampled and remembered until :meth:`learn`;
        without, the mean policy ``softmax(mu)`` is returned and nothing changes.

        Args:
            n_samples: Rows per node, in node order.
            stats: Each node's reported statistics (``Delta.stats``), in node order.
            explore: Sample an exploratory action and wait for its reward.

        Returns:
            Float64 probabilities, one per node, summing to 1.

        Raises:
            VflError: If the number of nodes is wrong, a statistic is missing, or a previous
                action still waits for its reward.
        """
        counts = np.asarray(n_samples)
        if counts.shape != (self.n_nodes,):
            raise VflError(f"this Actor-Critic weights {self.n_nodes} nodes, got {counts.size}")
        if explore and self.pending is not None:
            raise VflError(
                f"round {self.round}: the previous action has no reward yet; call learn(reward) "
                "before act() again"
            )
        mu, features, prior, _ = self._mean_logits(counts, stats)
        mean_probs = _softmax(mu)
        if not explore:
            return mean_probs
        eps = self._noise()
        probs = _softmax(mu + self.sigma * eps)
        self.pending = {
            "features": features,
            "critic_input": self._critic_input(stats),
            "eps": eps,
            "mean_probs": mean_probs,
            "gain": np.array(_local_gain(prior, stats)),
        }
        return probs

    def _critic_input(self, stats: Sequence[Mapping[str, float]]) -> np.ndarray:
        # How far training has come (mean local losses) and the last scaled reward.
        before = np.mean([_stat(s, "loss_before") for s in stats])
        after = np.mean([_stat(s, "loss_after") for s in stats])
        logs = np.log(np.maximum([before, after], 1e-12))
        return np.array([[logs[0], logs[1], self.last_reward]])

    def learn(self, reward: float) -> dict[str, float]:
        """Update the critic and the actor with the reward of the last action.

        Args:
            reward: Improvement of the aggregated model on validation data (higher is better),
                e.g. ``val_loss(before) - val_loss(after)``.

        Returns:
            ``reward`` (as given), ``scaled_reward`` (divided by the nodes' mean local loss
            decrease), ``value`` (the critic's estimate) and ``advantage``.

        Raises:
            VflError: If there is no pending action or the reward is not finite.
        """
        if self.pending is None:
            raise VflError("no action waits for a reward; call act() first")
        if isinstance(reward, bool) or not _finite(reward):
            raise VflError(f"reward must be a finite number, got {reward!r}")
        pending = self.pending
        # Dividing by the local loss decrease the nodes reported (a state quantity, fixed
        # before the action) keeps rewards on one scale while training converges.
        scaled = float(reward) / float(pending["gain"])
        if self.round == 0:
            # No baseline exists yet: the first reward sets the critic's output bias instead
            # of producing an arbitrary advantage that would push the actor anywhere.
            self.critic.layers[-1].params()[1][...] = scaled
        value = float(self.critic.forward(pending["critic_input"], train=False)[0, 0])
        advantage = scaled - value
        # Critic: gradient of (V - r)^2 / 2.
        self.critic.forward(pending["critic_input"], train=True)
        self.critic.backward(np.array([[-advantage]]))
        _step(self.critic, self.critic_opts)
        if self.round > 0:
            # Actor: ascend A * grad log pi + entropy * grad H; grad log pi with respect to the
            # mean logits is eps / sigma. The optimiser descends, so it gets the negative.
            raw = self.actor.forward(pending["features"], train=True)[:, 0]
            p = pending["mean_probs"]
            log_p = np.log(np.maximum(p, 1e-300))
            ascent = advantage * pending["eps"] / self.sigma
            ascent = ascent - self.entropy * p * (log_p - float(np.sum(p * log_p)))
            ascent = ascent * (1.0 - np.tanh(raw / self.bound) ** 2)
            self.actor.backward(-ascent[:, None])
            _step(self.actor, self.actor_opts)
        # The next state carries the mean policy, not the noisy sample, so exploration noise
        # does not accumulate in the weights.
        self.prev_probs = pending["mean_probs"].copy()
        self.last_reward = scaled
        self.pending = None
        self.round += 1
        return {
            "reward": float(reward),
            "scaled_reward": scaled,
            "value": value,
            "advantage": advantage,
        }

    # -- persistence ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes between rounds: plain values and numpy arrays (copies).

        ``config()`` holds the constructor arguments; a server stores both and resumes with
        ``ac = ActorCritic(**config); ac.load_state_dict(state)``.
        """
        pending = None
        if self.pending is not None:
            pending = {key: value.copy() for key, value in self.pending.items()}
        return {
            "kind": _STATE_KIND,
            "version": _STATE_VERSION,
            "round": self.round,
            "prev_probs": None if self.prev_probs is None else self.prev_probs.copy(),
            "last_reward": self.last_reward,
            "actor": self.actor.get_flat(),
            "critic": self.critic.get_flat(),
            "actor_opts": [opt.state_dict() for opt in self.actor_opts],
            "critic_opts": [opt.state_dict() for opt in self.critic_opts],
            "pending": pending,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (arrays may be nested lists from JSON).

        Raises:
            VflError: If the state is of another kind, version or size, or malformed; nothing
                is changed then.
        """
        if state.get("kind") != _STATE_KIND or state.get("version") != _STATE_VERSION:
            raise VflError(
                f"state is {state.get('kind')!r} version {state.get('version')!r}, "
                f"expected {_STATE_KIND!r} version {_STATE_VERSION}"
            )
        round_ = state.get("round")
        if not whole(round_, 0):
            raise VflError(f"state field 'round' must be a whole number >= 0, got {round_!r}")
        prev = state.get("prev_probs")
        prev_arr = None if prev is None else _array(prev, "prev_probs", (self.n_nodes,))
        last = state.get("last_reward")
        if isinstance(last, bool) or not _finite(last):
            raise VflError(f"state field 'last_reward' must be a finite number, got {last!r}")
        last_reward = float(last)  # type: ignore[arg-type]  # checked by _finite
        actor = _array(state.get("actor"), "actor", (self.actor.n_params,))
        critic = _array(state.get("critic"), "critic", (self.critic.n_params,))
        actor_opts, critic_opts = self._optimizers()
        for opts, key in ((actor_opts, "actor_opts"), (critic_opts, "critic_opts")):
            saved = state.get(key)
            if not isinstance(saved, Sequence) or len(saved) != len(opts):
                raise VflError(f"state field {key!r} must hold {len(opts)} optimiser states")
            for opt, opt_state in zip(opts, saved, strict=True):
                if not isinstance(opt_state, Mapping):
                    raise VflError(f"state field {key!r} must hold optimiser state dicts")
                opt.load_state_dict(dict(opt_state))
        pending_in = state.get("pending")
        pending = None
        if pending_in is not None:
            shapes = {
                "features": (self.n_nodes, 1 + len(self.stat_names)),
                "critic_input": (1, _CRITIC_INPUTS),
                "eps": (self.n_nodes,),
                "mean_probs": (self.n_nodes,),
                "gain": (),
            }
            if not isinstance(pending_in, Mapping) or set(pending_in) != set(shapes):
                raise VflError(f"state field 'pending' must hold {', '.join(shapes)}")
            pending = {
                k: _array(pending_in[k], f"pending.{k}", shape) for k, shape in shapes.items()
            }
        # Everything is checked: only now change the object.
        self.actor.set_flat(actor)
        self.critic.set_flat(critic)
        self.actor_opts, self.critic_opts = actor_opts, critic_opts
        self.round = round_
        self.prev_probs = prev_arr
        self.last_reward = last_reward
        self.pending = pending


_STATE_KIND = "hfl/actor-critic"
_STATE_VERSION = 1
_CRITIC_INPUTS = 3


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)


def _stat(stats: Mapping[str, float], name: str) -> float:
    if name not in stats:
        raise VflError(f"a node did not report the statistic {name!r}; Actor-Critic needs it")
    value = float(stats[name])
    if not math.isfinite(value):
        raise VflError(f"statistic {name!r} must be finite, got {value}")
    return value


def _local_gain(prior: np.ndarray, stats: Sequence[Mapping[str, float]]) -> float:
    # FedAvg-weighted decrease of the local losses in this round, floored so a converged job
    # does not divide by zero.
    gains = [_stat(s, "loss_before") - _stat(s, "loss_after") for s in stats]
    return max(float(np.dot(prior, gains)), 1e-6)


def _array(value: Any, name: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise VflError(f"state field {name!r} is not a numeric array") from exc
    if array.shape != shape:
        raise VflError(
            f"state field {name!r} has shape {array.shape}, expected {shape}; "
            "was it saved with another config or number of nodes?"
        )
    if not np.all(np.isfinite(array)):
        raise VflError(f"state field {name!r} contains NaN or infinite values")
    return array


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - np.max(z))
    out: np.ndarray = e / e.sum()
    return out


def _step(model: Sequential, optimizers: Sequence[Optimizer]) -> None:
    for p, g, opt in zip(model.params(), model.grads(), optimizers, strict=True):
        p[...] = opt.step(p, g)
