"""Label leakage vs accuracy of split-nn's label protection (issue #14, finding 4).

Runs a split-nn recipe through the real command once per ``label_protection`` setting and
reports, per epoch, the privacy meter the active party recorded (attacks on the gradients it
sent) and the same three attacks run as the passive party would: on ``dL/dh`` decrypted from its
own archive with its own key (the leak that matters), scored against the labels, which only this
script sees. Also the test AUC of each run.

    python tests/benchmarks/bench_split_privacy.py recipes/split_breast.toml --bits 1024 \\
        --settings 0 1 2 3

``--reference`` instead trains the plaintext reference (``central_fit``, which the protocol
equals to 1e-6, protection noise included) on the joined data, for ``--draws`` pairs of private
seeds per setting: seconds instead of minutes, and the same gradients the protocol would send.
It also scores each row by its ``dL/dh`` summed over all epochs (an attacker pooling epochs).

    python tests/benchmarks/bench_split_privacy.py recipes/split_default_credit.toml --reference \\
        --settings 1 2 3 4 --draws 6

It ends with a markdown table over the draws (the same draws at every setting, and unprotected:
the test-AUC change is against the same draw). With ``--reference``, ``--set-param NAME=VALUE``
(a JSON value) changes a training parameter of the recipe, ``--draw-seed`` draws the seed pairs
from ``numpy.random.default_rng(N)`` (the same pairs in every run, for paired comparisons of
settings) and ``--passive-optimizer`` gives the passive party's bottom its own optimiser, a study
of how the optimiser meets the noise (docs/benchmarks.md, "The protection's cost and the passive
bottom's optimiser"):

    python tests/benchmarks/bench_split_privacy.py recipes/split_default_credit.toml --reference \
        --settings 3 --draws 12 --draw-seed 11 --set-param local_steps=2 \
        --passive-optimizer '{"name": "sgd", "lr": 0.5, "momentum": 0.9}'

``--fixed`` replaces the default (noise sized per
batch to hold the attacks to ``0.5 + 0.25 / label_protection``) by the previous fixed noise.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "privacy")]


def _recipe(path: Path, bits: int, setting: float, epochs: int | None, work: Path) -> Path:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("key_bits ="):
            line = f"key_bits = {bits}"
        if epochs and line.startswith("epochs ="):
            line = f"epochs = {epochs}"
        if line.strip() == "[train]":
            line += f"\nlabel_protection = {setting}"
        if line.startswith("data = \"../"):
            line = line.replace('"../', f'"{path.resolve().parent.parent}/')
        lines.append(line)
    out = work / path.name
    out.write_text("\n".join(lines) + "\n")
    return out


def passive_leaks(run: Path, active: str, passive: str, job: str) -> list[dict[str, float]]:
    """The three attacks on every dL/dh the passive party decrypted, per backward message."""
    from test_split_nn_attacks import decrypted_error  # the attack test's decoder

    from vfl_cli import jobs, privacy
    from vfl_cli.artifacts.container import read_artifact
    from vfl_cli.workspace import Workspace

    a_ws, p_ws = Workspace(run / active), Workspace(run / passive)
    info = jobs.load_info(a_ws, job)
    params = info["params"]
    align = jobs.load_state(a_ws, params["alignment"])[0]
    df = a_ws.read_data().iloc[align.arrays["aligned_rows"]].reset_index(drop=True)
    from vfl_cli.models.features import split_rows
    from vfl_cli.models.reference import minibatches

    split = split_rows(len(df), params["test_fraction"], params["seed"],
                       ids=np.asarray(align.arrays["aligned_ids"], dtype=str))
    y_all = df[a_ws.label_column].to_numpy(float)
    k = jobs.load_state(p_ws, job)[0].arrays["share"].shape[0]
    out = []
    files = sorted(glob.glob(str(run / passive / "archive" / "received" / f"{job}.*.backward.*.zip")))
    for f in files:
        art = read_artifact(Path(f)).open(p_ws.signer, p_ws.name).artifact
        epoch, batch = int(art.meta["epoch"]), int(art.meta["batch"])
        idx = minibatches(len(split.train), params["batch_size"] or None, seed=params["seed"], epoch=epoch)[batch]
        rows = split.train[idx]
        grads = decrypted_error(art, p_ws.private_key, len(rows), k)
        out.append({"epoch": epoch, "batch": batch, **privacy.leak_aucs(y_all[rows], grads)})
    return out


def one(path: Path, bits: int, setting: float, epochs: int | None) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="bench-split-privacy-"))
    recipe = _recipe(path, bits, setting, epochs, work)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vfl_cli", "--quiet", "recipe", "run", str(recipe), "--workdir",
                    str(work / "run")], check=True)
    wall = time.perf_counter() - t0
    report = json.loads((work / "run" / "report.json").read_text())
    active = next(p["name"] for p in report["parties"] if p["role"] == "active")
    passive = next(p["name"] for p in report["parties"] if p["role"] == "passive")
    job = report["jobs"]["train"]
    out = {"label_protection": setting, "wall_s": round(wall, 1), "test_auc": report["metrics"]["test"].get("auc"),
           "meter_per_epoch": [h.get("label_leak_auc") for h in report["history"]],
           "passive_dl_dh_per_batch": passive_leaks(work / "run", active, passive, job)}
    if setting:  # the same job without protection: the reference (equal to the job to 1e-6) on its own seeds
        seeds = job_seeds(work / "run", active, passive, job)
        data = _joined(recipe)
        out["reference_test_auc"] = reference(setting, seeds, data)["test_auc"]
        out["unprotected_test_auc"] = reference(0.0, seeds, data)["test_auc"]
    return out


def job_seeds(run: Path, active: str, passive: str, job: str) -> tuple[int, int]:
    """The two parties' private seeds, each read from its own job state (only this script sees both)."""
    from vfl_cli import jobs
    from vfl_cli.workspace import Workspace

    def seed(ws: str) -> int:
        return int(jobs.load_state(Workspace(run / ws), job)[0].data["private_seed"], 16)

    return seed(active), seed(passive)


def _joined(path: Path) -> tuple[dict[str, object], np.ndarray, np.ndarray, np.ndarray, object]:
    import pandas as pd

    from vfl_cli.models.features import split_rows
    from vfl_cli.recipes import load_recipe

    recipe = load_recipe(path)
    stage = recipe.stages()[1]
    from vfl_cli.protocol.split_nn import check_params

    params = check_params({**stage.params, "alignment": "al"}, [{"role": "active"}, {"role": "passive"}])
    active = recipe.active
    passive = next(p for p in recipe.parties if p.role == "passive")
    a = pd.read_csv(active.data, dtype={active.id_column: str})
    p = pd.read_csv(passive.data, dtype={passive.id_column: str})
    a_cols = [c for c in a.columns if c not in (active.id_column, active.label_column)]
    p_cols = [c for c in p.columns if c != passive.id_column]
    df = a.merge(p.rename(columns={c: "p:" + c for c in p_cols}), left_on=active.id_column,
                 right_on=passive.id_column)
    split = split_rows(len(df), params["test_fraction"], params["seed"],
                       ids=df[active.id_column].astype(str).to_numpy())

    def std(X: np.ndarray) -> np.ndarray:
        sd = X[split.train].std(0)
        return (X - X[split.train].mean(0)) / np.where(sd > 0, sd, 1)

    XA = std(df[a_cols].to_numpy(float))
    XP = std(df[["p:" + c for c in p_cols]].to_numpy(float))
    return params, XA, XP, df[active.label_column].to_numpy(float), split


def reference(setting: float, seeds: tuple[int, int], data: tuple) -> dict[str, object]:  # type: ignore[type-arg]
    """One plaintext-reference run: the leaks of what A sends and P decrypts, per epoch."""
    from vfl_cli import privacy
    from vfl_cli.metrics import classification_metrics
    from vfl_cli.models import split_spec as ss
    from vfl_cli.models.reference import minibatches

    params, XA, XP, y, split = data
    params = dict(params, label_protection=setting)
    sent: list[tuple[np.ndarray, np.ndarray]] = []
    models: list[ss.SplitModel] = []
    protect, build = ss.protect, ss.SplitModel.build

    def spy_protect(delta, labels, strength, rng, **kw):  # type: ignore[no-untyped-def]
        out = protect(delta, labels, strength, rng, **kw)
        sent.append((out, models[0].W_P.copy()))  # what A sends, and W_P (P gets out @ W_P.T)
        return out

    def spy_build(*a, **kw):  # type: ignore[no-untyped-def]
        models.append(build(*a, **kw))
        return models[-1]

    ss.protect, ss.SplitModel.build = spy_protect, spy_build  # type: ignore[method-assign,assignment]
    try:
        model, _ = ss.central_fit(ss.parse_spec(params["model"]), XA[split.train], XP[split.train],
                                  y[split.train], params, seeds=seeds)
    finally:
        ss.protect, ss.SplitModel.build = protect, build  # type: ignore[method-assign]
    yt, i = y[split.train], 0
    meter, passive = [], []
    pooled = np.zeros((len(yt), sent[0][1].shape[0]))
    for epoch in range(int(params["epochs"])):
        g, gp, labels = [], [], []
        for rows in minibatches(len(yt), params["batch_size"] or None, seed=params["seed"], epoch=epoch):
            out, W = sent[i]
            i += 1
            g.append(out)
            gp.append(out @ W.T)
            labels.append(yt[rows])
            pooled[rows] += out @ W.T
        meter.append(privacy.leak_aucs(np.concatenate(labels), np.vstack(g)))
        passive.append(privacy.leak_aucs(np.concatenate(labels), np.vstack(gp)))
    auc = classification_metrics(y[split.test], model.predict(XA[split.test], XP[split.test]))["auc"]
    worst = {k: max(e[k] for e in passive) for k in privacy.ATTACKS}
    return {"label_protection": setting, "test_auc": round(float(auc), 4),
            "worst_epoch_meter": {k: max(e[k] for e in meter) for k in privacy.ATTACKS},
            "worst_epoch_passive_dl_dh": worst, "pooled_epochs_passive": privacy.leak_aucs(yt, pooled)}


def _use_passive_optimizer(spec: dict[str, object], model: object) -> None:
    """The passive bottom's parameters stepped by ``make_optimizer(**spec)``, every other layer by
    the job's optimiser (``central_fit`` asks ``optimizer_factory`` for the active bottom's
    parameters first, then the passive bottom's, then the top's and the interactive ones);
    ``model``: the recipe's ``[model]`` table."""
    from vfl_cli.models import split_spec as ss
    from vfl_cli.models.optim import make_optimizer

    job_factory = ss.optimizer_factory
    count = [len(net.params()) if net else 0 for net in
             (ss.build_part(ss.parse_spec(model), part, 1, 0) for part in ("active", "passive"))]  # type: ignore[arg-type]
    passive = range(count[0], count[0] + count[1])

    def factory(params):  # type: ignore[no-untyped-def]
        job, made = job_factory(params), [0]

        def one():  # type: ignore[no-untyped-def]
            made[0] += 1
            return make_optimizer(**spec) if made[0] - 1 in passive else job()

        return one

    ss.optimizer_factory = factory  # type: ignore[assignment]


def _use_fixed_noise() -> None:
    """Replace the adaptive protection by the previous default (max-norm noise plus noise along the
    label directions of ``strength`` times the batch's largest gradient), for comparison."""
    from vfl_cli import privacy
    from vfl_cli.models import split_spec as ss

    def fixed(delta, labels, strength, rng, *, head="binary"):  # type: ignore[no-untyped-def]
        return privacy.protect_labels(delta, labels, strength, rng, categorical=head != "regression")

    ss.protect = fixed  # type: ignore[assignment]


def summary(runs: dict[float, list[dict[str, object]]]) -> str:
    """One markdown row per setting: ranges over the draws, the test-AUC change against the same
    draw without protection (runs[0.0])."""
    def worst(r: dict[str, object], key: str) -> float:
        return max(r[key].values()) if r[key] else 0.5  # type: ignore[attr-defined]

    lines = ["| `label_protection` | worst epoch, P's `dL/dh` | worst epoch, A's meter | pooled epochs | "
             "test AUC change: min..max (mean) |", "|---|---|---|---|---|"]
    for s, rs in runs.items():
        cols = [f"{min(v):.3f}-{max(v):.3f}" for v in
                ([worst(r, k) for r in rs] for k in ("worst_epoch_passive_dl_dh", "worst_epoch_meter",
                                                     "pooled_epochs_passive"))]
        aucs = [float(r["test_auc"]) for r in rs]  # type: ignore[arg-type]
        if s == 0.0:
            change = f"({min(aucs):.3f}-{max(aucs):.3f}, mean {np.mean(aucs):.4f})"
        else:
            d = [a - float(b["test_auc"]) for a, b in zip(aucs, runs[0.0], strict=True)]  # type: ignore[arg-type]
            change = (f"{min(d):+.3f}..{max(d):+.3f} ({np.mean(d):+.4f}; {sum(x >= -0.015 for x in d)}/{len(d)} "
                      f"within 0.015; mean {np.mean(aucs):.4f})")
        lines.append(f"| {s:g} | " + " | ".join(cols) + f" | {change} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", type=Path)
    ap.add_argument("--bits", type=int, default=2048)
    ap.add_argument("--settings", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0])
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--reference", action="store_true")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--fixed", action="store_true",
                    help="the previous default: fixed noise, label_protection times the batch's largest gradient")
    ap.add_argument("--set-param", action="append", default=[], metavar="NAME=VALUE",
                    help="with --reference: a training parameter over the recipe's (VALUE is JSON)")
    ap.add_argument("--draw-seed", type=int, help="with --reference: seed pairs from default_rng(N), not fresh")
    ap.add_argument("--passive-optimizer", type=json.loads, metavar="JSON",
                    help='with --reference: the passive bottom\'s optimiser, e.g. {"name": "sgd", "lr": 0.5}')
    args = ap.parse_args()
    print(json.dumps({"load_before": os.getloadavg()}), flush=True)
    if args.reference:
        import secrets

        if args.fixed:
            _use_fixed_noise()
        params, *rest = _joined(args.recipe)
        over = dict(item.split("=", 1) for item in args.set_param)
        data = ({**params, **{k: json.loads(v) for k, v in over.items()}}, *rest)
        if args.passive_optimizer:  # counted on the network trained, a --set-param model included
            _use_passive_optimizer(args.passive_optimizer, data[0]["model"])
        if args.draw_seed is None:
            draws = [(secrets.randbits(128), secrets.randbits(128)) for _ in range(args.draws)]
        else:
            rng = np.random.default_rng(args.draw_seed)
            draws = [(int(rng.integers(1 << 62)), int(rng.integers(1 << 62))) for _ in range(args.draws)]
        runs = {s: [reference(s, seeds, data) for seeds in draws] for s in dict.fromkeys([0.0, *args.settings])}
        for s in args.settings:
            for r in runs[s]:
                print(json.dumps(r), flush=True)
        print(summary(runs), flush=True)
    else:
        for s in args.settings:
            print(json.dumps(one(args.recipe, args.bits, s, args.epochs)), flush=True)
    print(json.dumps({"load_after": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
