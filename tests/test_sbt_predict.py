"""``vfl predict`` with SecureBoost models (``secureboost-predict``).

Each party routes the aligned rows through its own splits; the active party's scores must equal
the model scored in plaintext (every party's card joined, one row at a time) to 1e-9, and the
training job's own scores of the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import drive, error_line, run
from test_protocol_secureboost import PARAMS, setup, synthetic, train

from vfl_cli import jobs
from vfl_cli.errors import InvalidArtifact
from vfl_cli.models import trees
from vfl_cli.models.binning import Binning
from vfl_cli.protocol.registry import REGISTRY, info
from vfl_cli.protocol.sbt_predict import Routes, TreeModel, passive_routes, route_scores
from vfl_cli.workspace import Workspace

SMALL = {**PARAMS, "trees": 2, "active_trees": 0}


def cards(wss: list[Path], job: str) -> list[dict[str, Any]]:
    return [jobs.load_state(Workspace(ws), job)[0].results["model"] for ws in wss]


def plaintext_raw(wss: list[Path], job: str, frames: list[pd.DataFrame]) -> np.ndarray:
    """The model scored in plaintext: all cards joined, each row walked down each tree alone."""
    every = cards(wss, job)
    active = every[0]
    size = (1 << (active["params"]["depth"] + 1)) - 1
    bins = [Binning.from_json(c["binning"]).transform(df) for c, df in zip(every, frames, strict=True)]
    col = [{c["name"]: j for j, c in enumerate(card["binning"]["columns"])} for card in every]
    owners = {card["party"]: i for i, card in enumerate(every)}
    passive_split = {(card["party"], s["round"], s["node"]): (s["feature"], s["bin"])
                     for card in every[1:] for s in card["splits"]}
    out = np.tile(np.array(active["base"], dtype=float), (len(frames[0]), 1))
    for row in range(len(frames[0])):
        for r, nodes in enumerate(active["rounds"]):
            by_id = {n["id"]: n for n in nodes}
            for k in range(out.shape[1]):
                nid = k * size
                while by_id[nid]["owner"] is not None:
                    owner = by_id[nid]["owner"]
                    feature, b = (by_id[nid]["split"] if owner == active["party"]
                                  else passive_split[(owner, r, nid)])
                    p = owners[owner]
                    i = nid - k * size
                    nid += i + 1 if bins[p][row, col[p][feature]] <= b else i + 2
                out[row, k] += by_id[nid]["value"]
    return out


def aligned_frames(wss: list[Path], alignment: str) -> list[pd.DataFrame]:
    out = []
    for ws in wss:
        w = Workspace(ws)
        info_ = jobs.load_info(w, alignment)
        df = w.read_data(Path(info_["data"])) if info_.get("data") else w.read_data()
        rows = jobs.load_state(w, alignment)[0].arrays["aligned_rows"]
        out.append(df.iloc[rows].reset_index(drop=True))
    return out


def predict_by_hand(wss: list[Path], model: str, alignment: str, job: str) -> None:
    """Through the ``vfl`` command: start, accept, step until done."""
    run("-w", str(wss[0]), "predict", "start", "--model", model, "--alignment", alignment, "--job", job)
    for _ in range(20):
        for src in wss:
            for dst in wss:
                if src != dst:
                    for f in sorted((src / "outbox").glob(f"*-to-{dst.name}.zip")):
                        f.rename(dst / "inbox" / f.name)
        done = 0
        for ws in wss:
            if not (ws / "jobs" / job / "job.json").exists():
                run("-w", str(ws), "job", "accept", job)
                continue
            done += json.loads(run("-w", str(ws), "step", "--job", job, "--json").stdout)[0]["done"]
        if done == len(wss):
            return
    raise AssertionError("predict job did not finish")


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("sbtp")
    wss = setup(root, synthetic(root))
    state = train(wss, SMALL)
    return {"root": root, "wss": wss, "state": state}


def test_binary_scores_through_vfl_equal_the_plaintext_model(binary: dict[str, Any]) -> None:
    wss, root = binary["wss"], binary["root"]
    assert binary["state"].results["model"]["split_counts"].get("p1", 0) > 0  # passive splits used
    predict_by_hand(wss, "sb", "al", "pr")
    assert jobs.load_info(Workspace(wss[0]), "pr")["protocol"] == "secureboost-predict"
    state, _ = jobs.load_state(Workspace(wss[0]), "pr")
    expected = plaintext_raw(wss, "sb", aligned_frames(wss, "al"))
    assert np.max(np.abs(state.arrays["raw"] - expected)) < 1e-9
    # the training job routed the same aligned rows when it trained: the same raw scores
    assert np.max(np.abs(state.arrays["raw"] - binary["state"].arrays["raw"])) < 1e-9
    run("-w", str(wss[0]), "predict", "export", "pr", "--out", str(root / "scores.csv"))
    scores = pd.read_csv(root / "scores.csv", dtype={"id": str})
    ids = jobs.load_state(Workspace(wss[0]), "al")[0].arrays["aligned_ids"]
    assert list(scores["id"]) == [str(i) for i in ids]
    assert np.max(np.abs(scores["score"] - 1 / (1 + np.exp(-expected[:, 0])))) < 1e-9
    assert "points" in scores.columns
    metrics = json.loads(run("-w", str(wss[0]), "evaluate", "pr", "--json").stdout)["test"]
    assert metrics["auc"] > 0.8  # the labels are in the file: metrics on every aligned row
    message = error_line(run("-w", str(wss[1]), "predict", "export", "pr", "--out",
                             str(root / "x.csv"), ok=False))
    assert "only the active party" in message
    part, _ = jobs.load_state(Workspace(wss[1]), "pr")
    assert part.done and not part.arrays and "scores" not in part.results


def test_new_rows_of_other_files_are_scored_like_the_plaintext_model(binary: dict[str, Any]) -> None:
    wss, root = binary["wss"], binary["root"]
    parts = [pd.read_csv(root / f"part{i}.csv") for i in range(2)]
    new_a = parts[0].iloc[::-1].iloc[:90]  # another file: reordered, fewer rows
    new_p = parts[1].iloc[30:].sample(frac=1.0, random_state=1)
    new_a.to_csv(root / "new_a.csv", index=False)
    new_p.to_csv(root / "new_p.csv", index=False)
    run("-w", str(wss[0]), "align", "start", "--job", "new", "--data", str(root / "new_a.csv"))
    for f in (wss[0] / "outbox").glob("*-to-p1.zip"):
        f.rename(wss[1] / "inbox" / f.name)
    run("-w", str(wss[1]), "align", "respond", "new", "--data", str(root / "new_p.csv"))
    drive(wss, "new")
    predict_by_hand(wss, "sb", "new", "pn")
    state, _ = jobs.load_state(Workspace(wss[0]), "pn")
    frames = aligned_frames(wss, "new")
    assert len(frames[0]) == len(set(new_a["id"]) & set(new_p["id"])) == len(state.arrays["raw"])
    assert np.max(np.abs(state.arrays["raw"] - plaintext_raw(wss, "sb", frames))) < 1e-9


def test_multiclass_with_two_passive_parties(tmp_path: Path) -> None:
    wss = setup(tmp_path, synthetic(tmp_path, passives=2, objective="multiclass"))
    trained = train(wss, {**SMALL, "objective": "multiclass", "trees": 1})
    assert {"p1", "p2"} <= set(trained.results["model"]["split_counts"])
    predict_by_hand(wss, "sb", "al", "pr")
    state, _ = jobs.load_state(Workspace(wss[0]), "pr")
    expected = plaintext_raw(wss, "sb", aligned_frames(wss, "al"))
    assert expected.shape[1] == 3
    assert np.max(np.abs(state.arrays["raw"] - expected)) < 1e-9
    assert np.max(np.abs(state.arrays["scores"] - trees.predict_proba(expected, "multiclass"))) < 1e-9
    run("-w", str(wss[0]), "predict", "export", "pr", "--out", str(tmp_path / "s.csv"))
    exported = pd.read_csv(tmp_path / "s.csv")
    assert list(exported.columns) == ["id", "score_0", "score_1", "score_2"]
    assert np.allclose(exported[["score_0", "score_1", "score_2"]].sum(axis=1), 1.0)


def test_regression(tmp_path: Path) -> None:
    wss = setup(tmp_path, synthetic(tmp_path, objective="regression"))
    train(wss, {**SMALL, "objective": "regression"})
    jobs.start_job(Workspace(wss[0]), "secureboost-predict", {"model": "sb", "alignment": "al"},
                   job="pr")
    drive(wss, "pr")
    state, _ = jobs.load_state(Workspace(wss[0]), "pr")
    expected = plaintext_raw(wss, "sb", aligned_frames(wss, "al"))
    assert np.max(np.abs(state.arrays["scores"] - expected[:, 0])) < 1e-9
    assert "rmse" in state.results["metrics"]["test"] and "points" not in state.arrays


def test_active_model_export_holds_leaf_weights_and_its_own_splits(binary: dict[str, Any]) -> None:
    wss, root = binary["wss"], binary["root"]
    run("-w", str(wss[0]), "model", "export", "sb", "--out", str(root / "bank.json"))
    card = json.loads((root / "bank.json").read_text())
    nodes = [n for r in card["rounds"] for n in r]
    assert any(n["owner"] is None and isinstance(n["value"], float) for n in nodes)
    own = [n for n in nodes if n["owner"] == "bank"]
    assert own and all(n["split"][0] in card["features"] for n in own)
    held = [n for n in nodes if n["owner"] == "p1"]
    assert held and all("split" not in n for n in held)  # p1's splits: by owner only
    assert not any(c["name"].startswith("p1_") for c in card["binning"]["columns"])


# ----- mistakes and malformed replies -------------------------------------------------------
def test_a_model_that_cannot_score_is_refused(binary: dict[str, Any]) -> None:
    bank = binary["wss"][0]
    message = error_line(run("-w", str(bank), "predict", "start", "--model", "al", "--alignment", "al",
                             ok=False))
    assert "psi job" in message and "cannot score rows" in message
    assert not (bank / "jobs" / "x").exists()


def test_registry_predictor_fields_are_coherent() -> None:
    assert info("secureboost").predictor == "secureboost-predict" and info("secureboost").predicts
    assert info("hetero-lr").predictor == "predict"
    for name, entry in REGISTRY.items():
        assert entry.predicts == (entry.predictor is not None), name
        if entry.predictor is not None:
            assert entry.predictor in REGISTRY, name


def _model(depth: int, splits: list[dict[str, Any]]) -> TreeModel:
    binning = {"version": 1, "columns": [{"name": "x", "kind": "numeric", "cuts": [0.0, 1.0],
                                          "categories": []}]}
    return TreeModel("m", {"params": {"depth": depth}, "splits": splits, "binning": binning})


def test_routes_reach_and_left_bits() -> None:
    # own splits at the root (bin <= 1) and at its right child (bin <= 2): rows with bin <= 1
    # go left at the root and can never reach node 2
    model = _model(2, [{"round": 0, "node": 0, "feature": "x", "bin": 1},
                       {"round": 0, "node": 2, "feature": "x", "bin": 2}])
    Xb = np.array([[0], [1], [2], [3]])
    nodes, reach, left = passive_routes(model, Xb).bits("p1")
    assert nodes == [(0, 0), (0, 2)]
    assert reach[:, 0].all() and list(left[:, 0]) == [True, True, False, False]
    assert list(reach[:, 1]) == [False, False, True, True]
    assert list(left[:, 1]) == [False, False, True, False]  # not sent where unreachable


@pytest.mark.parametrize("damage", ["shape", "left-without-reach", "nodes"])
def test_malformed_routes_are_refused(damage: str) -> None:
    model = _model(1, [{"round": 0, "node": 0, "feature": "x", "bin": 1}])
    msg = passive_routes(model, np.array([[0], [2], [3]]))
    if damage == "shape":
        msg = Routes(msg.nodes, 4, msg.reach, msg.left)
    elif damage == "left-without-reach":
        msg = Routes(msg.nodes, 3, np.zeros_like(msg.reach), msg.left)
    else:
        msg = Routes([[0, 0], [0, 0]], 3, msg.reach, msg.left)
    with pytest.raises(InvalidArtifact, match="sbt/routes from p1"):
        msg.bits("p1")


def test_rows_marked_unreachable_on_their_path_are_refused() -> None:
    card = {"params": {"depth": 1}, "base": [0.0], "binning": {"version": 1, "columns": []},
            "rounds": [[{"id": 0, "owner": "p1"}, {"id": 1, "owner": None, "value": 1.0},
                        {"id": 2, "owner": None, "value": -1.0}]]}
    model = TreeModel("m", card)
    reach = np.array([[True], [False]])
    left = np.array([[True], [False]])
    raw = route_scores(model, np.zeros((1, 0), np.int64), "bank", {"p1": ([(0, 0)], reach[:1], left[:1])})
    assert raw.tolist() == [[1.0]]
    with pytest.raises(InvalidArtifact, match="marked as unable to reach"):
        route_scores(model, np.zeros((2, 0), np.int64), "bank", {"p1": ([(0, 0)], reach, left)})


def test_a_passive_party_without_splits_sends_empty_planes() -> None:
    from vfl_cli.artifacts.container import ndarray_member

    msg = passive_routes(_model(2, []), np.array([[0], [3]]))
    nodes, reach, left = msg.bits("p1")
    assert nodes == [] and reach.shape == left.shape == (2, 0)
    assert ndarray_member("reach", msg.reach).data  # an empty plane still travels as a member


def test_the_linear_predict_protocol_refuses_a_tree_model(binary: dict[str, Any]) -> None:
    from vfl_cli.errors import VflError

    with pytest.raises(VflError, match="not a finished hetero-lr or hetero-linear training job"):
        jobs.start_job(Workspace(binary["wss"][0]), "predict", {"model": "sb", "alignment": "al"},
                       job="lin")
