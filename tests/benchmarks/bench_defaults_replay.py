"""Replay full-batch hetero-linear on the defaults bench's regression sets, without encryption.

The protocol's default step (each party's own-curvature Newton direction, heavy-ball 0.3, the
decrement test) and two yardsticks, through ``reference.fit_linear_blocks`` on each party's own
columns (standardised on the training rows, as ``PartyData`` does) and the standardised label,
on the training and test ids a job with the default seed and test fraction draws
(``split_rows`` over the ids). Prints the test RMSE's gap to least squares after the exchanges
the replay ran (``epochs`` a cap; ``--no-stop`` runs to the cap), so that a change of the
default step can be judged in seconds before an encrypted run confirms it.

    python tests/benchmarks/bench_defaults_replay.py [--sets motor,student,diabetes] [--epochs 10,20]
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="motor,student,diabetes")
    ap.add_argument("--epochs", default="10,20")
    ap.add_argument("--no-stop", action="store_true", help="tol 0: run to the cap")
    args = ap.parse_args()
    print(f"load {os.getloadavg()}")
    with tempfile.TemporaryDirectory() as tmp:
        bench_defaults.write_sets(Path(tmp))
        for name in args.sets.split(","):
            parts, y, train, test = blocks(name)
            mean, sd = y[train].mean(), y[train].std()
            joined = np.hstack([*parts, np.ones((len(y), 1))])
            ls = np.linalg.lstsq(joined[train], y[train], rcond=None)[0]
            ref = float(np.sqrt(np.mean((joined[test] @ ls - y[test]) ** 2)))
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
