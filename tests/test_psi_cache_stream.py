"""The unbalanced cache published in bounded memory (psi_cache.publish_streamed): identical to the
in-memory publish, its lists kept as private files, and through the command with a tiny bound."""

from __future__ import annotations

import json
import stat
from datetime import datetime, timezone
from pathlib import Path
from random import Random

import numpy as np
import pandas as pd
import pytest

from vfl_cli.errors import DataError
from vfl_cli.protocol import psi_cache as pc
from vfl_cli.protocol import psi_stream as ps

SALT = bytes(range(16))
LIMITS = pc.CacheLimits(5, 1000, datetime(2026, 12, 31, tzinfo=timezone.utc))
TINY = ps.Budget(1_000_000)  # the smallest pieces: chunks, parts and buckets of 256


def _ids(n: int, seed: int = 3) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"id-{i:07d}" + "x" * int(k) for i, k in zip(rng.permutation(n), rng.integers(0, 4, n), strict=True)]


def _streamed(ids: list[str], tmp: Path, seed: int) -> tuple[pc.Published, ps.Scratch]:
    files = ps.Scratch(tmp / "cache")
    published = pc.publish_streamed(ps.list_chunks(ids, TINY.chunk), files, TINY, n_upper=len(ids) + 7,
                                    cache_id="c", salt=SALT, limits=LIMITS, rng=Random(seed), n_jobs=1)
    return published, files


def test_streamed_publish_equals_the_in_memory_publish(tmp_path: Path) -> None:
    ids = _ids(3000)  # 12 chunks of 256, 16 buckets, 12 parts: every piece is much smaller than the set
    assert len(ids) > 10 * TINY.chunk and TINY.buckets(len(ids)) > 1
    secret, message = pc.publish_cache(ids, cache_id="c", salt=SALT, owner="bureau", user="bank",
                                       limits=LIMITS, rng=Random(9), n_jobs=1)
    published, files = _streamed(ids, tmp_path, 9)
    assert published.scalar == secret.scalar and published.n == len(ids)
    assert published.width == message.values.shape[1]
    values = pc.mapped_values(files, published.n, published.width)
    assert np.array_equal(values, message.values)  # same sorted values
    mapped = pc.open_secret(files, n=published.n, cache_id="c", owner="bureau", user="bank",
                            scalar=published.scalar, limits=LIMITS)
    assert np.array_equal(mapped.order, secret.order)  # same order
    assert np.array_equal(mapped.id_offsets, secret.id_offsets)
    assert np.array_equal(mapped.id_bytes, secret.id_bytes)
    # the lists are private files; the working files are gone
    assert sorted(f.name for f in files.root.iterdir()) == ["ids.bytes", "ids.offsets", "order", "values"]
    assert stat.S_IMODE(files.root.stat().st_mode) == 0o700
    assert {stat.S_IMODE(f.stat().st_mode) for f in files.root.iterdir()} == {0o600}
    # the user's check accepts it, and a query over the mapped files aligns as over the arrays
    cached = pc.check_cache(pc.CacheMessage("c", np.array(values), LIMITS), cache_id="c")
    small = ids[::37] + ["not-cached-1", "not-cached-2"]
    now = datetime(2026, 12, 2, tzinfo=timezone.utc)
    results = []
    for owner_secret in (secret, mapped):
        state, start = pc.start_query(small, cached, job_id="c-q1", query=1, salt=SALT, party="bank", now=now,
                                      rng=Random(4), n_jobs=1)
        owner, response = pc.respond_query(start, owner_secret, job_id="c-q1", query=1, active="bank",
                                           now=now, rng=Random(5), n_jobs=1)
        mine, finish = pc.finish_query(state, small, cached, response, owner="bureau", n_jobs=1)
        theirs = pc.conclude_query(owner, owner_secret, finish)
        assert mine.ids == theirs.ids and set(mine.ids) == set(ids[::37])
        results.append((theirs.ids, list(theirs.rows)))
    assert results[0] == results[1]


def test_streamed_publish_refuses_repeated_ids_across_chunks(tmp_path: Path) -> None:
    ids = _ids(700)
    ids[600] = ids[3]  # in another chunk of 256
    with pytest.raises(DataError, match=r"repeated ids \(rows 4, 601\)"):
        _streamed(ids, tmp_path, 1)


def test_a_changed_or_missing_cache_file_is_refused(tmp_path: Path) -> None:
    published, files = _streamed(_ids(300), tmp_path, 2)
    with files.path("order").open("ab") as fh:
        fh.write(b"\0" * 8)
    with pytest.raises(DataError, match="cache's file .*order is missing or changed"):
        pc.open_secret(files, n=published.n, cache_id="c", owner="bureau", user="bank",
                       scalar=published.scalar, limits=LIMITS)
    files.path("values").unlink()
    with pytest.raises(DataError, match="values is missing or changed"):
        pc.mapped_values(files, published.n, published.width)


# --------------------------------------------------------------------------- through the command


def _job(ws: Path, job: str) -> dict:
    from conftest import run

    return json.loads(run("-w", str(ws), "job", "show", job, "--json").stdout)


def _exported(ws: Path, job: str, tmp: Path) -> list[tuple[str, str]]:
    from conftest import run

    out = tmp / f"{ws.name}-{job}.csv"
    run("-w", str(ws), "align", "export", job, "--out", str(out))
    frame = pd.read_csv(out, dtype=str)
    return list(zip(frame["id"], frame["x"], strict=True))


def test_cache_with_a_tiny_memory_bound_aligns_as_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two caches of the same 1,500 ids, one published and kept with --memory 1MB (chunks, parts and
    buckets of 256), one with the default bound; the same applicants aligned against each give the
    same ids and rows (each query's own joint order), both parties agreeing; the owner never reads
    its data file whole."""
    from conftest import carry, introduce, make_party, run

    from vfl_cli import columns

    whole_reads: list[str] = []
    read_table = columns.read_table
    monkeypatch.setattr(columns, "read_table", lambda path, *a, **k: whole_reads.append(str(path))
                        or read_table(path, *a, **k))
    ids = _ids(1500)
    big = tmp_path / "bureau.csv"
    big.write_text("id,x\n" + "".join(f"{i},{k}\n" for k, i in enumerate(ids)))
    small_ids = ids[::7][:150] + [f"new-{k}" for k in range(50)]
    small = tmp_path / "applicants.csv"
    small.write_text("id,x,y\n" + "".join(f"{i},{k},{k % 2}\n" for k, i in enumerate(small_ids)))
    bank = make_party(tmp_path, "bank", "active", small, label_column="y")
    bureau = make_party(tmp_path, "bureau", "passive", big)
    introduce(tmp_path, "bank", "bureau")
    got = {}
    for cache, memory in (("tiny", ["--memory", "1MB"]), ("dflt", [])):
        whole_reads.clear()
        published = run("-w", str(bureau), "align", "cache", "--with", "bank", "--job", cache, *memory)
        assert ("Memory bound: 1MB (--memory)" if memory else "Memory bound: 2GB (default)") in published.stderr
        assert whole_reads == []  # the publish read the id column a chunk at a time
        carry(bureau, bank)
        run("-w", str(bank), "align", "respond", cache, *memory)
        for ws in (bank, bureau):
            files = ws / "jobs" / cache / "cache"
            assert stat.S_IMODE(files.stat().st_mode) == 0o700
            assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files.iterdir())
        job = f"{cache}-q1"
        run("-w", str(bank), "align", "start", "--cache", cache, *memory)
        carry(bank, bureau)
        run("-w", str(bureau), "align", "respond", job, *memory)
        carry(bureau, bank)
        run("-w", str(bank), "align", "finish", job, *memory)
        carry(bank, bureau)
        run("-w", str(bureau), "align", "finish", job, *memory)
        assert _job(bank, job)["results"]["fingerprint"] == _job(bureau, job)["results"]["fingerprint"]
        got[cache] = {ws.name: _exported(ws, job, tmp_path) for ws in (bank, bureau)}
    assert [r["cached_ids"] for r in (_job(bureau, "tiny")["results"], _job(bank, "tiny")["results"])] == [1500] * 2
    assert _job(bank, "tiny")["results"]["bytes_per_id"] == _job(bank, "dflt")["results"]["bytes_per_id"]
    for cache in got:
        assert [i for i, _ in got[cache]["bank"]] == [i for i, _ in got[cache]["bureau"]]  # one joint order
        assert {i for i, _ in got[cache]["bank"]} == set(ids[::7][:150])
    for party in ("bank", "bureau"):  # same ids with the same rows of each party's file
        assert sorted(got["tiny"][party]) == sorted(got["dflt"][party])
