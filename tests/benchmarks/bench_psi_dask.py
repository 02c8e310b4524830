"""PSI hashing and blinding on a local Dask cluster: the scaling from 1 to k worker processes.

What the streamed and in-memory alignments send to the workers (:class:`vfl_cli.crypto.ecdh.Work`
batches: ids hashed to the curve and blinded, then points blinded again) is run on a
``distributed.LocalCluster`` of 1, 2, ... worker processes (one thread each), through
:func:`vfl_cli.crypto.parallel.use_dask`, the path ``vfl --dask-scheduler`` takes. Reports wall
seconds, ids per second, the speedup over one worker, and the 1-minute load average before and
after (the machine may be shared: a loaded machine shows little scaling).

    python tests/benchmarks/bench_psi_dask.py --n 200000 --workers 1 2
"""

from __future__ import annotations

import argparse
import os
import time

from vfl_cli.crypto import ecdh, parallel
from vfl_cli.protocol import psi


def one_run(ids: list[str], workers: int) -> float:
    """Seconds to hash and blind ``ids`` once and blind the result again, on ``workers`` workers."""
    import distributed

    domain = psi.make_domain("bench-dask", b"s" * 16)
    alpha, beta = ecdh.new_scalar(), ecdh.new_scalar()
    with (
        distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                 dashboard_address=None) as cluster,
        parallel.use_dask(cluster.scheduler_address),
    ):
        ecdh.run([ecdh.Work(ids[:4096], domain=domain, scalar=alpha)])  # workers warm (imports)
        t = time.perf_counter()
        with ecdh.Workers() as pool:
            blinded = pool.submit(ecdh.Work(ids, domain=domain, scalar=alpha))()
            pool.submit(ecdh.Work(blinded, scalar=beta))()
        return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="ids")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    ids = [f"c{i:09d}" for i in range(args.n)]
    print(f"nproc {os.cpu_count()}; {args.n:,} ids hashed and blinded, then blinded again (2 multiplications each)")
    print("| worker processes | load before → after | wall | ids/s | speedup over 1 |")
    base = None
    for k in args.workers:
        load = os.getloadavg()[0]
        wall = one_run(ids, k)
        base = base or wall * k / args.workers[0]
        print(f"| {k} | {load:.1f} → {os.getloadavg()[0]:.1f} | {wall:.1f} s | {args.n / wall:,.0f} | "
              f"{base / wall:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
