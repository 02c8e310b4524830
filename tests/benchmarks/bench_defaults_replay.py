"""Replay full-batch hetero-linear on the defaults bench's regression sets, without encryption.

hetero-linear's default at full batch (block-preconditioned CG, exchange by exchange as the
protocol runs it, its joint stop test), the own-curvature Newton step (``optimizer = "newton"``,
heavy-ball 0.3, the decrement test; the default until 2026-12-02) and the yardstick of an exact
joint step along Newton's directions, through ``reference.fit_linear_blocks`` on each party's own
columns (standardised on the training rows, as ``PartyData`` does) and the standardised label,
on the training and test ids a job with the default seed and test fraction draws
(``split_rows`` over the ids). Prints the test RMSE's gap to least squares after the exchanges
the replay ran (``epochs`` a cap; ``--no-stop`` runs to the cap), so that a change of the
default step can be judged in seconds before an encrypted run confirms it.

    python tests/benchmarks/bench_defaults_replay.py [--sets motor,student,diabetes] [--epochs 10,20]

``--demo`` replays the README demo instead (hetero-lr on sample_data/breast_*.csv, test fraction
0.25): the centred residual with the default label noise (``label_bits`` 0.5, sized for each
cap), over ``--draws`` noise draws, and without noise, against LogisticRegression at several C
(scikit-learn's default C = 1 is an L2 penalty the federated defaults do not have).

    python tests/benchmarks/bench_defaults_replay.py --demo --epochs 3,5,10 --draws 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_defaults  # noqa: E402

from vfl_cli.models.features import prepare, split_rows  # noqa: E402
from vfl_cli.models.reference import BLOCK_METHODS, fit_linear_blocks  # noqa: E402


def blocks(name: str) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """(each party's standardised columns, label, train positions, test positions)."""
    _, id_col, label, active, passives = bench_defaults.SETS[name]
    where = bench_defaults.WHERE.get(name, bench_defaults.FATE)
    frames = [pd.read_csv(where / f, dtype={id_col: str}) for f in (active, *passives)]
    df, cols = frames[0], [[c for c in frames[0].columns if c not in (id_col, label)]]
    for i, f in enumerate(frames[1:]):
        own = [c for c in f.columns if c != id_col]
        cols.append([f"{c}_p{i}" if c in df.columns else c for c in own])  # merge's suffix on a clash
        df = df.merge(f, on=id_col, suffixes=("", f"_p{i}"))
    ids = df[id_col].str.strip().to_numpy()
    split = split_rows(len(df), 0.2, 42, ids=ids)
    parts = [prepare(df[c].to_numpy(float), split)[0] for c in cols]
    return parts, df[label].to_numpy(float), split.train, split.test


def spectrum(parts: list[np.ndarray], train: np.ndarray) -> str:
    """Smallest and largest eigenvalue of ``D^-1 H`` on the training rows, and their ratio: the
    block steps' conditioning (1 and 1 when no column is correlated with another party's)."""
    from scipy.linalg import block_diag

    from vfl_cli.models.optim import own_curvature

    blocks = [np.hstack([parts[0], np.ones((len(parts[0]), 1))])[train]] + [b[train] for b in parts[1:]]
    joined = np.hstack(blocks)
    H = joined.T @ joined / len(train) + 1e-3 * np.eye(joined.shape[1])
    D = block_diag(*[own_curvature(b, 1.0) for b in blocks])
    ev = np.sort(np.linalg.eigvals(np.linalg.solve(D, H)).real)
    return f"{ev[0]:.3f} .. {ev[-1]:.3f} (ratio {ev[-1] / ev[0]:.0f})"


def demo(caps: list[int], draws: int) -> None:
    """The README demo's hetero-lr job, replayed: noise draws per cap, no noise, C of scikit-learn."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from vfl_cli.protocol.hetero_linear import label_bits_sigma

    a = pd.read_csv(bench_defaults.ROOT / "sample_data" / "breast_active.csv", dtype={"id": str})
    p = pd.read_csv(bench_defaults.ROOT / "sample_data" / "breast_passive.csv", dtype={"id": str})
    df = a.merge(p, on="id")
    split = split_rows(len(df), 0.25, 42, ids=df["id"].to_numpy())
    tr, te = split.train, split.test
    XA = prepare(df[[c for c in a.columns if c not in ("id", "label")]].to_numpy(float), split)[0]
    XP = prepare(df[[c for c in p.columns if c != "id"]].to_numpy(float), split)[0]
    X, y = np.hstack([XA, XP]), df["label"].to_numpy(float)
    for C in (1.0, 10.0, 100.0, 1e4):
        model = LogisticRegression(C=C, max_iter=5000).fit(X[tr], y[tr])
        print(f"demo LogisticRegression C={C:g}: test AUC {roc_auc_score(y[te], model.predict_proba(X[te])[:, 1]):.4f}")
    for cap in caps:
        sigma = label_bits_sigma({"label_bits": 0.5, "epochs": cap}, True, len(tr), XP.shape[1])
        aucs, runs = [], []
        for seed in range(draws):
            fit = fit_linear_blocks([XA[tr], XP[tr]], y[tr], epochs=cap, binary=True, label_sigma=sigma, seed=seed)
            aucs.append(roc_auc_score(y[te], X[te] @ fit.coef + fit.intercept))
            runs.append(fit.exchanges)
        clean = fit_linear_blocks([XA[tr], XP[tr]], y[tr], epochs=cap, binary=True)
        print(f"demo cap {cap:3d} sigma {sigma:.3f}: test AUC mean {np.mean(aucs):.4f} (min {min(aucs):.4f}, "
              f"max {max(aucs):.4f}, {draws} draws, exchanges {min(runs)}-{max(runs)}); without noise "
              f"{roc_auc_score(y[te], X[te] @ clean.coef + clean.intercept):.4f} ({clean.exchanges} exchanges)",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="motor,student,diabetes")
    ap.add_argument("--epochs", default="10,20")
    ap.add_argument("--no-stop", action="store_true", help="tol 0: run to the cap")
    ap.add_argument("--demo", action="store_true", help="replay the README demo (hetero-lr) instead")
    ap.add_argument("--draws", type=int, default=20, help="--demo: label-noise draws per cap")
    args = ap.parse_args()
    print(f"load {os.getloadavg()}")
    if args.demo:
        demo([int(e) for e in args.epochs.split(",")], args.draws)
        return
    with tempfile.TemporaryDirectory() as tmp:
        bench_defaults.write_sets(Path(tmp))
        for name in args.sets.split(","):
            parts, y, train, test = blocks(name)
            mean, sd = y[train].mean(), y[train].std()
            joined = np.hstack([*parts, np.ones((len(y), 1))])
            ls = np.linalg.lstsq(joined[train], y[train], rcond=None)[0]
            ref = float(np.sqrt(np.mean((joined[test] @ ls - y[test]) ** 2)))
            print(f"{name:10} eigenvalues of D^-1 H (D: each party's own curvature, H: the joint one) "
                  f"{spectrum(parts, train)}", flush=True)
            for cap in (int(e) for e in args.epochs.split(",")):
                for method in BLOCK_METHODS:
                    fit = fit_linear_blocks([p[train] for p in parts], (y[train] - mean) / sd, epochs=cap,
                                            tol=0.0 if args.no_stop else 3e-4, method=method)
                    pred = np.hstack(parts)[test] @ fit.coef + fit.intercept
                    rmse = float(np.sqrt(np.mean((pred * sd + mean - y[test]) ** 2)))
                    print(f"{name:10} cap {cap:3d} {method:18} exchanges {fit.exchanges:3d} "
                          f"{'converged' if fit.converged else 'cap':9} test RMSE {rmse:.4f} vs least squares "
                          f"{ref:.4f}: {(rmse / ref - 1) * 100:+.1f}%", flush=True)
    print(f"load {os.getloadavg()}")


if __name__ == "__main__":
    main()
