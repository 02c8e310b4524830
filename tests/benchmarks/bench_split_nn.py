"""Benchmarks of split neural networks (issue 6).

1. ``--batch``: the cryptographic work of one mini-batch of the interactive layer (both parties'
   parts, in one process, the engine's workers on all cores), split by step, for a given bottom
   width ``k`` and interactive width ``m``; wall seconds, and scaled to ``--epoch-rows`` rows.
2. ``--recipe FILE``: runs a recipe through the real command (every step its own ``vfl``
   process, both parties on this machine), and trains the same architecture centrally in
   plaintext on the joined data with the same split, batches and epochs
   (:func:`vfl_cli.models.split_spec.central_fit`; since issue #14 each party draws its initial
   weights from a private seed, so the baseline's initial weights are its own draw); prints both
   metrics, wall time per epoch and the machine's load.
3. ``--aggregate``: what one batch of the aggregate design studied for issue #14 would cost (not
   built), beside ``--batch`` in the same run.

    python tests/benchmarks/bench_split_nn.py --batch --bits 2048 --rows 2048 --k 2 --m 2
    python tests/benchmarks/bench_split_nn.py --batch --aggregate --bits 2048 --rows 2048 --k 8 --m 8 --d 10
    python tests/benchmarks/bench_split_nn.py --recipe recipes/split_default_credit.toml --epochs 1
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
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def load() -> str:
    return os.getloadavg().__repr__()


class Clock:
    """Wall seconds of each named step, in the order run: ``clock(name, f)`` runs ``f``."""

    def __init__(self) -> None:
        self.t: dict[str, float] = {}

    def __call__(self, name: str, f: Any) -> Any:
        t0 = time.perf_counter()
        out = f()
        self.t[name] = time.perf_counter() - t0
        return out

    def totals(self, rows: int, epoch_rows: int) -> dict[str, float]:
        t = dict(self.t)
        t["total"] = sum(t.values())
        t[f"total scaled to {epoch_rows} rows"] = t["total"] * epoch_rows / rows
        return {k: round(v, 2) for k, v in t.items()}


def batch(bits: int, rows: int, k: int, m: int, epoch_rows: int) -> dict[str, float]:
    from vfl_cli.crypto import paillier
    from vfl_cli.protocol import split_nn as sn

    pub, priv = paillier.generate_keypair(bits)
    rng = np.random.default_rng(0)
    h = np.abs(rng.normal(size=(rows, k)))
    params = {"interactive_lr": 0.5, "interactive_momentum": 0.9}  # the recipes' values
    share_bits, width, S = sn.layout(bits, k, params)
    # A's share carries A's noise: about lr S 2^124 / (1 - momentum) units of 2^-64 (issue #14)
    U = sn.uniform_ints((k, m), share_bits - 3, signed=True)
    V = -U + sn.fixed_ints(rng.normal(size=(k, m)), sn.SHARE_E)
    delta = rng.normal(size=(rows, m)) / rows
    clock = Clock()

    Se = sn.slot_count(bits, sn.ERR_SLOT_BITS)
    H = clock("P: encrypt h (pre-shifted into slots)",
              lambda: sn.encrypt_ints(pub, sn.shift_slots(sn.pad_rows(sn.fixed_ints(h), S), width, S), sn.E))
    Vc = clock("P: encrypt V", lambda: sn.encrypt_ints(pub, V, 2 * sn.E))
    groups = len(H) // S
    hu = clock("A: [[h]] U, S rows per ciphertext (52-bit limbs)",
               lambda: sn.enc_matmul_ints(H.reshape(groups, S * k), np.vstack([U] * S), share_bits))
    R = sn.uniform_ints((groups * S, m), width - 2, signed=False)
    act = clock("A: add masks R, re-randomise (long exponent)",
                lambda: sn.add_fresh(hu, sn.pack_slots(R.reshape(groups, S, -1).transpose(1, 0, 2), width)))
    raw = clock("P: decrypt activation", lambda: priv.decrypt_raw(act))
    clock("P: unslot activation", lambda: [sn.unslot(int(v), pub.n, width, S) for v in raw])
    g = clock("A: delta^T [[h]] (slot partial sums)", lambda: paillier.plain_matmul(sn.pad_rows(delta, S).T, H))
    eps = sn.uniform_ints((S, m, k), sn.RHO_BITS, signed=True)
    clock("A: add noise eps, re-randomise (long exponent)",
          lambda: sn.add_fresh(g, sn.pack_slots(eps, width)))

    def err_product() -> paillier.EncryptedArray:
        shifted = [paillier.add_ints(Vc, U).T]
        for _ in range(Se - 1):
            shifted.append(shifted[-1].mul(1 << sn.ERR_SLOT_BITS))
        blocks = paillier.concatenate(shifted)
        d = sn.pad_rows(delta, Se)
        return sn._enc_matmul(blocks.T, d.reshape(len(d) // Se, Se * m).T)

    err = clock("A: [[W_P]] delta^T, S rows per ciphertext", err_product)
    pe = clock("A: re-randomise error", lambda: paillier.rerandomize(err, randomiser="long-exponent"))
    clock("P: decrypt error", lambda: priv.decrypt_raw(pe))
    return clock.totals(rows, epoch_rows)


def aggregate(bits: int, rows: int, k: int, m: int, d: int, epoch_rows: int) -> dict[str, float]:
    """The cryptographic work one batch would add in the aggregate design of issue #14's study
    (``bench_split_aggregate_study.py``; not built): A encrypts ``delta'`` and ``delta' U^T`` under
    its own key, P forms ``[[G]] = [[delta' U^T]] + [[delta']] V^T`` (V at 2^-64), backpropagates
    through its dense-ReLU bottom under encryption (``X^T [[G (.) relu']]``, one product per unit),
    masks the ``d k`` sums and A decrypts them. Timed with one key; the ReLU mask of half the rows."""
    from vfl_cli.crypto import paillier
    from vfl_cli.protocol import split_nn as sn

    pub, priv = paillier.generate_keypair(bits)
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(rows, m)) / rows
    U = rng.normal(size=(k, m))
    X = rng.normal(size=(rows, d))
    M = rng.random((rows, k)) < 0.5
    clock = Clock()

    share_bits = sn.layout(bits, k, {"interactive_lr": 0.5, "interactive_momentum": 0.9})[0]
    V = sn.uniform_ints((m, k), share_bits - 3, signed=True)  # P's share: as wide as the protocol's
    D = clock("A: encrypt delta' (n x m)", lambda: paillier.encrypt(pub, delta))
    clock("A: encrypt delta' U^T (n x k)", lambda: paillier.encrypt(pub, delta @ U.T))
    clock("P: [[delta']] V^T (52-bit limbs of the share)", lambda: sn.enc_matmul_ints(D, V, share_bits))
    # [[G]]: the sum of the two above (n k additions, negligible); for the products' timing a
    # fresh array of the same shape does (their cost is set by X's encoding, not by G's values)
    G = paillier.encrypt(pub, rng.normal(size=(rows, k)) / rows)
    sums = clock("P: X^T [[G (.) relu']], one product per unit",
                 lambda: [paillier.plain_matmul((X * M[:, j:j + 1]).T, G[:, j]) for j in range(k)])
    masked = clock("P: mask the d k sums, re-randomise",
                   lambda: [paillier.rerandomize(s + rng.normal(size=d) * 2.0**40) for s in sums])
    clock("A: decrypt the d k masked sums", lambda: [priv.decrypt(s) for s in masked])
    return clock.totals(rows, epoch_rows)


def central(recipe_path: Path, epochs: int | None) -> dict[str, float]:
    """The same architecture trained centrally in plaintext on the joined data (same split)."""
    from vfl_cli.metrics import classification_metrics, multiclass_metrics
    from vfl_cli.models import split_spec as ss
    from vfl_cli.protocol.split_nn import check_params
    from vfl_cli.recipes import load_recipe

    recipe = load_recipe(recipe_path)
    params = check_params(recipe.stages()[1].params, [{"role": "active"}, {"role": "passive"}])
    if epochs:
        params["epochs"] = epochs
    active = recipe.active
    passive = next(p for p in recipe.parties if p.role == "passive")
    a = pd.read_csv(active.data, dtype={active.id_column: str})
    p = pd.read_csv(passive.data, dtype={passive.id_column: str})
    a_cols = [c for c in a.columns if c not in (active.id_column, active.label_column)]
    p_cols = [c for c in p.columns if c != passive.id_column]
    df = a.merge(p.rename(columns={c: "p:" + c for c in p_cols}), left_on=active.id_column,
                 right_on=passive.id_column)
    # the split is by position in the alignment's (shuffled) order: take the run's test ids
    return {"params": params, "df": df, "a_cols": a_cols, "p_cols": ["p:" + c for c in p_cols],
            "label": active.label_column, "ss": ss,
            "metrics": (multiclass_metrics if params["model"]["head"] == "multiclass" else classification_metrics)}


def central_metrics(c: dict, test_ids: list[str], id_column: str) -> dict[str, float]:
    df, ss = c["df"], c["ss"]
    test = df[id_column].astype(str).isin(set(test_ids)).to_numpy()
    train = ~test
    order = np.flatnonzero(train)
    XA_raw, XP_raw = df[c["a_cols"]].to_numpy(float), df[c["p_cols"]].to_numpy(float)
    mean_a, sd_a = XA_raw[train].mean(0), XA_raw[train].std(0)
    mean_p, sd_p = XP_raw[train].mean(0), XP_raw[train].std(0)
    XA = (XA_raw - mean_a) / np.where(sd_a > 0, sd_a, 1)
    XP = (XP_raw - mean_p) / np.where(sd_p > 0, sd_p, 1)
    y = df[c["label"]].to_numpy(float)
    spec = ss.parse_spec(c["params"]["model"])
    model, _ = ss.central_fit(spec, XA[order], XP[order], y[order], c["params"])
    pred = model.predict(XA[test], XP[test])
    return c["metrics"](y[test], pred)


def recipe_run(path: Path, epochs: int | None) -> dict[str, object]:
    text = path.read_text().replace('"../../shared/', f'"{ROOT.parent}/shared/')
    if epochs:
        text = "\n".join(f"epochs = {epochs}" if line.startswith("epochs =") else line for line in text.splitlines())
    work = Path(tempfile.mkdtemp(prefix="bench-split-"))
    recipe = work / path.name
    recipe.write_text(text)
    load_before = load()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vfl_cli", "--quiet", "recipe", "run", str(recipe), "--workdir",
                    str(work / "run")], check=True)
    wall = time.perf_counter() - t0
    report = json.loads((work / "run" / "report.json").read_text())
    c = central(recipe, epochs)
    ref = central_metrics(c, report["split"]["test_ids"], "id")
    n_epochs = report["model"]["epochs_run"]
    return {"recipe": path.name, "epochs": n_epochs, "train_stage_s": report["timings_s"].get("train"),
            "train_stage_s_per_epoch": round(report["timings_s"].get("train", wall) / n_epochs, 1),
            "wall_s": round(wall, 1), "exchanges": report["exchanges"], "load_before": load_before,
            "load_after": load(), "split_nn_test": report["metrics"]["test"], "central_plaintext_test": ref}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", action="store_true")
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--epoch-rows", type=int, default=24000)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--m", type=int, default=2)
    ap.add_argument("--aggregate", action="store_true", help="also time the aggregate design (not built)")
    ap.add_argument("--d", type=int, default=10, help="P's columns (--aggregate)")
    ap.add_argument("--recipe", type=Path)
    ap.add_argument("--epochs", type=int)
    args = ap.parse_args()
    if args.batch:
        print(json.dumps({"bits": args.bits, "rows": args.rows, "k": args.k, "m": args.m, "load": load(),
                          "wall_s": batch(args.bits, args.rows, args.k, args.m, args.epoch_rows)}, indent=2))
    if args.aggregate:
        print(json.dumps({"design": "aggregate", "bits": args.bits, "rows": args.rows, "k": args.k, "m": args.m,
                          "d": args.d, "load": load(),
                          "wall_s": aggregate(args.bits, args.rows, args.k, args.m, args.d, args.epoch_rows)},
                         indent=2))
    if args.recipe:
        print(json.dumps(recipe_run(args.recipe, args.epochs), indent=2, default=str))


if __name__ == "__main__":
    main()
