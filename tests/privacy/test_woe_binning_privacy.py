"""woe-binning: what crosses between the parties, checked on the files each one received.

A party may combine everything it holds: its archive of received artifacts (opened as the
recipient), its job state and the public parameters. The active party must get no passive
bin boundary, column name or per-row value; the passive party no label in plaintext.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import received
from test_protocol_woe_binning import _run, _setup

from vfl_cli import jobs
from vfl_cli.workspace import Workspace

JOB = "wb"
PARAMS = {"method": "quantile", "bins": 6, "monotone": True, "test_fraction": 0.2, "seed": 7}


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("woe")
    wss = _setup(root, text=True)
    results = _run(wss, JOB, PARAMS)
    return {"bank": wss[0], "bureau": wss[1], "results": results}


def test_passive_party_gets_the_labels_only_encrypted(job: dict[str, Any]) -> None:
    bank, bureau = Workspace(job["bank"]), Workspace(job["bureau"])
    arts = [a for a in received(job["bureau"], JOB) if a.kind == "woe/labels"]
    assert len(arts) == 1
    (art,) = arts
    assert set(art.members) == {"y"} and art.members["y"].type == "paillier"
    # under the active party's key, which the passive party does not hold
    assert art.members["y"].info["key_id"] == bank.public_key.fingerprint
    assert bank.public_key.fingerprint != bureau.public_key.fingerprint
    assert art.meta.get("rows") == job["results"][1]["rows"]
    assert not any(isinstance(v, (float, list)) for k, v in art.meta.items() if k == "rows")


def test_active_party_gets_no_boundary_name_or_row(job: dict[str, Any]) -> None:
    bureau = Workspace(job["bureau"])
    enc = job["results"][1]["encoder"]
    cuts = [c for col in enc["binning"]["columns"] for c in col["cuts"]]
    cats = [c for col in enc["binning"]["columns"] for c in col["categories"]]
    assert cuts and cats
    needles = [np.float64(c).tobytes() for c in cuts] + [repr(c).encode() for c in cuts]
    needles += [f"{c:.6g}".encode() for c in cuts]
    names = [f.encode() for f in bureau.features] + [c.encode() for c in cats]
    sums = [a for a in received(job["bank"], JOB) if a.kind == "woe/sums"]
    assert len(sums) == 1
    (art,) = sums
    blob = b"".join(m.data for m in art.members.values()) + repr(art.meta).encode()
    assert not any(n in blob for n in needles)  # no cut point, as bytes or as text
    assert not any(n in blob for n in names)  # no column name, no category
    rows = job["results"][0]["rows"]
    for name, m in art.members.items():
        if m.type == "paillier":
            continue  # the per-bin label sums: encrypted under the active key, packed
        arr = art.array(name)
        assert arr.dtype.kind in "iu" and arr.shape == (art.meta["bins"],), name
        assert arr.shape != (rows,)  # one value per bin, never per row
    # the active party's own view of the passive columns: opaque numbers and ids only
    shown = repr(job["results"][0]["passive"]).encode()
    assert not any(n in shown for n in names)


def test_opaque_ids_are_a_csprng_permutation(job: dict[str, Any]) -> None:
    state, _ = jobs.load_state(Workspace(job["bureau"]), JOB)
    keys = [tuple(k) for k in state.data["ids"]]
    assert sorted(keys) != keys and len(set(keys)) == len(keys) >= 12
    # opaque column numbers are shuffled too: not the order of the party's columns
    assert len(state.data["columns"]) == len(Workspace(job["bureau"]).features)


def test_result_holds_only_this_partys_bins(job: dict[str, Any]) -> None:
    state, _ = jobs.load_state(Workspace(job["bureau"]), JOB)
    (art,) = [a for a in received(job["bureau"], JOB) if a.kind == "woe/result"]
    for name in ("woe", "iv_bins", "merged"):
        assert art.array(name).shape == (len(state.data["ids"]),)
    assert art.array("iv").shape == (len(state.data["columns"]),)
    assert set(art.members) == {"woe", "iv_bins", "merged", "iv"}
