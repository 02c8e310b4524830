"""Benchmark of the joint-stats job on default_credit, both parties, through the real command.

Every step is its own ``vfl`` process (init, keygen, align, ``vfl stats joint start``, ``vfl
step``), files carried by moving them from one outbox to the other inbox. Then checks the result
against the plaintext computation on the joined training rows (np.corrcoef; events per bin) and
prints one JSON line: the time of each step, each file's size, the largest errors and the load.

    python tests/benchmarks/bench_joint_stats.py                  # 1024-bit keys
    python tests/benchmarks/bench_joint_stats.py --key-bits 2048
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FATE = ROOT / "sample_data" / "fate"


def vfl(*args: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vfl_cli", *args], capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(f"vfl {' '.join(args)}: {done.stderr}")
    return time.perf_counter() - t0


def carry(root: Path, names: list[str]) -> list[tuple[str, int]]:
    moved = []
    for src in names:
        for f in sorted((root / src / "outbox").glob("*.zip")):
            dst = f.name.rsplit("-to-", 1)[1].removesuffix(".zip")
            moved.append((f.name, f.stat().st_size))
            shutil.move(str(f), root / dst / "inbox" / f.name)
    return moved


def setup(root: Path, key_bits: int, rows: int) -> None:
    import pandas as pd

    insecure = ["--insecure-test-keys"] if key_bits < 2048 else []
    for name, role, data, extra in (
            ("bank", "active", "default_credit_hetero_guest.csv", ["--label-column", "y"]),
            ("bureau", "passive", "default_credit_hetero_host.csv", [])):
        path = FATE / data
        if rows:  # a smoke run on the first rows
            path = root / data
            pd.read_csv(FATE / data, nrows=rows).to_csv(path, index=False)
        vfl("init", str(root / name), "--name", name, "--role", role, "--data",
            str(path), "--id-column", "id", *extra)
        vfl("-w", str(root / name), "keygen", "--key-bits", str(key_bits), *insecure)
        vfl("-w", str(root / name), "keys", "export", "--out", str(root / f"{name}.card"))
    vfl("-w", str(root / "bank"), "keys", "import", str(root / "bureau.card"))
    vfl("-w", str(root / "bureau"), "keys", "import", str(root / "bank.card"))


def drive(root: Path, job: str, steps: list[dict[str, Any]]) -> None:
    """Carry and step until both parties are done, timing every step."""
    from vfl_cli import jobs
    from vfl_cli.workspace import Workspace

    for _ in range(10):
        files = carry(root, ["bank", "bureau"])
        for name in ("bureau", "bank"):
            if any((root / name / "inbox").glob(f"{job}.*")):
                cmd = ["step", "--job", job] if (root / name / "jobs" / job).exists() else [
                    "job", "accept", job]
                steps.append({"party": name, "step": "vfl " + " ".join(cmd[:2]),
                              "seconds": round(vfl("-w", str(root / name), *cmd), 1)})
        steps[-1]["files_in"] = files
        if all(jobs.load_state(Workspace(root / n), job)[0].done for n in ("bank", "bureau")):
            steps.append({"files_after": carry(root, ["bank", "bureau"])})
            return
    raise RuntimeError(f"job {job} did not finish")


def check(root: Path) -> dict[str, Any]:
    """The largest gaps to the plaintext figures on the joined training rows."""
    from vfl_cli import jobs
    from vfl_cli.models.binning import fit_binning
    from vfl_cli.models.features import aligned_rows, split_rows
    from vfl_cli.workspace import Workspace

    frames, results = [], []
    for name in ("bank", "bureau"):
        w = Workspace(root / name)
        st, _ = jobs.load_state(w, "al")
        df = aligned_rows(w.read_data(), st.arrays, "id", "al")
        split = split_rows(len(df), 0.2, 42, ids=st.arrays["aligned_ids"])
        frames.append(df.iloc[np.sort(split.train)].reset_index(drop=True))
        results.append(jobs.load_state(w, "js")[0].results)
    a, p = frames
    acols, pcols = results[0]["columns"], results[1]["columns"]
    ref = np.corrcoef(np.column_stack([a[acols], p[pcols]]).T)
    k = len(acols)
    gap_a = np.abs(np.array(results[0]["pearson"]["bureau"]["r"]) - ref[:k, k:]).max()
    gap_p = np.abs(np.array(results[1]["pearson"]["bank"]["r"]) - ref[k:, :k]).max()
    gap_w = max(np.abs(np.array(results[0]["within"]) - ref[:k, :k]).max(),
                np.abs(np.array(results[1]["within"]) - ref[k:, k:]).max())
    xb = fit_binning(p, pcols, max_bins=10).transform(p)
    y = a["y"].to_numpy()
    wrong = sum(r["events"] != int(y[xb[:, pcols.index(r["column"])] == r["bin"]].sum())
                for r in results[1]["label_rate"] if r["events"] is not None)
    return {"rows": len(a), "active_columns": k, "passive_columns": len(pcols),
            "max_gap_cross_r": float(max(gap_a, gap_p)), "max_gap_within_r": float(gap_w),
            "label_rate_bins": len(results[1]["label_rate"]), "wrong_event_counts": wrong,
            "withheld": results[0]["label_rate"]["bureau"]["withheld"],
            "largest_r": float(np.abs(ref[:k, k:]).max())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--key-bits", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=0, help="only the first rows (a smoke run)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        setup(root, args.key_bits, args.rows)
        steps: list[dict[str, Any]] = []
        vfl("-w", str(root / "bank"), "align", "start", "--with", "bureau", "--job", "al")
        drive(root, "al", [])
        t0 = time.perf_counter()
        steps.append({"party": "bank", "step": "vfl stats joint start --alignment al "
                      "--reveal-to both", "seconds": round(vfl(
                          "-w", str(root / "bank"), "stats", "joint", "start", "--alignment",
                          "al", "--job", "js", "--reveal-to", "both"), 1)})
        drive(root, "js", steps)
        total = time.perf_counter() - t0
        figures = check(root)
    print(json.dumps({"key_bits": args.key_bits, "data_rows": args.rows or "all",
                      "total_seconds": round(total, 1),
                      "steps": steps, **figures, "load_before": load0,
                      "load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
