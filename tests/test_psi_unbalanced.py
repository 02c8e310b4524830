"""Unbalanced alignment with a cached blinded set: protocol steps, limits, and the command."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import carry, error_line, run

from vfl_cli.crypto import ecdh
from vfl_cli.errors import DataError, InvalidArtifact
from vfl_cli.protocol import psi_cache as pc

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
SALT = b"s" * 16


def _publish(big: list[str], *, queries: int = 3, ids: int = 1000, user: str = "bank"):
    limits = pc.CacheLimits(queries, ids, NOW + timedelta(days=30))
    secret, message = pc.publish_cache(big, cache_id="c", salt=SALT, owner="bureau", user=user,
                                       limits=limits, n_jobs=1)
    return secret, pc.check_cache(message, cache_id="c")


def _query(secret, cached, small: list[str], *, query: int = 1, now: datetime = NOW):
    job = f"c-q{query}"
    state, start = pc.start_query(small, cached, job_id=job, query=query, salt=SALT, party="bank",
                                  now=now, n_jobs=1)
    owner, response = pc.respond_query(start, secret, job_id=job, query=query, active="bank", now=now,
                                       n_jobs=1)
    mine, finish = pc.finish_query(state, small, cached, response, owner="bureau", n_jobs=1)
    return mine, pc.conclude_query(owner, secret, finish), start, response, finish


def test_undoing_a_blinding_gives_the_singly_blinded_point() -> None:
    points = ecdh.hash_to_points([f"x{i}" for i in range(64)], b"d", n_jobs=1)
    beta = ecdh.new_scalar()
    for _ in range(5):
        alpha, inverse = ecdh.new_invertible_scalar()
        twice = ecdh.blind(ecdh.blind(points, alpha, n_jobs=1), beta, n_jobs=1)
        assert np.array_equal(ecdh.blind(twice, inverse, n_jobs=1), ecdh.blind(points, beta, n_jobs=1))
        assert alpha != inverse


def test_every_drawn_scalar_has_a_clamped_inverse() -> None:
    # The docstring's claim: no scalar was drawn again in 20,000 draws.
    order = 2**252 + 27742317777372353535851937790883648493
    missing = 0
    for _ in range(20_000):
        s = int.from_bytes(ecdh.new_scalar(), "little")
        inverse = pow(s, -1, order)
        missing += all(ecdh._clamped_representative(v) is None for v in (inverse, order - inverse))
    assert missing == 0


def test_cached_alignment_is_the_intersection_in_one_joint_order() -> None:
    big = [f"cust-{i:06d}" for i in range(3000)]
    small = [f"cust-{i:06d}" for i in range(2900, 3150)]  # 100 shared, 150 new
    secret, cached = _publish(big)
    mine, theirs, start, response, finish = _query(secret, cached, small)
    assert mine.ids == theirs.ids and set(mine.ids) == set(big) & set(small)
    assert mine.ids != sorted(mine.ids)
    assert mine.fingerprint == theirs.fingerprint and mine.digest_key == theirs.digest_key
    assert [small[r] for r in mine.rows] == mine.ids and [big[r] for r in theirs.rows] == theirs.ids
    # Files in the small set only: 32 bytes per small id each way, 8 per common id back.
    assert start.points.shape == response.double_blinded.shape == (len(small), 32)
    assert finish.positions.shape == (100,)
    # A second query with fresh scalars: other points for the same ids (queries are unlinkable).
    again = _query(secret, cached, small, query=2)
    assert set(again[0].ids) == set(mine.ids)
    assert not set(map(bytes, start.points)) & set(map(bytes, again[2].points))


def test_truncation_keeps_false_matches_below_two_to_the_minus_forty() -> None:
    for n, q, m in [(10**7, 30, 10**5), (10**6, 1, 1), (10**8, 10**5, 10**7)]:
        width = pc.truncation_bytes(n, q, m)
        assert math.log2(n * max(n, q * m)) - 8 * width <= -40
        assert width == max(8, math.ceil((math.log2(n) + math.log2(max(n, q * m)) + 40) / 8))
    _, cached = _publish([f"x{i}" for i in range(500)])
    assert cached.values.shape == (500, pc.truncation_bytes(500, 3, 1000))


def test_a_cache_refuses_use_past_its_limits_or_with_another_peer() -> None:
    small = [f"cust-{i}" for i in range(10)]
    secret, cached = _publish([f"cust-{i}" for i in range(5, 50)], queries=2, ids=10)
    _query(secret, cached, small, query=2)
    with pytest.raises(DataError, match="query 3 is past the cache's limit of 2 queries"):
        _query(secret, cached, small, query=3)
    with pytest.raises(DataError, match="11 ids exceed the cache's limit of 10 per query"):
        _query(secret, cached, [*small, "one-more"])
    with pytest.raises(DataError, match="the cache expired at 2026-12-31T00:00:00"):
        _query(secret, cached, small, now=NOW + timedelta(days=30))
    # The owner's own checks, whatever the user's side does: another peer, and the limits.
    other, _ = _publish([f"cust-{i}" for i in range(5, 50)], user="shop")
    _, start = pc.start_query(small, cached, job_id="c-q1", query=1, salt=SALT, party="bank",
                                  now=NOW, n_jobs=1)
    with pytest.raises(DataError, match="published for shop, not for bank"):
        pc.respond_query(start, other, job_id="c-q1", query=1, active="bank", now=NOW, n_jobs=1)
    with pytest.raises(DataError, match="query 3 is past"):
        pc.respond_query(start, secret, job_id="c-q3", query=3, active="bank", now=NOW, n_jobs=1)


def test_a_received_cache_is_checked() -> None:
    _, cached = _publish([f"x{i}" for i in range(300)])
    limits = cached.limits
    with pytest.raises(InvalidArtifact, match="strictly ascending"):
        pc.check_cache(pc.CacheMessage("c", cached.values[::-1].copy(), limits), cache_id="c")
    with pytest.raises(InvalidArtifact, match="7 bytes per value"):
        pc.check_cache(pc.CacheMessage("c", cached.values[:, :7].copy(), limits), cache_id="c")
    with pytest.raises(InvalidArtifact, match="belongs to job 'c'"):
        pc.check_cache(pc.CacheMessage("c", cached.values, limits), cache_id="other")


# ----- through the command ---------------------------------------------------------------------

def _results(ws: Path, job: str) -> dict:
    return json.loads(run("-w", str(ws), "job", "show", job, "--json").stdout)["results"]


def _exported(ws: Path, job: str, tmp_path: Path) -> list[str]:
    out = tmp_path / f"{ws.name}-{job}.csv"
    run("-w", str(ws), "align", "export", job, "--out", str(out))
    return pd.read_csv(out, dtype=str)["id"].tolist()


def test_cache_then_two_queries_through_the_command(two_parties, sample, tmp_path: Path) -> None:
    bank, bureau = two_parties
    run("-w", str(bureau), "align", "cache", "--with", "bank", "--job", "c1", "--max-queries", "1",
        "--max-query-ids", "100")
    carry(bureau, bank)
    run("-w", str(bank), "align", "respond", "c1")  # the bank keeps the cache
    assert _results(bank, "c1")["cached_ids"] == _results(bureau, "c1")["cached_ids"]
    bank_ids = pd.read_csv(sample("breast_active.csv"), dtype=str)
    applicants = tmp_path / "applicants.csv"
    bank_ids.iloc[:40].to_csv(applicants, index=False)
    run("-w", str(bank), "align", "start", "--cache", "c1", "--data", str(applicants))
    carry(bank, bureau)
    run("-w", str(bureau), "align", "respond", "c1-q1")
    carry(bureau, bank)
    run("-w", str(bank), "align", "finish", "c1-q1")
    carry(bank, bureau)
    run("-w", str(bureau), "align", "finish", "c1-q1")
    expected = set(bank_ids["id"][:40]) & set(pd.read_csv(sample("breast_passive.csv"), dtype=str)["id"])
    got_bank, got_bureau = _exported(bank, "c1-q1", tmp_path), _exported(bureau, "c1-q1", tmp_path)
    assert got_bank == got_bureau and set(got_bank) == expected and expected
    assert _results(bank, "c1-q1")["fingerprint"] == _results(bureau, "c1-q1")["fingerprint"]
    # The cache allowed one query: the second is refused before anything is sent.
    message = error_line(run("-w", str(bank), "align", "start", "--cache", "c1", "--data",
                             str(applicants), ok=False))
    assert message == ("Error: this cache: query 2 is past the cache's limit of 1 queries; the owner "
                       "must publish a new one (vfl align cache)")


def test_predict_scores_new_applicants_aligned_with_a_cache(two_parties, sample, tmp_path: Path) -> None:
    from test_cli_train import step_until_done

    bank, bureau = two_parties
    run("-w", str(bank), "align", "start", "--job", "al")
    step_until_done([bank, bureau], "al")
    run("-w", str(bank), "train", "start", "--protocol", "hetero-lr", "--alignment", "al", "--epochs", "2",
        "--batch-size", "0", "--job", "tr")
    step_until_done([bank, bureau], "tr")
    run("-w", str(bureau), "align", "cache", "--with", "bank", "--job", "c1")
    carry(bureau, bank)
    run("-w", str(bank), "align", "respond", "c1")
    applicants = tmp_path / "applicants.csv"
    pd.read_csv(sample("breast_active.csv")).tail(60).to_csv(applicants, index=False)
    run("-w", str(bank), "align", "start", "--cache", "c1", "--data", str(applicants))
    step_until_done([bank, bureau], "c1-q1")
    run("-w", str(bank), "predict", "start", "--model", "tr", "--alignment", "c1-q1", "--job", "pr")
    step_until_done([bank, bureau], "pr")
    run("-w", str(bank), "predict", "export", "pr", "--out", str(tmp_path / "scores.csv"))
    scores = pd.read_csv(tmp_path / "scores.csv", dtype={"id": str})
    expected = set(pd.read_csv(applicants, dtype=str)["id"]) & set(
        pd.read_csv(sample("breast_passive.csv"), dtype=str)["id"])
    assert set(scores["id"]) == expected and scores["score"].between(0, 1).all()


def test_packed_cache_values_unpack_exactly_and_save_bytes() -> None:
    rng = np.random.default_rng(1)
    for n in (1, 7, 600, 5000):
        raw = rng.integers(0, 256, size=(n, 11), dtype=np.uint8)
        values = np.unique(raw.view("S11").ravel()).view(np.uint8).reshape(-1, 11)
        rest, counts = pc.pack_values(values)
        assert np.array_equal(pc.unpack_values(rest, counts), values)
        assert rest.nbytes + counts.nbytes <= values.nbytes + 8  # a count when nothing is shared
    rest, counts = pc.pack_values(values)
    assert rest.shape[1] == 10 and len(counts) == 256  # 5000 values: one byte shared, 1/8 byte per value
    assert rest.nbytes + counts.nbytes < values.nbytes * 0.93
    with pytest.raises(InvalidArtifact, match="prefix counts for 5000 values"):
        pc.unpack_values(rest, counts[:-1])
    with pytest.raises(InvalidArtifact, match="prefix counts for 4999 values"):
        pc.unpack_values(rest[1:], counts)
