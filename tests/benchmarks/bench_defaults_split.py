"""split-nn with no parameters against scikit-learn's MLPClassifier of the same shape (issue #15).

For each data set (FATE's vertically split files in sample_data/fate/: breast, default_credit,
vehicle with class 0 against the rest; scikit-learn's wine (class 0), digits (0-4) and diabetes
(above its median), split by columns as ``bench_defaults.py`` splits them; joined on their ids as
the alignment would), the rows are split as a ``split-nn`` job splits them (``split_rows`` over the
ids with the job's default seed and test fraction), each party's columns standardised on the
training rows, and the network of an empty ``[train]`` and ``[model]`` table (``split_nn.DEFAULTS``,
``split_spec.default_spec``) trained by the plaintext reference ``split_spec.central_fit``: the
path ``tests/test_protocol_split_nn.py`` proves equal to the encrypted job (weights, losses and
test predictions to 1e-6 for the same private seeds). Each party's private seed is a fresh draw
in a real job, so the reference runs ``--draws`` seed pairs.

The baseline is ``MLPClassifier`` of the same shape (``mlp_shape``): one hidden layer as wide as
both bottoms together (8 + 8 ReLU units with the defaults), a second of the interactive layer's
units (8) with ReLU, one logistic output; scikit-learn's own defaults otherwise (Adam, lr 1e-3,
batches of 200, up to 200 epochs, stopping when the loss stops improving), on the same joined,
standardised training rows.

    python tests/benchmarks/bench_defaults_split.py --draws 3   # all six sets
    python tests/benchmarks/bench_defaults_split.py --sets breast,default_credit --draws 3
    python tests/benchmarks/bench_defaults_split.py --set-param epochs=30 --set-param learning_rate=0.05 --linear-top
    python tests/benchmarks/bench_defaults_split.py --compare-stops --sets breast,digits   # stopping rules
    python tests/benchmarks/bench_defaults_split.py --compare-stops --patiences 10,20 --draws 10   # and patience

Prints, per set: the test AUC of each seed draw, their mean, MLPClassifier's AUC, the gap and
the epochs each draw trained (the cap, or where the early stop on the validation rows ended it)
and the hand-offs its job takes (4 per mini-batch of every epoch trained, 3 for the test rows).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
FATE = ROOT / "sample_data" / "fate"
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_defaults  # noqa: E402  (the derived sets: vehicle, wine, digits, diabetes)

#: name: (active file, passive file, label); the derived ones are written by bench_defaults.write_sets
SETS = {
    "breast": ("breast_hetero_guest.csv", "breast_hetero_host.csv", "y"),
    "default_credit": ("default_credit_hetero_guest.csv", "default_credit_hetero_host.csv", "y"),
    "vehicle": ("vehicle_guest.csv", "vehicle_scale_hetero_host.csv", "y"),
    "wine": ("wine_guest.csv", "wine_host.csv", "y"),
    "digits": ("digits_guest.csv", "digits_host.csv", "y"),
    "diabetes_high": ("diabetes_high_guest.csv", "diabetes_host.csv", "y"),
}


def joined(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ids, X_active, X_passive, y) of the rows both files hold, in the active file's order."""
    guest, host, label = SETS[name]
    where = bench_defaults.WHERE.get(name, FATE)
    a = pd.read_csv(where / guest, dtype={"id": str})
    p = pd.read_csv(where / host, dtype={"id": str})
    df = a.merge(p, on="id", suffixes=("", "_p"))
    a_cols = [c for c in a.columns if c not in ("id", label)]
    p_cols = [c if c in df.columns and c not in a_cols else f"{c}_p" for c in p.columns if c != "id"]
    return (df["id"].to_numpy(), df[a_cols].to_numpy(float), df[p_cols].to_numpy(float),
            df[label].to_numpy(float))


def standardise(X: np.ndarray, train: np.ndarray) -> np.ndarray:
    mean, std = X[train].mean(0), X[train].std(0)
    return (X - mean) / np.where(std > 0, std, 1)


def mlp_shape(spec: Any, dim_a: int, dim_p: int) -> tuple[int, int]:
    """MLPClassifier's hidden layers for a split network: both bottoms' outputs side by side, then
    the interactive layer's units (the defaults: ``(16, 8)``)."""
    from vfl_cli.models import split_spec as ss

    model = ss.SplitModel.build(spec, dim_a, dim_p, (0, 1))
    return ss.out_dim(model.bottom_a, dim_a) + ss.out_dim(model.bottom_p, dim_p), spec.units


def run(name: str, params: dict, draws: int) -> dict:
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier

    from vfl_cli.models import split_spec as ss
    from vfl_cli.models.features import split_rows, validation_split
    from vfl_cli.models.reference import minibatches

    ids, XA, XP, y = joined(name)
    split = split_rows(len(y), params["test_fraction"], params["seed"], ids=ids)
    XA, XP = standardise(XA, split.train), standardise(XP, split.train)
    spec = ss.parse_spec(params.get("model"))
    rng = np.random.default_rng(2026)
    aucs, trained = [], []
    t0 = time.time()
    for _ in range(draws):
        seeds = (int(rng.integers(1 << 62)), int(rng.integers(1 << 62)))
        model, history = ss.central_fit(spec, XA[split.train], XP[split.train], y[split.train], params, seeds=seeds)
        aucs.append(float(roc_auc_score(y[split.test], model.predict(XA[split.test], XP[split.test]).ravel())))
        trained.append(len(history))  # epochs trained: the cap, or where the early stop ended it
    ours = time.time() - t0
    mlp = MLPClassifier(hidden_layer_sizes=mlp_shape(spec, XA.shape[1], XP.shape[1]), random_state=0)
    X = np.hstack([XA, XP])
    t0 = time.time()
    mlp.fit(X[split.train], y[split.train])
    ref = float(roc_auc_score(y[split.test], mlp.predict_proba(X[split.test])[:, 1]))
    fit = validation_split(len(split.train), float(params.get("validation_fraction", 0.0)))[1]
    batches = len(minibatches(fit.stop - fit.start, int(params["batch_size"]) or None, seed=params["seed"], epoch=0))
    return {"set": name, "rows": len(y), "aucs": aucs, "mean": float(np.mean(aucs)), "mlp": ref,
            "gap": ref - float(np.mean(aucs)), "worst_gap": ref - min(aucs),
            "epochs": trained, "handoffs": [4 * batches * e + 3 for e in trained], "seconds": round(ours, 1),
            "mlp_seconds": round(time.time() - t0, 1), "mlp_epochs": int(mlp.n_iter_)}


def _stopped(curve: list[float], patience: int, higher: bool = False) -> tuple[int, int]:
    """``(kept, trained)``: the early stop's rule (:class:`split_spec.EarlyStop`) on a curve of
    per-epoch checks; ``higher``: a score to raise (an AUC), not a loss."""
    from vfl_cli.models import split_spec as ss

    rule = ss.EarlyStop(patience)
    for epoch, value in enumerate(curve):
        rule.check(-value if higher else value, epoch)
        if rule.stop:
            return rule.best_epoch, epoch + 1
    return rule.best_epoch, len(curve)


def compare_stops(name: str, params: dict[str, Any], draws: int, patiences: tuple[int, ...] = ()) -> str:
    """Stopping rules side by side on the same trainings: each draw trained to the ``epochs`` cap
    without stopping, the validation loss, the validation AUC and the test AUC recorded at every
    epoch's check (before its last step, where the job checks), then each rule applied to the
    recorded curves (the validation loss's rule also at each of ``patiences``). Gap to
    MLPClassifier (mean / worst) and the epochs each draw trains."""
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier

    from vfl_cli.models import split_spec as ss
    from vfl_cli.models.features import split_rows, validation_split
    from vfl_cli.models.nn import make_head

    ids, XA, XP, y = joined(name)
    split = split_rows(len(y), params["test_fraction"], params["seed"], ids=ids)
    XA, XP = standardise(XA, split.train), standardise(XP, split.train)
    spec = ss.parse_spec(params.get("model"))
    val = split.train[validation_split(len(split.train), float(params["validation_fraction"]))[0]]
    patience = int(params["patience"])
    rng = np.random.default_rng(2026)
    rules: dict[str, list[tuple[float, int]]] = {
        f"val loss, best kept (patience {patience})": [], f"val loss, last kept (patience {patience})": [],
        f"val AUC, best kept (patience {patience})": [], "60 epochs": [], f"{params['epochs']} epochs": []}
    others = [p for p in patiences if p != patience]
    rules.update({f"val loss, best kept (patience {p})": [] for p in others})
    plain = ss._central_batch
    for _ in range(draws):
        seeds = (int(rng.integers(1 << 62)), int(rng.integers(1 << 62)))
        curves: dict[str, list[float]] = {"loss": [], "auc": [], "test": []}

        def spy(model: ss.SplitModel, *args: object, curves: dict[str, list[float]] = curves) -> float:
            out = model.output(XA[val], XP[val])
            curves["loss"].append(float(make_head(spec.head).loss_grad(out, y[val])[0]))
            curves["auc"].append(float(roc_auc_score(y[val], out.ravel())))
            curves["test"].append(float(roc_auc_score(y[split.test], model.predict(XA[split.test],
                                                                                   XP[split.test]).ravel())))
            return float(plain(model, *args))  # type: ignore[arg-type]

        ss._central_batch = spy  # type: ignore[assignment]
        try:
            ss.central_fit(spec, XA[split.train], XP[split.train], y[split.train],
                           {**params, "batch_size": 0, "patience": 10**9}, seeds=seeds)
        finally:
            ss._central_batch = plain
        test = curves["test"]
        (kept, run), (akept, arun) = _stopped(curves["loss"], patience), _stopped(curves["auc"], patience, True)
        stops = [(kept, run), (run - 1, run), (akept, arun), (59, 60), (len(test) - 1, len(test))]
        stops += [_stopped(curves["loss"], p) for p in others]
        for key, (at, n) in zip(rules, stops, strict=True):
            rules[key].append((test[at], n))
    X = np.hstack([XA, XP])
    mlp = MLPClassifier(hidden_layer_sizes=mlp_shape(spec, XA.shape[1], XP.shape[1]), random_state=0)
    ref = float(roc_auc_score(y[split.test], mlp.fit(X[split.train], y[split.train]).predict_proba(
        X[split.test])[:, 1]))
    return "\n".join(f"{name:>15}  {key:34} gap {ref - np.mean([a for a, _ in v]):+.4f} / "
                     f"{ref - min(a for a, _ in v):+.4f}  epochs {[n for _, n in v]}" for key, v in rules.items())


def main() -> None:
    from vfl_cli.protocol import split_nn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--draws", type=int, default=3, help="private seed pairs per set")
    ap.add_argument("--set-param", action="append", default=[], help="NAME=VALUE over the defaults")
    ap.add_argument("--linear-top", action="store_true",
                    help="a candidate default: the default spec's top without its ReLU on z")
    ap.add_argument("--spec", help="a candidate [model] table as JSON (instead of the default)")
    ap.add_argument("--compare-stops", action="store_true",
                    help="stopping rules side by side on the same full-batch trainings (compare_stops)")
    ap.add_argument("--patiences", help="with --compare-stops: the validation loss's rule also at these, e.g. 10,20")
    args = ap.parse_args()
    params = dict(split_nn.DEFAULTS)
    if args.spec:
        params["model"] = json.loads(args.spec)
    if args.linear_top:
        from vfl_cli.models import split_spec as ss

        params["model"] = {**ss.default_spec().to_dict(), "top": [{"type": "dense", "units": 1}]}
    for item in args.set_param:
        key, value = item.split("=", 1)
        params[key] = type(params[key])(value) if key in params and params[key] is not None else value
    shown = {k: v for k, v in params.items() if k != "alignment"}
    print(f"load {os.getloadavg()}; params {shown}")
    tmp = tempfile.TemporaryDirectory()
    bench_defaults.write_sets(Path(tmp.name))
    for name in args.sets.split(","):
        if args.compare_stops:
            patiences = tuple(int(p) for p in args.patiences.split(",")) if args.patiences else ()
            print(compare_stops(name, params, args.draws, patiences), flush=True)
            continue
        r = run(name, params, args.draws)
        print(f"{r['set']:>15} rows {r['rows']:>6}  split-nn AUC {r['mean']:.4f} (draws "
              f"{', '.join(f'{a:.4f}' for a in r['aucs'])})  MLPClassifier {r['mlp']:.4f} "
              f"({r['mlp_epochs']} epochs)  gap {r['gap']:+.4f} (worst {r['worst_gap']:+.4f})  "
              f"epochs {r['epochs']} hand-offs {r['handoffs']}  {r['seconds']} s", flush=True)
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
