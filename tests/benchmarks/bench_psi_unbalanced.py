"""Unbalanced alignment through the real command: a cached large set x a small set of new ids.

The passive party (bureau) holds ``--n`` ids and publishes them once as a cache
(``vfl align cache``); the active party (bank) keeps it (``vfl align respond``) and aligns
``--m`` new ids (``vfl align start --cache``), ``--shared`` of them known to the bureau. Every
step is its own ``vfl`` process; for each it reports wall time, CPU seconds (the process and its
workers, from wait4) and peak RSS (the largest of the process and its workers), plus the size of
every file sent.

The data files are written by a separate process (``--setup``): Linux carries a process's peak RSS
over fork and exec into the child's ``ru_maxrss``, so a script holding 10M ids (570 MiB) would
floor every step's figure at its own size.

    python tests/benchmarks/bench_psi_unbalanced.py --n 1000000 --m 10000
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_csv(path: Path, ids: np.ndarray, label: bool, rng: np.random.Generator) -> None:
    x = rng.normal(size=len(ids))
    with path.open("w") as fh:
        fh.write("id,x,y\n" if label else "id,x\n")
        if label:
            fh.writelines(f"c{i:010d},{v:.3f},{int(v > 0)}\n" for i, v in zip(ids.tolist(), x, strict=True))
        else:
            fh.writelines(f"c{i:010d},{v:.3f}\n" for i, v in zip(ids.tolist(), x, strict=True))


def vfl(*args: str) -> tuple[float, float, float]:
    """Run ``vfl ARGS``; wall seconds, CPU seconds (with its workers), peak RSS in MiB."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vfl_cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if status:
        sys.exit(f"vfl {' '.join(args)} failed:\n{proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def carry(src: Path, dst: Path) -> int:
    """Move ``src``'s outbox files for ``dst`` into its inbox; their total size in bytes."""
    size = 0
    for f in sorted((src / "outbox").glob(f"*-to-{dst.name}.zip")):
        size += f.stat().st_size
        shutil.move(str(f), dst / "inbox" / f.name)
    return size


def setup(root: Path, n: int, m: int, shared: float) -> tuple[Path, Path]:
    rng = np.random.default_rng(2026)
    common = int(m * shared)
    universe = rng.choice(10**10, size=n + m - common, replace=False)
    write_csv(root / "bureau.csv", universe[:n], False, rng)
    write_csv(root / "applicants.csv", rng.permutation(universe[n - common:]), True, rng)
    for name, role, data, extra in (("bank", "active", "applicants.csv", ["--label-column", "y"]),
                                    ("bureau", "passive", "bureau.csv", [])):
        ws = root / name
        subprocess.run([sys.executable, "-m", "vfl_cli", "init", str(ws), "--name", name, "--role", role,
                        "--data", str(root / data), "--id-column", "id", *extra], check=True,
                       capture_output=True)
        subprocess.run([sys.executable, "-m", "vfl_cli", "-w", str(ws), "keygen"], check=True,
                       capture_output=True)
        subprocess.run([sys.executable, "-m", "vfl_cli", "-w", str(ws), "keys", "export", "--out",
                        str(root / f"{name}.card")], check=True, capture_output=True)
    for a, b in (("bank", "bureau"), ("bureau", "bank")):
        subprocess.run([sys.executable, "-m", "vfl_cli", "-w", str(root / a), "keys", "import",
                        str(root / f"{b}.card")], check=True, capture_output=True)
    return root / "bank", root / "bureau"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="ids of the large (cached) set")
    ap.add_argument("--m", type=int, default=10_000, help="new ids aligned against the cache")
    ap.add_argument("--shared", type=float, default=0.5, help="fraction of the new ids in the cache")
    ap.add_argument("--setup", metavar="DIR", help=argparse.SUPPRESS)  # internal: write the files only
    args = ap.parse_args()
    if args.setup:
        setup(Path(args.setup), args.n, args.m, args.shared)
        return
    root = Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, __file__, "--setup", str(root), "--n", str(args.n), "--m", str(args.m),
                    "--shared", str(args.shared)], check=True)
    bank, bureau = root / "bank", root / "bureau"
    print(f"unbalanced PSI {datetime.date.today()}: cache {args.n:,} ids x {args.m:,} new ids, "
          f"{os.cpu_count()} cores, load before {os.getloadavg()}")
    rows = []
    steps = [
        ("bureau", "publish the cache (once)", bureau, ["align", "cache", "--with", "bank", "--job", "c1",
                                                         "--max-query-ids", str(max(args.m, 100_000))], bank),
        ("bank", "keep the cache (once)", bank, ["align", "respond", "c1"], None),
        ("bank", "query: start", bank, ["align", "start", "--cache", "c1"], bureau),
        ("bureau", "query: respond", bureau, ["align", "respond", "c1-q1"], bank),
        ("bank", "query: finish", bank, ["align", "finish", "c1-q1"], bureau),
        ("bureau", "query: finish", bureau, ["align", "finish", "c1-q1"], None),
    ]
    for party, what, ws, cmd, to in steps:
        wall, cpu, rss = vfl("-w", str(ws), *cmd)
        sent = carry(ws, to) if to is not None else 0
        rows.append((party, what, wall, cpu, rss, sent))
        print(f"| {party} | {what} | {wall:.2f} s | {cpu:.2f} s | {rss:.0f} MiB | {sent:,} B |", flush=True)
    for party in ("bank", "bureau"):
        query = [r for r in rows if r[0] == party and r[1].startswith("query")]
        print(f"{party}, per query: {sum(r[2] for r in query):.2f} s wall, {sum(r[3] for r in query):.2f} s CPU, "
              f"{sum(r[5] for r in query):,} B sent")
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"load after {os.getloadavg()}; this script's own peak RSS {own:.0f} MiB (the floor of the figures)")
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
