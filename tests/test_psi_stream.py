"""Streaming PSI (vfl_cli.protocol.psi_stream): identical to the in-memory path, parts checked."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from random import Random

import numpy as np
import pytest

from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.protocol import psi
from vfl_cli.protocol import psi_stream as ps
from vfl_cli.protocol.base import JobState

SALT = bytes(range(16))
JOB = "psi-stream-test"
TINY = ps.Budget(1_000_000)  # the smallest pieces: chunks, parts and buckets of 256


def _sets(n_a: int, n_p: int, common: int, seed: int = 5) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    universe = [f"id-{i:07d}" for i in rng.permutation(n_a + n_p - common)]
    a, p = universe[:n_a], universe[n_a - common:]
    return [a[i] for i in rng.permutation(n_a)], [p[i] for i in rng.permutation(n_p)]


def _stream(ids_a: list[str], ids_p: list[str], tmp: Path, budget: ps.Budget = TINY,
            seeds: tuple[bytes, bytes] | None = None,
            tamper: dict[str, object] | None = None) -> tuple[ps.StreamAlignment, ps.StreamAlignment, dict[str, int]]:
    """Both parties in one process, every part handed over in turn; ``tamper`` edits one part."""
    tamper = tamper or {}
    sa, sp = ps.Scratch(tmp / "a"), ps.Scratch(tmp / "p")
    ca, cp = ps.list_chunks(ids_a, budget.chunk), ps.list_chunks(ids_p, budget.chunk)
    seed_a, seed_p = seeds or (None, None)
    a = ps.active_begin(ca, job_id=JOB, salt=SALT, party="a", scratch=sa, budget=budget, n_jobs=1,
                        seed=seed_a)
    p: ps.PassiveStream | None = None
    counts = {"start": 0, "response": 0, "finish": 0}
    responses = []
    while True:
        a, part = ps.active_next_start(a, sa)
        if part is None:
            break
        counts["start"] += 1
        part = tamper.get(f"start{counts['start']}", lambda x: x)(part)  # type: ignore[operator]
        p, answer = ps.passive_take_start(p, part, cp, job_id=JOB, salt=SALT, party="p", active="a",
                                          scratch=sp, budget=budget, n_jobs=1, seed=seed_p)
        responses.append(answer)
    assert p is not None and p.scalar is None  # beta is dropped after the last start part
    while True:
        p, part = ps.passive_next_points(p, sp)
        if part is None:
            break
        responses.append(part)
    for part in responses:
        counts["response"] += 1
        part = tamper.get(f"response{counts['response']}", lambda x: x)(part)  # type: ignore[operator]
        a = ps.active_take(a, part, sa, peer="p", n_jobs=1)
    assert a.responses_in
    a, result_a = ps.active_conclude(a, ca, sa, budget)
    assert a.scalar is None and a.exchange_secret is None and a.channel_key is None  # dropped once used
    result_p = None
    while True:
        a, part = ps.active_next_finish(a, sa)
        if part is None:
            break
        counts["finish"] += 1
        part = tamper.get(f"finish{counts['finish']}", lambda x: x)(part)  # type: ignore[operator]
        p, result_p = ps.passive_take_finish(p, part, cp, sp, budget)
    assert result_p is not None and p.channel_key is None
    for state in (a, p):  # the typed state survives the engine's JSON state unchanged
        job = JobState()
        state.store(job)
        assert type(state).load(JobState(data=json.loads(json.dumps(job.data)))) == state
    return result_a, result_p, counts


def _in_memory(ids_a: list[str], ids_p: list[str]) -> tuple[psi.Alignment, psi.Alignment, bytes, bytes]:
    sa, start = psi.start(ids_a, job_id=JOB, salt=SALT, party="a", rng=Random(1), n_jobs=1)
    sp, response = psi.respond(ids_p, start, job_id=JOB, salt=SALT, party="p", active="a", rng=Random(2), n_jobs=1)
    result_a, finish = psi.finish(sa, ids_a, {"p": response}, n_jobs=1)
    return result_a, psi.conclude(sp, ids_p, finish["p"]), sa.seed, sp.seed


def test_stream_equals_in_memory_on_sets_larger_than_a_chunk(tmp_path: Path) -> None:
    ids_a, ids_p = _sets(3000, 2500, 1200)
    assert len(ids_a) > 10 * TINY.chunk and len(ids_a) > 4 * TINY.part
    mem_a, mem_p, seed_a, seed_p = _in_memory(ids_a, ids_p)
    got_a, got_p, counts = _stream(ids_a, ids_p, tmp_path, seeds=(seed_a, seed_p))
    assert counts == {"start": 12, "response": 22, "finish": 5}  # parts of 256 points
    for got, mem in ((got_a, mem_a), (got_p, mem_p)):
        assert got.ids.tolist() == mem.ids  # same ids, same order
        assert got.rows.tolist() == mem.rows.tolist()
        assert got.fingerprint == mem.fingerprint and got.digest_key == mem.digest_key
    assert len(mem_a.ids) == 1200
    buckets = [f.name for f in (tmp_path / "a").iterdir() if f.suffix[1:].isdigit()]
    assert not buckets  # each bucket file is removed once read


def test_stream_without_common_ids(tmp_path: Path) -> None:
    got_a, got_p, counts = _stream(*_sets(400, 300, 0), tmp_path)
    assert got_a.ids.tolist() == got_p.ids.tolist() == [] and counts["finish"] == 1


def test_repeated_id_across_chunks_refused_with_rows(tmp_path: Path) -> None:
    ids = [f"x{i}" for i in range(600)]
    ids[590] = "x3"  # in another chunk of 256 than row 4
    with pytest.raises(DataError, match=r"repeated ids \(rows 4, 591\)"):
        ps.active_begin(ps.list_chunks(ids, 256), job_id=JOB, salt=SALT, party="a",
                        scratch=ps.Scratch(tmp_path), budget=TINY, n_jobs=1)


def _edit(**changes: object):  # type: ignore[no-untyped-def]
    return lambda part: replace(part, meta={**part.meta, **changes})


@pytest.mark.parametrize("where, change, message", [
    ("start2", _edit(part=3), "part 3 of 12, but the next part must be 2"),  # out of turn
    ("start2", _edit(part=1), "part 1 of 12, but the next part must be 2"),  # repeated
    ("start1", _edit(parts=9), "cannot carry"),  # out of range
    ("response3", _edit(part=7), "but the next part must be 3"),
    ("response22", _edit(parts=23), "but the next part must be 22 of 22"),
    ("finish2", _edit(part=1), "but the next part must be 2"),
])
def test_part_missing_repeated_or_out_of_range_refused(tmp_path: Path, where: str, change, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArtifact, match=message):
        _stream(*_sets(3000, 2500, 1200), tmp_path, tamper={where: change})


def _reverse_points(part: ps.Part) -> ps.Part:
    return replace(part, arrays={"points": np.ascontiguousarray(part.arrays["points"][::-1])})


def _repeat_across(part: ps.Part) -> ps.Part:
    points = part.arrays["points"].copy()
    points[0] = 0  # below the previous part's last point
    points[0, 0] = 9
    return replace(part, arrays={"points": points})


@pytest.mark.parametrize("where, change", [("start2", _reverse_points), ("response15", _reverse_points),
                                           ("start3", _repeat_across)])
def test_points_out_of_order_or_repeated_across_parts_refused(tmp_path: Path, where: str, change) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArtifact, match="not in strictly ascending order|not canonical|small order"):
        _stream(*_sets(3000, 2500, 1200), tmp_path, tamper={where: change})


def test_echo_of_another_start_part_refused(tmp_path: Path) -> None:
    swap = _edit(start_part_digest="00" * 32)
    with pytest.raises(InvalidArtifact, match="answers another start message"):
        _stream(*_sets(3000, 2500, 1200), tmp_path, tamper={"response2": swap})


def _crowded(part: ps.Part) -> ps.Part:
    """Valid, distinct points that all share their first two bytes (made up, not blinded)."""
    n = len(part.arrays["double_blinded"])
    points = np.random.default_rng(n).integers(0, 256, size=(n, 32), dtype=np.uint8)
    points[:, :2] = 0
    points[:, 31] &= 0x7F
    return replace(part, arrays={"double_blinded": points})


def test_points_crowded_into_one_bucket_refused(tmp_path: Path) -> None:
    """A peer cannot blow the memory bound by making its points share a bucket."""
    with pytest.raises(InvalidArtifact, match="far more points share their first bytes"):
        _stream(*_sets(3000, 2500, 1200), tmp_path, tamper={f"response{k}": _crowded for k in range(1, 13)})


def test_changed_ids_between_steps_refused(tmp_path: Path) -> None:
    ids_a, ids_p = _sets(800, 700, 300)
    sa = ps.Scratch(tmp_path / "a")
    a = ps.active_begin(ps.list_chunks(ids_a, 256), job_id=JOB, salt=SALT, party="a", scratch=sa,
                        budget=TINY, n_jobs=1)
    changed = ps.list_chunks(ids_a[:-1] + ["other"], 256)
    with pytest.raises(DataError, match="id column changed"):
        ps.active_conclude(a, changed, sa, TINY)


def test_memory_sizes_parsed() -> None:
    assert ps.parse_memory("2GB") == 2 * 10**9 == ps.DEFAULT_MEMORY
    assert ps.parse_memory("256MB") == 256 * 10**6
    assert ps.parse_memory("512MiB") == 512 * 2**20
    assert ps.parse_memory("1.5g") == 1_500_000_000
    assert ps.format_memory(256 * 10**6) == "256MB"
    for bad in ("lots", "2XB", "100kB", "-1GB"):
        with pytest.raises(VflError):
            ps.parse_memory(bad)
    assert ps.choose(2_000_000, ps.parse_memory("256MB"), 1)
    assert not ps.choose(1000, ps.DEFAULT_MEMORY, 1)
    assert not ps.choose(2_000_000, ps.parse_memory("256MB"), 2)  # more parties: in memory


def test_csv_chunks_read_the_file_in_pieces_with_file_rows(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("id,x\n" + "".join(f" r{i} ,{i}\n" for i in range(700)) + ",5\n")
    chunks = ps.csv_chunks(f, "id", 256)
    with pytest.raises(DataError, match="rows 701"):
        list(chunks())
    f.write_text("id,x\n" + "".join(f" r{i} ,{i}\n" for i in range(700)))
    got = list(ps.csv_chunks(f, "id", 256)())
    assert [first for first, _ in got] == [0, 256, 512]
    assert [i for _, ids in got for i in ids] == [f"r{i}" for i in range(700)]


# --------------------------------------------------------------------------- through the command


def test_streamed_through_vfl_equals_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two jobs on the same files: one in memory, one streamed in parts (--memory 1MB: pieces of
    256); same ids, same order (each job's own seeds), same rows; scratch removed. Every inbox
    file is read lazily (checked at scan, read again at its step), as large parts are."""
    from conftest import carry, introduce, make_party, run

    from vfl_cli import columns
    from vfl_cli import jobs as engine
    from vfl_cli.workspace import Workspace

    monkeypatch.setattr(engine, "LAZY_BYTES", 0)
    whole_reads: list[str] = []  # data files read whole (pandas, every column): never when streamed
    read_table = columns.read_table
    monkeypatch.setattr(columns, "read_table", lambda path, *a, **k: whole_reads.append(str(path))
                        or read_table(path, *a, **k))

    ids_a, ids_p = _sets(600, 520, 300)
    files = []
    for name, ids, head in (("a", ids_a, "id,x,y\n"), ("p", ids_p, "id,x\n")):
        f = tmp_path / f"{name}.csv"
        f.write_text(head + "".join(f"{i},{k}{',' + str(k % 2) if name == 'a' else ''}\n" for k, i in enumerate(ids)))
        files.append(f)
    bank = make_party(tmp_path, "bank", "active", files[0], label_column="y")
    bureau = make_party(tmp_path, "bureau", "passive", files[1])
    introduce(tmp_path, "bank", "bureau")
    for job, memory in (("mem", "2GB"), ("big", "1MB")):
        started = run("-w", str(bank), "align", "start", "--job", job, "--memory", memory)
        assert f"Memory bound: {memory} (--memory)" in started.stderr
        carry(bank, bureau)
        if job == "big":  # a part missing: the passive party answers the parts before it, then waits
            whole_reads.clear()
            held = next((bureau / "inbox").glob("big.003.start.*"))
            held.rename(tmp_path / held.name)
            waiting = json.loads(run("-w", str(bureau), "align", "respond", job, "--memory", memory, "--json").stdout)
            assert waiting[0]["waiting_for"] and not waiting[0]["done"]
            assert len([s for s in waiting[0]["sent"]]) == 1  # the answer to part 1 only
            (tmp_path / held.name).rename(bureau / "inbox" / held.name)
            run("-w", str(bureau), "align", "finish", job, "--memory", memory)
            # the same part again: a replay, quarantined, nothing changes
            copy = next((bureau / "archive" / "received").glob("big.003.start.*"))
            (bureau / "inbox" / copy.name).write_bytes(copy.read_bytes())
            again = json.loads(run("-w", str(bureau), "align", "finish", job, "--json").stdout)
            assert "replayed" in again[0]["rejected"][0]["reason"]
            carry(bureau, bank)
            run("-w", str(bank), "align", "finish", job, "--memory", memory)
            carry(bank, bureau)
            run("-w", str(bureau), "align", "finish", job, "--memory", memory)
            # the steps, and the small-intersection check after them, read the id column a chunk at
            # a time (a whole read held 500 B per id: 608 MiB at 2M x 2M against a 256 MB bound)
            assert whole_reads == []
            continue
        run("-w", str(bureau), "align", "respond", job, "--memory", memory)
        carry(bureau, bank)
        run("-w", str(bank), "align", "finish", job, "--memory", memory)
        carry(bank, bureau)
        run("-w", str(bureau), "align", "finish", job, "--memory", memory)
    sent = sorted(f.name for f in (bank / "archive" / "sent").iterdir() if f.name.startswith("big."))
    assert len([f for f in sent if ".start." in f]) == 3  # 600 points in parts of 256
    assert len([f for f in sent if ".finish." in f]) == 2  # 300 positions
    for ws in (bank, bureau):
        mem, big = (engine.load_state(Workspace(ws), j)[0] for j in ("mem", "big"))
        assert big.done and big.results["streamed_in_parts"] and "stream" not in big.data
        assert not (ws / "jobs" / "big" / "scratch").exists()
        assert "streamed_in_parts" not in mem.results
        assert big.results["intersection_size"] == mem.results["intersection_size"] == 300
        key = {j: bytes.fromhex(s.data["digest_key"]) for j, s in (("mem", mem), ("big", big))}
        ids = {j: s.arrays["aligned_ids"].tolist() for j, s in (("mem", mem), ("big", big))}
        assert set(ids["big"]) == set(ids["mem"])
        rows = dict(zip(mem.arrays["aligned_ids"].tolist(), mem.arrays["aligned_rows"].tolist(), strict=True))
        assert big.arrays["aligned_rows"].tolist() == [rows[i] for i in ids["big"]]
        assert big.results["fingerprint"] == psi.alignment_fingerprint(ids["big"], key["big"], "big").hex()
    a_big = engine.load_state(Workspace(bank), "big")[0]
    p_big = engine.load_state(Workspace(bureau), "big")[0]
    assert a_big.arrays["aligned_ids"].tolist() == p_big.arrays["aligned_ids"].tolist()
    assert json.loads((bank / "vfl.json").read_text()).get("memory") is None  # --memory is not saved


def test_csv_layout_detected_once_per_unchanged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vfl_cli import tables

    path = tmp_path / "ids.csv"
    path.write_text("id;x\na;1,5\nb;2,5\n")
    calls: list[Path] = []
    detect = tables.detect_format
    monkeypatch.setattr(tables, "detect_format", lambda p, **o: calls.append(p) or detect(p, **o))
    fmt, names = ps.csv_layout(path)
    first = len(calls)
    assert first >= 1 and (fmt, names) == (detect(path), tables.read_header(path))
    assert ps.csv_layout(path) == (fmt, names) and len(calls) == first + 1  # read_header above only
    assert fmt.sep == ";" and fmt.decimal == "," and names == ["id", "x"]
    assert [ids for _, ids in ps.csv_chunks(path, "id", 1)()] == [["a"], ["b"]]
    path.write_text("id,x\nc,1.5\nd,2.5\ne,3\n")  # a changed file is detected again
    before = len(calls)
    assert ps.csv_layout(path)[0].sep == "," and len(calls) > before
    assert [ids for _, ids in ps.csv_chunks(path, "id", 2)()] == [["c", "d"], ["e"]]
