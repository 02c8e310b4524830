"""Benchmarks of hetero logistic regression (issue 5).

1. ``--iteration``: the cryptographic work of one training iteration (one mini-batch of
   ``--rows`` rows, both parties' parts, centred model) with the engine against the
   straightforward python-paillier implementation of the same scheme (each value through
   ``encrypt``, products through ``*`` and ``+``, each gradient value decrypted). phe runs on
   ``--phe-rows`` rows and is scaled linearly to ``--rows`` (it is linear in the rows).
2. ``--recipe FILE``: runs a recipe through the real command and compares its test metric with
   scikit-learn trained on the joined data with the same split.

    python tests/benchmarks/bench_hetero.py --iteration --bits 2048 --rows 24000
    python tests/benchmarks/bench_hetero.py --recipe recipes/default_credit.toml
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
FATE = ROOT / "sample_data" / "fate"


def load_default_credit() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = pd.read_csv(FATE / "default_credit_hetero_guest.csv")
    h = pd.read_csv(FATE / "default_credit_hetero_host.csv")
    df = g.merge(h, on="id")
    ga = [c for c in g.columns if c not in ("id", "y")]
    hc = [c for c in h.columns if c != "id"]
    XA = df[[c + "_x" if c + "_x" in df else c for c in ga]].to_numpy(float)
    XP = df[[c + "_y" if c + "_y" in df else c for c in hc]].to_numpy(float)
    std = lambda X: (X - X.mean(0)) / X.std(0)  # noqa: E731
    return np.hstack([std(XA), np.ones((len(XA), 1))]), std(XP), df["y"].to_numpy(float)


def engine_iteration(XA: np.ndarray, XP: np.ndarray, y: np.ndarray, bits: int) -> dict[str, float]:
    from vfl_cli.crypto import paillier as pl

    ka, sa = pl.generate_keypair(bits)
    kp, sp = pl.generate_keypair(bits)
    rng = np.random.default_rng(0)
    wa, wp = rng.normal(0, 0.1, XA.shape[1]), rng.normal(0, 0.1, XP.shape[1])
    t = {}
    t0 = time.perf_counter()
    u = XP @ wp
    enc_u = pl.encrypt(kp, u)  # P -> A, under P's key
    t["passive: encrypt partial"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    a = XA @ wa
    p = 1 / (1 + np.exp(-a))
    slope, offset = p * (1 - p), p - y
    ga = pl.plain_matmul((XA * slope[:, None]).T, enc_u) + XA.T @ offset  # as the protocol folds it
    ma, mask_a = pl.mask(ga, value_bits=36 + 4 * -ga.exponent)
    pa = pl.pack(ma)
    enc_off, enc_slope = pl.encrypt(ka, offset), pl.encrypt(ka, slope)
    t["active: residual, own gradient, encrypt offset+slope"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    d2 = enc_off + enc_slope * u
    gp = pl.plain_matmul(XP.T, d2)
    mp, mask_p = pl.mask(gp, value_bits=36 + 4 * -gp.exponent)
    pp = pl.pack(mp)
    raw_a = pl.decrypt_packed(sp, pa)
    t["passive: own gradient, decrypt active's masked"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw_p = pl.decrypt_packed(sa, pp)
    g_a = pl.unmask(raw_a, mask_a)
    t["active: decrypt passive's masked, unmask"] = time.perf_counter() - t0
    g_p = pl.unmask(raw_p, mask_p)
    exact_a = XA.T @ (slope * u + offset)
    exact_p = XP.T @ (slope * u + offset)
    t["max abs error"] = float(max(np.abs(g_a - exact_a).max(), np.abs(g_p - exact_p).max()))
    return t


def phe_iteration(XA: np.ndarray, XP: np.ndarray, y: np.ndarray, bits: int) -> float:
    """The same scheme with phe's EncryptedNumber, value by value."""
    import random

    import phe

    ka, sa = phe.generate_paillier_keypair(n_length=bits)
    kp, sp = phe.generate_paillier_keypair(n_length=bits)
    rng = np.random.default_rng(0)
    wa, wp = rng.normal(0, 0.1, XA.shape[1]), rng.normal(0, 0.1, XP.shape[1])
    t0 = time.perf_counter()
    u = XP @ wp
    enc_u = [kp.encrypt(float(v)) for v in u]
    a = XA @ wa
    p = 1 / (1 + np.exp(-a))
    slope, offset = p * (1 - p), p - y
    d1 = [e * float(s) + float(o) for e, s, o in zip(enc_u, slope, offset, strict=True)]
    ga = [sum((d * float(x) for d, x in zip(d1, col, strict=True)), kp.encrypt(0)) for col in XA.T]
    ga = [g + random.random() for g in ga]  # masks
    enc_off = [ka.encrypt(float(v)) for v in offset]
    enc_slope = [ka.encrypt(float(v)) for v in slope]
    d2 = [o + s * float(v) for o, s, v in zip(enc_off, enc_slope, u, strict=True)]
    gp = [sum((d * float(x) for d, x in zip(d2, col, strict=True)), ka.encrypt(0)) for col in XP.T]
    gp = [g + random.random() for g in gp]
    [sp.decrypt(g) for g in ga]
    [sa.decrypt(g) for g in gp]
    return time.perf_counter() - t0


def run_iteration(args: argparse.Namespace) -> None:
    XA, XP, y = load_default_credit()
    XA, XP, y = XA[: args.rows], XP[: args.rows], y[: args.rows]
    print(f"one iteration, {args.rows} rows, {XA.shape[1]} + {XP.shape[1]} columns, {args.bits}-bit keys, "
          f"load {os.getloadavg()[0]:.1f}")
    eng = engine_iteration(XA, XP, y, args.bits)
    total = sum(v for k, v in eng.items() if k != "max abs error")
    for k, v in eng.items():
        print(f"  engine {k}: {v:.4g}")
    sub = args.phe_rows
    phe_t = phe_iteration(XA[:sub], XP[:sub], y[:sub], args.bits)
    scaled = phe_t * args.rows / sub
    print(f"| rows | engine (s, both cores) | phe (s, {sub} rows) | phe scaled to {args.rows} rows (s) | speed-up |")
    print(f"| {args.rows} | {total:.2f} | {phe_t:.2f} | {scaled:.0f} | {scaled / total:.1f}x |")


def run_recipe(args: argparse.Namespace) -> None:
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import mean_squared_error, roc_auc_score

    recipe = Path(args.recipe).resolve()
    work = Path(tempfile.mkdtemp()) / "work"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vfl_cli", "recipe", "run", str(recipe), "--workdir", str(work)],
                   check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    report = json.loads((work / "report.json").read_text())
    from vfl_cli.recipes import load_recipe

    r = load_recipe(recipe)
    frames = [pd.read_csv(p.data, dtype={p.id_column: str}) for p in r.parties]
    idc = r.parties[0].id_column
    df = frames[0]
    for f in frames[1:]:
        df = df.merge(f, on=idc)
    label = r.active.label_column
    test = df[idc].isin(set(report["split"]["test_ids"]))
    X = df.drop(columns=[idc, label]).to_numpy(float)
    X = (X - X[~test].mean(0)) / np.where(X[~test].std(0) > 0, X[~test].std(0), 1)
    yv = df[label].to_numpy(float)
    print(f"recipe {r.name}: {wall:.1f} s wall ({report['timings_s']}), {report['exchanges']} exchanges, "
          f"{report['bytes_exchanged']:,} bytes, load {os.getloadavg()[0]:.1f}")
    if r.protocol == "hetero-lr":
        sk = LogisticRegression(max_iter=5000).fit(X[~test], yv[~test])
        base = roc_auc_score(yv[test], sk.decision_function(X[test]))
        got = report["metrics"]["test"]["auc"]
        print(f"| {r.name} | test AUC vfl {got:.4f} | scikit-learn {base:.4f} | gap {base - got:+.4f} |")
    else:
        sk = LinearRegression().fit(X[~test], yv[~test])
        base = mean_squared_error(yv[test], sk.predict(X[test])) ** 0.5
        got = report["metrics"]["test"]["rmse"]
        print(f"| {r.name} | test RMSE vfl {got:.4f} | scikit-learn {base:.4f} | {100 * (got / base - 1):+.2f}% |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iteration", action="store_true")
    ap.add_argument("--recipe")
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=24000)
    ap.add_argument("--phe-rows", type=int, default=300)
    args = ap.parse_args()
    if args.iteration:
        run_iteration(args)
    if args.recipe:
        run_recipe(args)


if __name__ == "__main__":
    main()
