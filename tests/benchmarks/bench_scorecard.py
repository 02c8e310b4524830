"""Benchmark of the scorecard recipe through the real command (issue #19).

Runs recipes/scorecard_default_credit.toml with ``vfl recipe run`` (woe-binning, IV selection,
hetero-lr on WOE columns; every step its own ``vfl`` process), then: the joint model's test AUC;
scikit-learn's LogisticRegression (unpenalised) on the same WOE columns of the joined aligned
rows with the same split; and the largest gap between a test row's points summed over both
parties' scorecards and the joint log-odds mapped to points. Prints one JSON line with the load.

    python tests/benchmarks/bench_scorecard.py
    python tests/benchmarks/bench_scorecard.py --key-bits 1024
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
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "scorecard_default_credit.toml"
NAME = "scorecard_default_credit"


def run_recipe(workdir: Path, key_bits: int | None) -> float:
    text = RECIPE.read_text().replace('"../sample_data/', f'"{ROOT}/sample_data/')
    if key_bits:
        text = text.replace("key_bits = 2048", f"key_bits = {key_bits}")
    copy = workdir / RECIPE.name
    copy.write_text(text)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vfl_cli", "recipe", "run", str(copy), "--workdir",
                    str(workdir / "run")], check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def party_view(ws_path: Path) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, dict]:
    """A party's WOE columns of the aligned rows, the split, and its scorecard of the job."""
    from vfl_cli import jobs
    from vfl_cli.columns import encode_frame
    from vfl_cli.models.features import aligned_rows, split_rows
    from vfl_cli.scorecard import points_of_rows, scorecard_of_job
    from vfl_cli.workspace import Workspace

    w = Workspace(ws_path)
    state, _ = jobs.load_state(w, f"{NAME}-align")
    info = jobs.load_info(w, f"{NAME}-train")
    df = aligned_rows(w.read_data(), state.arrays, w.config["id_column"], f"{NAME}-align")
    p = info["params"]
    split = split_rows(len(df), p["test_fraction"], p["seed"], ids=state.arrays["aligned_ids"])
    woe = encode_frame(df, info.get("encoders"))[info["features"]]
    points = points_of_rows(scorecard_of_job(w, f"{NAME}-train"), df.iloc[split.test])
    label = df[w.label_column].to_numpy() if w.label_column else None
    return woe.add_prefix(w.name + ":"), split, points, {"label": label, "ws": w}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--key-bits", type=int)
    ap.add_argument("--run", type=Path, help="measure a finished 'vfl recipe run' workdir instead")
    args = ap.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from vfl_cli import jobs
    from vfl_cli.scorecard import Scaling

    with tempfile.TemporaryDirectory() as tmp:
        wall = 0.0 if args.run else run_recipe(Path(tmp), args.key_bits)
        run = args.run or Path(tmp) / "run"
        bank, split, pts_a, extra = party_view(run / "bank")
        bureau, _, pts_p, _ = party_view(run / "bureau")
        state, _ = jobs.load_state(extra["ws"], f"{NAME}-train")
        X = pd.concat([bank, bureau], axis=1).to_numpy()
        y = extra["label"]
        lr = LogisticRegression(C=np.inf, max_iter=1000).fit(X[split.train], y[split.train])
        sk_auc = roc_auc_score(y[split.test], lr.decision_function(X[split.test]))
        vfl_auc = state.results["metrics"]["test"]["auc"]
        gap = np.abs(pts_a + pts_p - Scaling().score(state.arrays["test_scores"])).max()
        print(json.dumps({"recipe": RECIPE.name, "key_bits": None if args.run else (args.key_bits or 2048),
                          "wall_s": round(wall, 1), "columns": {"bank": bank.shape[1],
                                                                "bureau": bureau.shape[1]},
                          "vfl_test_auc": round(float(vfl_auc), 4),
                          "sklearn_test_auc": round(float(sk_auc), 4),
                          "auc_gap": round(float(sk_auc - vfl_auc), 4),
                          "max_points_gap": float(gap), "load": os.getloadavg()}))


if __name__ == "__main__":
    main()
