"""Benchmark of ``vfl predict`` with a SecureBoost model (``secureboost-predict``), through the command.

Trains with ``vfl recipe run`` (the recipe's settings, ``--key-bits`` to shorten the training,
which prediction does not use: it sends bits, no ciphertext), then scores the recipe's aligned
rows with ``vfl predict start`` / ``vfl job accept`` / ``vfl step`` / ``vfl predict export``, each
its own ``vfl`` process, files moved from outbox to inbox. Prints one JSON line: the wall time
of each prediction command, the size of the ``sbt/routes`` file, the passive party's split
count, and the largest difference between the predicted raw scores and the training job's own
scores of the same rows (the model's scores, computed while training), with the machine's load.

    python tests/benchmarks/bench_sbt_predict.py recipes/sbt_default_credit.toml --key-bits 512
    python tests/benchmarks/bench_sbt_predict.py recipes/sbt_default_credit.toml --reuse DIR/run

``--reuse``: the workdir of a recipe run whose training job finished (no training).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tomllib

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench_secureboost import run_recipe  # noqa: E402

from vfl_cli import jobs  # noqa: E402
from vfl_cli.workspace import Workspace  # noqa: E402


def vfl(ws: Path, *args: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vfl_cli", "-w", str(ws), *args],
                          capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        sys.exit(f"vfl {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - t0


def carry(src: Path, dst: Path) -> int:
    size = 0
    for f in sorted((src / "outbox").glob(f"*-to-{dst.name}.zip")):
        size += f.stat().st_size
        f.rename(dst / "inbox" / f.name)
    return size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--key-bits", type=int, default=512)
    ap.add_argument("--reuse", type=Path, help="a recipe run's workdir whose training finished")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-sbtp-"))
    name = tomllib.loads(args.recipe.read_text())["recipe"]["name"]
    model, alignment = f"{name}-train", f"{name}-align"
    train_wall = None
    if args.reuse is None:
        train_wall, _ = run_recipe(args.recipe, work, args.key_bits, None)
    run = args.reuse or work / "run"
    names = sorted(d.name for d in run.iterdir() if (d / "jobs" / model).is_dir())
    active = next(n for n in names if jobs.load_info(Workspace(run / n), model)["proposer"] == n)
    a, ps = run / active, [run / n for n in names if n != active]
    t: dict[str, float] = {"predict_start": vfl(a, "predict", "start", "--model", model,
                                                "--alignment", alignment, "--job", "pr")}
    for p in ps:
        carry(a, p)
        t[f"accept_and_step_{p.name}"] = vfl(p, "job", "accept", "pr") + vfl(p, "step", "--job", "pr")
    routes = sum(carry(p, a) for p in ps)
    t["step_active"] = vfl(a, "step", "--job", "pr")
    t["export"] = vfl(a, "predict", "export", "pr", "--out", str(work / "scores.csv"))
    pred = jobs.load_state(Workspace(a), "pr")[0]
    trained = jobs.load_state(Workspace(a), model)[0]
    splits = {p.name: len(jobs.load_state(Workspace(p), model)[0].results["model"]["splits"])
              for p in ps}
    print(json.dumps({
        "recipe": args.recipe.name, "key_bits_training": args.key_bits,
        "train_recipe_wall_s": train_wall and round(train_wall, 1), "rows": len(pred.arrays["raw"]),
        "predict_wall_s": {k: round(v, 2) for k, v in t.items()},
        "predict_total_s": round(sum(t.values()), 2), "routes_bytes": routes,
        "passive_splits": splits,
        "max_abs_diff_vs_training_scores": float(np.max(np.abs(pred.arrays["raw"]
                                                               - trained.arrays["raw"]))),
        "test_auc": pred.results.get("metrics", {}).get("test", {}).get("auc"),
        "loadavg": os.getloadavg(),
    }))


if __name__ == "__main__":
    main()
