"""Benchmark of SecureBoost through the real command, and its accuracy against scikit-learn (issue #18).

Runs a recipe with ``vfl recipe run`` (every step its own ``vfl`` process, all parties on this
machine, artifacts moved between outbox and inbox), then reads the active party's finished job:
wall time, the recipe's own stage timings, exchanges and hand-offs per boosting round, test
metrics, and the largest difference between the job's test scores and the plaintext reference
(``vfl_cli/models/trees.py``) on the same rows. Prints one JSON line with the machine's load.

The accuracy comparison is the same with or without the run (``--reference-only`` skips it):
the joined rows of every party, the job's split (``split_rows`` on the ids, so the same test ids
as the job), and on those rows

* ``ours``: the plaintext reference with the recipe's parameters, with ``active_trees`` as in
  the recipe and with 0 (the encrypted job equals the reference to 1e-6:
  tests/test_protocol_secureboost.py, and ``max_abs_diff_job_vs_reference`` below);
* ``sklearn``: HistGradientBoostingClassifier/Regressor with the same trees, depth, bins
  (``max_bins - 1`` plus the missing bin), learning rate, L2, min_samples_leaf and min child
  weight (sklearn's fixed 1e-3, our default), no early stopping, on the raw columns (its own
  bin edges);
* ``sklearn_same_bins``: the same estimator on our bin codes, so both grow trees on identical
  bins;
* ``seeds``: the same comparison (active_trees 0, sklearn on raw columns) over ten more split
  seeds: mean and standard deviation of the difference, i.e. how much one split's test set moves
  it.

Metrics: test AUC (binary), accuracy (multiclass), RMSE (regression).

    python tests/benchmarks/bench_secureboost.py recipes/sbt_default_credit.toml
    python tests/benchmarks/bench_secureboost.py recipes/sbt_breast.toml --key-bits 1024
    python tests/benchmarks/bench_secureboost.py recipes/sbt_vehicle.toml --reference-only
    python tests/benchmarks/bench_secureboost.py recipes/sbt_default_credit.toml --no-accuracy

The last line (stderr) sums the run up: wall and CPU seconds (every process the recipe started,
workers included), hand-offs per round and the test metric.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tomllib

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from vfl_cli.models import trees  # noqa: E402
from vfl_cli.models.binning import fit_binning  # noqa: E402
from vfl_cli.models.features import split_rows  # noqa: E402


def run_recipe(recipe: Path, workdir: Path, key_bits: int | None, trees_: int | None
               ) -> tuple[float, float, dict]:
    """(wall seconds, CPU seconds of every process the recipe started, report.json)."""
    text = recipe.read_text().replace('"../sample_data/', f'"{ROOT}/sample_data/')
    if trees_:
        text = re.sub(r"(?m)^trees = \d+", f"trees = {trees_}", text)
    if key_bits:
        text = text.replace("key_bits = 2048", f"key_bits = {key_bits}")
    copy = workdir / recipe.name
    copy.write_text(text)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "vfl_cli", "recipe", "run", str(copy),
                           "--workdir", str(workdir / "run")], capture_output=True, text=True,
                          check=False, env=env)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    (workdir / "stderr.txt").write_text(done.stderr)
    if done.returncode:
        # a failure after training (e.g. in the report) still leaves the job to measure
        print(f"the recipe failed (workdir kept: {workdir}):\n{done.stderr[-1500:]}",
              file=sys.stderr)
        stages = dict(re.findall(r"stage (\w+) done in ([\d.]+) s", done.stderr))
        return wall, cpu, {"timings_s": {k: float(v) for k, v in stages.items()},
                           "failed_after": True}
    return wall, cpu, json.loads((workdir / "run" / "report.json").read_text())


def joined(recipe: dict) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, list[int]]:
    """(X, y, ids, columns per party) of the rows every party holds, the active party first."""
    parties = recipe["party"]
    frames = []
    for p in parties:
        df = pd.read_csv(ROOT / "recipes" / p["data"])
        df = df.rename(columns={p["id_column"]: "__id"})
        df["__id"] = df["__id"].astype(str)  # the workspace reads ids as text
        frames.append(df.rename(columns={c: f"{p['name']}.{c}" for c in df.columns
                                         if c != "__id"}))
    out = frames[0]
    for f in frames[1:]:
        out = out.merge(f, on="__id")
    label = f"{parties[0]['name']}.{parties[0]['label_column']}"
    y = out.pop(label).to_numpy(dtype=float)
    ids = out.pop("__id").to_numpy()
    blocks = [f.shape[1] - 1 - (1 if i == 0 else 0) for i, f in enumerate(frames)]
    return out, y, ids, blocks


def boost_params(tr: dict, seed: int) -> trees.BoostParams:
    keys = ("trees", "depth", "learning_rate", "l2", "min_child_weight", "min_samples_leaf",
            "objective", "subsample", "colsample")
    return trees.BoostParams(**{k: tr[k] for k in keys if k in tr}, seed=seed)


def metric(objective: str, y: np.ndarray, raw: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if objective == "binary":
        return float(roc_auc_score(y, raw.ravel()))
    if objective == "multiclass":
        return float(np.mean(raw.argmax(1) == y))
    return float(np.sqrt(np.mean((raw.ravel() - y) ** 2)))


def sklearn_raw(tr: dict, X: np.ndarray | pd.DataFrame, y: np.ndarray, train: np.ndarray,
                test: np.ndarray) -> np.ndarray:
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    kw = {"max_iter": tr["trees"], "max_depth": tr["depth"], "max_bins": tr["max_bins"] - 1,
          "learning_rate": tr["learning_rate"], "l2_regularization": tr.get("l2", 0.0),
          "min_samples_leaf": tr.get("min_samples_leaf", 20), "max_leaf_nodes": None,
          "early_stopping": False}  # min child weight: sklearn's fixed 1e-3, ours by default
    Xtr = X.iloc[train] if isinstance(X, pd.DataFrame) else X[train]
    Xte = X.iloc[test] if isinstance(X, pd.DataFrame) else X[test]
    if tr["objective"] == "regression":
        return HistGradientBoostingRegressor(**kw).fit(Xtr, y[train]).predict(Xte)
    clf = HistGradientBoostingClassifier(**kw).fit(Xtr, y[train])
    if tr["objective"] == "binary":
        return clf.decision_function(Xte)
    return clf.predict_proba(Xte)


def compare(recipe: dict, seed: int, active_trees: int) -> dict:
    """Ours (reference) and sklearn (raw columns, our bin codes) on the split of ``seed``."""
    tr, ev = recipe["train"], recipe["evaluate"]
    X, y, ids, blocks = joined(recipe)
    split = split_rows(len(y), ev["test_fraction"], seed, ids=ids)
    b = fit_binning(X.iloc[split.train], list(X.columns), max_bins=tr["max_bins"])
    Xb = b.transform(X)
    nb = np.array([c.n_bins for c in b.columns])
    p = boost_params(tr, seed)
    k = int(y.max()) + 1 if p.objective == "multiclass" else 2
    booster = trees.fit(Xb[split.train], nb, y[split.train], p, n_classes=k, blocks=blocks,
                        active_trees=active_trees)
    ours = booster.raw(Xb[split.test])
    yt = y[split.test]
    return {"ours": metric(p.objective, yt, ours),
            "sklearn": metric(p.objective, yt, sklearn_raw(tr, X, y, split.train, split.test)),
            "sklearn_same_bins": metric(p.objective, yt, sklearn_raw(tr, Xb, y, split.train,
                                                                     split.test)),
            "_ours_raw": ours, "_test_ids": ids[split.test]}


def accuracy(recipe: dict, seeds: int = 10) -> dict:
    seed, at = recipe["evaluate"]["seed"], int(recipe["train"].get("active_trees", 1))
    out: dict = {}
    for a in sorted({at, 0}, reverse=True):
        r = compare(recipe, seed, a)
        out[f"active_trees={a}"] = {k: round(v, 4) for k, v in r.items() if not k.startswith("_")}
        if a == at:
            out["_job_check"] = (r["_ours_raw"], r["_test_ids"])
    diffs = []
    for s in range(seed + 1, seed + 1 + seeds):
        r = compare(recipe, s, 0)
        diffs.append(r["ours"] - r["sklearn"])
    out["seeds"] = {"n": seeds, "mean_ours_minus_sklearn": round(float(np.mean(diffs)), 4),
                    "std": round(float(np.std(diffs)), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--key-bits", type=int, default=None)
    ap.add_argument("--trees", type=int, default=None, help="fewer rounds than the recipe's")
    ap.add_argument("--reference-only", action="store_true", help="accuracy only, no run")
    ap.add_argument("--seeds", type=int, default=10, help="more splits for the noise figure")
    ap.add_argument("--no-accuracy", action="store_true",
                    help="only the run: no comparison with scikit-learn afterwards")
    args = ap.parse_args()
    recipe = tomllib.loads(args.recipe.read_text())
    if args.trees:
        recipe["train"]["trees"] = args.trees
    out: dict = {"recipe": str(args.recipe), "load_before": os.getloadavg()}
    if not args.reference_only:
        from vfl_cli import jobs
        from vfl_cli.workspace import Workspace

        parties = recipe["party"]
        tmp = tempfile.mkdtemp(prefix="bench-sbt-")
        wall, cpu, report = run_recipe(args.recipe, Path(tmp), args.key_bits, args.trees)
        out["load_after_run"] = os.getloadavg()
        active = Workspace(Path(tmp) / "run" / parties[0]["name"])
        state, _ = jobs.load_state(active, f"{recipe['recipe']['name']}-train")
        rounds, exchanges = int(state.data["round_no"]), int(state.data["t"])
        passive_rounds = max(1, rounds - int(recipe["train"].get("active_trees", 1)))
        out.update({
            "key_bits": args.key_bits or 2048, "wall_s": round(wall, 1),
            "cpu_s_all_processes": round(cpu, 1), "workdir": tmp,
            "recipe_failed_after_training": bool(report.get("failed_after")),
            "timings_s": report.get("timings_s"), "vfl_processes": report.get("vfl_processes"),
            "bytes_exchanged": report.get("bytes_exchanged"), "rounds": rounds,
            "exchanges": exchanges,
            # each exchange: one sbt/layer to every passive party and its reply (the job's one
            # closing message to each passive party is not counted per tree)
            "hand_offs_per_tree": round(2 * exchanges / passive_rounds, 2),
            "test_metrics": state.results["metrics"]["test"]})
    if not args.no_accuracy:
        acc = accuracy(recipe, args.seeds)
        ref_raw, _ = acc.pop("_job_check")
        if not args.reference_only and "test_scores" in state.results:
            job = np.array(state.results["test_scores"])
            out["max_abs_diff_job_vs_reference"] = float(np.max(np.abs(job - ref_raw[:, 0])))
        out["accuracy"] = acc
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))
    if not args.reference_only:
        print(summary_line(out), file=sys.stderr)


def summary_line(out: dict) -> str:
    """Wall and CPU seconds, hand-offs and the test metric in one line (the JSON has the rest)."""
    m = out["test_metrics"]
    metric = " ".join(f"{k} {m[k]:.4f}" for k in ("auc", "accuracy", "rmse") if k in m)
    load = ", ".join(f"{v:.1f}" for v in out["load_before"])
    return (f"{out['recipe']}: wall {out['wall_s']} s (training {out['timings_s'].get('train')} s), "
            f"CPU {out['cpu_s_all_processes']} s over {out['vfl_processes']} vfl processes, "
            f"{out['exchanges']} exchanges over {out['rounds']} rounds = "
            f"{out['hand_offs_per_tree']} hand-offs per round with the passive parties; test "
            f"{metric}; load before {load}")


if __name__ == "__main__":
    main()
