"""Per-id cost of hashing to a curve and blinding: X25519 (used) against Edwards25519, one core.

Issue #17 asks whether a libsodium alternative is faster per id while keeping the security
argument (a hash onto the prime-order group, a check that refuses small-order and invalid
points). Measured through the same raw cffi bindings of PyNaCl's bundled libsodium:

* X25519 (used): ``ecdh.hash_to_points`` (BLAKE2b-512, the Legendre symbol with gmpy2 keeps
  points off the twist) and ``crypto_scalarmult`` (refuses an all-zero result);
* Edwards25519: BLAKE2b-256 then ``crypto_core_ed25519_from_uniform`` (Elligator 2, cofactor
  cleared: a point of the prime-order subgroup) and ``crypto_scalarmult_ed25519_noclamp``
  (refuses non-canonical, small-order and identity results).

ristretto255 (``crypto_core_ristretto255_from_hash``, ``crypto_scalarmult_ristretto255``) is not
exposed by PyNaCl 1.6's bindings (``nacl._sodium.lib`` lacks it), so it is not measured.

    python tests/benchmarks/bench_curves.py --n 20000 --rounds 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import numpy as np
from nacl._sodium import ffi, lib  # type: ignore[import-not-found]

from vfl_cli.crypto import ecdh


def x25519(ids: list[str], scalar: bytes) -> tuple[float, float]:
    t = time.perf_counter()
    points = ecdh.hash_to_points(ids, b"bench", n_jobs=1)
    hashed = time.perf_counter() - t
    t = time.perf_counter()
    ecdh.blind(points, scalar, n_jobs=1)
    return hashed, time.perf_counter() - t


def ed25519(ids: list[str], scalar: bytes) -> tuple[float, float]:
    n = len(ids)
    points = np.empty((n, 32), dtype=np.uint8)
    dst = ffi.from_buffer(points, require_writable=True)
    t = time.perf_counter()
    key = hashlib.blake2b(digest_size=32, key=b"bench", person=b"vfl-bench-ed")
    for i, value in enumerate(ids):
        h = key.copy()
        h.update(value.encode("utf-8"))
        if lib.crypto_core_ed25519_from_uniform(dst + 32 * i, h.digest()):
            raise RuntimeError("from_uniform failed")
    hashed = time.perf_counter() - t
    out = np.empty_like(points)
    src, res, k = ffi.from_buffer(points), ffi.from_buffer(out, require_writable=True), ffi.from_buffer(scalar)
    t = time.perf_counter()
    for i in range(n):
        if lib.crypto_scalarmult_ed25519_noclamp(res + 32 * i, k, src + 32 * i):
            raise RuntimeError("small order")
    return hashed, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    ids = [f"c{i:09d}" for i in range(args.n)]
    scalar_x = ecdh.new_scalar()
    scalar_e = bytearray(os.urandom(32))
    scalar_e[31] &= 0x0F  # below the group order
    best = {"x25519": [float("inf")] * 2, "ed25519": [float("inf")] * 2}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):  # interleaved: a machine's drift hits both alike
        for name, fn, s in (("x25519", x25519, scalar_x), ("ed25519", ed25519, bytes(scalar_e))):
            got = fn(ids, s)
            best[name] = [min(a, b) for a, b in zip(best[name], got, strict=True)]
    print(f"{args.n:,} ids, best of {args.rounds} interleaved rounds, one core, load {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f}")
    print("| curve | hash to curve, µs/id | blind, µs/id | both, µs/id |")
    print("|---|---:|---:|---:|")
    for name, (h, b) in best.items():
        print(f"| {name} | {h / args.n * 1e6:.1f} | {b / args.n * 1e6:.1f} | {(h + b) / args.n * 1e6:.1f} |")


if __name__ == "__main__":
    main()
