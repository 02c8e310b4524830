"""No traceback on signed malformed input (issue 12): a trusted peer's real key signs messages
that are structurally wrong for the step (a member dropped, re-typed, re-shaped, cut; meta fields
of the wrong type or absurd size; another kind; a negative or huge round or seq), and the
recipient's real step must end in ``VflError`` (one ``Error:`` line through the CLI) or leave the
file unused, never in another exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, error_line, introduce, make_party, run
from fuzz_signed import MUST_REFUSE, OPS, Case, feed, mutate, record_job, recording, restore, signed_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vfl_cli import jobs
from vfl_cli.artifacts.container import Member, new_artifact
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


# ----- optional members and declared counts, checked against the step (issue 12) -------------
def _one(cases: list[Case], kind: str) -> Case:
    return next(c for c in cases if c.message.kind == kind)


def _feed_changed(cases: list[Case], tmp_path: Path, kind: str, msg_change) -> str:
    """Sign ``kind``'s message after ``msg_change``, feed it; the refusal's reason (or fail)."""
    from dataclasses import replace

    case = _one(cases, kind)
    msg = msg_change(case.message, replace)
    name, payload = signed_bytes(case, msg, {})
    work = restore(case, tmp_path / "ws")
    outcome = feed(case, work, name, payload)
    assert outcome.refused and not outcome.consumed, f"{kind} changed was accepted"
    if outcome.error:
        return outcome.error
    # quarantined by the step: the reason lies beside the file, and 'vfl status' lists it
    (listed,) = [r for r in jobs.rejected_files(Workspace(work)) if r["file"].startswith(name)]
    return listed["reason"]


def test_a_residual_without_the_loss_request_due_this_round_is_refused(cases: list[Case], tmp_path: Path) -> None:
    # one epoch, full batch: the only residual is the last batch of the first epoch, so the loss is due
    case = _one(cases, "hetero/residual")
    assert {"loss_values", "loss_cross"} <= {m.name for m in case.message.members}
    error = _feed_changed(cases, tmp_path, "hetero/residual", lambda m, replace: replace(
        m, members=[x for x in m.members if not x.name.startswith("loss_")]))
    assert "lacks 'loss_values', 'loss_cross'" in error and "loss is due" in error


def test_a_residual_missing_half_of_the_loss_request_is_refused(cases: list[Case], tmp_path: Path) -> None:
    error = _feed_changed(cases, tmp_path, "hetero/residual", lambda m, replace: replace(
        m, members=[x for x in m.members if x.name != "loss_cross"]))
    assert "lacks 'loss_cross'" in error


def test_a_loss_request_where_none_is_due_is_refused_before_decrypting() -> None:
    from vfl_cli.protocol.hetero_linear import LOSS_MEMBERS, loss_due
    from vfl_cli.protocol.wire import expect_members

    params = {"epochs": 10, "loss_every": 3}
    # due: the last batch of epoch 0 (the curve's start), of every 3rd epoch, and of the last
    assert [e for e in range(10) if loss_due(params, e, 3, 4)] == [0, 2, 5, 8, 9]
    assert not any(loss_due(params, e, b, 4) for e in range(10) for b in range(3))
    art = new_artifact(kind="hetero/residual", job="j", seq=2, step="residual", sender="bank", recipient="bureau",
                       members=[Member("loss_values", "paillier", b"x", {}),
                                Member("loss_cross", "paillier", b"y", {})])
    expect_members(art, LOSS_MEMBERS, True, "the loss is due")
    with pytest.raises(InvalidArtifact, match="holds 'loss_values', 'loss_cross', which this step does not expect"):
        expect_members(art, LOSS_MEMBERS, loss_due(params, 1, 3, 4), "the loss is due")


@pytest.mark.parametrize("kind, key", [("hetero/partial", "rows"), ("hetero/gradient", "grad_count"),
                                       ("hetero/scores", "rows")])
@pytest.mark.parametrize("delta", [1, -1, "str", True])
def test_a_count_in_the_manifest_that_the_payload_does_not_hold_is_refused(
        cases: list[Case], tmp_path: Path, kind: str, key: str, delta: object) -> None:
    def change(m, replace):
        assert isinstance(m.meta.get(key), int), m.meta
        value = m.meta[key] + delta if isinstance(delta, int) and not isinstance(delta, bool) else delta
        return replace(m, meta={**m.meta, key: value})

    error = _feed_changed(cases, tmp_path, kind, change)
    assert f"declares {key}=" in error and "its counts and its payload disagree" in error
