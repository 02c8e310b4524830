"""Benchmark the Paillier engine against python-paillier (phe) in the same run.

Usage:
    python tests/benchmarks/bench_paillier.py --bits 2048 --rows 30000 --cols 13

Prints a markdown table (figures per second or seconds, per core with ``n_jobs=1`` and for the
whole machine with ``--n-jobs``) followed by the load average, for docs/benchmarks.md.
Per-core figures are CPU time of this process (so that other jobs sharing the machine do not
distort them); whole-machine figures are wall-clock time.
The phe baseline of ``X^T [[d]]`` runs on ``--phe-rows`` rows and is scaled linearly to
``--rows`` (phe's cost per element does not depend on the number of rows).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from vfl_cli.crypto import paillier as P
from vfl_cli.crypto import parallel


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall-clock seconds (for the whole-machine column, whose work runs in worker processes)."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _best(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Best wall-clock time of ``repeat`` runs: other jobs on a shared machine only add time."""
    best, out = _timed(fn)
    for _ in range(repeat - 1):
        t, out = _timed(fn)
        best = min(best, t)
    return best, out


def _cpu(fn: Callable[[], object]) -> tuple[float, object]:
    """CPU seconds of this process (for in-process, single-core measures): robust to other
    jobs sharing the machine, which only stretch wall-clock time."""
    t = time.process_time()
    out = fn()
    return time.process_time() - t, out


def _rerandomisation(
    add: Callable[..., None],
    sample_phe: list[object],
    src: P.EncryptedArray,
    args: argparse.Namespace,
) -> None:
    """Rows for re-randomising computed ciphertexts: phe's obfuscate() (a uniform r^n, like the
    engine's default randomiser) against the engine's two randomisers."""
    rphe: list[Any] = [x * 1 for x in sample_phe[: min(50, args.phe_count)]]  # type: ignore[operator]
    t_phe, _ = _cpu(lambda: [x.obfuscate() for x in rphe])
    sizes: tuple[tuple[P.Randomiser, int], ...] = (("uniform", 100), ("long-exponent", 500))
    for randomiser, rcount in sizes:
        computed = src[: min(rcount, src.size)].mul(3)
        rerand = partial(P.rerandomize, computed, randomiser=randomiser)
        t_one, _ = _cpu(partial(rerand, n_jobs=1))
        t_many, _ = _best(partial(rerand, n_jobs=args.n_jobs))
        add(
            f"re-randomisation, {randomiser}",
            "ciphertexts/s",
            len(rphe) / t_phe,
            computed.size / t_one,
            computed.size / t_many,
        )


def main() -> None:  # noqa: C901 (one section per measured operation)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=30000)
    ap.add_argument("--cols", type=int, default=13)
    ap.add_argument("--n-jobs", type=int, default=-1, help="workers for the whole-machine column")
    ap.add_argument("--phe-rows", type=int, default=600, help="rows of the phe X^T[[d]] baseline")
    ap.add_argument("--phe-count", type=int, default=150, help="phe encryptions/decryptions")
    ap.add_argument("--count", type=int, default=3000, help="engine encryptions per measure")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--data",
        default=None,
        help="CSV whose numeric columns (all but id/y) are X, e.g. FATE's "
        "default_credit_hetero_guest.csv (13 features); default: standard "
        "normal features",
    )
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    workers = parallel.effective_n_jobs(args.n_jobs)
    rows: list[tuple[str, str, str, str, str, str]] = []

    def add(
        name: str,
        unit: str,
        phe_v: float | None,
        one: float,
        many: float | None,
        higher_is_better: bool = True,
    ) -> None:
        def fmt(v: float | None) -> str:
            if v is None:
                return "–"
            return f"{v:,.0f}" if v >= 100 else f"{v:,.3g}"

        def ratio(v: float | None) -> str:
            if v is None or phe_v is None:
                return "–"
            r = v / phe_v if higher_is_better else phe_v / v
            return f"{r:,.1f}x"

        rows.append((f"{name} ({unit})", fmt(phe_v), fmt(one), fmt(many), ratio(one), ratio(many)))

    t_key, (pub, priv) = _timed(lambda: P.generate_keypair(args.bits))
    phe_pub, phe_priv = pub.phe, priv.phe
    # warm up: per-process tables and the worker pool are built once per key / session
    P.encrypt(pub, rng.uniform(-1, 1, 4000), n_jobs=args.n_jobs)
    P.encrypt(pub, np.zeros(4), n_jobs=1)

    # -- encryption ------------------------------------------------------------------------
    vals = rng.uniform(-1, 1, max(args.count, args.phe_count))
    t_phe, _ = _cpu(lambda: [phe_pub.encrypt(float(v)) for v in vals[: args.phe_count]])
    t_one, _ = _cpu(lambda: P.encrypt(pub, vals[: args.count], n_jobs=1))
    many_vals = rng.uniform(-1, 1, args.count * workers)
    t_many, enc_many = _best(lambda: P.encrypt(pub, many_vals, n_jobs=args.n_jobs))
    add(
        "encryption, fresh randomness",
        "ciphertexts/s",
        args.phe_count / t_phe,
        args.count / t_one,
        many_vals.size / t_many,
    )

    # -- decryption ------------------------------------------------------------------------
    dcount = max(args.phe_count, 200)
    sample = enc_many[:dcount]
    sample_phe = sample.to_phe()
    t_phe, _ = _cpu(lambda: [phe_priv.decrypt(x) for x in sample_phe[: args.phe_count]])
    t_one, _ = _cpu(lambda: priv.decrypt(sample, n_jobs=1))
    big = enc_many[: min(enc_many.size, dcount * workers)]
    t_many, _ = _best(lambda: priv.decrypt(big, n_jobs=args.n_jobs))
    add("decryption", "values/s", args.phe_count / t_phe, dcount / t_one, big.size / t_many)

    # -- ciphertext * float ----------------------------------------------------------------
    mcount = min(1000, enc_many.size)
    factors = rng.standard_normal(mcount)
    nphe = min(300, len(sample_phe))  # sample_phe may hold fewer than 300 numbers
    t_phe, _ = _cpu(
        lambda: [x * float(f) for x, f in zip(sample_phe[:nphe], factors[:nphe], strict=True)]
    )
    src = enc_many[:mcount]
    t_one, _ = _cpu(lambda: src.mul(factors, n_jobs=1))
    t_many, _ = _best(lambda: src.mul(factors, n_jobs=args.n_jobs))
    add("ciphertext x float", "products/s", nphe / t_phe, mcount / t_one, mcount / t_many)

    _rerandomisation(add, sample_phe, src, args)

    # -- X^T [[d]] -------------------------------------------------------------------------
    if args.data:
        import pandas as pd

        frame = pd.read_csv(args.data)
        X = frame.drop(columns=[c for c in ("id", "y") if c in frame]).to_numpy(np.float64)
        X = X[: args.rows, : args.cols]
        args.rows, args.cols = X.shape
        data_name = f"{os.path.basename(args.data)} ({args.rows:,} x {args.cols})"
    else:
        X = rng.standard_normal((args.rows, args.cols))  # standardised features
        data_name = f"standard normal features ({args.rows:,} x {args.cols})"
    d_plain = rng.uniform(-1, 1, args.rows)  # residuals
    d = P.encrypt(pub, d_plain, n_jobs=args.n_jobs).with_bound(1.0)
    # the baseline is phe all the way: phe's own encryptions (and exponents) of the residuals
    d_phe = [phe_pub.encrypt(float(v)) for v in d_plain[: args.phe_rows]]

    def phe_product() -> list[object]:
        out = []
        for j in range(args.cols):
            acc = d_phe[0] * float(X[0, j])
            for i in range(1, args.phe_rows):
                acc = acc + d_phe[i] * float(X[i, j])
            out.append(acc)
        return out

    t_phe_sub, _ = _cpu(phe_product)
    t_phe = t_phe_sub * args.rows / args.phe_rows
    t_one, g = _cpu(lambda: P.plain_matmul(X.T, d, n_jobs=1))
    t_many, g2 = _best(lambda: P.plain_matmul(X.T, d, n_jobs=args.n_jobs))
    err = float(np.max(np.abs(priv.decrypt(g2) - X.T @ d_plain)))
    add(
        f"X^T[[d]], {args.rows:,} x {args.cols}, X at 2^-32",
        "seconds",
        t_phe,
        t_one,
        t_many,
        higher_is_better=False,
    )
    # the precision knob: X rounded to 2^-20 (exponent -5) needs 2 windows instead of 3
    t_one5, _ = _cpu(lambda: P.plain_matmul(X.T, d, exponent=-5, n_jobs=1))
    t_many5, g5 = _best(lambda: P.plain_matmul(X.T, d, exponent=-5, n_jobs=args.n_jobs))
    err5 = float(np.max(np.abs(priv.decrypt(g5) - X.T @ d_plain)))
    add(
        f"X^T[[d]], {args.rows:,} x {args.cols}, X at 2^-20 (exponent=-5)",
        "seconds",
        t_phe,
        t_one5,
        t_many5,
        higher_is_better=False,
    )

    # -- E @ W (split neural network layer) -------------------------------------------------
    n_e, k_e, m_e, phe_e = 200, 16, 8, 10
    Z = rng.standard_normal((n_e, k_e))
    Wm = rng.standard_normal((k_e, m_e)) * 0.3
    EZ = P.encrypt(pub, Z, n_jobs=args.n_jobs)
    ez_phe = [[phe_pub.encrypt(float(v)) for v in row] for row in Z[:phe_e]]

    def phe_layer() -> list[object]:
        out = []
        for row in ez_phe:
            for col in range(m_e):
                acc = row[0] * float(Wm[0, col])
                for j in range(1, k_e):
                    acc = acc + row[j] * float(Wm[j, col])
                out.append(acc)
        return out

    t_phe_layer, _ = _cpu(phe_layer)
    t_one, _ = _cpu(lambda: P.enc_matmul(EZ, Wm, n_jobs=1))
    t_many, zw = _best(lambda: P.enc_matmul(EZ, Wm, n_jobs=args.n_jobs))
    err_e = float(np.max(np.abs(priv.decrypt(zw) - Z @ Wm)))
    add(
        f"[[Z]] W, {n_e} x {k_e} by {k_e} x {m_e}",
        "seconds",
        t_phe_layer * n_e / phe_e,
        t_one,
        t_many,
        higher_is_better=False,
    )

    # -- gradient: mask, pack, one decryption, unmask --------------------------------------
    value_bits = 96
    t_mask, (masked, m) = _timed(lambda: P.mask(g, value_bits=value_bits))
    t_pack, packed = _timed(lambda: P.pack(masked))
    t_dec, raw = _cpu(lambda: P.decrypt_packed(priv, packed, n_jobs=1))
    grad = P.unmask(raw, m)
    exact = priv.decrypt(g)
    grad_phe = g.to_phe()
    t_phe, _ = _cpu(lambda: [phe_priv.decrypt(x) for x in grad_phe])
    add(
        f"decrypt a {args.cols}-value gradient",
        "seconds",
        t_phe,
        t_dec,
        None,
        higher_is_better=False,
    )
    unpacked_bytes = g.size * pub.width
    packed_bytes = len(packed.to_bytes())

    load = os.getloadavg()
    print(
        f"Paillier {args.bits}-bit keys, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores; whole machine = {workers} workers; key generation "
        f"{t_key:.2f} s"
    )
    print()
    print(
        f"| operation | phe, 1 core | engine, 1 core | engine, {workers} cores "
        f"| speed-up per core | speed-up machine |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    print(f"- X: {data_name}; d: residuals uniform in [-1, 1]")
    print(
        f"- X^T[[d]]: phe measured on {args.phe_rows} rows x {args.cols} columns "
        f"({t_phe_sub:.1f} s) and scaled linearly to {args.rows:,} rows; engine max error "
        f"{err:.2e} (X at 2^-32), {err5:.2e} (X at 2^-20)"
    )
    print(
        f"- [[Z]] W: phe measured on {phe_e} rows and scaled linearly; engine max error {err_e:.2e}"
    )
    print(
        f"- gradient: {packed.ciphertexts.size} packed ciphertext(s) of {packed.slots} slots x "
        f"{packed.slot_bits} bits ({packed_bytes} bytes) instead of {g.size} ciphertexts "
        f"({unpacked_bytes} bytes); mask {t_mask * 1e3:.0f} ms + pack {t_pack * 1e3:.0f} ms on "
        f"the passive side; unmasked gradient equals the exact decryption: "
        f"{bool(np.array_equal(grad, exact))}"
    )
    print(
        "- phe and engine-1-core columns: CPU time of the benchmark process "
        "(n_jobs=1, in-process); "
        f"engine-{workers}-cores column: best wall-clock time of 3 runs with {workers} worker "
        "processes, which other jobs on the machine slow down"
    )
    print(f"- load average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
