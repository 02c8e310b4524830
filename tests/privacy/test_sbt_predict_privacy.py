"""``secureboost-predict``: what crosses between the parties (the claims in
docs/protocols/secureboost.md, "Prediction").

A party may combine everything it holds: its archive of received artifacts (opened as the
recipient), its job state and the public parameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import drive, received
from test_protocol_secureboost import PARAMS, setup, synthetic, train

from vfl_cli import jobs
from vfl_cli.models.binning import Binning
from vfl_cli.protocol.sbt_predict import Routes
from vfl_cli.workspace import Workspace

JOB = "pr"


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sbtpp")
    wss = setup(root, synthetic(root))
    trained = train(wss, {**PARAMS, "trees": 2, "active_trees": 0})
    jobs.start_job(Workspace(wss[0]), "secureboost-predict", {"model": "sb", "alignment": "al"}, job=JOB)
    drive(wss, JOB)
    return {"bank": wss[0], "p1": wss[1], "trained": trained}


def _needles(values: list[float]) -> list[bytes]:
    out = []
    for v in set(values):
        if v != 0:
            out += [np.float64(v).tobytes(), np.float32(v).tobytes(), repr(v).encode(),
                    f"{v:.6g}".encode()]
    return out


def test_routes_carry_no_threshold_column_or_bin(job: dict[str, Any]) -> None:
    p1 = Workspace(job["p1"])
    card = jobs.load_state(p1, "sb")[0].results["model"]
    cuts = [c for col in card["binning"]["columns"] for c in col["cuts"]]
    assert cuts and card["splits"]
    routes = [a for a in received(job["bank"], JOB) if a.kind == "sbt/routes"]
    assert len(routes) == 1
    art = routes[0]
    blob = b"".join(m.data for m in art.members.values()) + repr(art.meta).encode()
    assert not any(n in blob for n in _needles(cuts))  # no cut point, as bytes or text
    assert not any(f.encode() in blob for f in p1.features)  # no column name
    assert not any(isinstance(v, float) for v in art.meta.values()), art.meta
    for name in art.members:
        assert art.array(name).dtype == np.uint8, name  # bit planes only
    # the split nodes are named by (round, node) of the active party's own trees, no bin
    assert all(len(n) == 2 for n in art.meta["nodes"])


def test_passive_party_receives_no_leaf_weight_or_score(job: dict[str, Any]) -> None:
    bank = jobs.load_state(Workspace(job["bank"]), JOB)[0]
    card = job["trained"].results["model"]
    leaves = [float(n["value"]) for r in card["rounds"] for n in r if n["owner"] is None]
    secrets = leaves + [float(v) for v in bank.arrays["raw"][:20, 0]] + \
        [float(v) for v in bank.arrays["scores"][:20]]
    arts = received(job["p1"], JOB)
    assert [a.kind for a in arts] != [] and all(a.kind != "sbt/routes" for a in arts)
    needles = _needles(secrets)
    for art in arts:  # the proposal only: public parameters
        blob = b"".join(m.data for m in art.members.values()) + repr(art.meta).encode()
        assert not any(n in blob for n in needles), art.kind
    part = jobs.load_state(Workspace(job["p1"]), JOB)[0]
    assert not part.arrays and set(part.results) == {"rows", "splits"}


def test_active_party_reads_each_reachable_passive_decision(job: dict[str, Any]) -> None:
    """The attack the doc states: A reads, from P's routes alone, P's left/right decision of
    every (row, P-split) pair the row reaches through P's own splits; measured here."""
    art = next(a for a in received(job["bank"], JOB) if a.kind == "sbt/routes")
    nodes, reach, left = Routes.decode(art).bits("p1")
    p1 = Workspace(job["p1"])
    card = jobs.load_state(p1, "sb")[0].results["model"]
    rows = jobs.load_state(p1, "al")[0].arrays["aligned_rows"]
    Xb = Binning.from_json(card["binning"]).transform(p1.read_data().iloc[rows])
    names = [c["name"] for c in card["binning"]["columns"]]
    truth = {(s["round"], s["node"]): Xb[:, names.index(s["feature"])] <= s["bin"] for s in card["splits"]}
    for j, key in enumerate(nodes):
        assert (left[reach[:, j], j] == truth[key][reach[:, j]]).all()  # A's reading is exact
    share = reach.mean()
    assert 0 < share <= 1
    print(f"A reads {share:.1%} of the {reach.size} (row, passive split) decisions")
