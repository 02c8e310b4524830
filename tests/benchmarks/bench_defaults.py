"""Defaults on tables no recipe was tuned for (issue #15): an empty ``[train]`` table.

Each set runs through the real command (``vfl recipe run``, one ``vfl`` process per party,
files carried between folders) with no training parameter but ``key_bits``, then scikit-learn
(LogisticRegression / LinearRegression, default settings) is trained on the joined columns of
the same training rows (every aligned id not in the job's test ids), standardised on them, and
scored on the same test ids. Prints the metric of both, the gap, the training hand-offs (4 per
exchange, from the job's history), the files carried in all (``exchanges``, alignment included),
the exchanges run, wall and CPU seconds (every ``vfl`` process of the recipe) and the optimiser
``auto`` chose.

Sets: FATE's copies in sample_data/fate (breast, default_credit, student, motor; vehicle with
the label "class 0 against the rest") and scikit-learn's bundled tables, split by columns (the
first half with the label to the active party): wine (class 0 against the rest), digits (0-4
against 5-9), diabetes (regression). Written to CSV files in a temporary folder.

    python tests/benchmarks/bench_defaults.py --bits 1024 [--sets breast,student] [--set k=v ...]

With ``--split-nn`` the classification sets run as ``split-nn`` jobs (no parameter but
``key_bits``) against ``MLPClassifier`` of the same shape (a hidden layer as wide as both
bottoms together, 8 + 8 ReLU units, then the interactive layer's 8 ReLU units, one logistic
output; scikit-learn's defaults otherwise, ``random_state`` 0); hand-offs are the training
stage's files (4 per mini-batch and 3 for the test rows).

    python tests/benchmarks/bench_defaults.py --split-nn --bits 512 --sets breast,wine,vehicle,digits
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
sys.path.insert(0, str(ROOT))  # run from a checkout without the package installed
FATE = ROOT / "sample_data" / "fate"

#: name: (protocol, id column, label column, active file, passive files)
SETS: dict[str, tuple[str, str, str, str, list[str]]] = {
    "breast": ("hetero-lr", "id", "y", "breast_hetero_guest.csv", ["breast_hetero_host.csv"]),
    "default_credit": ("hetero-lr", "id", "y", "default_credit_hetero_guest.csv",
                       ["default_credit_hetero_host.csv"]),
    "student": ("hetero-linear", "id", "y", "student_hetero_guest.csv", ["student_hetero_host.csv"]),
    "motor": ("hetero-linear", "idx", "motor_speed", "motor_hetero_guest.csv",
              ["motor_hetero_host_1.csv", "motor_hetero_host_2.csv"]),
    "vehicle": ("hetero-lr", "id", "y", "vehicle_guest.csv", ["vehicle_scale_hetero_host.csv"]),
    "wine": ("hetero-lr", "id", "y", "wine_guest.csv", ["wine_host.csv"]),
    "digits": ("hetero-lr", "id", "y", "digits_guest.csv", ["digits_host.csv"]),
    "diabetes": ("hetero-linear", "id", "y", "diabetes_guest.csv", ["diabetes_host.csv"]),
    # diabetes above its median: a binary set for split-nn (``--split-nn --sets diabetes_high``)
    "diabetes_high": ("hetero-lr", "id", "y", "diabetes_high_guest.csv", ["diabetes_host.csv"]),
}
#: the sets run when ``--sets`` is not given (diabetes_high only on request: diabetes is the regression set)
DEFAULT_SETS = [name for name in SETS if name != "diabetes_high"]

#: Where each set's files are: FATE's folder, or the temporary one :func:`write_sets` fills.
WHERE: dict[str, Path] = {}


def write_sets(folder: Path) -> None:
    """The derived sets as CSV files: vehicle binarised, scikit-learn's tables split by columns,
    diabetes also as "above the median" (binary, over all rows)."""
    from sklearn import datasets

    v = pd.read_csv(FATE / "vehicle_scale_hetero_guest.csv")
    v.assign(y=(v["y"] == 0).astype(int)).to_csv(folder / "vehicle_guest.csv", index=False)
    (folder / "vehicle_scale_hetero_host.csv").write_text((FATE / "vehicle_scale_hetero_host.csv").read_text())
    bundled = {"wine": (datasets.load_wine(), lambda t: (t == 0).astype(int)),
               "digits": (datasets.load_digits(), lambda t: (t < 5).astype(int)),
               "diabetes": (datasets.load_diabetes(), lambda t: t)}
    for name, (d, label) in bundled.items():
        X = pd.DataFrame(d.data, columns=[f"x{i}" for i in range(d.data.shape[1])])
        X.insert(0, "id", [f"r{i}" for i in range(len(X))])
        half = 1 + d.data.shape[1] // 2
        guest = X.iloc[:, :half].copy()
        guest.insert(1, "y", label(d.target))
        guest.to_csv(folder / f"{name}_guest.csv", index=False)
        X.iloc[:, [0, *range(half, X.shape[1])]].to_csv(folder / f"{name}_host.csv", index=False)
    guest = pd.read_csv(folder / "diabetes_guest.csv")
    guest.assign(y=(guest["y"] > guest["y"].median()).astype(int)).to_csv(folder / "diabetes_high_guest.csv",
                                                                          index=False)
    for name in ("vehicle", "wine", "digits", "diabetes", "diabetes_high"):
        WHERE[name] = folder


def recipe_text(name: str, bits: int, extra: list[str], protocol: str | None = None) -> str:
    own, id_col, label, active, passives = SETS[name]
    protocol = protocol or own
    where = WHERE.get(name, FATE)
    parties = [(f'[[party]]\nname = "a"\nrole = "active"\ndata = "{where / active}"\n'
                f'id_column = "{id_col}"\nlabel_column = "{label}"\n')]
    parties += [f'[[party]]\nname = "p{i}"\nrole = "passive"\ndata = "{where / f}"\nid_column = "{id_col}"\n'
                for i, f in enumerate(passives, 1)]
    train = "\n".join([f"key_bits = {bits}", *extra])
    return (f'[recipe]\nname = "{name}"\nprotocol = "{protocol}"\n\n' + "\n".join(parties)
            + f"\n[train]\n{train}\n")


def run_set(name: str, bits: int, extra: list[str], work: Path, protocol: str | None = None) -> dict[str, Any]:
    f = work / f"{name}.toml"
    f.write_text(recipe_text(name, bits, extra, protocol))
    t0, cpu0 = time.perf_counter(), _children_cpu()
    proc = subprocess.run([sys.executable, "-m", "vfl_cli", "recipe", "run", str(f), "--workdir",
                           str(work / name), "--json"], capture_output=True, text=True, check=False)
    if proc.returncode and "stage train done" in proc.stderr:
        # training finished but the recipe's summary failed: read the active party's job
        report = from_state(work / name, f"{name}-train", proc.stderr)
    elif proc.returncode:
        raise SystemExit(f"{name}: vfl recipe run failed:\n{proc.stderr[-3000:]}")
    else:
        report = json.loads(proc.stdout)
    report["wall_s"] = time.perf_counter() - t0
    report["cpu_s"] = _children_cpu() - cpu0
    return report


def _children_cpu() -> float:
    """CPU seconds (user + system) of every finished child process, theirs included."""
    import resource

    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def from_state(workdir: Path, job: str, log: str) -> dict[str, Any]:
    """What the report would hold, from the active party's own job state and the carry log."""
    from vfl_cli import jobs
    from vfl_cli.workspace import Workspace

    state, _ = jobs.load_state(Workspace(workdir / "a"), job)
    carried = sum(1 for line in log.splitlines() if " -> " in line and line.strip().endswith(".zip"))
    return {**state.results, "exchanges": carried}


def _optimizer(model: dict[str, Any]) -> str:
    """The optimiser the job ran (``auto`` resolved as the protocol resolves it)."""
    from vfl_cli.protocol import hetero_linear as hl

    if model.get("protocol") not in ("hetero-lr", "hetero-linear"):
        return "-"
    params = {**hl.DEFAULTS, **model.get("params", {})}
    return hl.optimizer_name(params, linear=model.get("protocol") == "hetero-linear")


def joined(name: str) -> tuple[pd.DataFrame, list[str], str]:
    _, id_col, label, active, passives = SETS[name]
    where = WHERE.get(name, FATE)
    df = pd.read_csv(where / active, dtype={id_col: str})
    for i, f in enumerate(passives):
        df = df.merge(pd.read_csv(where / f, dtype={id_col: str}), on=id_col, suffixes=("", f"_p{i}"))
    df[id_col] = df[id_col].str.strip()
    return df.set_index(id_col), [c for c in df.columns if c not in (id_col, label)], label


def sklearn_metric(name: str, test_ids: list[str], mlp: bool = False) -> float:
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.metrics import mean_squared_error, roc_auc_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    df, cols, label = joined(name)
    test = df.index.isin(test_ids)
    X, y = df[cols].to_numpy(float), df[label].to_numpy(float)
    scaler = StandardScaler().fit(X[~test])
    Xtr, Xte = scaler.transform(X[~test]), scaler.transform(X[test])
    if mlp:  # split-nn's default shape: 8 + 8 bottom units, 8 interactive units, one output
        net = MLPClassifier(hidden_layer_sizes=(16, 8), random_state=0).fit(Xtr, y[~test])
        return float(roc_auc_score(y[test], net.predict_proba(Xte)[:, 1]))
    if SETS[name][0] == "hetero-lr":
        model = LogisticRegression(max_iter=1000).fit(Xtr, y[~test])
        return float(roc_auc_score(y[test], model.predict_proba(Xte)[:, 1]))
    pred = LinearRegression().fit(Xtr, y[~test]).predict(Xte)
    return float(np.sqrt(mean_squared_error(y[test], pred)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bits", type=int, default=1024)
    ap.add_argument("--sets", default=",".join(DEFAULT_SETS))
    ap.add_argument("--set", action="append", default=[], help="a [train] line, e.g. epochs=20")
    ap.add_argument("--split-nn", action="store_true", help="the classification sets as split-nn jobs")
    args = ap.parse_args()
    protocol = "split-nn" if args.split_nn else None
    print(f"load {os.getloadavg()}", flush=True)
    print(f"{'set':16} {'metric':6} {'vfl':>9} {'sklearn':>9} {'gap':>9} {'hand-offs':>9} "
          f"{'files':>5} {'exch.':>5} {'stop':>9} {'wall s':>7} {'cpu s':>7} {'optimizer':>9}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_sets(Path(tmp))
        for name in args.sets.split(","):
            extra = [s.replace("=", " = ", 1) for s in args.set]
            report = run_set(name, args.bits, extra, Path(tmp), protocol)
            test = report["metrics"]["test"]
            ref = sklearn_metric(name, report["split"]["test_ids"], mlp=bool(protocol))
            lr = SETS[name][0] == "hetero-lr"
            ours = test["auc"] if lr else test["rmse"]
            gap = f"{ref - ours:+.4f}" if lr else f"{(ours / ref - 1) * 100:+.1f}%"
            model = report.get("model", {})
            epochs = model.get("epochs_run", "?")
            handoffs: int | str = 4 * int(epochs) if isinstance(epochs, int) else "?"  # full batch: 4 per exchange
            if protocol and isinstance(epochs, int):
                handoffs = 4 * epochs + 3  # full batch, then the test rows' forward pass
            stop = "converged" if model.get("converged") else "cap"
            if model.get("validation"):  # split-nn's early stop: the epoch whose model it kept
                stop = f"kept {int(model['validation']['kept_epoch']) + 1}"
            print(f"{name:16} {'AUC' if lr else 'RMSE':6} {ours:9.4f} {ref:9.4f} {gap:>9} "
                  f"{handoffs!s:>9} {report['exchanges']:5d} {epochs!s:>5} {stop:>9} {report['wall_s']:7.0f} "
                  f"{report['cpu_s']:7.0f} {_optimizer(model)!s:>9}",
                  flush=True)
    print(f"load {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
