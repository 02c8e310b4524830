"""A key holder never decrypts its own ciphertexts sent back to it (issue 12, "malicious-peer
checks that cost nothing").

Real split-nn, secureboost and woe-binning jobs between two workspaces are recorded (512-bit
keys, small data); then the peer that does not hold the key answers the key holder with the key
holder's *own* ciphertexts in place of the products or sums it should have computed, signed with
its real key: the passive party's bottom outputs ``[[h]]``/``[[V]]`` sent back as the activation
request or the backward message (split-nn), the active party's row gradients ``gh`` sent back as
candidate sums (secureboost), its encrypted labels sent back as bin sums (woe-binning). Each is
refused before anything is decrypted, and the step takes nothing (quarantine or one error).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, introduce, make_party
from fuzz_signed import Case, feed, record_job, recording, restore, signed_bytes

from vfl_cli import jobs
from vfl_cli.artifacts.container import Member
from vfl_cli.protocol.base import Outgoing
from vfl_cli.workspace import Workspace

SPEC = {
    "head": "binary",
    "active": [{"type": "dense", "units": 2}, {"type": "relu"}],
    "passive": [{"type": "dense", "units": 2}, {"type": "tanh"}],
    "interactive": {"units": 2},
    "top": [{"type": "dense", "units": 1}],
}


def _record(root: Path, plan: list[tuple[str, str, dict]]) -> list[Case]:
    """Align two small parties (breast, 100 rows, 512-bit keys), then record ``plan``'s jobs."""
    a = pd.read_csv(ROOT / "sample_data" / "breast_active.csv", dtype={"id": str}).head(100)
    p = pd.read_csv(ROOT / "sample_data" / "breast_passive.csv", dtype={"id": str})
    a.to_csv(root / "a.csv", index=False)
    p[p["id"].isin(a["id"])].to_csv(root / "p.csv", index=False)
    bank = make_party(root, "bank", "active", root / "a.csv", label_column="label")
    bureau = make_party(root, "bureau", "passive", root / "p.csv")
    introduce(root, "bank", "bureau")
    store = root / "snapshots"
    store.mkdir()
    out: list[Case] = []
    with pytest.MonkeyPatch.context() as mp, recording(mp) as raw:
        for job, protocol, params in [("al", "psi", {}), *plan]:
            jobs.start_job(Workspace(bank), protocol, params, job=job)
            out += record_job([bank, bureau], job, raw, store)
    return out


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return _record(tmp_path_factory.mktemp("echo"), [
        ("sb", "secureboost", {"alignment": "al", "trees": 1, "depth": 2, "active_trees": 0,
                               "min_samples_leaf": 5, "max_bins": 4}),
        ("wo", "woe-binning", {"alignment": "al", "bins": 4})])


@pytest.fixture(scope="module")
def nn_cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    return _record(tmp_path_factory.mktemp("echo-nn"), [
        ("nn", "split-nn", {"alignment": "al", "epochs": 1, "model": SPEC, "test_fraction": 0.3})])


def _echo(cases: list[Case], target_kind: str, own_kind: str, own_member: str | None = None) -> tuple[Case, Outgoing]:
    """The first ``target_kind`` message (to the key holder) with every ciphertext member's bytes
    replaced by the key holder's own ciphertexts from its last ``own_kind`` message before it."""
    at, case = next((i, c) for i, c in enumerate(cases) if c.message.kind == target_kind
                    and any(m.type == "paillier" for m in c.message.members))
    own = next(c.message for c in reversed(cases[:at]) if c.message.kind == own_kind
               and (own_member is None or own_member in {m.name for m in c.message.members}))
    assert own.recipient == case.sender.name  # sent by the key holder to the peer now echoing
    blob = b"".join(m.data for m in own.members if m.type == "paillier")
    width = Workspace(case.recipient).public_key.width
    members = []
    for m in case.message.members:
        if m.type == "paillier":
            copies = -(-len(m.data) // len(blob))
            data = (blob * copies)[: len(m.data)]
            assert len(data) % width == 0 and data
            m = Member(m.name, m.type, data, dict(m.info))
        members.append(m)
    return case, replace(case.message, members=members)


def _refusal(case: Case, msg: Outgoing, tmp_path: Path) -> str:
    name, payload = signed_bytes(case, msg, {})
    work = restore(case, tmp_path / "ws")
    outcome = feed(case, work, name, payload)
    assert outcome.refused and not outcome.consumed, f"{msg.kind} echoing the key holder's own ciphertexts was accepted"
    if outcome.error:
        return outcome.error
    (listed,) = [r for r in jobs.rejected_files(Workspace(work)) if r["file"].startswith(name)]
    return listed["reason"]


@pytest.mark.parametrize("target", ["split/activation-request", "split/backward"])
def test_split_nn_passive_party_refuses_its_own_ciphertexts_sent_back(nn_cases: list[Case], tmp_path: Path,
                                                                      target: str) -> None:
    case, msg = _echo(nn_cases, target, "split/forward")
    reason = _refusal(case, msg, tmp_path)
    assert "holds ciphertexts that this party sent it" in reason and "without decrypting" in reason


def test_secureboost_active_party_refuses_its_own_gradients_sent_back_as_sums(cases: list[Case],
                                                                            tmp_path: Path) -> None:
    case, msg = _echo(cases, "sbt/reply", "sbt/layer", own_member="gh")
    reason = _refusal(case, msg, tmp_path)
    assert "the candidate sums from bureau holds ciphertexts that this party sent it" in reason


def test_woe_binning_active_party_refuses_its_own_labels_sent_back_as_sums(cases: list[Case],
                                                                         tmp_path: Path) -> None:
    case, msg = _echo(cases, "woe/sums", "woe/labels")
    reason = _refusal(case, msg, tmp_path)
    assert "the bin sums from bureau holds ciphertexts that this party sent it" in reason


@pytest.mark.parametrize("kinds", [("sbt/reply", "woe/sums"), ("split/activation-request", "split/backward")])
def test_the_genuine_messages_were_taken(request: pytest.FixtureRequest, tmp_path: Path,
                                         kinds: tuple[str, ...]) -> None:
    """The control: each genuine message the echoes replace is taken by the same step."""
    cases = request.getfixturevalue("nn_cases" if kinds[0].startswith("split/") else "cases")
    for kind in kinds:
        case = next(c for c in cases if c.message.kind == kind
                    and any(m.type == "paillier" for m in c.message.members))
        name, payload = signed_bytes(case, case.message, {})
        outcome = feed(case, restore(case, tmp_path / "ws"), name, payload)
        assert outcome.consumed and not outcome.refused, (kind, outcome.error)
