"""Benchmark multi-node training: FedAvg vs Actor-Critic weighting with a poisoned node, and the
size and exactness of real-time and full updates.

Usage:
    python tests/benchmarks/bench_hfl.py [--seeds 16] [--first-seed 100] [--rounds 20]

Data: FATE's default_credit (active party's ``default_credit_hetero_guest.csv`` joined on ``id``
with the passive party's ``default_credit_hetero_host.csv``: 23 features, 30,000 rows), read from
``sample_data/fate/``. Each seed draws its own split: 6,000 test rows, 1,000 validation rows
for the server, and 5 nodes holding 1,000 training rows in all. Node 0 has 40% of its labels
flipped. In the *large bad node* setting it is the largest node (400 rows, the other four 150
each), in the *equal nodes* setting every node has 200 rows. Features are standardised with
the training rows' mean and deviation.

Each seed runs, with the same local training seeds and the same number of rounds: FedAvg on all
5 nodes, Actor-Critic on all 5 nodes, and FedAvg on the 4 honest nodes only ("clean"). Test AUC
is averaged over seeds. The seeds default to 100.., which were never used while tuning the
Actor-Critic defaults (tuning used seeds 0..23).

Prints markdown tables for docs/benchmarks.md and the learned weights per round of the first
seed.

``--recipes WORKDIR`` instead runs the shipped hfl recipes through ``vfl recipe run`` (every
step a separate ``vfl`` process, files carried between workspaces) on ``sample_data/hfl``:
FedAvg, Actor-Critic, FedAvg without the poisoned node, and Actor-Critic with secure
aggregation (2,048-bit keys). It reports wall time, test AUC, the bad node's weight, files and
bytes exchanged, the sizes of the update files the predictor received, and checks that each
job's master model equals the pure-core simulation (secure aggregation: within fixed-point
precision of the plaintext job). Then, because a job equals the simulation, it compares the
weightings over ``--sample-seeds`` seeds on the same data by simulation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tomllib
from sklearn.metrics import roc_auc_score

from vfl_cli.hfl import (
    LOGISTIC_SPEC,
    PredictionReplica,
    UpdatePublisher,
    aggregate,
    fedavg_weights,
    init_model,
    local_train,
    mlp_spec,
    model_predict,
    simulate,
)

FATE = Path(__file__).resolve().parents[2] / "sample_data" / "fate"
Split = tuple[
    list[tuple[np.ndarray, np.ndarray]],
    tuple[np.ndarray, np.ndarray],
    tuple[np.ndarray, np.ndarray],
]


def load_default_credit() -> tuple[np.ndarray, np.ndarray]:
    """Join the two parties' files on id: full rows, as the nodes would hold them."""
    guest = pd.read_csv(FATE / "default_credit_hetero_guest.csv")
    host = pd.read_csv(FATE / "default_credit_hetero_host.csv")
    rows = guest.merge(host, on="id", suffixes=("_active", "_passive"))
    return rows.drop(columns=["id", "y"]).to_numpy(float), rows["y"].to_numpy(float)


def split(
    X: np.ndarray,
    y: np.ndarray,
    seed: int,
    bad_share: float,
    node_rows: int = 1000,
    flip: float = 0.4,
) -> Split:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    test, val, train = order[:6000], order[6000:7000], order[7000 : 7000 + node_rows]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0) + 1e-12
    Z = (X - mean) / std
    n_bad = int(bad_share * len(train))
    parts = [train[:n_bad], *np.array_split(train[n_bad:], 4)]
    nodes = []
    for index, rows in enumerate(parts):
        labels = y[rows].copy()
        if index == 0:
            flipped = rng.random(len(rows)) < flip
            labels[flipped] = 1 - labels[flipped]
        nodes.append((Z[rows], labels))
    return nodes, (Z[val], y[val]), (Z[test], y[test])


def compare(spec: list[dict[str, Any]], data: Split, seed: int, rounds: int) -> dict[str, Any]:
    nodes, (X_val, y_val), (X_test, y_test) = data
    kwargs: dict[str, Any] = {
        "rounds": rounds,
        "epochs": 1,
        "batch_size": 32,
        "lr": 0.1,
        "seed": seed,
    }
    out: dict[str, Any] = {}
    for name, members, weighting in (
        ("fedavg", nodes, "fedavg"),
        ("actor_critic", nodes, "actor-critic"),
        ("clean", nodes[1:], "fedavg"),
    ):
        result = simulate(spec, members, X_val, y_val, weighting=weighting, **kwargs)
        out[name] = roc_auc_score(y_test, model_predict(spec, result.master, X_test))
        if weighting == "actor-critic":
            out["weights"], out["policy"] = result.weights, result.policy
    return out


def update_check(X: np.ndarray, y: np.ndarray, rounds: int) -> dict[str, Any]:
    """FedAvg rounds; after each, a real-time update (top-k = 10%); at the end a full update."""
    spec = mlp_spec(64)
    nodes, _, _ = split(X, y, seed=0, bad_share=0.2)
    master = init_model(spec, X.shape[1], seed=0)
    publisher = UpdatePublisher()
    replica = PredictionReplica(spec, X.shape[1])
    replica.apply(publisher.full(master))
    sizes = []
    for r in range(rounds):
        deltas = [
            local_train(master, spec, Xi, yi, 1, 32, 0.1, seed=100 * r + i)
            for i, (Xi, yi) in enumerate(nodes)
        ]
        master = aggregate(master, deltas, fedavg_weights([d.n_samples for d in deltas]))
        update = publisher.realtime(master, k_fraction=0.1)
        replica.apply(update)
        sizes.append(len(update.to_bytes()))
    held = replica.params.copy() if replica.params is not None else np.full(master.size, np.nan)
    full = publisher.full(master)
    replica.apply(full)
    return {
        "n_params": master.size,
        "realtime_bytes": max(sizes),
        "full_bytes": len(full.to_bytes()),
        "ratio": max(sizes) / len(full.to_bytes()),
        "max_gap_before_full": float(np.max(np.abs(held - master))),
        "exact_after_full": bool(np.array_equal(replica.params, master)),
        "updates": len(sizes),
    }


# ----- recipe level: the shipped recipes through the real command ---------------------------------
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data" / "hfl"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def write_recipe(source: Path, out: Path, *, drop: str | None = None, **train: Any) -> Path:
    """A copy of ``source`` with absolute data paths, without party ``drop``, [train] changed."""
    raw = tomllib.loads(source.read_text())
    lines = ["[recipe]"] + [f"{k} = {_toml_value(v)}" for k, v in raw["recipe"].items()]
    for party in raw["party"]:
        if party["name"] == drop:
            continue
        party = dict(party, data=str((source.parent / party["data"]).resolve()))
        lines += ["", "[[party]]"] + [f"{k} = {_toml_value(v)}" for k, v in party.items()]
    for table in ("train", "evaluate"):
        values = dict(raw.get(table, {}), **(train if table == "train" else {}))
        lines += ["", f"[{table}]"] + [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    out.write_text("\n".join(lines) + "\n")
    return out


def sample_nodes(params: dict[str, Any], drop_bad: bool = False) -> tuple[Any, ...]:
    """The sample data as the server standardises it: nodes, validation and test rows."""
    from vfl_cli.models.features import Standardiser, numeric_matrix
    from vfl_cli.protocol import hfl

    server = pd.read_csv(SAMPLE / "server.csv", dtype={"id": str})
    columns = [c for c in server.columns if c not in ("id", "label")]
    split = hfl.server_split(len(server), params)
    X = numeric_matrix(server, columns, what="server")
    std = Standardiser.fit(X[split.train])
    Z, y = std.transform(X), server["label"].to_numpy(float)
    nodes = []
    for i in range(1 if drop_bad else 0, 5):
        df = pd.read_csv(SAMPLE / f"node{i}.csv", dtype={"id": str})
        nodes.append((std.transform(numeric_matrix(df, columns, what=f"node{i}")), df["label"].to_numpy(float)))
    return nodes, (Z[split.train], y[split.train]), (Z[split.test], y[split.test])


def simulate_sample(params: dict[str, Any], drop_bad: bool = False) -> tuple[Any, float]:
    """The pure-core simulation of a job on the sample data: result and test AUC."""
    from vfl_cli.protocol import hfl

    nodes, (X_val, y_val), (X_test, y_test) = sample_nodes(params, drop_bad)
    spec = hfl.model_spec(params)
    result = simulate(
        spec, nodes, X_val, y_val, rounds=params["rounds"], weighting=params["weighting"],
        epochs=params["local_epochs"], batch_size=params["batch_size"] or None,
        lr=params["learning_rate"], seed=params["seed"],
    )
    return result, roc_auc_score(y_test, model_predict(spec, result.master, X_test))


def _update_sizes(predictor: Path) -> dict[str, Any]:
    """Sizes of the hfl/update files the predictor received after the first: file and payload."""
    sizes: dict[str, list[tuple[int, int]]] = {"realtime": [], "full": []}
    for f in sorted((predictor / "archive" / "received").glob("*.update.*.zip")):
        manifest = json.loads(zipfile.ZipFile(f).read("manifest.json"))
        if manifest["meta"]["version"] == 1:
            continue  # the first update also carries the columns and the standardisation
        sizes[manifest["meta"]["update"]].append((f.stat().st_size, manifest["members"]["update"]["size"]))
    return sizes


def recipe_runs(workdir: Path, sample_seeds: int) -> None:
    from vfl_cli.protocol import hfl

    workdir.mkdir(parents=True, exist_ok=False)
    recipes_dir = ROOT / "recipes"
    runs = [
        # Plaintext aggregation, so that the master equals the simulation bit for bit; the
        # recipes' own setting (secure aggregation, the default) is the last run.
        ("FedAvg", recipes_dir / "hfl_fedavg.toml", {"secure_aggregation": False}, None),
        ("Actor-Critic", recipes_dir / "hfl_actor_critic.toml", {"secure_aggregation": False}, None),
        ("FedAvg without node0", recipes_dir / "hfl_fedavg.toml", {"secure_aggregation": False}, "node0"),
        ("Actor-Critic, secure aggregation", recipes_dir / "hfl_actor_critic.toml",
         {"secure_aggregation": True}, None),
    ]
    print("| run | wall s | processes | files | bytes | test AUC | node0 weight, last round | master vs simulation |")
    print("|---|---|---|---|---|---|---|---|")
    masters: dict[str, np.ndarray] = {}
    sizes: dict[str, Any] = {}
    for index, (label, source, train, drop) in enumerate(runs):
        recipe = write_recipe(source, workdir / f"r{index}.toml", drop=drop, **train)
        out = workdir / f"run{index}"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "vfl_cli", "--quiet", "recipe", "run", str(recipe),
                        "--workdir", str(out)], check=True, capture_output=True)
        wall = time.perf_counter() - t0
        report = json.loads((out / "report.json").read_text())
        params = report["model"]["params"]
        job = report["jobs"]["train"]
        with np.load(out / "hq" / "jobs" / job / "arrays.npz") as z:
            master = z["master"]
        masters[label] = master
        if params["secure_aggregation"]:
            gap = float(np.max(np.abs(master - masters["Actor-Critic"])))
            check = f"max abs diff to the plaintext job {gap:.1e}"
        else:
            ref, _ = simulate_sample(params, drop_bad=drop is not None)
            check = "identical" if np.array_equal(master, ref.master) else (
                f"max abs diff {float(np.max(np.abs(master - ref.master))):.1e}")
        node0 = "-" if drop else f"{report['node_weights'][-1][0]:.3f}"
        print(f"| {label} | {wall:.0f} | {report['vfl_processes']} | {report['exchanges']} | "
              f"{report['bytes_exchanged']:,} | {report['metrics']['test']['auc']:.4f} | {node0} | {check} |",
              flush=True)
        if index == 0:
            sizes = _update_sizes(out / "serving")
            sizes["n_params"] = master.size
    rt, full = sizes["realtime"], sizes["full"]
    print(f"\nUpdates the predictor received in the FedAvg run ({sizes['n_params']} parameters, "
          f"{len(rt)} real-time at top-k = 10%, {len(full)} full after the first):\n")
    print("| | real-time (largest) | full | ratio |")
    print("|---|---|---|---|")
    for what, pos in (("update payload (VFLU encoding in .npy)", 1), ("whole signed file", 0)):
        big, whole = max(r[pos] for r in rt), max(f[pos] for f in full)
        print(f"| {what} | {big:,} B | {whole:,} B | {big / whole:.1%} |")
    print(f"\nSample data by simulation (= the job), {sample_seeds} seeds, recipe settings:\n")
    print("| model | rounds | FedAvg | Actor-Critic | without node0 | AC - FedAvg | clean - AC | AC wins "
          "| node0 policy weight, last round |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in ("mlp", "logistic"):
        for rounds in (10, 20):
            rows = []
            for seed in range(sample_seeds):
                base = hfl.check_params({"model": model, "rounds": rounds, "seed": seed})
                _, fed = simulate_sample(base)
                ac_result, ac = simulate_sample(dict(base, weighting="actor-critic"))
                _, clean = simulate_sample(base, drop_bad=True)
                rows.append((fed, ac, clean, ac_result.policy[-1][0]))
            a = np.array(rows)
            print(f"| {model} | {rounds} | {a[:, 0].mean():.4f} | {a[:, 1].mean():.4f} | {a[:, 2].mean():.4f} | "
                  f"{a[:, 1].mean() - a[:, 0].mean():+.4f} | {a[:, 2].mean() - a[:, 1].mean():+.4f} | "
                  f"{int(np.sum(a[:, 1] > a[:, 0]))}/{sample_seeds} | {a[:, 3].mean():.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=16)
    ap.add_argument("--first-seed", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--mlp-seeds", type=int, default=8, help="seeds for the MLP rows (slower)")
    ap.add_argument("--recipes", type=Path, metavar="WORKDIR",
                    help="run the hfl recipes through 'vfl recipe run' in WORKDIR (a new folder)")
    ap.add_argument("--sample-seeds", type=int, default=8, help="seeds of the sample-data comparison")
    args = ap.parse_args()
    started = time.perf_counter()
    if args.recipes is not None:
        recipe_runs(args.recipes, args.sample_seeds)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nwall time {time.perf_counter() - started:.0f} s, load average {load:.1f}")
        return
    X, y = load_default_credit()
    models = [
        ("logistic regression", LOGISTIC_SPEC, args.seeds),
        ("MLP 23-32-1", mlp_spec(32), args.mlp_seeds),
    ]
    print(
        f"default_credit, 5 nodes, node 0 with 40% flipped labels, {args.rounds} rounds, "
        f"1 local epoch, batch 32, lr 0.1; seeds {args.first_seed}..\n"
    )
    print(
        "| setting | model | seeds | FedAvg | Actor-Critic | FedAvg without bad node | "
        "AC - FedAvg | clean - AC | AC wins | bad node weight, last 5 rounds (mean / max) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    first_weights = None
    for setting, bad_share in (
        ("large bad node (40% of rows)", 0.4),
        ("equal nodes (20% each)", 0.2),
    ):
        for model, spec, n_seeds in models:
            runs = []
            for seed in range(args.first_seed, args.first_seed + n_seeds):
                runs.append(compare(spec, split(X, y, seed, bad_share), seed, args.rounds))
            fed = np.array([r["fedavg"] for r in runs])
            ac = np.array([r["actor_critic"] for r in runs])
            clean = np.array([r["clean"] for r in runs])
            late = np.array([r["weights"][-5:, 0].mean() for r in runs])
            print(
                f"| {setting} | {model} | {n_seeds} | {fed.mean():.4f} | {ac.mean():.4f} | "
                f"{clean.mean():.4f} | {ac.mean() - fed.mean():+.4f} | {clean.mean() - ac.mean():+.4f} | "
                f"{int(np.sum(ac > fed))}/{n_seeds} | {late.mean():.3f} / {late.max():.3f} |",
                flush=True,
            )
            if first_weights is None:
                first_weights = (runs[0]["weights"], runs[0]["policy"])
    if first_weights is not None:
        print(
            f"\nActor-Critic node weights per round, logistic regression, large bad node, seed "
            f"{args.first_seed} (FedAvg: 0.400 for node 0, 0.150 for each other node). "
            "Policy: softmax(mu), the learned probabilities; applied: with exploration noise.\n"
        )
        print(
            "| round | policy node 0 (bad) | policy nodes 1-4 | applied node 0 | applied nodes 1-4 |"
        )
        print("|---|---|---|---|---|")
        applied, policy = first_weights
        for r, (w, p) in enumerate(zip(applied, policy, strict=False), start=1):
            print(
                f"| {r} | {p[0]:.3f} | "
                + " ".join(f"{v:.3f}" for v in p[1:])
                + f" | {w[0]:.3f} | "
                + " ".join(f"{v:.3f}" for v in w[1:])
                + " |"
            )
    check = update_check(X, y, rounds=10)
    print(
        f"\nUpdates, MLP 23-64-1 ({check['n_params']} parameters), {check['updates']} real-time "
        f"updates at top-k = 10%, then one full update:\n"
    )
    print(
        "| real-time update | full update | ratio | max abs difference replica vs master before "
        "the full update | replica == master after it |"
    )
    print("|---|---|---|---|---|")
    print(
        f"| {check['realtime_bytes']} B | {check['full_bytes']} B | {check['ratio']:.1%} | "
        f"{check['max_gap_before_full']:.2e} | {check['exact_after_full']} (bit for bit) |"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nwall time {time.perf_counter() - started:.0f} s, load average {load:.1f}")


if __name__ == "__main__":
    main()
