"""No traceback on signed malformed input (issue 12): a trusted peer's real key signs messages
that are structurally wrong for the step (a member dropped, re-typed, re-shaped, cut; meta fields
of the wrong type or absurd size; another kind; a negative or huge round or seq), and the
recipient's real step must end in ``VflError`` (one ``Error:`` line through the CLI) or leave the
file unused, never in another exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, error_line, introduce, make_party, run
from fuzz_signed import MUST_REFUSE, OPS, Case, feed, mutate, record_job, recording, restore, signed_bytes
from vfl_cli import jobs
from vfl_cli.artifacts.container import new_artifact
from vfl_cli.errors import InvalidArtifact, VflError
from vfl_cli.protocol.base import meta_int, meta_list
from vfl_cli.workspace import Workspace

HFL = ROOT / "sample_data" / "hfl"


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    """Every message of a handshake, an alignment, one epoch of hetero-lr and one round of hfl
    with secure aggregation, with the recipient's workspace before it took each (512-bit keys)."""
    root = tmp_path_factory.mktemp("fuzz")
    bank = make_party(root, "bank", "active", ROOT / "sample_data" / "breast_active.csv", label_column="label")
    bureau = make_party(root, "bureau", "passive", ROOT / "sample_data" / "breast_passive.csv")
    introduce(root, "bank", "bureau")
    store = root / "snapshots"
    store.mkdir()
    out: list[Case] = []
    hfl = root / "hfl"
    hfl.mkdir()
    nodes = [make_party(hfl, "server", "server", HFL / "server.csv", label_column="label")]
    nodes += [make_party(hfl, n, "worker", HFL / f"{n}.csv", label_column="label") for n in ("node0", "node1", "node2")]
    introduce(hfl, "server", "node0", "node1", "node2")
    plan = [([bank, bureau], "hs", "handshake", {}), ([bank, bureau], "al", "psi", {}),
            ([bank, bureau], "tr", "hetero-lr", {"alignment": "al", "epochs": 1, "test_fraction": 0.5}),
            (nodes, "hf", "hfl", {"rounds": 1, "secure_aggregation": True})]
    with pytest.MonkeyPatch.context() as mp, recording(mp) as raw:
        for parties, job, protocol, params in plan:
            jobs.start_job(Workspace(parties[0]), protocol, params, job=job)
            out += record_job(parties, job, raw, store)
    return out


def test_every_step_of_the_recorded_jobs_is_a_case(cases: list[Case]) -> None:
    kinds = {c.message.kind for c in cases}
    assert {"vfl/job-proposal", "handshake/hello", "handshake/reply", "psi/start", "psi/response",
            "psi/finish"} <= kinds
    assert any(k.startswith("hetero/") for k in kinds) and "hfl/delta" in kinds


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_signed_malformed_messages_end_in_vfl_error_or_stay_unused(
        cases: list[Case], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    case = data.draw(st.sampled_from(cases), label="case")
    op = data.draw(st.sampled_from(OPS), label="op")
    msg, override, op = mutate(case.message, op, data.draw(st.integers(0, 7)), data.draw(st.integers(0, 50)))
    try:
        name, payload = signed_bytes(case, msg, override)
    except VflError:
        return  # the container refuses to write it (a negative seq, say): it cannot be sent
    work = restore(case, tmp_path_factory.getbasetemp() / "fuzz-work")
    outcome = feed(case, work, name, payload)  # any other exception fails the test
    if op in MUST_REFUSE:
        assert outcome.refused, f"{op} on {case.message.kind} was accepted"
    if outcome.error:
        assert "\n" not in outcome.error and "Traceback" not in outcome.error


@pytest.mark.parametrize("op", ["drop-member", "member-dtype", "member-truncate", "kind"])
def test_the_command_prints_one_error_line(cases: list[Case], tmp_path: Path, op: str) -> None:
    case = next(c for c in cases if c.message.kind == "psi/response")
    msg, override, _ = mutate(case.message, op, 0, 1)
    name, payload = signed_bytes(case, msg, override)
    work = restore(case, tmp_path / "ws")
    (work / "inbox" / case.file).unlink()
    (work / "inbox" / name).write_bytes(payload)
    result = run("-w", str(work), "step", ok=False)
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        error_line(result)
    else:  # quarantined instead of refused: it must say so and not have advanced the job
        assert not (work / "inbox" / name).exists() and "rejected" in result.output


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                    max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(value=JSON)
def test_meta_fields_are_checked_where_they_enter(value: object) -> None:
    art = new_artifact(kind="hfl/delta", job="j", seq=1, step="s", sender="a", recipient="b",
                       meta={"columns": value, "n_samples": value})
    try:
        got = meta_list(art, "columns", max_len=3)
        assert isinstance(got, list) and len(got) <= 3 and all(isinstance(c, str) for c in got)
    except InvalidArtifact as exc:
        assert "columns must be a list of at most 3 str values" in str(exc)
    try:
        n = meta_int(art, "n_samples", low=1, high=10**12)
        assert type(n) is int and 1 <= n <= 10**12
    except InvalidArtifact as exc:
        assert "n_samples must be a whole number in 1..1000000000000" in str(exc)
