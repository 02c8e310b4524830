"""Defaults on tables no recipe was tuned for (issue #15): an empty ``[train]`` table.

Each set runs through the real command (``vfl recipe run``, one ``vfl`` process per party,
files carried between folders) with no training parameter but ``key_bits``, then scikit-learn
(LogisticRegression / LinearRegression, default settings) is trained on the joined columns of
the same training rows (every aligned id not in the job's test ids), standardised on them, and
scored on the same test ids. Prints the metric of both, the gap and the hand-offs per set.

    python tests/benchmarks/bench_defaults.py --bits 1024 [--sets breast,student] [--set k=v ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
FATE = ROOT / "sample_data" / "fate"

#: name: (protocol, id column, label column, active file, passive files)
SETS: dict[str, tuple[str, str, str, str, list[str]]] = {
    "breast": ("hetero-lr", "id", "y", "breast_hetero_guest.csv", ["breast_hetero_host.csv"]),
    "default_credit": ("hetero-lr", "id", "y", "default_credit_hetero_guest.csv",
                       ["default_credit_hetero_host.csv"]),
    "student": ("hetero-linear", "id", "y", "student_hetero_guest.csv", ["student_hetero_host.csv"]),
    "motor": ("hetero-linear", "idx", "motor_speed", "motor_hetero_guest.csv",
              ["motor_hetero_host_1.csv", "motor_hetero_host_2.csv"]),
}


def recipe_text(name: str, bits: int, extra: list[str]) -> str:
    protocol, id_col, label, active, passives = SETS[name]
    parties = [(f'[[party]]\nname = "a"\nrole = "active"\ndata = "{FATE / active}"\n'
                f'id_column = "{id_col}"\nlabel_column = "{label}"\n')]
    parties += [f'[[party]]\nname = "p{i}"\nrole = "passive"\ndata = "{FATE / f}"\nid_column = "{id_col}"\n'
                for i, f in enumerate(passives, 1)]
    train = "\n".join([f"key_bits = {bits}", *extra])
    return (f'[recipe]\nname = "{name}"\nprotocol = "{protocol}"\n\n' + "\n".join(parties)
            + f"\n[train]\n{train}\n")


def run_set(name: str, bits: int, extra: list[str], work: Path) -> dict[str, Any]:
    f = work / f"{name}.toml"
    f.write_text(recipe_text(name, bits, extra))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vfl_cli", "recipe", "run", str(f), "--workdir",
                           str(work / name), "--json"], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise SystemExit(f"{name}: vfl recipe run failed:\n{proc.stderr[-3000:]}")
    report = json.loads(proc.stdout)
    report["wall_s"] = time.perf_counter() - t0
    return report


def joined(name: str) -> tuple[pd.DataFrame, list[str], str]:
    _, id_col, label, active, passives = SETS[name]
    df = pd.read_csv(FATE / active, dtype={id_col: str})
    for f in passives:
        df = df.merge(pd.read_csv(FATE / f, dtype={id_col: str}), on=id_col)
    df[id_col] = df[id_col].str.strip()
    return df.set_index(id_col), [c for c in df.columns if c not in (id_col, label)], label


def sklearn_metric(name: str, test_ids: list[str]) -> float:
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import mean_squared_error, roc_auc_score
    from sklearn.preprocessing import StandardScaler

    df, cols, label = joined(name)
    test = df.index.isin(test_ids)
    X, y = df[cols].to_numpy(float), df[label].to_numpy(float)
    scaler = StandardScaler().fit(X[~test])
    Xtr, Xte = scaler.transform(X[~test]), scaler.transform(X[test])
    if SETS[name][0] == "hetero-lr":
        model = LogisticRegression(max_iter=1000).fit(Xtr, y[~test])
        return float(roc_auc_score(y[test], model.predict_proba(Xte)[:, 1]))
    pred = LinearRegression().fit(Xtr, y[~test]).predict(Xte)
    return float(np.sqrt(mean_squared_error(y[test], pred)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=1024)
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--set", action="append", default=[], help="a [train] line, e.g. epochs=20")
    args = ap.parse_args()
    print(f"{'set':16} {'metric':6} {'vfl':>9} {'sklearn':>9} {'gap':>9} {'hand-offs':>9} "
          f"{'epochs':>6} {'wall s':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets.split(","):
            report = run_set(name, args.bits, [s.replace("=", " = ", 1) for s in args.set], Path(tmp))
            test = report["metrics"]["test"]
            ref = sklearn_metric(name, report["split"]["test_ids"])
            lr = SETS[name][0] == "hetero-lr"
            ours = test["auc"] if lr else test["rmse"]
            gap = f"{ref - ours:+.4f}" if lr else f"{(ours / ref - 1) * 100:+.1f}%"
            epochs = report.get("model", {}).get("epochs_run", "?")
            print(f"{name:16} {'AUC' if lr else 'RMSE':6} {ours:9.4f} {ref:9.4f} {gap:>9} "
                  f"{report['exchanges']:9d} {epochs!s:>6} {report['wall_s']:7.0f}", flush=True)


if __name__ == "__main__":
    main()
