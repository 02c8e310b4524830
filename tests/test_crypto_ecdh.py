"""X25519 blinding and hashing to Curve25519 (vfl_cli.crypto.ecdh)."""

from __future__ import annotations

import hashlib
import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl_cli.crypto import ecdh
from vfl_cli.errors import CryptoError

P = 2**255 - 19
A = 486662
# Canonical u-coordinates of small order (curve: orders 1, 2, 4, 8; twist: order 4).
SMALL_ORDER = [
    0,
    1,
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
    P - 1,
]


def points_of(*values: int) -> np.ndarray:
    return np.frombuffer(b"".join(v.to_bytes(32, "little") for v in values), np.uint8).reshape(
        -1, 32
    )


def random_points(n: int, seed: int = 0) -> np.ndarray:
    return ecdh.hash_to_points([f"p{i}" for i in range(n)], f"test{seed}".encode(), n_jobs=1)


def reference_hash(value: str, domain: bytes) -> bytes:
    """hash_to_points as docs/protocols/psi.md specifies it, written as plainly as possible."""
    key = hashlib.sha256(
        b"vfl/psi/v1/hash-to-curve25519" + len(domain).to_bytes(8, "big") + domain
    ).digest()
    for counter in range(256):
        digest = hashlib.blake2b(
            value.encode("utf-8") + bytes([counter]),
            digest_size=64,
            key=key,
            person=b"vfl-psi-h2c-v1",
        ).digest()
        for candidate in (digest[:32], digest[32:]):
            u = int.from_bytes(candidate, "little") & ((1 << 255) - 1)
            f = (u**3 + A * u**2 + u) % P
            if u < P and f != 0 and pow(f, (P - 1) // 2, P) == 1:
                return u.to_bytes(32, "little")
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- X25519


def test_rfc7748_vectors() -> None:
    # RFC 7748 section 5.2 (the second input has its top bit set; X25519 ignores it).
    for scalar, u, expected in [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ]:
        point = np.frombuffer(bytes.fromhex(u), np.uint8).reshape(1, 32)
        out = ecdh.blind(point, bytes.fromhex(scalar), n_jobs=1)
        assert out.tobytes().hex() == expected


@settings(max_examples=20, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_blinding_commutes(a: bytes, b: bytes) -> None:
    points = random_points(8)
    ab = ecdh.blind(ecdh.blind(points, a, n_jobs=1), b, n_jobs=1)
    ba = ecdh.blind(ecdh.blind(points, b, n_jobs=1), a, n_jobs=1)
    assert np.array_equal(ab, ba)


def test_parallel_equals_serial() -> None:
    ids = [f"user-{i}" for i in range(5000)]
    serial = ecdh.hash_to_points(ids, b"d", n_jobs=1)
    parallel = ecdh.hash_to_points(ids, b"d", n_jobs=2)
    assert np.array_equal(serial, parallel)
    scalar = ecdh.new_scalar()
    assert np.array_equal(
        ecdh.blind(serial, scalar, n_jobs=1), ecdh.blind(serial, scalar, n_jobs=2)
    )


def test_forkserver_workers_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    # The path taken when another thread is running (fork would be unsafe) or on other OSes.
    ids = [f"user-{i}" for i in range(3000)]
    scalar = ecdh.new_scalar()
    expected = ecdh.blind(ecdh.hash_to_points(ids, b"d", n_jobs=1), scalar, n_jobs=1)
    monkeypatch.setattr(ecdh, "_start_method", lambda: "forkserver")
    points = ecdh.hash_to_points(ids, b"d", n_jobs=2)
    assert np.array_equal(ecdh.blind(points, scalar, n_jobs=2), expected)


def test_fork_only_while_single_threaded() -> None:
    import threading

    if threading.active_count() == 1:  # other tests may leave threads behind
        assert ecdh._start_method() == "fork"
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        assert ecdh._start_method() == "forkserver"
    finally:
        stop.set()
        worker.join()


def test_openssl_backend_agrees() -> None:
    # The same X25519 through OpenSSL (the `cryptography` package), should we switch backends.
    x25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.x25519")
    points = random_points(50)
    scalar = ecdh.new_scalar()
    ours = ecdh.blind(points, scalar, n_jobs=1)
    key = x25519.X25519PrivateKey.from_private_bytes(scalar)
    theirs = [key.exchange(x25519.X25519PublicKey.from_public_bytes(p.tobytes())) for p in points]
    assert ours.tobytes() == b"".join(theirs)


def test_small_order_points_are_refused() -> None:
    points = np.concatenate([random_points(3), points_of(*SMALL_ORDER)])
    with pytest.raises(CryptoError, match=r"5 point\(s\) have small order .*rows 3, 4, 5, 6, 7"):
        ecdh.blind(points, ecdh.new_scalar(), n_jobs=1)


def test_small_order_refused_in_parallel_too() -> None:
    points = random_points(4096)
    points[4000] = points_of(1)[0]
    with pytest.raises(CryptoError, match=r"rows 4000\)"):
        ecdh.blind(points, ecdh.new_scalar(), n_jobs=2)



@pytest.mark.parametrize("n_jobs", [1, 2])
def test_batches_on_one_pool_equal_the_single_calls(n_jobs: int) -> None:
    ids = [f"user-{i}" for i in range(2500)]
    peer = random_points(1500)
    scalar = ecdh.new_scalar()
    seen: list[int] = []
    double, own = ecdh.run(
        [ecdh.Work(peer, scalar=scalar, progress=seen.append),
         ecdh.Work(ids, domain=b"d", scalar=scalar)],
        n_jobs=n_jobs,
    )
    assert np.array_equal(double, ecdh.blind(peer, scalar, n_jobs=1))
    assert np.array_equal(own, ecdh.blind(ecdh.hash_to_points(ids, b"d", n_jobs=1), scalar, n_jobs=1))
    assert sum(seen) == len(peer)


def test_small_order_names_its_batch() -> None:
    good, bad = random_points(3000), random_points(3000)
    bad[2999] = points_of(1)[0]
    with pytest.raises(ecdh.SmallOrderPoints, match=r"rows 2999\)") as caught:
        ecdh.run([ecdh.Work(good, scalar=ecdh.new_scalar()), ecdh.Work(bad, scalar=ecdh.new_scalar())], n_jobs=2)
    assert caught.value.batch == 1

def test_bad_scalar_and_shapes() -> None:
    with pytest.raises(CryptoError, match="32 bytes, got 31 bytes"):
        ecdh.blind(random_points(2), b"x" * 31)
    with pytest.raises(CryptoError, match=r"shape \(n, 32\)"):
        ecdh.blind(np.zeros((2, 31), np.uint8), ecdh.new_scalar())
    with pytest.raises(CryptoError, match="uint8 array"):
        ecdh.blind(np.zeros((2, 32), np.int64), ecdh.new_scalar())


def test_new_scalar() -> None:
    a, b = ecdh.new_scalar(), ecdh.new_scalar()
    assert len(a) == 32 and a != b
    assert a[0] & 7 == 0 and a[31] & 0x80 == 0 and a[31] & 0x40
    assert ecdh.new_scalar(random.Random(1)) == ecdh.new_scalar(random.Random(1))


# --------------------------------------------------------------------------- hashing


def test_hash_matches_the_documented_definition() -> None:
    ids = ["", "a", "007", "  spaced  ", "é", "e\u0301", "日本", "x" * 300]
    points = ecdh.hash_to_points(ids, b"job\x00salt", n_jobs=1)
    assert [p.tobytes() for p in points] == [reference_hash(v, b"job\x00salt") for v in ids]


def test_hash_lands_on_the_curve_not_the_twist() -> None:
    points = random_points(300)
    for row in points:
        u = int.from_bytes(row.tobytes(), "little")
        assert u < P
        assert pow((u**3 + A * u**2 + u) % P, (P - 1) // 2, P) == 1


def test_hash_is_domain_separated_and_deterministic() -> None:
    ids = [f"id{i}" for i in range(100)]
    one = ecdh.hash_to_points(ids, b"job-1", n_jobs=1)
    assert np.array_equal(one, ecdh.hash_to_points(ids, b"job-1", n_jobs=1))
    two = ecdh.hash_to_points(ids, b"job-2", n_jobs=1)
    assert not np.any(np.all(one == two, axis=1))
    assert len({p.tobytes() for p in one}) == 100


def test_hash_refuses_text_that_is_not_unicode() -> None:
    with pytest.raises(CryptoError, match="id number 2 is not valid Unicode"):
        ecdh.hash_to_points(["ok", "bad\udcff"], b"d", n_jobs=1)


def test_hash_of_no_ids() -> None:
    assert ecdh.hash_to_points([], b"d").shape == (0, 32)
    assert ecdh.blind(np.zeros((0, 32), np.uint8), ecdh.new_scalar()).shape == (0, 32)


# --------------------------------------------------------------------------- checks


def test_check_points_accepts_honest_points() -> None:
    points = ecdh.blind(random_points(20), ecdh.new_scalar(), n_jobs=1)
    assert np.array_equal(ecdh.check_points(points, expected=20), points)


def test_check_points_refusals() -> None:
    good = random_points(6)
    with pytest.raises(CryptoError, match="expected 7 points, got 6"):
        ecdh.check_points(good, expected=7)
    high = good.copy()
    high[2, 31] |= 0x80
    with pytest.raises(CryptoError, match=r"top bit set; rows 2\)"):
        ecdh.check_points(high)
    with pytest.raises(CryptoError, match=r"u >= 2\^255 - 19; rows 0, 1\)"):
        ecdh.check_points(points_of(P, P + 1, 5))
    repeated = np.concatenate([good, good[[4, 1]]])
    with pytest.raises(CryptoError, match=r"2 point\(s\) repeat an earlier one \(rows 6, 7\)"):
        ecdh.check_points(repeated, what="start points")
    with pytest.raises(CryptoError, match="start points: expected a uint8 array"):
        ecdh.check_points([[0] * 32], what="start points")


def test_find_duplicates_with_colliding_prefixes() -> None:
    points = random_points(5)
    points[3, :8] = points[1, :8]  # same 64-bit prefix, different points: not a repeat
    assert ecdh.find_duplicates(points).size == 0
    points[4] = points[0]
    assert ecdh.find_duplicates(points).tolist() == [4]


def _affinity(_: int) -> list[int]:
    import os
    import time

    time.sleep(0.2)  # keep this worker busy so that the other takes the next task
    return sorted(os.sched_getaffinity(0))


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_getaffinity"), reason="Linux only")
def test_workers_are_pinned_one_core_each() -> None:
    import os
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two cores")
    context = get_context("fork")
    pool = ProcessPoolExecutor(2, mp_context=context, initializer=ecdh._pin_worker,
                               initargs=(context.Value("i", 0), cpus[:2]))
    with pool:
        seen = {tuple(a) for a in pool.map(_affinity, range(4))}
    assert seen == {(cpus[0],), (cpus[1],)}


@given(st.integers(min_value=1, max_value=3_000_000), st.integers(min_value=1, max_value=64))
def test_guided_chunks_cover_every_item_once(n: int, jobs: int) -> None:
    edges = ecdh._guided_edges(n, jobs)
    sizes = [b - a for a, b in itertools.pairwise(edges)]
    assert edges[0] == 0 and edges[-1] == n and all(s > 0 for s in sizes)
    assert sizes == sorted(sizes, reverse=True) or sizes[:-1] == sorted(sizes[:-1], reverse=True)
    assert sizes[-1] <= 512  # the last chunk is small: no core waits long for the other
