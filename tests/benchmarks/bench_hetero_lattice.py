"""hetero-lr, first batch: the passive party's exact gradient is a subset-sum in the labels.

At ``t = 0`` every weight of the passive party is 0 and the active party's score is its
intercept alone, so every row's residual is the same constant ``p0`` minus its label. The passive
party decrypts (after removing its own mask) the exact integer ``G = X'^T D`` with
``X' = round(X 2^32)`` and ``D_i = round(p0 2^32) - 2^32 y_i`` (the protocol's fixed-point
encoding). Eliminating the unknown constant leaves ``p - 1`` exact equations in ``m`` unknown
bits; the classic low-density embedding (Coster, Joux, LaMacchia, Odlyzko, Schnorr, Stern 1992)
reduced with LLL finds the labels. With ``--sigma`` the residuals carry Gaussian noise of that
deviation (label_epsilon) and the attacker tries every precision.

This replays the integers on the sample breast rows (20 passive columns) instead of running a
job: they are what the passive party holds. Needs fpylll, which the project does not depend on:

    pip install --target /tmp/fpylll fpylll cysignals
    PYTHONPATH=/tmp/fpylll python tests/benchmarks/bench_hetero_lattice.py --rows 80 160 240 398
    PYTHONPATH=/tmp/fpylll python tests/benchmarks/bench_hetero_lattice.py --rows 80 --sigma 0.01
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from fpylll import LLL, IntegerMatrix

ROOT = Path(__file__).resolve().parents[2]
SCALE = 2**32  # the protocol's encoding: base 16, exponent -8


def first_gradient(m: int, sigma: float, seed: int = 0) -> tuple[list[list[int]], list[int], np.ndarray]:
    """The passive party's first exact gradient on ``m`` rows, with the constant eliminated."""
    a = pd.read_csv(ROOT / "sample_data" / "breast_active.csv", dtype={"id": str})
    p = pd.read_csv(ROOT / "sample_data" / "breast_passive.csv", dtype={"id": str})
    joined = a[["id", "label"]].merge(p, on="id")
    rows = np.random.default_rng(seed).permutation(len(joined))[:m]
    X = joined.drop(columns=["id", "label"]).to_numpy(float)
    X = ((X - X.mean(0)) / X.std(0))[rows]
    y = joined["label"].to_numpy(int)[rows]
    cols = [[int(v) for v in np.round(X[:, c] * SCALE).astype(np.int64)] for c in range(X.shape[1])]
    noise = np.random.default_rng(seed + 1).normal(0, sigma, m) if sigma else np.zeros(m)
    d = [round(0.37 * SCALE) - SCALE * int(y[i]) + round(noise[i] * SCALE) for i in range(m)]
    g = [sum(c[i] * d[i] for i in range(m)) for c in cols]
    s = [sum(c) for c in cols]
    # s_0 g_c - s_c g_0 = -2^32 sum_i (s_0 x_ic - s_c x_i0) y_i  (+ noise terms)
    A = [[s[0] * cols[c][i] - s[c] * cols[0][i] for i in range(m)] for c in range(1, len(cols))]
    t = [-(s[0] * g[c] - s[c] * g[0]) // SCALE for c in range(1, len(cols))]
    return A, t, y


def _round(v: int, k: int) -> int:
    return (v + (1 << (k - 1))) >> k if k > 0 else v


def labels_found(A: list[list[int]], t: list[int], y: np.ndarray, k: int) -> int:
    """Reduce the embedding with the equations' ``k`` low bits dropped; best labels right."""
    m, q = len(y), len(A)
    B = IntegerMatrix(m + 1, m + q)
    for i in range(m):
        B[i, i] = 2
        B[m, i] = 1
        for c in range(q):
            B[i, m + c] = 2 * _round(A[c][i], k)
    for c in range(q):
        B[m, m + c] = 2 * _round(t[c], k)
    LLL.reduction(B)
    best = 0
    for r in range(B.nrows):
        v = np.array([B[r, c] for c in range(m)])
        if np.all(np.abs(v) == 1):
            best = max(best, int(((v + 1) // 2 == y).sum()), int(((1 - v) // 2 == y).sum()))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[80])
    ap.add_argument("--sigma", type=float, default=0.0)
    args = ap.parse_args()
    for m in args.rows:
        A, t, y = first_gradient(m, args.sigma)
        t0 = time.time()
        top = max(abs(v) for row in A for v in row).bit_length()
        ks = [0] if args.sigma == 0 else list(range(0, top + 1, 4))
        found = max(labels_found(A, t, y, k) for k in ks)
        print(f"rows {m}, sigma {args.sigma}: {found} of {m} labels right "
              f"(majority class {max(int(y.sum()), m - int(y.sum()))}), {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
