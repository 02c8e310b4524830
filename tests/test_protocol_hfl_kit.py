"""hfl on the protocol kit: typed states survive a killed process, strategies survive their state."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, drive, drive_with_crashes, introduce, make_party

from vfl_cli import jobs
from vfl_cli.hfl import ActorCritic, FedAvg, fedavg_weights, make_strategy, simulate
from vfl_cli.hfl.strategy import Strategy, restore_strategy
from vfl_cli.protocol import hfl
from vfl_cli.protocol.base import JobState
from vfl_cli.workspace import Workspace

DATA = ROOT / "sample_data" / "hfl"
NODES = [f"node{i}" for i in range(3)]


@pytest.fixture
def parties(tmp_path: Path) -> dict[str, Path]:
    ws = {"server": make_party(tmp_path, "server", "server", DATA / "server.csv", label_column="label")}
    for name in NODES:
        ws[name] = make_party(tmp_path, name, "worker", DATA / f"{name}.csv", label_column="label")
    ws["predictor"] = make_party(tmp_path, "predictor", "predictor", DATA / "predictor.csv")
    introduce(tmp_path, *ws)
    return ws


def test_a_killed_actor_critic_job_resumes_to_the_same_model(parties, monkeypatch) -> None:
    params = {"rounds": 3, "weighting": "actor-critic", "seed": 5, "full_every": 2,
              "secure_aggregation": False}
    jobs.start_job(Workspace(parties["server"]), "hfl", params, job="hk")
    with contextlib.suppress(AssertionError):  # one pass: every party accepts, unharmed
        drive(list(parties.values()), "hk", limit=1)
    # then every 4th commit of a step is killed half-way through
    drive_with_crashes(list(parties.values()), "hk", monkeypatch, every=4, tries=400)
    states = {n: jobs.load_state(Workspace(p), "hk")[0] for n, p in parties.items()}
    assert all(s.done for s in states.values())
    server = states["server"]
    assert len(server.results["node_weights"]) == 3 and server.results["nodes"] == NODES
    for name in NODES:  # every worker ends with the server's final master model
        np.testing.assert_array_equal(states[name].arrays["model"], server.arrays["master"])
    np.testing.assert_array_equal(states["predictor"].arrays["replica"], server.arrays["master"])
    # the same job without crashes gives the same model, weights and policy bit for bit
    monkeypatch.undo()
    jobs.start_job(Workspace(parties["server"]), "hfl", params, job="hc")
    drive(list(parties.values()), "hc")
    calm = jobs.load_state(Workspace(parties["server"]), "hc")[0]
    np.testing.assert_array_equal(calm.arrays["master"], server.arrays["master"])
    assert calm.results["node_weights"] == server.results["node_weights"]
    assert calm.results["policy"] == server.results["policy"]


def test_the_server_state_round_trips_through_the_job_state() -> None:
    state = hfl.ServerState(
        columns=["a", "b"], spec=[{"type": "dense", "units": 1}], mean=np.zeros(2),
        scale=np.ones(2), t=2, nodes=["n0", "n1"], node_weights=[[0.5, 0.5]],
        history=[{"round": 0, "val_loss": 0.7}], pending_weights=[0.25, 0.75],
        master=np.arange(3.0),
    )
    job = JobState(phase="wait-sum")
    state.store(job)
    loaded = hfl.ServerState.load(job)
    assert (loaded.t, loaded.nodes, loaded.pending_weights) == (2, ["n0", "n1"], [0.25, 0.75])
    np.testing.assert_array_equal(loaded.model(), np.arange(3.0))
    assert hfl.node_weights(job) == {"nodes": ["n0", "n1"], "node_weights": [[0.5, 0.5]],
                                     "policy": []}


def test_fedavg_strategy_is_fedavg_and_stateless() -> None:
    strategy = make_strategy("fedavg", 3, seed=0)
    assert isinstance(strategy, FedAvg) and strategy.state_dict() is None
    np.testing.assert_array_equal(strategy.weigh([10, 30, 60], []), fedavg_weights([10, 30, 60]))
    assert strategy.learn(np.array([0.1, 0.3, 0.6]), 1.0, 0.5).record is None


def test_a_restored_actor_critic_strategy_continues_identically() -> None:
    rng = np.random.default_rng(3)
    counts = [40, 60, 100]

    def stats() -> list[dict[str, float]]:
        return [{"loss_before": float(a), "loss_after": float(b), "delta_norm": float(c)}
                for a, b, c in rng.uniform(0.1, 1.0, size=(3, 3))]

    rounds = [stats() for _ in range(4)]
    straight = make_strategy("actor-critic", 3, seed=9)
    resumed: Strategy = make_strategy("actor-critic", 3, seed=9)
    out_a, out_b = [], []
    for t, s in enumerate(rounds):
        for strategy, out in ((straight, out_a), (resumed, out_b)):
            w = strategy.weigh(counts, s)
            learned = strategy.learn(w, 1.0, 0.9 - 0.1 * t)
            out.append((w, learned.policy, learned.record))
        resumed = restore_strategy(resumed.state_dict())  # from its JSON state alone
    for (wa, pa, ra), (wb, pb, rb) in zip(out_a, out_b, strict=True):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(pa, pb)
        assert ra == rb


def test_the_simulation_runs_on_the_same_strategies() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = (X[:, 0] > 0).astype(float)
    nodes = [(X[i::3], y[i::3]) for i in range(3)]
    spec = hfl.model_spec(hfl.check_params({}))
    result = simulate(spec, nodes, X, y, rounds=2, weighting="actor-critic", seed=4)
    assert isinstance(result.actor_critic, ActorCritic) and len(result.rewards) == 2
    assert simulate(spec, nodes, X, y, rounds=2, seed=4).actor_critic is None


def test_the_server_reads_the_masked_sum_and_refuses_a_tampered_reply() -> None:
    from vfl_cli.crypto import paillier
    from vfl_cli.errors import InvalidArtifact

    pub, priv = paillier.generate_keypair(512)
    values = np.array([0.5, -1.25, 3.0, 0.0, -0.125])
    packed = paillier.pack(paillier.encrypt(pub, values), value_bits=hfl._sum_value_bits(3))
    assert packed.ciphertexts.size == hfl._sum_ciphertexts(pub.bits, 3, values.size)
    masked, mask = paillier.mask(packed.ciphertexts)
    raw = priv.decrypt_raw(masked)
    np.testing.assert_allclose(hfl.unpack_sum(raw, mask, packed.meta()), values, atol=1e-9)
    tampered = [raw[0] + (1 << (pub.bits - 8)), *raw[1:]]
    with pytest.raises(InvalidArtifact, match="does not unmask to the packed sum"):
        hfl.unpack_sum(tampered, mask, packed.meta())
