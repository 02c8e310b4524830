"""vfl_cli.hfl: deltas, aggregation, Actor-Critic weighting, real-time and full updates."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_breast_cancer
from sklearn.preprocessing import StandardScaler

from vfl_cli.errors import InvalidArtifact, VflError
from vfl_cli.hfl import (
    LOGISTIC_SPEC,
    ActorCritic,
    Delta,
    FullUpdate,
    PredictionReplica,
    SparseUpdate,
    UpdatePublisher,
    aggregate,
    apply_sum,
    fedavg_weights,
    full_update,
    init_model,
    local_train,
    mlp_spec,
    model_loss,
    model_predict,
    realtime_update,
    simulate,
    update_from_bytes,
    weighted_sum,
)
from vfl_cli.hfl.model import network
from vfl_cli.models.nn import fit
from vfl_cli.models.optim import make_optimizer


@pytest.fixture(scope="module")
def breast() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_breast_cancer(return_X_y=True)
    return StandardScaler().fit_transform(X), y.astype(float)


# --- worker: deltas -----------------------------------------------------------------------


def test_delta_is_trained_minus_snapshot(breast: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = breast[0][:120], breast[1][:120]
    spec = mlp_spec(8)
    snapshot = init_model(spec, X.shape[1], seed=4)
    received = snapshot.copy()
    delta = local_train(received, spec, X, y, 2, 16, 0.05, seed=9)
    np.testing.assert_array_equal(received, snapshot)  # the node's input is untouched
    model = network(spec, X.shape[1], snapshot, seed=9)
    fit(model, "binary", X, y, lambda: make_optimizer("sgd", lr=0.05), 2, 16, seed=9)
    np.testing.assert_array_equal(delta.values, model.get_flat() - snapshot)
    assert delta.n_samples == 120
    assert delta.stats["loss_before"] == pytest.approx(model_loss(spec, snapshot, X, y))
    assert delta.stats["loss_after"] == pytest.approx(
        model_loss(spec, snapshot + delta.values, X, y)
    )
    assert delta.stats["loss_after"] < delta.stats["loss_before"]
    assert delta.stats["delta_norm"] == pytest.approx(float(np.linalg.norm(delta.values)))


def test_fedavg_of_one_full_batch_step_is_the_centralised_step(
    breast: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = breast
    master = np.random.default_rng(0).normal(scale=0.1, size=X.shape[1] + 1)
    parts = np.array_split(np.arange(len(y)), [100, 250, 300])  # unequal nodes
    deltas = [
        local_train(master, LOGISTIC_SPEC, X[p], y[p], 1, None, 0.5, seed=i)
        for i, p in enumerate(parts)
    ]
    new = aggregate(master, deltas, fedavg_weights([d.n_samples for d in deltas]))
    central = network(LOGISTIC_SPEC, X.shape[1], master)
    fit(central, "binary", X, y, lambda: make_optimizer("sgd", lr=0.5), 1, None, seed=0)
    np.testing.assert_allclose(new, central.get_flat(), rtol=0, atol=1e-12)


def test_delta_checks_its_fields() -> None:
    with pytest.raises(VflError, match="n_samples must be >= 1"):
        Delta(np.zeros(3), 0)
    with pytest.raises(VflError, match="NaN"):
        Delta(np.array([np.nan]), 1)
    with pytest.raises(VflError, match="lacks the statistic 'loss_before'"):
        Delta(np.zeros(2), 1).stat_vector()
    with pytest.raises(VflError, match="shape"):
        local_train(np.zeros(5), LOGISTIC_SPEC, np.zeros((3, 2)), [0, 1, 0], 1, None, 0.1, 0)


# --- aggregation --------------------------------------------------------------------------


def test_fedavg_weights() -> None:
    np.testing.assert_allclose(fedavg_weights([100, 300]), [0.25, 0.75])
    np.testing.assert_allclose(fedavg_weights([7, 7, 7, 7]), [0.25] * 4)
    with pytest.raises(VflError, match="at least one sample"):
        fedavg_weights([10, 0])
    with pytest.raises(VflError, match="one sample count per node"):
        fedavg_weights([])


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 6), st.integers(1, 40), st.integers(0, 2**16))
def test_aggregate_is_master_plus_weighted_sum(n_nodes: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    master = rng.normal(size=size)
    deltas = [rng.normal(size=size) for _ in range(n_nodes)]
    weights = rng.dirichlet(np.ones(n_nodes))
    weights /= weights.sum()
    expected = master + sum(w * d for w, d in zip(weights, deltas, strict=True))
    np.testing.assert_allclose(aggregate(master, deltas, weights), expected, atol=1e-12)
    # The server needs only the weighted sum (what secure aggregation would reveal).
    summed = weighted_sum(deltas, weights)
    np.testing.assert_array_equal(apply_sum(master, summed), aggregate(master, deltas, weights))
    np.testing.assert_allclose(
        aggregate(master, deltas, weights, server_lr=0.5), master + 0.5 * summed, atol=1e-12
    )


def test_aggregate_refuses_bad_input() -> None:
    master = np.zeros(3)
    with pytest.raises(VflError, match="no deltas"):
        aggregate(master, [], [])
    with pytest.raises(VflError, match="delta 1 has shape"):
        aggregate(master, [np.zeros(3), np.zeros(4)], [0.5, 0.5])
    with pytest.raises(VflError, match="sum to 1"):
        aggregate(master, [np.zeros(3), np.zeros(3)], [0.5, 0.6])
    with pytest.raises(VflError, match=">= 0"):
        aggregate(master, [np.zeros(3), np.zeros(3)], [1.5, -0.5])
    with pytest.raises(VflError, match="got 1 weights for 2 deltas"):
        aggregate(master, [np.zeros(3), np.zeros(3)], [1.0])
    with pytest.raises(VflError, match="master model has shape"):
        aggregate(np.zeros(2), [np.zeros(3)], [1.0])


# --- Actor-Critic -------------------------------------------------------------------------


def _nodes(
    X: np.ndarray, y: np.ndarray, seed: int, bad_share: float = 0.4
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    val, train = order[:100], order[100:]
    n_bad = int(bad_share * len(train))
    parts = [train[:n_bad], *np.array_split(train[n_bad:], 4)]
    nodes = []
    for index, rows in enumerate(parts):
        labels = y[rows].copy()
        if index == 0:  # the poisoned node: 40% of its labels flipped
            flip = rng.random(len(rows)) < 0.4
            labels[flip] = 1 - labels[flip]
        nodes.append((X[rows], labels))
    return nodes, (X[val], y[val])


def test_actor_critic_down_weights_a_poisoned_node(breast: tuple[np.ndarray, np.ndarray]) -> None:
    late_bad = []
    for seed in range(3):
        nodes, (X_val, y_val) = _nodes(*breast, seed=seed)
        kwargs: dict[str, Any] = {"rounds": 15, "batch_size": 32, "lr": 0.1, "seed": seed}
        ac = simulate(LOGISTIC_SPEC, nodes, X_val, y_val, weighting="actor-critic", **kwargs)
        fedavg = simulate(LOGISTIC_SPEC, nodes, X_val, y_val, weighting="fedavg", **kwargs)
        assert fedavg.weights[0, 0] == pytest.approx(0.4, abs=0.01)
        late_bad.append(ac.weights[-5:, 0].mean())
        assert late_bad[-1] < 0.25  # FedAvg gives the poisoned node 0.4
        assert ac.val_loss[-1] < fedavg.val_loss[-1]
        again = simulate(LOGISTIC_SPEC, nodes, X_val, y_val, weighting="actor-critic", **kwargs)
        np.testing.assert_array_equal(again.master, ac.master)  # deterministic given the seed
    assert np.mean(late_bad) < 0.2


def test_untrained_actor_critic_is_fedavg() -> None:
    ac = ActorCritic(3, seed=0)
    stats = [{"loss_before": 0.7, "loss_after": 0.5, "delta_norm": 1.0}] * 3
    np.testing.assert_allclose(ac.act([10, 20, 70], stats, explore=False), [0.1, 0.2, 0.7])
    weights = ac.act([10, 20, 70], stats)
    assert weights.sum() == pytest.approx(1.0) and np.all(weights > 0)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def test_actor_critic_state_survives_json_mid_round() -> None:
    rng = np.random.default_rng(0)

    def stats() -> list[dict[str, float]]:
        return [
            {"loss_before": float(a), "loss_after": float(b), "delta_norm": float(c)}
            for a, b, c in rng.uniform([0.5, 0.2, 0.1], [0.9, 0.4, 2.0], size=(4, 3))
        ]

    rounds = [(stats(), float(r)) for r in rng.normal(0.01, 0.01, size=8)]
    counts = [50, 60, 70, 80]
    whole = ActorCritic(4, seed=3)
    expected = []
    for s, r in rounds:
        expected.append(whole.act(counts, s))
        whole.learn(r)
    part = ActorCritic(4, seed=3)
    got = []
    for index, (s, r) in enumerate(rounds):
        got.append(part.act(counts, s))
        if index == 4:  # persist between act and learn, as a file-based server would
            saved = json.loads(json.dumps(_jsonable(part.state_dict())))
            part = ActorCritic(**part.config())
            part.load_state_dict(saved)
        part.learn(r)
    np.testing.assert_array_equal(np.array(got), np.array(expected))
    np.testing.assert_array_equal(part.actor.get_flat(), whole.actor.get_flat())


def test_actor_critic_refuses_misuse() -> None:
    ac = ActorCritic(2, seed=0)
    stats = [{"loss_before": 0.7, "loss_after": 0.5, "delta_norm": 1.0}] * 2
    with pytest.raises(VflError, match="no action waits"):
        ac.learn(0.1)
    with pytest.raises(VflError, match="weights 2 nodes, got 3"):
        ac.act([1, 2, 3], stats + stats[:1])
    ac.act([1, 2], stats)
    with pytest.raises(VflError, match="call learn"):
        ac.act([1, 2], stats)
    with pytest.raises(VflError, match="finite"):
        ac.learn(float("nan"))
    with pytest.raises(VflError, match="did not report the statistic 'delta_norm'"):
        ActorCritic(2).act([1, 2], [{"loss_before": 1.0, "loss_after": 0.5}] * 2)
    with pytest.raises(VflError, match="at least 2 nodes"):
        ActorCritic(1)
    before = ac.state_dict()
    with pytest.raises(VflError, match="state field 'actor' has shape"):
        ac.load_state_dict({**before, "actor": [0.0]})
    np.testing.assert_array_equal(ac.state_dict()["actor"], before["actor"])


# --- updates ------------------------------------------------------------------------------

N_FEATURES = 30
SPEC = mlp_spec(32)  # 30 * 32 + 32 + 32 + 1 = 1025 parameters


def _drift(master: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    # Training changes a few weights a lot and many a little.
    return master + rng.normal(scale=0.01, size=master.size) * rng.pareto(2.0, size=master.size)


def test_realtime_update_is_at_most_15_percent_of_a_full_update() -> None:
    master = init_model(SPEC, N_FEATURES, seed=0)
    assert master.size >= 1000
    new = _drift(master, np.random.default_rng(1))
    sparse = realtime_update(new, master, version=2, k_fraction=0.1)
    full = full_update(new, version=3)
    assert sparse.indices.size == int(np.ceil(0.1 * master.size))
    assert len(sparse.to_bytes()) == sparse.nbytes and len(full.to_bytes()) == full.nbytes
    assert sparse.nbytes <= 0.15 * full.nbytes


def test_realtime_update_sends_the_largest_changes() -> None:
    last = np.zeros(10)
    master = np.array([0.0, 5.0, -7.0, 0.1, 0.0, 3.0, 0.0, 0.0, -0.2, 1.0])
    update = realtime_update(master, last, version=1, k_fraction=0.3)
    assert update.indices.tolist() == [1, 2, 5]
    assert update.values.tolist() == [5.0, -7.0, 3.0]
    by_threshold = realtime_update(master, last, version=1, threshold=0.2)
    assert by_threshold.indices.tolist() == [1, 2, 5, 8, 9]
    nothing = realtime_update(last, last, version=1, k_fraction=0.5)
    assert nothing.indices.size == 0 and nothing.nbytes == 32
    with pytest.raises(VflError, match="exactly one of k_fraction or threshold"):
        realtime_update(master, last, version=1)
    with pytest.raises(VflError, match=r"k_fraction must be in \(0, 1\]"):
        realtime_update(master, last, version=1, k_fraction=0.0)


def test_realtime_updates_then_a_full_update_give_exactly_the_master() -> None:
    rng = np.random.default_rng(2)
    master = init_model(SPEC, N_FEATURES, seed=0)
    server = UpdatePublisher()
    replica = PredictionReplica(SPEC, N_FEATURES)
    replica.apply(server.full(master))
    for _ in range(6):
        master = _drift(master, rng)
        replica.apply(server.realtime(master, k_fraction=0.1))
        # The server's view of the workers is exact, bit for bit.
        assert replica.params is not None and server.last_sent is not None
        np.testing.assert_array_equal(replica.params, server.last_sent)
    assert not np.array_equal(replica.params, master)  # float32 changes, unsent weights
    replica.apply(server.full(master))
    np.testing.assert_array_equal(replica.params, master)
    assert replica.version == 8
    X = np.random.default_rng(0).normal(size=(4, N_FEATURES))
    np.testing.assert_array_equal(replica.predict(X), model_predict(SPEC, master, X))


def test_replica_refuses_gaps_and_replays_and_changes_nothing() -> None:
    master = init_model(SPEC, N_FEATURES, seed=0)
    rng = np.random.default_rng(3)
    server = UpdatePublisher()
    first = server.full(master)
    u2 = server.realtime(_drift(master, rng), k_fraction=0.1)
    u3 = server.realtime(_drift(master, rng), k_fraction=0.1)
    replica = PredictionReplica(SPEC, N_FEATURES)
    with pytest.raises(
        VflError, match="real-time update version 2 leaves a gap: expected version 1"
    ):
        replica.apply(u2)
    replica.apply(first)
    with pytest.raises(VflError, match="version 3 leaves a gap: expected version 2"):
        replica.apply(u3)
    held = replica.params.copy() if replica.params is not None else None
    replica.apply(u2)
    with pytest.raises(VflError, match="version 2 was already applied .* expected version 3"):
        replica.apply(u2)
    with pytest.raises(VflError, match="full update version 1 was already applied"):
        replica.apply(first)
    assert replica.version == 2 and held is not None
    # A missed real-time update can only be skipped by a full update with resync=True.
    u5 = full_update(master, version=5)
    with pytest.raises(VflError, match="leaves a gap: expected version 3"):
        replica.apply(u5)
    with pytest.raises(VflError, match="leaves a gap"):
        replica.apply(realtime_update(master, master, version=5, k_fraction=0.1), resync=True)
    replica.apply(u5, resync=True)
    assert replica.version == 5
    np.testing.assert_array_equal(replica.params, master)


def test_replica_needs_a_full_update_first_and_the_right_model() -> None:
    replica = PredictionReplica(LOGISTIC_SPEC, 3)
    with pytest.raises(VflError, match="needs a full update first"):
        replica.apply(realtime_update(np.ones(4), np.zeros(4), version=1, k_fraction=0.5))
    with pytest.raises(VflError, match="no model yet"):
        replica.predict(np.zeros((1, 3)))
    with pytest.raises(VflError, match="model of 5 parameters, this replica's model has 4"):
        replica.apply(full_update(np.zeros(5), version=1))
    with pytest.raises(VflError, match="publish a full update first"):
        UpdatePublisher().realtime(np.zeros(4), k_fraction=0.5)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 300), st.floats(0.01, 1.0), st.integers(0, 2**16))
def test_updates_round_trip_through_bytes(size: int, k: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    last, master = rng.normal(size=size), rng.normal(size=size)
    sparse = realtime_update(master, last, version=7, k_fraction=k)
    back = update_from_bytes(sparse.to_bytes())
    assert isinstance(back, SparseUpdate) and back.version == 7 and back.n_params == size
    np.testing.assert_array_equal(back.indices, sparse.indices)
    np.testing.assert_array_equal(back.values, sparse.values)
    full = update_from_bytes(full_update(master, 8).to_bytes())
    assert isinstance(full, FullUpdate)
    np.testing.assert_array_equal(full.values, master)


def test_update_from_bytes_refuses_damaged_data() -> None:
    data = realtime_update(np.ones(10), np.zeros(10), version=1, k_fraction=0.5).to_bytes()
    with pytest.raises(InvalidArtifact, match="announces 5 entries but holds 39 bytes"):
        update_from_bytes(data[:-1])
    with pytest.raises(InvalidArtifact, match="shorter than its header"):
        update_from_bytes(data[:10])
    with pytest.raises(InvalidArtifact, match="not a model update"):
        update_from_bytes(b"XXXX" + data[4:])
    full = full_update(np.ones(3), 1).to_bytes()
    with pytest.raises(InvalidArtifact, match="announces 3 parameters"):
        update_from_bytes(full + b"\0")


# ----- DP-FedAvg (vfl_cli.hfl.privacy) --------------------------------------------------------------
def _exact_gaussian_delta(eps: float, z: float) -> float:
    """Exact delta(eps) of the Gaussian mechanism with sensitivity 1 and noise z (Balle & Wang,
    2018, Theorem 8): Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z)."""
    from scipy.stats import norm

    return float(norm.cdf(0.5 / z - eps * z) - np.exp(eps) * norm.cdf(-0.5 / z - eps * z))


@settings(max_examples=25, deadline=None)
@given(z=st.floats(0.5, 5.0), rounds=st.integers(1, 50), delta=st.sampled_from([1e-5, 1e-6, 1e-3]))
def test_rdp_epsilon_is_a_valid_and_tight_bound(z: float, rounds: int, delta: float) -> None:
    from vfl_cli.hfl import privacy

    eps, _ = privacy.epsilon(rounds * privacy.gaussian_rdp(z), delta)
    # T rounds of noise z are exactly one Gaussian mechanism of noise z / sqrt(T).
    single = z / np.sqrt(rounds)
    assert eps == pytest.approx(privacy.epsilon(privacy.gaussian_rdp(single), delta)[0])
    # An upper bound: the exact mechanism's delta at this epsilon is at most the target ...
    assert _exact_gaussian_delta(eps, single) <= delta * (1 + 1e-9)
    # ... and not a loose one: at 0.75 * eps the exact delta already exceeds the target.
    assert _exact_gaussian_delta(0.75 * eps, single) > delta or eps < 0.5


def test_private_delta_clips_and_adds_the_node_share_of_noise() -> None:
    from vfl_cli.hfl import privacy

    big = np.full(400, 1.0)  # norm 20
    assert np.linalg.norm(privacy.clip_delta(big, 2.0)) == pytest.approx(2.0)
    small = np.full(400, 0.01)
    np.testing.assert_array_equal(privacy.clip_delta(small, 2.0), small)
    rng = np.random.default_rng(5)
    noised = privacy.private_delta(big, 2.0, 1.5, n_nodes=9, rng=rng)
    noise = noised - privacy.clip_delta(big, 2.0)
    assert np.std(noise) == pytest.approx(1.5 * 2.0 / 3.0, rel=0.15)  # z * clip / sqrt(N)
    # Without an injected generator the noise comes from the OS CSPRNG: two calls differ.
    assert not np.array_equal(privacy.private_delta(big, 2.0, 1.0, 4), privacy.private_delta(big, 2.0, 1.0, 4))
    with pytest.raises(VflError, match="clip > 0"):
        privacy.private_delta(big, 0.0, 1.0, 4)


def test_effective_multiplier_is_z_for_equal_weights_and_lower_otherwise() -> None:
    from vfl_cli.hfl import privacy

    assert privacy.effective_multiplier([0.25] * 4, 2.0) == pytest.approx(2.0)
    w = [140 / 340] + [50 / 340] * 4
    assert privacy.effective_multiplier(w, 1.0) == pytest.approx(
        np.sqrt(np.sum(np.square(w)) / 5) / max(w)
    )
    assert privacy.effective_multiplier(w, 1.0) < 1.0
    assert np.isinf(privacy.gaussian_rdp(0.0)).all()
    with pytest.raises(VflError, match="delta must lie"):
        privacy.epsilon(privacy.gaussian_rdp(1.0), 0.0)
