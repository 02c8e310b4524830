"""What the hfl server learns about each node, measured over repeated jobs (issue #14, finding 8).

Runs the jobs of tests/privacy/test_hfl_attacks.py (sample_data/hfl, a server and 5 nodes,
logistic regression, mini-batch SGD, 512-bit test keys) several times and prints, per setting,
the server's membership-attack AUC on per-node deltas (mean over nodes and rounds), the
label-rate rank correlation, the test AUC and DP-FedAvg's epsilon; then, for an Actor-Critic job
under secure aggregation, what the per-node statistics the server sees in the clear say about
the nodes' label rates:

    python tests/benchmarks/bench_hfl_privacy.py --repeats 5 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "privacy")]

import test_hfl_attacks as attack  # noqa: E402 (found through the sys.path above)
from conftest import drive, introduce, make_party  # noqa: E402

from vfl_cli import jobs  # noqa: E402
from vfl_cli.workspace import Workspace  # noqa: E402


def parties(root: Path) -> dict[str, Path]:
    ws = {"server": make_party(root, "server", "server", attack.DATA / "server.csv", label_column="label")}
    for name in attack.NODES:
        ws[name] = make_party(root, name, "worker", attack.DATA / f"{name}.csv", label_column="label")
    introduce(root, *ws)
    return ws


def measure(ws: dict[str, Path], job: str, params: dict) -> dict[str, float | None]:
    jobs.start_job(Workspace(ws["server"]), "hfl", params, job=job)
    drive(list(ws.values()), job)
    results = jobs.load_state(Workspace(ws["server"]), job)[0].results
    aucs = attack.membership_aucs(ws, job)
    dp = results["privacy"]["dp"]
    return {
        "membership_auc": float(np.mean(aucs)) if aucs else None,
        "label_rank": attack.label_rate_rank(ws, job) if aucs else None,
        "test_auc": results["metrics"]["test"]["auc"],
        "epsilon": dp["epsilon"] if dp else None,
    }


def _rank(a: list[float], b: list[float]) -> float:
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def actor_critic_statistics(ws: dict[str, Path], rounds: int) -> None:
    """The statistics an Actor-Critic server reads per node, against the nodes' label rates."""
    jobs.start_job(Workspace(ws["server"]), "hfl",
                   dict(attack.PARAMS, rounds=rounds, weighting="actor-critic"), job="ac")
    drive(list(ws.values()), "ac")
    arts = attack._archived(ws["server"], "ac", "received", attack.DELTA)
    rates = [float(pd.read_csv(attack.DATA / f"{n}.csv")["label"].mean()) for n in attack.NODES]
    for t in range(rounds):
        stats = {a.sender: a.meta["stats"] for a in arts if a.round == t}
        for key in ("loss_before", "loss_after", "delta_norm"):
            values = [float(stats[n][key]) for n in attack.NODES]
            print(json.dumps({"actor_critic_round": t, "statistic": key,
                              "values": [round(v, 3) for v in values],
                              "spearman_vs_label_rate": round(_rank(values, rates), 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clip", type=float, nargs="+", default=[0.5])
    parser.add_argument("--noise", type=float, nargs="+", default=[1.0])
    args = parser.parse_args()
    base = dict(attack.PARAMS, rounds=args.rounds)
    settings = {"plaintext": dict(base, secure_aggregation=False)}
    for clip in args.clip:
        for z in args.noise:
            settings[f"dp clip={clip} z={z}, secure off"] = dict(
                base, secure_aggregation=False, dp_clip=clip, dp_noise_multiplier=z)
    with tempfile.TemporaryDirectory() as tmp:
        ws = parties(Path(tmp))
        for name, params in settings.items():
            runs = [measure(ws, f"j{abs(hash(name)) % 10**6}-{r}", params)
                    for r in range(1 if name == "plaintext" else args.repeats)]
            summary = {k: [r[k] for r in runs] for k in runs[0]}
            print(json.dumps({"setting": name, **summary}))
        actor_critic_statistics(ws, args.rounds)


if __name__ == "__main__":
    main()
