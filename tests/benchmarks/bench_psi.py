"""Benchmark the PSI core against openmined-psi (raw mode), side by side, same ids, one run.

Ours: the whole two-party protocol of ``vfl_cli.protocol.psi`` in memory (hashing, blinding both
ways, intersecting, the joint order), every step using ``--n-jobs`` cores. No files, no CLI:
this measures the cryptographic core that ``vfl align`` runs.

Baseline: openmined-psi (``pip install openmined-psi``; never a dependency of vfl_cli) in raw
mode, client = active party, server = passive party, revealing the intersection. It uses one
core (the library has no parallel mode).

Each side runs in its own forked process so that its peak memory is its own.

    python tests/benchmarks/bench_psi.py --n 100000 --overlap 0.5
    python tests/benchmarks/bench_psi.py --n 1000000 --overlap 0.5 --n-jobs 2
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy as np

IdSets = tuple[list[str], list[str]]


def make_ids(n: int, overlap: float, seed: int) -> IdSets:
    """Two shuffled lists of n ids each, sharing round(n * overlap) ids."""
    rng = np.random.default_rng(seed)
    shared = round(n * overlap)
    pool = rng.choice(10**12, size=2 * n - shared, replace=False)
    names = [f"cust-{v:012d}" for v in pool.tolist()]
    active = names[:n]
    passive = names[n - shared :]
    order_a, order_p = rng.permutation(n), rng.permutation(n)
    return [active[i] for i in order_a], [passive[i] for i in order_p]


def run_ours(ids: IdSets, n_jobs: int | None) -> dict[str, Any]:
    from vfl_cli.protocol import psi

    active, passive = ids
    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    state, start = psi.start(active, job_id="bench", salt=b"salt", party="a", n_jobs=n_jobs)
    t1 = time.perf_counter()
    pstate, response = psi.respond(
        passive, start, job_id="bench", salt=b"salt", party="p", active="a", n_jobs=n_jobs
    )
    t2 = time.perf_counter()
    mine, messages = psi.finish(state, active, {"p": response}, n_jobs=n_jobs)
    t3 = time.perf_counter()
    theirs = psi.conclude(pstate, passive, messages["p"])
    t4 = time.perf_counter()
    steps = {"start": t1 - t0, "respond": t2 - t1, "finish": t3 - t2, "conclude": t4 - t3}
    if theirs.ids != mine.ids:
        raise SystemExit("the two parties disagree on the aligned ids")
    point_bytes = start.points.nbytes + response.double_blinded.nbytes + response.points.nbytes
    return {
        "wall": t4 - t0,
        "steps": steps,
        "intersection": len(mine.ids),
        "point_bytes": point_bytes,
        "wire_bytes": point_bytes + messages["p"].positions.nbytes + 3 * 32,
    }


def run_openmined(ids: IdSets, n_jobs: int | None) -> dict[str, Any]:
    import private_set_intersection.python as om

    active, passive = ids
    t0 = time.perf_counter()
    client = om.client.CreateWithNewKey(True)
    server = om.server.CreateWithNewKey(True)
    request = client.CreateRequest(active)
    t1 = time.perf_counter()
    setup = server.CreateSetupMessage(0.0, len(active), passive, om.DataStructure.RAW)
    response = server.ProcessRequest(request)
    t2 = time.perf_counter()
    found = client.GetIntersection(setup, response)
    t3 = time.perf_counter()
    wire = sum(len(m.SerializeToString()) for m in (request, setup, response))
    return {
        "wall": t3 - t0,
        "steps": {"client request": t1 - t0, "server": t2 - t1, "client intersect": t3 - t2},
        "intersection": len(found),
        "point_bytes": wire,
        "wire_bytes": wire,
    }


def backend_rates(n: int = 20_000, rounds: int = 3) -> dict[str, float]:
    """Single-core X25519 multiplications per second through each available binding.

    Interleaved over several rounds (best round kept) so that load from other programs hits every
    backend alike.
    """
    from nacl._sodium import ffi, lib
    from nacl.bindings import crypto_scalarmult

    from vfl_cli.crypto import ecdh

    points = ecdh.hash_to_points([f"b{i}" for i in range(n)], b"bench", n_jobs=1)
    raw = [p.tobytes() for p in points]
    scalar = ecdh.new_scalar()
    out = np.empty_like(points)

    def pynacl() -> None:
        for p in raw:
            crypto_scalarmult(scalar, p)

    def cffi_loop() -> None:
        dst, src, key = ffi.from_buffer(out, require_writable=True), ffi.from_buffer(points), scalar
        for off in range(0, 32 * n, 32):
            lib.crypto_scalarmult(dst + off, key, src + off)

    backends: dict[str, Callable[[], None]] = {
        "libsodium via nacl.bindings": pynacl,
        "libsodium via raw cffi (used)": cffi_loop,
    }
    try:
        from cryptography.hazmat.primitives.asymmetric import x25519

        key = x25519.X25519PrivateKey.from_private_bytes(scalar)
        load = x25519.X25519PublicKey.from_public_bytes

        def openssl() -> None:
            for p in raw:
                key.exchange(load(p))

        backends["OpenSSL via cryptography"] = openssl
    except ImportError:
        pass
    best = dict.fromkeys(backends, 0.0)
    for _ in range(rounds):
        for name, run in backends.items():
            t0 = time.perf_counter()
            run()
            best[name] = max(best[name], n / (time.perf_counter() - t0))
    return best


def _child(
    target: Callable[[IdSets, int | None], dict[str, Any]],
    ids: IdSets,
    n_jobs: int | None,
    conn: Any,
) -> None:
    try:
        result = target(ids, n_jobs)
    except Exception as exc:  # noqa: BLE001 - report any failure, never hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    me = resource.getrusage(resource.RUSAGE_SELF)
    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    result["peak_rss_mib"] = me.ru_maxrss / 1024
    result["peak_worker_rss_mib"] = workers.ru_maxrss / 1024
    # CPU seconds (this process and its reaped workers, ids generation excluded as it happened in
    # the parent): less sensitive than wall time to other programs sharing the cores.
    result["cpu"] = me.ru_utime + me.ru_stime + workers.ru_utime + workers.ru_stime
    conn.send(result)


def measure(
    target: Callable[[IdSets, int | None], dict[str, Any]], ids: IdSets, n_jobs: int | None
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_child, args=(target, ids, n_jobs, child))
    process.start()
    result: dict[str, Any] = parent.recv()
    process.join()
    return result


def report(name: str, result: dict[str, Any], total_ids: int) -> None:
    if "error" in result:
        print(f"{name}: failed: {result['error']}")
        return
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result["steps"].items())
    print(
        f"{name}: {result['wall']:.1f} s wall, {total_ids / result['wall']:,.0f} ids/s, "
        f"{result['cpu']:.1f} CPU s, "
        f"intersection {result['intersection']:,}, peak RSS {result['peak_rss_mib']:,.0f} MiB "
        f"(workers {result['peak_worker_rss_mib']:,.0f} MiB), point data "
        f"{result['point_bytes'] / total_ids:.1f} B/id, all messages "
        f"{result['wire_bytes'] / total_ids:.1f} B/id\n    steps: {steps}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="ids per party")
    parser.add_argument("--overlap", type=float, default=0.5, help="shared fraction of n")
    parser.add_argument("--n-jobs", type=int, default=None, help="cores for ours (default all)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument(
        "--backends", action="store_true", help="only compare X25519 bindings on one core"
    )
    args = parser.parse_args()
    if args.backends:
        print(f"load before: {os.getloadavg()}")
        for name, rate in backend_rates().items():
            print(f"{name}: {rate:,.0f} X25519/s on one core")
        print(f"load after: {os.getloadavg()}")
        return

    ids = make_ids(args.n, args.overlap, args.seed)
    total = 2 * args.n
    print(
        f"PSI benchmark {datetime.date.today()} on {platform.node()}: {args.n:,} x {args.n:,} ids, "
        f"overlap {args.overlap:.0%}, {os.cpu_count()} cores, n_jobs={args.n_jobs or 'all'}"
    )
    print(f"load before: {os.getloadavg()}")
    ours = measure(run_ours, ids, args.n_jobs)
    report("vfl_cli (X25519, libsodium)", ours, total)
    print(f"load: {os.getloadavg()}")
    if args.skip_baseline:
        return
    try:
        import private_set_intersection.python  # noqa: F401
    except ImportError:
        print("openmined-psi is not installed (pip install openmined-psi): no baseline")
        return
    base = measure(run_openmined, ids, args.n_jobs)
    report("openmined-psi 2.x (raw, P-256)", base, total)
    print(f"load after: {os.getloadavg()}")
    if "error" not in ours and "error" not in base:
        if ours["intersection"] != base["intersection"]:
            print("WARNING: the two implementations found different intersection sizes")
        print(f"speedup (throughput ours / openmined-psi): {base['wall'] / ours['wall']:.2f}x")
        print(f"CPU-time ratio (openmined-psi / ours, per core): {base['cpu'] / ours['cpu']:.2f}x")


if __name__ == "__main__":
    main()
