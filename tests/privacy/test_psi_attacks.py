"""Issue #14, finding 7: a courier confirms a guessed intersection from the alignment digests.

The attacker holds what a courier or a drop folder sees (every artifact of a real alignment job
through the ``vfl`` command, read as plain zip files) and what a reader of a recipe's
``report.json`` sees (its ``alignment`` block, built by the same function the recipe runner
uses), plus each party's ``results`` (the fingerprint also travels in later training artifacts).
It guesses an intersection and checks the guess against every digest it can compute: plain
SHA-256s of the ids (sorted, or in the joint order under an order key rebuilt from any seeds found
in the artifacts), and the keyed digests of :mod:`vfl_cli.protocol.psi` under every key it can
derive from what it holds.

Before the fix (unkeyed ``sorted_ids_sha256`` / ``ids_sha256``, seeds in the clear) the attack
confirmed the true intersection and rejected the decoys; now it confirms nothing, while a party
holding the joint order key still verifies the same digests (the control).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import introduce, make_party, run

from vfl_cli import jobs
from vfl_cli.protocol import psi
from vfl_cli.recipes import alignment_summary
from vfl_cli.workspace import Workspace

JOB = "a1"


def _write(path: Path, ids: list[str], header: str) -> Path:
    path.write_text(f"id,{header}\n" + "".join(f"{i},{n}\n" for n, i in enumerate(ids)))
    return path


def _carry(src: Path, dst: Path, seen: Path) -> None:
    """Move src's outbox files for dst into dst's inbox, keeping a courier's copy."""
    for f in sorted((src / "outbox").glob(f"*-to-{dst.name}.zip")):
        shutil.copyfile(f, seen / f.name)
        shutil.move(str(f), dst / "inbox" / f.name)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A real two-party alignment; what a courier kept, the report block, the true answer."""
    root = tmp_path_factory.mktemp("psi-attack")
    bank_ids = [f"c{i:03d}" for i in range(60)]
    bureau_ids = [f"c{i:03d}" for i in range(30, 90)]
    bank = make_party(root, "bank", "active", _write(root / "a.csv", bank_ids, "x"), label_column="x")
    bureau = make_party(root, "bureau", "passive", _write(root / "b.csv", bureau_ids, "y"))
    introduce(root, "bank", "bureau")
    seen = root / "courier"
    seen.mkdir()
    run("-w", str(bank), "align", "start", "--job", JOB)
    _carry(bank, bureau, seen)
    run("-w", str(bureau), "align", "respond", JOB)
    _carry(bureau, bank, seen)
    run("-w", str(bank), "align", "finish", JOB)
    _carry(bank, bureau, seen)
    run("-w", str(bureau), "align", "finish", JOB)
    views = {ws.name: json.loads(run("-w", str(ws), "job", "show", JOB, "--json").stdout)
             for ws in (bank, bureau)}
    manifests = []
    for f in sorted(seen.glob("*.zip")):
        with zipfile.ZipFile(f) as z:
            manifests.append(json.loads(z.read("manifest.json")))
    return {
        "manifests": manifests,
        "report": alignment_summary(views),
        "results": [v["results"] for v in views.values()],
        "truth": sorted(set(bank_ids) & set(bureau_ids)),
        "outside": [f"c{i:03d}" for i in range(90, 95)],
        **_own_state(bureau),
    }


def _own_state(ws: Path) -> dict[str, Any]:
    """What the party itself keeps: its digest key (private) and the aligned ids."""
    state = jobs.load_state(Workspace(ws), JOB)[0]
    return {"digest_key": state.data["digest_key"],
            "aligned": [str(i) for i in state.arrays["aligned_ids"]]}


def _published(job: dict[str, Any]) -> set[str]:
    """Every hex string in report.json's alignment block and in the parties' results."""
    found: set[str] = set()

    def walk(value: object) -> None:
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, str) and len(value) >= 32:
            found.add(value)

    walk([job["report"], job["results"]])
    return found


def _seed_sets(manifests: list[dict[str, Any]]) -> list[dict[str, bytes]]:
    """Every complete party-name -> seed map a courier can read from the manifests."""
    seeds: dict[str, bytes] = {}
    complete = []
    for m in manifests:
        meta = m.get("meta", {})
        if isinstance(meta.get("seeds"), dict):  # the finish message, if it carries them in clear
            complete.append({k: bytes.fromhex(v) for k, v in meta["seeds"].items()})
        if isinstance(meta.get("seed"), str):  # a passive party's response
            seeds[m["sender"]] = bytes.fromhex(meta["seed"])
    parties = {m["sender"] for m in manifests} | {m["recipient"] for m in manifests}
    if set(seeds) == parties:
        complete.append(seeds)
    return complete


def _candidates(guess: list[str], keys: list[bytes]) -> set[str]:
    """Every digest of ``guess`` the attacker can compute: plain, and keyed under ``keys``."""
    text = [hashlib.sha256("\n".join(sorted(guess)).encode()).hexdigest()]
    for key in keys:
        ordered = psi.final_order(guess, key)
        text.append(hashlib.sha256("\n".join(ordered).encode()).hexdigest())
        listed = json.dumps([JOB, *ordered], ensure_ascii=True, separators=(",", ":")).encode()
        text.append(hashlib.sha256(b"vfl/psi/v1/alignment\x00" + listed).hexdigest())
        text.append(psi.alignment_fingerprint(ordered, psi.digest_key(key), JOB).hex())
    return set(text)


def confirms(guess: list[str], job: dict[str, Any], keys: list[bytes]) -> bool:
    return bool(_candidates(guess, keys) & _published(job))


def _courier_keys(job: dict[str, Any]) -> list[bytes]:
    return [psi.order_key(s, JOB) for s in _seed_sets(job["manifests"])]


def test_courier_cannot_confirm_a_guessed_intersection(job: dict[str, Any]) -> None:
    keys = _courier_keys(job)
    truth = job["truth"]
    decoys = [truth[1:], truth + job["outside"][:1], truth[:-1] + job["outside"][:1]]
    # On the code before the fix this confirmed the truth (both plain digests and the ordered
    # one under the order key rebuilt from the seeds in the finish message's manifest).
    assert not confirms(truth, job, keys)
    assert not any(confirms(d, job, keys) for d in decoys)
    assert not keys, "the seeds that fix the joint order key travel in the clear"


def test_even_the_exact_ordered_intersection_cannot_be_confirmed(job: dict[str, Any]) -> None:
    # A courier who somehow guessed the intersection *and* its joint order still finds no
    # digest of it among what was published.
    ordered = job["aligned"]
    plain = {hashlib.sha256("\n".join(ordered).encode()).hexdigest(),
             hashlib.sha256("\n".join(sorted(ordered)).encode()).hexdigest()}
    assert sorted(ordered) == job["truth"]
    assert not plain & _published(job)


def test_a_party_with_the_digest_key_verifies_the_fingerprint(job: dict[str, Any]) -> None:
    # The control: the same computation with the key only the aligned parties hold (kept in
    # the party's private job state) matches, so the attack fails for want of the key, not
    # because it computes the wrong thing.
    key = bytes.fromhex(job["digest_key"])
    assert psi.alignment_fingerprint(job["aligned"], key, JOB).hex() in _published(job)
