"""GOSS in SecureBoost: what the row sample tells a passive party (docs/protocols/secureboost.md).

The passive party sees each round's row sample (``sample`` in ``sbt/layer``). Attack: it labels
every training row left out of a round as "small gradient". Measured here against the active
party's gradients: the share of training rows so labelled, and that the label is always right.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from conftest import drive
from test_protocol_secureboost import setup, synthetic
from test_sbt_goss import GOSS

from vfl_cli import jobs
from vfl_cli.artifacts.container import read_artifact
from vfl_cli.models import trees
from vfl_cli.models.features import split_rows
from vfl_cli.workspace import Workspace


def test_left_out_rows_are_known_to_have_small_gradients(tmp_path: Path) -> None:
    wss = setup(tmp_path, synthetic(tmp_path))
    params = {**GOSS, "trees": 2}
    jobs.start_job(Workspace(wss[0]), "secureboost", {"alignment": "al", **params}, job="sb")
    drive(wss, "sb")
    p1 = Workspace(wss[1])
    files = sorted(glob.glob(str(wss[1] / "archive" / "received" / "sb.*.zip")))
    layers = [a for a in (read_artifact(Path(f)).open(p1.signer, p1.name).artifact for f in files)
              if a.kind == "sbt/layer" and a.meta.get("first")]
    last = max(layers, key=lambda a: a.meta["round_no"])
    sample = last.array("sample").astype(bool)  # what the passive party holds
    # the truth, from the active party: the gradients at the start of the last round
    state, _ = jobs.load_state(Workspace(wss[0]), "sb")
    values = {n["id"]: n["value"] for n in state.results["model"]["rounds"][-1] if n["owner"] is None}
    raw = state.arrays["raw"][:, 0] - np.array([values[i] for i in state.arrays["node"][:, 0]])
    ids = jobs.load_state(Workspace(wss[0]), "al")[0].arrays["aligned_ids"]
    train = split_rows(len(raw), params["test_fraction"], params["seed"], ids=ids).train
    y = Workspace(wss[0]).read_data().iloc[jobs.load_state(Workspace(wss[0]), "al")[0].arrays[
        "aligned_rows"]]["y"].to_numpy(dtype=float)
    g = np.zeros(len(raw))
    g[train] = np.abs(trees.gradients(y[train], raw[train, None], "binary")[0][:, 0])
    grow = np.zeros(len(raw), dtype=bool)
    grow[train] = True
    left_out = grow & ~sample
    n = int(grow.sum())
    top = round(params["goss_top"] * n)
    kept_top = np.sort(g[grow])[::-1][:top]
    share = left_out.sum() / n
    assert left_out.sum() == n - top - round(params["goss_other"] * n)
    # the attack's label is right for every row. Rows in one leaf share a gradient, so rows tied
    # with the smallest kept one can be left out; ``raw`` rebuilt by subtraction is exact only
    # to rounding, hence the 1e-9 margin (a wrong label would be off by a leaf's step).
    assert (g[left_out] <= kept_top.min() + 1e-9).all()
    print(f"the passive party knows {share:.0%} of the {n} training rows have small gradients")
