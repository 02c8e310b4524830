"""ECDH private set intersection with a jointly shuffled result (vfl_cli.protocol.psi)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import carry, drive_with_crashes, run
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl_cli import jobs
from vfl_cli.artifacts.container import Artifact, ndarray_member
from vfl_cli.crypto import channel, ecdh
from vfl_cli.errors import DataError, InvalidArtifact
from vfl_cli.protocol import align as align_job
from vfl_cli.protocol import psi
from vfl_cli.protocol.base import Expect, JobState, Outgoing, PartyContext
from vfl_cli.workspace import Workspace

FATE = Path(__file__).resolve().parents[1] / "sample_data" / "fate"
JOB = "job-7"
SALT = b"agreed-salt"


def align(
    active: Sequence[str], passives: dict[str, Sequence[str]], *, seed: int = 0
) -> tuple[psi.Alignment, dict[str, psi.Alignment]]:
    """Run the whole protocol in memory; returns A's alignment and each passive party's."""
    rng = random.Random(seed)
    state, start = psi.start(active, job_id=JOB, salt=SALT, party="bank", rng=rng, n_jobs=1)
    states, responses = {}, {}
    for name, ids in passives.items():
        states[name], responses[name] = psi.respond(
            ids, start, job_id=JOB, salt=SALT, party=name, active="bank", rng=rng, n_jobs=1
        )
    mine, messages = psi.finish(state, active, responses, n_jobs=1)
    theirs = {n: psi.conclude(states[n], passives[n], messages[n]) for n in passives}
    return mine, theirs


def check(active: Sequence[str], passives: dict[str, Sequence[str]], seed: int = 0) -> None:
    mine, theirs = align(active, passives, seed=seed)
    expected = set(active).intersection(*map(set, passives.values()))
    assert set(mine.ids) == expected and len(mine.ids) == len(expected)
    assert [active[r] for r in mine.rows] == mine.ids
    for name, result in theirs.items():
        assert result.ids == mine.ids  # same rows, same order, for everyone
        assert [passives[name][r] for r in result.rows] == result.ids
        assert result.fingerprint == mine.fingerprint


# --------------------------------------------------------------------------- correctness

# Random ids (any Unicode but surrogates, which are not text), and ids drawn from a small pool of
# look-alikes (case, composed/decomposed accents, inner and zero-width spaces, digits with
# leading zeros) so that overlaps and near-misses are common.
random_ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=6
).filter(lambda s: s.strip() == s and s != "")
LOOKALIKES = ["a", "A", "é", "e\u0301", "a b", "a\u200bb", "ab", "7", "07", "007", "٧", "x\ny"]
adversarial_ids = st.one_of(random_ids, st.sampled_from(LOOKALIKES))
id_lists = st.lists(adversarial_ids, min_size=1, max_size=25, unique=True)


@settings(max_examples=60, deadline=None)
@given(id_lists, id_lists, st.integers(0, 2**32))
def test_two_parties_equal_set_intersection(a: list[str], b: list[str], seed: int) -> None:
    check(a, {"bureau": b}, seed)


@settings(max_examples=25, deadline=None)
@given(id_lists, id_lists, id_lists, st.integers(0, 2**32))
def test_three_parties_keep_what_all_hold(
    a: list[str], b: list[str], c: list[str], seed: int
) -> None:
    # Force some ids held by all three and some held by two only.
    common = a[:3]
    b = list(dict.fromkeys(common + b))
    c = list(dict.fromkeys(common[:2] + c))
    check(a, {"bureau": b, "telco": c}, seed)


@pytest.mark.parametrize(
    ("active", "passive"),
    [
        (["a", "b", "c"], ["a", "b", "c"]),  # full overlap
        (["a", "b", "c"], ["c", "b", "a"]),  # full overlap, other order
        (["a", "b"], ["x", "y"]),  # no overlap
        (["only"], ["only"]),
        (["A", "a", "é", "e\u0301", "a b", "a\u200bb"], ["a", "e\u0301", "ab", "a\u00a0b"]),
    ],
)
def test_adversarial_sets(active: list[str], passive: list[str]) -> None:
    check(active, {"bureau": passive})


def test_ids_differing_only_by_outer_whitespace_match() -> None:
    active = psi.normalise_ids([" 42", "7\t", "\u00a0x\u00a0"])
    passive = psi.normalise_ids(["42", " 7 ", "x", "y"])
    mine, theirs = align(active, {"bureau": passive})
    assert sorted(mine.ids) == ["42", "7", "x"]
    assert theirs["bureau"].ids == mine.ids


def test_unicode_forms_are_distinct_ids() -> None:
    # No normalisation: a composed and a decomposed "é" never silently merge.
    mine, _ = align(["caf\u00e9", "CAFE"], {"bureau": ["cafe\u0301", "cafe"]})
    assert mine.ids == []


def test_a_passive_party_learns_only_the_final_intersection() -> None:
    active = ["1", "2", "3", "4"]
    mine, theirs = align(active, {"bureau": ["1", "2", "3", "9"], "telco": ["1", "2", "8"]})
    assert sorted(mine.ids) == ["1", "2"]
    # "3" is shared by bank and bureau only: the bureau is never told.
    assert sorted(theirs["bureau"].ids) == ["1", "2"]


def test_order_is_the_documented_joint_shuffle() -> None:
    active = [f"id{i}" for i in range(200)]
    rng = random.Random(3)
    state, start = psi.start(active, job_id=JOB, salt=SALT, party="bank", rng=rng, n_jobs=1)
    passive_ids = list(reversed(active))
    pstate, response = psi.respond(
        passive_ids, start, job_id=JOB, salt=SALT, party="bureau", active="bank", rng=rng
    )
    mine, messages = psi.finish(state, active, {"bureau": response})
    seeds = {"bank": state.seed, "bureau": response.seed}
    assert psi.open_seeds(pstate.channel_key, messages["bureau"].sealed_seeds, what="x") == seeds
    key = psi.order_key(seeds, JOB)
    assert mine.ids == psi.final_order(active, key)
    assert mine.ids != sorted(mine.ids) and mine.ids != active
    # Each party's seed moves the order: no single party chooses it.
    for name in seeds:
        other = dict(seeds, **{name: bytes(32)})
        assert psi.final_order(active, psi.order_key(other, JOB)) != mine.ids
    assert psi.conclude(pstate, passive_ids, messages["bureau"]).ids == mine.ids


def test_order_does_not_depend_on_file_order() -> None:
    active = [f"id{i}" for i in range(50)]
    passive = [f"id{i}" for i in range(25, 80)]
    first, _ = align(active, {"bureau": passive}, seed=5)
    second, _ = align(list(reversed(active)), {"bureau": passive[::-1]}, seed=5)
    assert first.ids == second.ids


def test_sent_points_are_shuffled() -> None:
    ids = [f"id{i}" for i in range(100)]
    domain = psi.make_domain(JOB, SALT)
    scalar = ecdh.new_scalar()
    blinded = psi.blind_ids(ids, domain, scalar, rng=random.Random(1), n_jobs=1)
    in_order = ecdh.blind(ecdh.hash_to_points(ids, domain, n_jobs=1), scalar, n_jobs=1)
    assert sorted(blinded.order.tolist()) == list(range(100))
    assert blinded.order.tolist() != list(range(100))
    assert np.array_equal(blinded.points, in_order[blinded.order])


def test_parallel_protocol_run() -> None:
    # Enough ids for the worker processes to start (the fork path).
    active = [f"id{i}" for i in range(3000)]
    passive = [f"id{i}" for i in range(1500, 4500)]
    state, start = psi.start(active, job_id=JOB, salt=SALT, party="bank", n_jobs=2)
    calls: list[str] = []

    def later(name: str, ids: list[str]) -> Callable[[], list[str]]:
        # ids handed over as functions: each is called once, while the workers blind
        return lambda: calls.append(name) or ids

    pstate, response = psi.respond(
        later("bureau", passive), start, job_id=JOB, salt=SALT, party="bureau", active="bank", n_jobs=2
    )
    mine, messages = psi.finish(state, later("bank", active), {"bureau": response}, n_jobs=2)
    theirs = psi.conclude(pstate, passive, messages["bureau"])
    assert set(mine.ids) == set(active) & set(passive) and theirs.ids == mine.ids
    assert calls == ["bureau", "bank"]


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=30), st.booleans())
def test_byte_order_of_macs(values: list[bytes], share_first_word: bool) -> None:
    if share_first_word:  # the rare path: equal first words, decided by the others
        values = [values[0][:8] + v[8:] for v in values] if values else values
    words = np.frombuffer(b"".join(values), dtype=">u8").reshape(len(values), 4)
    order = psi.byte_order(words).tolist()
    assert [values[i] for i in order] == sorted(values)


def test_intersect_positions() -> None:
    points = ecdh.hash_to_points([str(i) for i in range(10)], b"d", n_jobs=1)
    own, peer = points[[0, 1, 2, 3]], points[[9, 3, 8, 1]]
    assert [x.tolist() for x in psi.intersect(own, peer)] == [[1, 3], [3, 1]]
    colliding = peer.copy()
    colliding[0, :8] = own[0, :8]  # same 64-bit prefix, not the same point
    assert [x.tolist() for x in psi.intersect(own, colliding)] == [[1, 3], [3, 1]]
    assert psi.intersect(own[:0], peer)[0].size == 0
    twins = own.copy()
    twins[2, :8] = twins[0, :8]  # two prefixes alike within one list: the exact path
    assert [x.tolist() for x in psi.intersect(twins, peer)] == [[1, 3], [3, 1]]
    decoy = peer.copy()
    decoy[2, :8] = peer[1, :8]  # two peer points share a prefix; only one is the own point
    assert [x.tolist() for x in psi.intersect(own, decoy)] == [[1, 3], [3, 1]]


# --------------------------------------------------------------------------- input rules


def test_normalise_ids_trims_and_keeps_order() -> None:
    assert psi.normalise_ids([" a ", b"b\t", "c d", "\u00a0e"]) == ["a", "b", "c d", "e"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([], "id column 'id' has no rows"),
        (
            ["a", " ", "b", "", None, float("nan")],
            r"4 row\(s\) have an empty id \(rows 2, 4, 5, 6\)",
        ),
        ([b"ok", b"\xff\xfe", "x"], r"1 id\(s\) are not valid UTF-8 text \(rows 2\)"),
        (["ok", "bad\udcff"], r"rows 2\)"),
        (["a", 7], "row 2 holds a int, not text"),
        (["a", "b\x00", "\x00c"], r"2 id\(s\) contain a NUL character \(rows 2, 3\)"),
        (
            ["a", "b", "a ", "c", " b", "a"],
            r"2 id\(s\) appear more than once: 'a' \(rows 1, 3, 6\); 'b' \(rows 2, 5\)\. Ids must",
        ),
    ],
)
def test_normalise_ids_refusals(values: list[object], message: str) -> None:
    with pytest.raises(DataError, match=message):
        psi.normalise_ids(values)


@given(st.lists(st.one_of(st.text(), st.sampled_from([" ", "\u00a0a", "\udcff", "a", " a", "a\x00"])), max_size=12))
@settings(max_examples=300, deadline=None)
def test_fast_normalisation_agrees_with_the_cell_by_cell_rules(values: list[str]) -> None:
    """The one-pass path for clean text returns, or refuses, exactly what the rules say."""

    def outcome(fn: Callable[[], list[str]]) -> object:
        try:
            return fn()
        except DataError as exc:
            return str(exc)

    expected = outcome(lambda: psi._normalise_cells(values, "id"))
    assert outcome(lambda: psi.normalise_ids(values)) == expected


def test_many_duplicates_are_summarised() -> None:
    with pytest.raises(DataError, match=r"8 id\(s\) appear more than once: .*; and 3 more\."):
        psi.normalise_ids([str(i % 8) for i in range(20)], column="mock")


# --------------------------------------------------------------------------- refused messages


@pytest.fixture
def run_two() -> dict[str, object]:
    return _run_two()


_RUN_TWO_CACHE: dict[str, dict] = {}


def _run_two() -> dict[str, object]:
    active = [f"id{i}" for i in range(30)]
    passive = [f"id{i}" for i in range(15, 40)]
    state, start = psi.start(active, job_id=JOB, salt=SALT, party="bank", n_jobs=1)
    pstate, response = psi.respond(
        passive, start, job_id=JOB, salt=SALT, party="bureau", active="bank", n_jobs=1
    )
    _, messages = psi.finish(state, active, {"bureau": response}, n_jobs=1)
    return {
        "active": active,
        "passive": passive,
        "state": state,
        "start": start,
        "pstate": pstate,
        "response": response,
        "finish": messages["bureau"],
    }


def respond_to(start: psi.StartMessage, passive: list[str], job: str = JOB) -> object:
    return psi.respond(passive, start, job_id=job, salt=SALT, party="bureau", active="bank")


def test_start_for_another_job_is_refused(run_two: dict) -> None:
    with pytest.raises(InvalidArtifact, match="belongs to job 'job-7', not to this job 'job-8'"):
        respond_to(run_two["start"], run_two["passive"], job="job-8")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda p: np.concatenate([p, p[:1]]), r"1 point\(s\) repeat an earlier one"),
        (lambda p: _set_row(p, 3, 1), r"small order .*rows 3\)"),
        (lambda p: _set_top_bit(p, 4), r"top bit set; rows 4\)"),
        (lambda p: p.astype(np.int16), "expected a uint8 array"),
    ],
)
def test_invalid_start_points_are_refused(run_two: dict, tamper, message: str) -> None:
    start = dataclasses.replace(run_two["start"], points=tamper(run_two["start"].points))
    with pytest.raises(InvalidArtifact, match=message):
        respond_to(start, run_two["passive"])


def _set_row(points: np.ndarray, row: int, value: int) -> np.ndarray:
    out = points.copy()
    out[row] = np.frombuffer(value.to_bytes(32, "little"), np.uint8)
    return out


def _set_top_bit(points: np.ndarray, row: int) -> np.ndarray:
    out = points.copy()
    out[row, 31] |= 0x80
    return out


def finish_with(run_two: dict, **changes: object) -> None:
    response = dataclasses.replace(run_two["response"], **changes)
    psi.finish(run_two["state"], run_two["active"], {"bureau": response}, n_jobs=1)


def test_invalid_responses_are_refused(run_two: dict) -> None:
    response = run_two["response"]
    with pytest.raises(InvalidArtifact, match="belongs to job 'other'"):
        finish_with(run_two, job_id="other")
    with pytest.raises(InvalidArtifact, match="answers another start message"):
        finish_with(run_two, start_digest=bytes(32))
    with pytest.raises(
        InvalidArtifact, match="re-blinded start points: expected 30 points, got 29"
    ):
        finish_with(run_two, double_blinded=response.double_blinded[:-1])
    with pytest.raises(InvalidArtifact, match=r"its own points: .*small order .*rows 0\)"):
        finish_with(run_two, points=_set_row(response.points, 0, 0))
    with pytest.raises(InvalidArtifact, match=r"its own points: 1 point\(s\) repeat"):
        finish_with(run_two, points=np.concatenate([response.points, response.points[5:6]]))
    with pytest.raises(InvalidArtifact, match="the seed is not 32 bytes"):
        finish_with(run_two, seed=b"short")
    with pytest.raises(InvalidArtifact, match="key-exchange public key is not 32 bytes"):
        finish_with(run_two, exchange_public=b"short")
    with pytest.raises(InvalidArtifact, match="key-exchange public key is of small order"):
        finish_with(run_two, exchange_public=bytes(32))
    with pytest.raises(InvalidArtifact, match="holds no points of its own"):
        finish_with(run_two, points=response.points[:0])


def test_empty_start_is_refused(run_two: dict) -> None:
    start = dataclasses.replace(run_two["start"], points=run_two["start"].points[:0])
    with pytest.raises(InvalidArtifact, match="the start message holds no points"):
        respond_to(start, run_two["passive"])


def test_points_from_another_job_never_match(run_two: dict) -> None:
    # Same job name, another salt: the domains differ, so nothing matches (and the job id
    # check above refuses another job outright).
    other_state, other_start = psi.start(
        run_two["active"], job_id=JOB, salt=b"other", party="bank", n_jobs=1
    )
    _, response = psi.respond(
        run_two["passive"], other_start, job_id=JOB, salt=SALT, party="bureau", active="bank"
    )
    mine, _ = psi.finish(other_state, run_two["active"], {"bureau": response})
    assert mine.ids == []


def test_invalid_finish_messages_are_refused(run_two: dict) -> None:
    pstate, message, passive = run_two["pstate"], run_two["finish"], run_two["passive"]
    sealed = psi.open_seeds(pstate.channel_key, message.sealed_seeds, what="x")

    def conclude(seeds: dict[str, bytes] | None = None, **changes: object) -> None:
        if seeds is not None:
            changes["sealed_seeds"] = psi.seal_seeds(pstate.channel_key, seeds)
        psi.conclude(pstate, passive, dataclasses.replace(message, **changes))


    with pytest.raises(InvalidArtifact, match="belongs to job 'x'"):
        conclude(job_id="x")
    with pytest.raises(InvalidArtifact, match="answers another response"):
        conclude(response_digest=bytes(32))
    with pytest.raises(InvalidArtifact, match="does not match the commitment"):
        conclude(seeds=dict(sealed, bank=bytes(32)))
    with pytest.raises(InvalidArtifact, match="another seed for bureau"):
        conclude(seeds=dict(sealed, bureau=bytes(32)))
    with pytest.raises(InvalidArtifact, match="lacks the seed"):
        conclude(seeds={"bank": sealed["bank"]})
    # Sealed under another key (another job's channel), or changed in transit.
    with pytest.raises(InvalidArtifact, match="does not open with this party's channel key"):
        conclude(sealed_seeds=psi.seal_seeds(bytes(32), sealed))
    flipped = bytearray(message.sealed_seeds)
    flipped[-1] ^= 1
    with pytest.raises(InvalidArtifact, match="does not open"):
        conclude(sealed_seeds=bytes(flipped))
    with pytest.raises(InvalidArtifact, match="not a sealed box"):
        conclude(sealed_seeds=b"short")
    with pytest.raises(InvalidArtifact, match="not a map of hex seeds"):
        conclude(sealed_seeds=channel.seal(pstate.channel_key, b'{"bank": 5}'))
    with pytest.raises(InvalidArtifact, match=r"positions must lie in 0\.\.24"):
        conclude(positions=np.array([0, 25]))
    with pytest.raises(InvalidArtifact, match="ascending and never repeat"):
        conclude(positions=np.array([1, 1]))
    with pytest.raises(InvalidArtifact, match="ascending and never repeat"):
        conclude(positions=np.array([3, 1]))  # out of order: the order could carry information
    with pytest.raises(InvalidArtifact, match="list of integers"):
        conclude(positions=np.array([0.5]))


def test_changed_ids_between_steps_are_refused(run_two: dict) -> None:
    with pytest.raises(DataError, match="the id column changed"):
        psi.finish(run_two["state"], run_two["active"][:-1], {"bureau": run_two["response"]})
    with pytest.raises(DataError, match="the id column changed"):
        psi.conclude(run_two["pstate"], run_two["passive"][::-1], run_two["finish"])


def test_passive_state_holds_no_scalar(run_two: dict) -> None:
    fields = {f.name for f in dataclasses.fields(psi.PassiveState)}
    assert "scalar" not in fields
    assert run_two["response"].seed not in run_two["start"].points.tobytes()


def test_the_active_seed_never_travels_in_the_clear(run_two: dict) -> None:
    # Without A's seed nobody carrying the files can rebuild the order key, hence neither the
    # joint order nor the digest key of the fingerprint.
    seed = run_two["state"].seed
    sent = [run_two["start"], run_two["response"], run_two["finish"]]
    for message in sent:
        for f in dataclasses.fields(message):
            value = getattr(message, f.name)
            raw = value.tobytes() if isinstance(value, np.ndarray) else value
            assert not (isinstance(raw, bytes) and seed in raw), f.name
    assert run_two["finish"].sealed_seeds and len(run_two["finish"].sealed_seeds) > 32


@settings(max_examples=40, deadline=None)
@given(junk=st.binary(max_size=200))
def test_any_other_sealed_seeds_are_refused(junk: bytes) -> None:
    # Whatever a courier or a faulty peer puts in place of the sealed seeds, the passive party
    # refuses it with an InvalidArtifact (never a traceback, never a result).
    run = _RUN_TWO_CACHE.setdefault("run", _run_two())
    message = dataclasses.replace(run["finish"], sealed_seeds=junk)
    with pytest.raises(InvalidArtifact):
        psi.conclude(run["pstate"], run["passive"], message)


def test_start_with_a_bad_exchange_key_is_refused(run_two: dict) -> None:
    start = dataclasses.replace(run_two["start"], exchange_public=bytes(31))
    with pytest.raises(InvalidArtifact, match="the start message: the key-exchange public key"):
        respond_to(start, run_two["passive"])


# --------------------------------------------------------------------------- FATE example files


def column(name: str, col: str) -> list[str]:
    path = FATE / name
    if not path.exists():
        pytest.skip(f"FATE data not available at {path}")
    with path.open(newline="", encoding="utf-8") as handle:
        return [row[col] for row in csv.DictReader(handle)]


def test_fate_sample_id_files() -> None:
    # breast_hetero_guest_sample_id.csv: `id` is FATE's match id, shared by several rows (one
    # person, many samples), so it is refused; `mock_id` is unique per row.
    with pytest.raises(DataError, match=r"appear more than once: '133' \(rows 1, 2, 3, \.\.\.\)"):
        psi.normalise_ids(column("breast_hetero_guest_sample_id.csv", "id"))
    host = psi.normalise_ids(column("breast_hetero_host_sample_id.csv", "id"))
    guest_mock = psi.normalise_ids(column("breast_hetero_guest_sample_id.csv", "mock_id"))
    # Keeping the first row per match id, as the doc suggests, makes the file alignable.
    guest_first = list(dict.fromkeys(column("breast_hetero_guest_sample_id.csv", "id")))
    check(guest_first, {"host": host})
    mine, _ = align(guest_first, {"host": host})
    assert len(mine.ids) == 299
    # The per-row sample ids of the two parties are unrelated numbering: nothing in common.
    host_rows = psi.normalise_ids(column("breast_hetero_host_sample_id.csv", "sample_id"))
    assert align(guest_mock, {"host": host_rows})[0].ids == []


def test_fate_repeated_id_file() -> None:
    with pytest.raises(DataError, match=r"appear more than once: '133' \(rows 1, 2, 3, \.\.\.\)"):
        psi.normalise_ids(column("breast_hetero_guest_repeated_id.csv", "id"))
    # `mock_id` is unique ("133_0", "133_1", ... for repeated people, the plain id otherwise):
    # it aligns, and only people with a single row match the host's ids.
    guest = psi.normalise_ids(column("breast_hetero_guest_repeated_id.csv", "mock_id"))
    host = psi.normalise_ids(column("breast_hetero_host_sample_id.csv", "id"))
    check(guest, {"host": host})


def test_progress_is_reported_for_every_long_phase() -> None:
    bars: list[list[object]] = []

    def progress(description: str, total: int) -> Callable[[int], None]:
        bar: list[object] = [description, total, 0]
        bars.append(bar)

        def advance(n: int) -> None:
            bar[2] = int(str(bar[2])) + n

        return advance

    active = [f"id{i}" for i in range(2500)]  # enough for the parallel path
    state, start = psi.start(active, job_id=JOB, salt=SALT, party="bank", progress=progress)
    _, response = psi.respond(
        active[:40],
        start,
        job_id=JOB,
        salt=SALT,
        party="bureau",
        active="bank",
        n_jobs=1,
        progress=progress,
    )
    psi.finish(state, active, {"bureau": response}, progress=progress)
    assert bars == [
        ["hashing and blinding ids", 2500, 2500],
        ["blinding again the points of bank (start message)", 2500, 2500],
        ["hashing and blinding ids", 40, 40],
        ["blinding again the response from bureau: its own points", 40, 40],
    ]


def test_documented_encodings() -> None:
    # The formulas of docs/protocols/psi.md, written out independently.
    def lp(text: str) -> bytes:
        data = text.encode("utf-8")
        return len(data).to_bytes(4, "big") + data

    seeds = {"zeta": bytes(range(32)), "bank": bytes(32), "bureau": b"\x07" * 32}
    key = hashlib.sha256(
        b"vfl/psi/v1/order-key"
        + lp(JOB)
        + lp("bank")
        + lp("bureau")
        + lp("zeta")
        + seeds["bank"]
        + seeds["bureau"]
        + seeds["zeta"]
    ).digest()
    assert psi.order_key(seeds, JOB) == key
    ids = ["b", "a", "c", "é"]
    assert psi.final_order(ids, key) == sorted(
        ids,
        key=lambda v: hashlib.blake2b(
            v.encode("utf-8"), digest_size=32, key=key, person=b"vfl-psi-order"
        ).digest(),
    )
    seed = b"\x01" * 32
    assert (
        psi.commit_seed(seed, JOB)
        == hashlib.sha256(b"vfl/psi/v1/seed-commitment" + lp(JOB) + seed).digest()
    )
    assert psi.make_domain(JOB, SALT) == (
        b"vfl/psi/v1/domain" + lp(JOB) + len(SALT).to_bytes(4, "big") + SALT
    )
    digest_key = hashlib.blake2b(b"", digest_size=32, key=key, person=b"vfl-psi-digest").digest()
    assert psi.digest_key(key) == digest_key
    ordered = psi.final_order(ids, key)
    listed = '["job-7","' + '","'.join(ordered).replace("é", "\\u00e9") + '"]'
    assert psi.alignment_fingerprint(ordered, digest_key, JOB) == hashlib.blake2b(
        listed.encode("ascii"), digest_size=32, key=digest_key, person=b"vfl-psi-fp"
    ).digest()


def test_result_fingerprint_is_the_keyed_mac_of_the_joint_order(run_two: dict) -> None:
    mine, theirs = align(run_two["active"], {"bureau": run_two["passive"]}, seed=11)
    assert mine.digest_key == theirs["bureau"].digest_key
    assert mine.fingerprint == psi.alignment_fingerprint(mine.ids, mine.digest_key, JOB)
    # A plain hash of the same ids is not it.
    plain = hashlib.sha256(psi.encode_ids([JOB, *mine.ids])).digest()
    assert mine.fingerprint != plain


# --------------------------------------------------------------------------- the job (align.py, on the kit)


def _kit_artifact(out: Outgoing, sender: str, job: str = JOB) -> Artifact:
    """An outgoing message as the recipient's engine hands it over (signing and sealing aside)."""
    return Artifact(out.kind, job, 1, out.step, out.round, sender, out.recipient, dict(out.meta),
                    {m.name: m for m in out.members})


def test_start_message_round_trip_and_refusals(run_two: dict) -> None:
    message = run_two["start"]
    sent = align_job.Start(3, message.seed_commitment, message.exchange_public, message.points).to("bureau", "start")
    # The manifest as before: the count and hex fields; the points as a fixed-width points member.
    assert list(sent.meta) == ["count", "seed_commitment", "exchange_public"]
    assert sent.meta["seed_commitment"] == message.seed_commitment.hex()
    assert [(m.name, m.type) for m in sent.members] == [("points", "points")]
    art = _kit_artifact(sent, "bank")
    got = align_job.Start.decode(art).step(JOB)
    assert (got.job_id, got.seed_commitment, got.exchange_public) == (JOB, message.seed_commitment,
                                                                      message.exchange_public)
    assert np.array_equal(got.points, message.points)
    not_hex = dataclasses.replace(art, meta={**art.meta, "exchange_public": "zz"})
    with pytest.raises(InvalidArtifact, match="field 'exchange_public' is not hex"):
        align_job.Start.decode(not_hex)
    as_npy = dataclasses.replace(art, members={"points": ndarray_member("points", message.points)})
    with pytest.raises(InvalidArtifact, match="lacks the array 'points'"):
        align_job.Start.decode(as_npy)
    no_count = dataclasses.replace(art, meta={k: v for k, v in art.meta.items() if k != "count"})
    with pytest.raises(InvalidArtifact, match="lacks the field 'count'"):
        align_job.Start.decode(no_count)


def _context(tmp_path: Path, name: str, role: str, ids: list[str]) -> PartyContext:
    data = tmp_path / f"{name}.csv"
    pd.DataFrame({"id": ids}).to_csv(data, index=False)
    parties = [{"name": "bank", "role": "active"}, {"name": "bureau", "role": "passive"}]
    return PartyContext(
        name=name, role=role, job=JOB, params={"salt": SALT.hex()}, parties=parties,
        rng=np.random.default_rng(0), data=lambda job=None: pd.read_csv(data, dtype=str),
        data_file=lambda job=None: data, id_column="id", label_column=None, features=[],
        job_arrays=lambda job: {}, job_info=lambda job: {}, private_key=lambda: None,
        public_key=lambda name: None,
    )


def test_the_job_steps_keep_typed_state_and_a_refused_finish_changes_nothing(tmp_path: Path) -> None:
    protocol = align_job.Align()
    a_ctx = _context(tmp_path, "bank", "active", [f"u{i}" for i in range(30)])
    b_ctx = _context(tmp_path, "bureau", "passive", [f"u{i}" for i in range(50, 10, -1)])
    a, b = JobState(), JobState()
    assert protocol.expects(a_ctx, a) == [] and protocol.expects(b_ctx, b) == [Expect("bank", align_job.START)]
    (start,) = protocol.advance(a_ctx, a, {})
    (response,) = protocol.advance(b_ctx, b, {"bank": _kit_artifact(start, "bank")})
    assert protocol.expects(a_ctx, a) == [Expect("bureau", align_job.RESPONSE)]
    (finish,) = protocol.advance(a_ctx, a, {"bureau": _kit_artifact(response, "bureau")})
    # A replayed finish (another response's digest) is refused and leaves the state as it was.
    stale = _kit_artifact(finish, "bank")
    stale = dataclasses.replace(stale, meta={**stale.meta, "response_digest": "00" * 32})
    before = (b.phase, dict(b.data), {k: v.copy() for k, v in b.arrays.items()})
    with pytest.raises(InvalidArtifact, match="answers another response"):
        protocol.advance(b_ctx, b, {"bank": stale})
    assert (b.phase, b.data, b.arrays.keys()) == (before[0], before[1], before[2].keys())
    assert all(np.array_equal(b.arrays[k], v) for k, v in before[2].items())
    assert protocol.advance(b_ctx, b, {"bank": _kit_artifact(finish, "bank")}) == []
    assert a.done and b.done and a.results == b.results
    assert a.results["intersection_size"] == 19
    assert a.arrays["aligned_ids"].tolist() == b.arrays["aligned_ids"].tolist()
    # What each party keeps afterwards: the alignment and digests, no secret and no id list.
    assert set(a.data) == {"start_digest", "ids_digest", "digest_key"} and set(a.arrays) == {
        "aligned_ids", "aligned_rows"}
    assert set(b.data) == {"seed_commitment", "response_digest", "ids_digest", "digest_key"}
    loaded = align_job.PassiveAlign.load(b)
    assert loaded.seed is None and loaded.digest_key == bytes.fromhex(b.data["digest_key"])


def _job_ids(ws: Path, job: str) -> tuple[list[str], list[int], dict]:
    state = jobs.load_state(Workspace(ws), job)[0]
    return state.arrays["aligned_ids"].tolist(), state.arrays["aligned_rows"].tolist(), state.results


@pytest.mark.parametrize("every", [2, 3])
def test_an_alignment_killed_at_commits_resumes_to_one_alignment(
    two_parties, sample, monkeypatch: pytest.MonkeyPatch, every: int
) -> None:
    bank, bureau = two_parties
    jobs.start_job(Workspace(bank), "psi", {}, job="al")
    drive_with_crashes([bank, bureau], "al", monkeypatch, every=every, tries=100)
    (a_ids, a_rows, a_res), (b_ids, b_rows, b_res) = _job_ids(bank, "al"), _job_ids(bureau, "al")
    files = [pd.read_csv(sample(f"breast_{r}.csv"), dtype=str)["id"] for r in ("active", "passive")]
    assert a_ids == b_ids and set(a_ids) == set(files[0]) & set(files[1]) and a_res == b_res
    assert files[0][a_rows].tolist() == a_ids and files[1][b_rows].tolist() == b_ids
    for ws in (bank, bureau):
        assert json.loads(run("-w", str(ws), "audit", "verify", "--json").stdout)["ok"]


def test_a_query_to_a_cache_killed_at_commits_resumes(
    two_parties, sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bank, bureau = two_parties
    run("-w", str(bureau), "align", "cache", "--with", "bank", "--job", "c1", "--max-query-ids", "100")
    carry(bureau, bank)
    run("-w", str(bank), "align", "respond", "c1")
    applicants = tmp_path / "applicants.csv"
    pd.read_csv(sample("breast_active.csv"), dtype=str).iloc[:40].to_csv(applicants, index=False)
    run("-w", str(bank), "align", "start", "--cache", "c1", "--data", str(applicants))
    drive_with_crashes([bank, bureau], "c1-q1", monkeypatch, every=2, tries=100)
    (a_ids, a_rows, a_res), (b_ids, b_rows, b_res) = _job_ids(bank, "c1-q1"), _job_ids(bureau, "c1-q1")
    mine = pd.read_csv(applicants, dtype=str)["id"]
    theirs = pd.read_csv(sample("breast_passive.csv"), dtype=str)["id"]
    assert a_ids == b_ids and set(a_ids) == set(mine) & set(theirs) and a_ids and a_res == b_res
    assert mine[a_rows].tolist() == a_ids and theirs[b_rows].tolist() == b_ids
