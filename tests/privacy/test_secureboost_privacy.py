"""SecureBoost: what crosses between the parties (tests of the claims in
docs/protocols/secureboost.md).

A party may combine everything it holds: its archive of received artifacts (opened as the
recipient), its job state and the public parameters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import received
from test_protocol_secureboost import PARAMS, setup, synthetic, train

from vfl_cli import jobs
from vfl_cli.workspace import Workspace

JOB = "sb"
FIRST_K = 2


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sbt")
    wss = setup(root, synthetic(root))
    state = train(wss, {**PARAMS, "trees": 4, "active_trees": FIRST_K}, job=JOB)
    return {"bank": wss[0], "p1": wss[1], "state": state}


def _float_bytes(values: np.ndarray) -> list[bytes]:
    return [np.float64(v).tobytes() for v in np.unique(values) if v != 0]


def test_passive_party_receives_no_plaintext_gradient(job: dict[str, Any]) -> None:
    bank = Workspace(job["bank"])
    arts = received(job["p1"], JOB)
    assert arts, "the passive party received nothing"
    g = job["state"].arrays["g"][:, 0]  # the last round's gradients, in the active party's state
    needles = _float_bytes(g[:40])
    for art in arts:
        for name, m in art.members.items():
            if m.type == "paillier":
                # ciphertexts under the active party's key, which the passive party lacks
                assert m.info["key_id"] == bank.public_key.fingerprint != \
                    Workspace(job["p1"]).public_key.fingerprint
                continue
            arr = art.array(name)
            assert arr.dtype.kind in "iub", (art.kind, name, arr.dtype)  # node ids, sample flags
            assert not any(n in m.data for n in needles)
        assert not any(isinstance(v, float) for v in art.meta.values()), art.meta


def test_active_party_receives_no_threshold_column_or_plaintext_histogram(
        job: dict[str, Any]) -> None:
    p1 = Workspace(job["p1"])
    part, _ = jobs.load_state(p1, JOB)
    cuts = [c for col in part.results["model"]["binning"]["columns"] for c in col["cuts"]]
    assert cuts
    needles = _float_bytes(np.array(cuts)) + [repr(c).encode() for c in cuts]
    names = [f.encode() for f in p1.features]
    replies = [a for a in received(job["bank"], JOB) if a.kind == "sbt/reply"]
    assert replies
    for art in replies:
        blob = b"".join(m.data for m in art.members.values()) + repr(art.meta).encode()
        assert not any(n in blob for n in needles)  # no cut point, as bytes or as text
        assert not any(n in blob for n in names)  # no column name
        for name, m in art.members.items():
            if m.type == "paillier":
                continue  # the per-bin sums: encrypted, and packed
            assert art.array(name).dtype.kind in "iub", (name, art.array(name).dtype)
        if "cands" in art.members:
            ids = art.array("ids")
            assert len(np.unique(ids)) == len(ids) and ids.min() >= 0
            # opaque ids are 62-bit random numbers, not (column, bin) positions
            assert ids.max() > 2**40


def test_first_k_trees_hold_no_passive_split(job: dict[str, Any]) -> None:
    card = job["state"].results["model"]
    for r, nodes in enumerate(card["rounds"]):
        owners = {n["owner"] for n in nodes if n["owner"] is not None}
        if r < FIRST_K:
            assert owners <= {"bank"}, (r, owners)
    later = {n["owner"] for nodes in card["rounds"][FIRST_K:] for n in nodes}
    assert "p1" in later  # the passive party's columns are used once allowed
    part, _ = jobs.load_state(Workspace(job["p1"]), JOB)
    assert part.results["model"]["splits"]
    assert all(s["round"] >= FIRST_K for s in part.results["model"]["splits"])
    # and the passive party saw nothing of the first k rounds: no gradients, no node lists
    layers = [a for a in received(job["p1"], JOB) if a.kind == "sbt/layer" and not a.meta["done"]]
    assert min(a.meta["round_no"] for a in layers) == FIRST_K
