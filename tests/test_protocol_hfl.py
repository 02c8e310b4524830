"""The hfl job: equals the pure-core simulation, secure aggregation, update ordering, refusals.

Jobs run in-process through the job engine (the code the CLI calls) with 512-bit keys on
``sample_data/hfl`` (5 nodes, node0 with 40% of its labels flipped). The recipe through the
real command is in test_cli_hfl.py.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, carry, drive, introduce, make_party

from vfl_cli import jobs
from vfl_cli.artifacts.container import Artifact, ndarray_member
from vfl_cli.errors import DataError, InvalidArtifact
from vfl_cli.hfl import simulate
from vfl_cli.hfl.updates import full_update
from vfl_cli.models.features import Standardiser, numeric_matrix
from vfl_cli.protocol import hfl
from vfl_cli.protocol.base import JobState, get_protocol
from vfl_cli.workspace import Workspace

DATA = ROOT / "sample_data" / "hfl"
NODES = [f"node{i}" for i in range(5)]
# Plaintext aggregation, so that a job equals the simulation bit for bit (secure aggregation is
# the default and differs by its fixed-point rounding only; tested below).
SMALL = {"rounds": 3, "batch_size": 32, "learning_rate": 0.1, "seed": 7, "full_every": 2,
         "secure_aggregation": False}


@pytest.fixture
def parties(tmp_path: Path) -> dict[str, Path]:
    ws = {"server": make_party(tmp_path, "server", "server", DATA / "server.csv", label_column="label")}
    for name in NODES:
        ws[name] = make_party(tmp_path, name, "worker", DATA / f"{name}.csv", label_column="label")
    ws["predictor"] = make_party(tmp_path, "predictor", "predictor", DATA / "predictor.csv")
    introduce(tmp_path, *ws)
    return ws


def run_job(parties: dict[str, Path], params: dict, job: str = "hf") -> dict[str, JobState]:
    jobs.start_job(Workspace(parties["server"]), "hfl", params, job=job)
    drive(list(parties.values()), job)
    return {name: jobs.load_state(Workspace(ws), job)[0] for name, ws in parties.items()}


def reference(params: dict, weighting: str) -> object:
    """The pure-core simulation on the same rows, standardised as the server does."""
    checked = hfl.check_params({**params, "weighting": weighting})
    server = pd.read_csv(DATA / "server.csv", dtype={"id": str})
    columns = [c for c in server.columns if c not in ("id", "label")]
    split = hfl.server_split(len(server), checked)
    X = numeric_matrix(server, columns, what="server")
    std = Standardiser.fit(X[split.train])
    nodes = []
    for name in NODES:
        df = pd.read_csv(DATA / f"{name}.csv", dtype={"id": str})
        nodes.append((std.transform(numeric_matrix(df, columns, what=name)), df["label"].to_numpy(float)))
    y = server["label"].to_numpy(float)
    return simulate(
        hfl.model_spec(checked), nodes, std.transform(X[split.train]), y[split.train],
        rounds=checked["rounds"], weighting=weighting, epochs=checked["local_epochs"],
        batch_size=checked["batch_size"] or None, lr=checked["learning_rate"], seed=checked["seed"],
    )


def test_fedavg_job_equals_the_simulation(parties: dict[str, Path]) -> None:
    states = run_job(parties, dict(SMALL, model="mlp", hidden=[8]))
    ref = reference(dict(SMALL, model="mlp", hidden=[8]), "fedavg")
    server = states["server"]
    np.testing.assert_array_equal(server.arrays["master"], ref.master)
    np.testing.assert_allclose(server.results["node_weights"], ref.weights, atol=0)
    assert {"auc", "accuracy"} <= set(server.results["metrics"]["test"])
    assert server.results["nodes"] == NODES
    # every worker ends with the final master; the predictor's replica is exact after the final full update
    for name in NODES:
        np.testing.assert_array_equal(states[name].arrays["model"], ref.master)
    predictor = states["predictor"]
    np.testing.assert_array_equal(predictor.arrays["replica"], ref.master)
    kinds = [a["kind"] for a in predictor.data["applied"]]
    assert kinds == ["full", "realtime", "full", "full"]  # start, r1, r2 (full_every=2), r3 (last)
    assert [a["version"] for a in predictor.data["applied"]] == [1, 2, 3, 4]


def test_actor_critic_job_equals_the_simulation_and_records_weights(parties: dict[str, Path]) -> None:
    params = dict(SMALL, rounds=4)
    states = run_job(parties, dict(params, weighting="actor-critic"))
    ref = reference(params, "actor-critic")
    server = states["server"]
    np.testing.assert_array_equal(server.arrays["master"], ref.master)
    weights = np.array(server.results["node_weights"])
    assert weights.shape == (4, 5)
    np.testing.assert_allclose(weights, ref.weights, rtol=0, atol=1e-15)
    np.testing.assert_allclose(server.results["policy"], ref.policy, atol=1e-15)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)


def _members(ws: Path, job: str, pattern: str) -> list[tuple[str, dict]]:
    out = []
    for f in sorted((ws / "archive" / "sent").glob(f"{job}.*{pattern}*.zip")):
        manifest = json.loads(zipfile.ZipFile(f).read("manifest.json"))
        out += [(f.name, m) for m in manifest["members"].values()]
    return out


def test_secure_aggregation_equals_plaintext_and_hides_deltas(parties: dict[str, Path], tmp_path: Path) -> None:
    params = dict(SMALL, rounds=2, weighting="actor-critic")
    plain = run_job(parties, params, job="plain")["server"]
    secure = run_job(parties, dict(params, secure_aggregation=True), job="sec")["server"]
    np.testing.assert_allclose(secure.arrays["master"], plain.arrays["master"], rtol=0, atol=1e-8)
    assert secure.data["secure_rounds"] == 2
    np.testing.assert_allclose(secure.results["node_weights"], plain.results["node_weights"], atol=1e-8)
    # no artifact the server receives holds a plaintext delta: only ciphertexts and masked values
    for name in NODES:
        deltas = _members(parties[name], "sec", "delta")
        assert deltas and all(m["type"] == "paillier" for _, m in deltas)
    replies = _members(parties["node0"], "sec", "sum-reply")
    assert replies and all(m["type"] == "masked" for _, m in replies)
    # the server's requests to the key holder are ciphertexts too
    assert all(m["type"] == "paillier" for _, m in _members(parties["server"], "sec", "sum-request"))
    # the deltas are under the key holder's (node0's) key, which the server does not hold
    holder_key = Workspace(parties["node0"]).public_key.fingerprint
    assert {m["key_id"] for _, m in _members(parties["node3"], "sec", "delta")} == {holder_key}
    assert Workspace(parties["server"]).public_key.fingerprint != holder_key


def _carry_and_step(others: list[Path], job: str) -> None:
    """Carry every file between ``others`` and step (or accept) the job on each of them once."""
    for src in others:
        for dst in others:
            if src != dst:
                carry(src, dst)
    for ws in others:
        w = Workspace(ws)
        if (ws / "jobs" / job / "job.json").exists():
            jobs.step(w, job)
        elif any((ws / "inbox").glob(f"{job}.001.*")):
            jobs.accept_job(w, job)


def _round_trip(server: Path, others: list[Path], job: str) -> None:
    """Carry and step every party but the predictor until the server sent its next update."""
    before = len(list((server / "archive" / "sent").glob(f"{job}.*update*")))
    for _ in range(20):
        _carry_and_step(others, job)
        if len(list((server / "archive" / "sent").glob(f"{job}.*update*"))) > before:
            return
    raise AssertionError("no update")


def test_predictor_refuses_replayed_and_gapped_updates(parties: dict[str, Path]) -> None:
    job = "ord"
    jobs.start_job(Workspace(parties["server"]), "hfl", dict(SMALL, rounds=4, full_every=4), job=job)
    everyone = list(parties.values())
    pred = parties["predictor"]
    others = [p for p in everyone if p != pred]

    _round_trip(parties["server"], others, job)
    _round_trip(parties["server"], others, job)
    # the server has sent the full update (v1) and two real-time updates (v2, v3)
    updates = sorted((parties["server"] / "outbox").glob(f"{job}.*-to-predictor.zip"))
    proposal, v1, v2, v3 = updates
    for f in (proposal, v1):
        shutil.move(str(f), pred / "inbox" / f.name)
    jobs.accept_job(Workspace(pred), job)
    state = jobs.load_state(Workspace(pred), job)[0]
    assert state.data["version"] == 1
    # a gap: v3 before v2 waits in the inbox, nothing changes
    shutil.move(str(v3), pred / "inbox" / v3.name)
    reports = jobs.step(Workspace(pred), job)
    assert not reports[0].received and not reports[0].rejected and (pred / "inbox" / v3.name).exists()
    assert jobs.load_state(Workspace(pred), job)[0].data["version"] == 1
    shutil.move(str(v2), pred / "inbox" / v2.name)
    jobs.step(Workspace(pred), job)
    state = jobs.load_state(Workspace(pred), job)[0]
    assert state.data["version"] == 3
    # a replay of v2 is refused, nothing changes
    replay = pred / "archive" / "received" / v2.name
    shutil.copy(replay, pred / "inbox" / v2.name)
    reports = jobs.step(Workspace(pred), job)
    assert "replayed" in reports[0].rejected[0]["reason"] and not (pred / "inbox" / v2.name).exists()
    np.testing.assert_array_equal(jobs.load_state(Workspace(pred), job)[0].arrays["replica"], state.arrays["replica"])
    drive(everyone, job)
    final = jobs.load_state(Workspace(pred), job)[0]
    master = jobs.load_state(Workspace(parties["server"]), job)[0].arrays["master"]
    np.testing.assert_array_equal(final.arrays["replica"], master)


def test_protocol_refuses_an_update_version_out_of_order(parties: dict[str, Path]) -> None:
    """Behind the engine's sequence numbers, the replica itself refuses gaps and replays."""
    job = "ver"
    jobs.start_job(Workspace(parties["server"]), "hfl", dict(SMALL, rounds=2), job=job)
    pred = parties["predictor"]
    carry(parties["server"], pred)
    jobs.accept_job(Workspace(pred), job)
    w = Workspace(pred)
    info = jobs.load_info(w, job)
    state, _ = jobs.load_state(w, job)
    ctx = jobs._context(w, info, jobs.no_progress)
    protocol = get_protocol("hfl")
    master = state.arrays["replica"]

    def update(version: int) -> Artifact:
        body = np.frombuffer(full_update(master + 1.0, version).to_bytes(), dtype=np.uint8)
        return Artifact(hfl.UPDATE, job, 3, "update", 1, "server", "predictor",
                        {"update": "full", "version": version, "final": False},
                        {"update": ndarray_member("update", body)})

    for version, message in ((1, "already applied"), (3, "leaves a gap")):
        with pytest.raises(InvalidArtifact, match=message):
            protocol.advance(ctx, state, {"server": update(version)})
        assert state.data["version"] == 1
        np.testing.assert_array_equal(state.arrays["replica"], master)
    protocol.advance(ctx, state, {"server": update(2)})
    assert state.data["version"] == 2


def test_a_worker_with_other_columns_is_refused(tmp_path: Path) -> None:
    server = make_party(tmp_path, "server", "server", DATA / "server.csv", label_column="label")
    df = pd.read_csv(DATA / "node1.csv", dtype={"id": str}).drop(columns=["mean_radius"])
    odd = tmp_path / "odd.csv"
    df.to_csv(odd, index=False)
    w1 = make_party(tmp_path, "node1", "worker", odd, label_column="label")
    introduce(tmp_path, "server", "node1")
    jobs.start_job(Workspace(server), "hfl", dict(SMALL, min_nodes=1), job="cols")
    carry(server, w1)
    with pytest.raises(DataError, match="same feature columns.*lacks mean_radius"):
        jobs.accept_job(Workspace(w1), "cols")


def test_parties_and_parameters_are_checked(tmp_path: Path) -> None:
    protocol = get_protocol("hfl")
    with pytest.raises(Exception, match="exactly one server"):
        protocol.check_parties([{"name": "a", "role": "server"}, {"name": "b", "role": "predictor"}])
    for params, message in [({"weighting": "median"}, "weighting"), ({"rounds": 0}, "rounds"),
                            ({"model": "tree"}, "model"), ({"secure_aggregation": "yes"}, "true or false"),
                            ({"realtime_k": 0}, "realtime_k"), ({"nope": 1}, "unknown hfl")]:
        with pytest.raises(Exception, match=message):
            hfl.check_params(params)
    checked = hfl.check_params({"rounds": 3.0})
    assert checked == hfl.check_params(checked) and checked["rounds"] == 3


def test_sample_data_script_reproduces_the_committed_files(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_hfl_data", ROOT / "sample_data" / "make_hfl_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.write_hfl_data(tmp_path)
    assert {p.name for p in written} == {"server.csv", "predictor.csv", *(f"{n}.csv" for n in NODES)}
    for path in written:
        assert path.read_bytes() == (DATA / path.name).read_bytes(), path.name
    honest = pd.read_csv(DATA / "node1.csv")
    assert list(honest.columns[:2]) == ["id", "label"] and honest.shape[1] == 32
    assert "label" not in pd.read_csv(DATA / "predictor.csv").columns


def test_privacy_defaults_and_refusals() -> None:
    checked = hfl.check_params({})
    assert checked["secure_aggregation"] is True and checked["min_nodes"] == 3
    assert checked["dp_clip"] == 0.0  # DP-FedAvg is opt-in (it costs accuracy)
    with pytest.raises(Exception, match="dp_clip .* needs weighting = fedavg"):
        hfl.check_params({"dp_clip": 1.0, "weighting": "actor-critic"})
    with pytest.raises(Exception, match="min_nodes"):
        hfl.check_params({"min_nodes": 0})
    protocol = get_protocol("hfl")
    parties = [{"name": "s", "role": "server"}, {"name": "a", "role": "worker"},
               {"name": "b", "role": "worker"}, {"name": "p", "role": "predictor"}]
    with pytest.raises(Exception, match=r"at least min_nodes = 3 workers per aggregate, this job has 2 \(a, b\)"):
        protocol.check_params({}, parties)
    assert protocol.check_params({"min_nodes": 2}, parties)["min_nodes"] == 2
