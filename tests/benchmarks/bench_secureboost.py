"""Benchmark of SecureBoost through the real command (issue #18).

Runs a recipe with ``vfl recipe run`` (every step its own ``vfl`` process, all parties on this
machine, artifacts moved between outbox and inbox), then reads the active party's finished job:
wall time, exchanges and hand-offs per boosting round, test AUC; and fits scikit-learn's
HistGradientBoostingClassifier on the joined data with the same split, trees, depth, bins,
learning rate, L2 and min_samples_leaf. Prints one JSON line with the machine's load.

    python tests/benchmarks/bench_secureboost.py recipes/sbt_default_credit.toml
    python tests/benchmarks/bench_secureboost.py recipes/sbt_breast.toml --key-bits 1024
    python tests/benchmarks/bench_secureboost.py recipes/sbt_default_credit.toml --trees 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tomllib

ROOT = Path(__file__).resolve().parents[2]


def run_recipe(recipe: Path, workdir: Path, key_bits: int | None, trees: int | None) -> float:
    text = recipe.read_text().replace('"../sample_data/', f'"{ROOT}/sample_data/')
    if trees:
        text = re.sub(r"(?m)^trees = \d+", f"trees = {trees}", text)
    if key_bits:
        text = text.replace("key_bits = 2048", f"key_bits = {key_bits}")
    copy = workdir / recipe.name
    copy.write_text(text)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vfl_cli", "recipe", "run", str(copy),
                           "--workdir", str(workdir / "run")], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        sys.exit(f"the recipe failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def baseline(recipe: dict, parties: list[dict], aligned_ids: np.ndarray) -> float:
    """sklearn on the joined rows in the job's aligned order, so split_rows gives its split."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    from vfl_cli.models.features import split_rows

    frames = [pd.read_csv(ROOT / "recipes" / p["data"]) for p in parties]
    joined = frames[0]
    for i, f in enumerate(frames[1:]):
        joined = joined.merge(f, on="id", suffixes=("", f"_p{i}"))
    joined["id"] = joined["id"].astype(str)  # the workspace reads ids as text
    joined = joined.set_index("id").loc[[str(i) for i in aligned_ids]].reset_index()
    y = joined.pop(parties[0]["label_column"]).to_numpy()
    X = joined.drop(columns=["id"])
    tr, ev = recipe["train"], recipe["evaluate"]
    split = split_rows(len(y), ev["test_fraction"], ev["seed"], ids=np.asarray(aligned_ids, dtype=str))
    clf = HistGradientBoostingClassifier(
        max_iter=tr["trees"], max_depth=tr["depth"], max_bins=tr["max_bins"] - 1,
        learning_rate=tr["learning_rate"], l2_regularization=tr["l2"],
        min_samples_leaf=tr["min_samples_leaf"], max_leaf_nodes=None, early_stopping=False)
    clf.fit(X.iloc[split.train], y[split.train])
    if tr.get("objective") == "multiclass":
        return float(np.mean(clf.predict(X.iloc[split.test]) == y[split.test]))  # accuracy
    return float(roc_auc_score(y[split.test], clf.decision_function(X.iloc[split.test])))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--key-bits", type=int, default=None)
    ap.add_argument("--trees", type=int, default=None, help="fewer rounds than the recipe's")
    args = ap.parse_args()
    from vfl_cli import jobs
    from vfl_cli.workspace import Workspace

    recipe = tomllib.loads(args.recipe.read_text())
    if args.trees:
        recipe["train"]["trees"] = args.trees
    parties = recipe["party"]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        wall = run_recipe(args.recipe, Path(tmp), args.key_bits, args.trees)
        active = Workspace(Path(tmp) / "run" / parties[0]["name"])
        state, _ = jobs.load_state(active, f"{recipe['recipe']['name']}-train")
        align, _ = jobs.load_state(active, f"{recipe['recipe']['name']}-align")
        df = active.read_data()
        ids = df[parties[0]["id_column"]].to_numpy()[align.arrays["aligned_rows"]]
    rounds = int(state.data["round_no"])
    exchanges = int(state.data["t"])
    passive_rounds = max(1, rounds - int(recipe["train"].get("active_trees", 1)))
    print(json.dumps({
        "recipe": str(args.recipe), "key_bits": args.key_bits or 2048, "wall_s": round(wall, 1),
        "rounds": rounds, "exchanges": exchanges,
        # each exchange: one sbt/layer to every passive party and its reply (the job's one
        # closing message to each passive party is not counted per tree)
        "hand_offs_per_tree": round(2 * exchanges / passive_rounds, 2),
        "test_metrics": state.results["metrics"]["test"],
        "sklearn_auc_or_accuracy": baseline(recipe, parties, ids),
        "load_before": load_before, "load_after": os.getloadavg(),
    }))


if __name__ == "__main__":
    main()
