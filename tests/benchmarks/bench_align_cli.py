"""PSI alignment through the real command: two parties of N ids each, both on this machine.

Writes two CSVs (id + one feature column, rows shuffled, ``--overlap`` of the ids shared), then
runs an ``align`` recipe: every step is a separate ``vfl`` process that reads its CSV and writes
its artifacts, exactly as an operator would. Reports the alignment stage's wall time (from
report.json), the bytes exchanged and the peak memory of any one ``vfl`` process (with its
workers).

    python tests/benchmarks/bench_align_cli.py --n 1000000 --overlap 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_parties(folder: Path, n: int, overlap: float, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    shared = int(n * overlap)
    universe = rng.permutation(2 * n - shared)
    a_ids, b_ids = universe[:n], universe[n - shared:]
    paths = []
    for name, ids, label in (("active", a_ids, True), ("passive", b_ids, False)):
        ids = rng.permutation(ids)
        path = folder / f"{name}.csv"
        with path.open("w") as fh:
            fh.write("id,x,label\n" if label else "id,x\n")
            x = rng.normal(size=len(ids))
            if label:
                fh.writelines(f"c{i:09d},{v:.4f},{int(v > 0)}\n" for i, v in zip(ids, x))
            else:
                fh.writelines(f"c{i:09d},{v:.4f}\n" for i, v in zip(ids, x))
        paths.append(path)
    return paths[0], paths[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--overlap", type=float, default=0.5)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    active, passive = write_parties(folder, args.n, args.overlap)
    print(f"wrote 2 x {args.n:,} ids in {time.perf_counter() - t:.1f} s")
    recipe = folder / "align.toml"
    recipe.write_text(f"""[recipe]
name = "bench"
protocol = "align"
key_bits = 1024
[[party]]
name = "a"
role = "active"
data = "{active}"
id_column = "id"
label_column = "label"
[[party]]
name = "p"
role = "passive"
data = "{passive}"
id_column = "id"
""")
    load = os.getloadavg()[0]
    subprocess.run([sys.executable, "-m", "vfl_cli", "recipe", "run", str(recipe), "--workdir", str(folder / "w")],
                   check=True, stdout=subprocess.DEVNULL)
    report = json.loads((folder / "w" / "report.json").read_text())
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"load before {load:.1f}, after {os.getloadavg()[0]:.1f}")
    print("| ids per party | overlap | align stage (wall) | intersection | bytes exchanged | bytes/id | peak RSS of one vfl process |")
    print(f"| {args.n:,} | {args.overlap:.0%} | {report['timings_s']['align']:.1f} s | "
          f"{report['alignment']['intersection_size']:,} | {report['bytes_exchanged']:,} | "
          f"{report['bytes_exchanged'] / (2 * args.n):.1f} | {peak:.0f} MiB |")


if __name__ == "__main__":
    main()
