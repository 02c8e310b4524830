"""``vfl predict`` with split-nn models (``split-nn-predict``).

A split network is trained between two workspaces (breast, 120 rows, 512-bit keys, the parties'
private seeds injected so that the plaintext reference can be built); a new alignment over other
files (reordered, partly new rows) is scored through the real ``vfl`` command. The active
party's outputs must equal the plaintext reference network (trained centrally from the same
seeds, standardised with the training rows' statistics computed here in plaintext) to 1e-6.
Malformed and echoed messages, signed with the sender's real key, are refused.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, carry, drive, error_line, introduce, make_party, run
from fuzz_signed import Case, feed, record_job, recording, restore, signed_bytes
from test_protocol_split_nn import PARAMS, SEEDS, SPEC, joined, reference
from test_sbt_predict import aligned_frames, predict_by_hand

from vfl_cli import jobs
from vfl_cli.artifacts.container import Member
from vfl_cli.errors import VflError
from vfl_cli.models.features import split_rows
from vfl_cli.protocol import split_nn
from vfl_cli.protocol.registry import info
from vfl_cli.workspace import Workspace


def _write_parties(root: Path) -> tuple[Path, Path]:
    a = pd.read_csv(ROOT / "sample_data" / "breast_active.csv", dtype={"id": str})
    p = pd.read_csv(ROOT / "sample_data" / "breast_passive.csv", dtype={"id": str})
    a.head(120).to_csv(root / "a.csv", index=False)
    p[p["id"].isin(a["id"].head(120))].to_csv(root / "p.csv", index=False)
    # new rows to score: other files, reordered, half of them never seen in training
    a.iloc[60:200].iloc[::-1].to_csv(root / "new_a.csv", index=False)
    new = p[p["id"].isin(a["id"].iloc[50:200])]  # rows in both new files, some never trained on
    new.sample(frac=1.0, random_state=4).to_csv(root / "new_p.csv", index=False)
    bank = make_party(root, "bank", "active", root / "a.csv", label_column="label")
    bureau = make_party(root, "bureau", "passive", root / "p.csv")
    introduce(root, "bank", "bureau")
    return bank, bureau


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("snnp")
    bank, bureau = _write_parties(root)
    params = dict(PARAMS, model=SPEC)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(split_nn, "private_seed", lambda role: SEEDS[role == "passive"])
        jobs.start_job(Workspace(bank), "psi", {}, job="al")
        drive([bank, bureau], "al")
        jobs.start_job(Workspace(bank), "split-nn", {"alignment": "al", **params}, job="tr")
        drive([bank, bureau], "tr")
    run("-w", str(bank), "align", "start", "--job", "new", "--data", str(root / "new_a.csv"))
    carry(bank, bureau)
    run("-w", str(bureau), "align", "respond", "new", "--data", str(root / "new_p.csv"))
    drive([bank, bureau], "new")
    return {"root": root, "wss": [bank, bureau], "params": params}


def reference_outputs(trained: dict[str, Any], alignment: str) -> np.ndarray:
    """The plaintext network's outputs on ``alignment``'s rows (log-odds for a binary head)."""
    bank, bureau = trained["wss"]
    label = Workspace(bank).label_column
    model, _, _ = reference(bank, bureau, trained["params"], label)
    df, (a_cols, p_cols) = joined(bank, [bureau])
    split = split_rows(len(df), trained["params"]["test_fraction"], trained["params"]["seed"],
                       ids=jobs.load_state(Workspace(bank), "al")[0].arrays["aligned_ids"])
    frames = aligned_frames([bank, bureau], alignment)
    out = []
    for cols, frame, ws in zip((a_cols, p_cols), frames, (bank, bureau), strict=True):
        train = df[cols].to_numpy(float)[split.train]
        mean, std = train.mean(0), train.std(0)
        X = frame[Workspace(ws).features].to_numpy(float)
        out.append((X - mean) / np.where(std > 0, std, 1))
    return np.asarray(model.output(*out), dtype=float)


def test_new_rows_scored_through_vfl_equal_the_plaintext_network(trained: dict[str, Any]) -> None:
    (bank, bureau), root = trained["wss"], trained["root"]
    assert info("split-nn").predictor == "split-nn-predict"
    predict_by_hand([bank, bureau], "tr", "new", "pn")
    assert jobs.load_info(Workspace(bank), "pn")["protocol"] == "split-nn-predict"
    state, _ = jobs.load_state(Workspace(bank), "pn")
    expected = reference_outputs(trained, "new")
    frames = aligned_frames([bank, bureau], "new")
    new_ids = set(frames[0]["id"]) - set(pd.read_csv(root / "a.csv", dtype={"id": str})["id"])
    assert len(expected) == len(state.arrays["raw"]) > 100 and len(new_ids) > 40  # unseen rows too
    assert np.max(np.abs(state.arrays["raw"] - expected)) < 1e-6
    assert np.max(np.abs(state.arrays["scores"] - 1 / (1 + np.exp(-expected[:, 0])))) < 1e-6
    assert state.results["metrics"]["test"]["auc"] > 0.8  # labels in the file: metrics on every row
    run("-w", str(bank), "predict", "export", "pn", "--out", str(root / "scores.csv"))
    scores = pd.read_csv(root / "scores.csv", dtype={"id": str})
    assert list(scores["id"]) == [str(i) for i in jobs.load_state(Workspace(bank), "new")[0].arrays["aligned_ids"]]
    assert np.max(np.abs(scores["score"] - 1 / (1 + np.exp(-expected[:, 0])))) < 1e-6
    assert "points" in scores.columns


def test_the_training_rows_score_as_the_training_job_evaluated_them(trained: dict[str, Any]) -> None:
    bank, bureau = trained["wss"]
    jobs.start_job(Workspace(bank), "split-nn-predict", {"model": "tr", "alignment": "al"}, job="pa")
    drive([bank, bureau], "pa")
    state, _ = jobs.load_state(Workspace(bank), "pa")
    _, _, test_pred = reference(bank, bureau, trained["params"], "label")
    test_ids = jobs.load_state(Workspace(bank), "tr")[0].results["split"]["test_ids"]
    ids = [str(i) for i in jobs.load_state(Workspace(bank), "al")[0].arrays["aligned_ids"]]
    at = [ids.index(i) for i in test_ids]
    assert np.max(np.abs(state.arrays["scores"][at] - np.ravel(test_pred))) < 1e-6


def test_the_passive_party_receives_no_score(trained: dict[str, Any]) -> None:
    (bank, bureau), root = trained["wss"], trained["root"]
    predict_by_hand([bank, bureau], "tr", "new", "pq")
    part, _ = jobs.load_state(Workspace(bureau), "pq")
    assert part.done and not part.arrays and set(part.results) == {"rows"}
    # the only message the passive party received for the job: the masked activation request
    got = sorted(f.name for f in (bureau / "archive" / "received").glob("pq.*"))
    assert got and all("job-proposal" in n or "request" in n for n in got)
    message = error_line(run("-w", str(bureau), "predict", "export", "pq", "--out", str(root / "x.csv"), ok=False))
    assert "only the active party" in message and not (root / "x.csv").exists()


# ----- mistakes and malformed messages ----------------------------------------------------------
def test_a_psi_job_as_model_is_refused(trained: dict[str, Any]) -> None:
    bank = trained["wss"][0]
    message = error_line(run("-w", str(bank), "predict", "start", "--model", "al", "--alignment", "new",
                             "--job", "bad", ok=False))
    assert "cannot score rows" in message and not (bank / "jobs" / "bad").exists()
    with pytest.raises(VflError, match="not a finished split-nn training job"):
        jobs.start_job(Workspace(bank), "split-nn-predict", {"model": "al", "alignment": "new"}, job="bad2")


@pytest.fixture(scope="module")
def cases(trained: dict[str, Any]) -> list[Case]:
    bank, bureau = trained["wss"]
    store = trained["root"] / "snapshots"
    store.mkdir()
    with pytest.MonkeyPatch.context() as mp, recording(mp) as raw:
        jobs.start_job(Workspace(bank), "split-nn-predict", {"model": "tr", "alignment": "new"}, job="rec")
        return record_job([bank, bureau], "rec", raw, store)


def _case(cases: list[Case], kind: str) -> Case:
    return next(c for c in cases if c.message.kind == kind)


def _fed(case: Case, msg: Any, tmp_path: Path) -> Any:
    name, payload = signed_bytes(case, msg, {})
    return feed(case, restore(case, tmp_path / "ws"), name, payload)


@pytest.mark.parametrize("kind", ["split/predict-forward", "split/predict-request", "split/predict-activation"])
def test_the_genuine_messages_are_taken(cases: list[Case], tmp_path: Path, kind: str) -> None:
    outcome = _fed(_case(cases, kind), _case(cases, kind).message, tmp_path)
    assert outcome.consumed and not outcome.refused, outcome.error


@pytest.mark.parametrize("kind, damage", [
    ("split/predict-forward", "rows"), ("split/predict-forward", "alignment"),
    ("split/predict-forward", "cut"), ("split/predict-request", "cut"),
    ("split/predict-activation", "cut"), ("split/predict-activation", "round")])
def test_a_malformed_message_is_refused(cases: list[Case], tmp_path: Path, kind: str, damage: str) -> None:
    case = _case(cases, kind)
    msg = case.message
    if damage in ("rows", "alignment"):
        msg = replace(msg, meta={**msg.meta, damage: msg.meta[damage] + 1 if damage == "rows" else "f" * 64})
    elif damage == "round":
        msg = replace(msg, round=msg.round + 1)
    else:  # one ciphertext or value fewer in the first member
        first, *rest = msg.members
        width = len(first.data) // max(1, int(np.prod(first.info.get("shape", [first.info.get("count", 1)]))))
        info_ = dict(first.info)
        if "shape" in info_:
            info_["shape"] = [info_["shape"][0] - 1, *info_["shape"][1:]]
            cut = first.data[: len(first.data) - width * int(np.prod(info_["shape"][1:]))]
        else:
            cut = first.data[:-int(info_["width"])]
        msg = replace(msg, members=[Member(first.name, first.type, cut, info_), *rest])
    outcome = _fed(case, msg, tmp_path)
    assert outcome.refused and not outcome.consumed, f"{kind} with {damage} damage was accepted"


def test_the_passive_party_refuses_its_own_ciphertexts_sent_back(cases: list[Case], tmp_path: Path) -> None:
    case, own = _case(cases, "split/predict-request"), _case(cases, "split/predict-forward").message
    blob = next(m.data for m in own.members if m.name == "h")
    act = case.message.members[0]
    echoed = Member(act.name, act.type, (blob * (1 + len(act.data) // len(blob)))[: len(act.data)], dict(act.info))
    outcome = _fed(case, replace(case.message, members=[echoed]), tmp_path)
    assert outcome.refused and not outcome.consumed
    reason = outcome.error or next(r["reason"] for r in jobs.rejected_files(Workspace(tmp_path / "ws")))
    assert "holds ciphertexts that this party sent it" in reason


def test_predict_start_json_names_the_protocol(trained: dict[str, Any]) -> None:
    bank = trained["wss"][0]
    out = json.loads(run("-w", str(bank), "predict", "start", "--model", "tr", "--alignment", "new",
                         "--job", "pj", "--json").stdout)
    assert "split-nn-predict" in json.dumps(out)


def test_multiclass_scores_equal_the_plaintext_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another head and an empty active bottom (A's raw standardised columns meet W_A)."""
    from conftest import fate
    from test_protocol_split_nn import small_parties, train

    monkeypatch.setattr(split_nn, "private_seed", lambda role: SEEDS[role == "passive"])
    bank, bureau = small_parties(tmp_path, fate("vehicle_scale_hetero_guest.csv"),
                                 fate("vehicle_scale_hetero_host.csv"), "y", 100)
    spec = {"head": "multiclass", "passive": [{"type": "dense", "units": 3}, {"type": "sigmoid"}],
            "interactive": {"units": 4}, "top": [{"type": "tanh"}, {"type": "dense", "units": 4}]}
    params = dict(PARAMS, model=spec, epochs=1, optimizer="sgd", momentum=0.5, learning_rate=0.1, l2=0.0)
    train(bank, bureau, params)
    jobs.start_job(Workspace(bank), "split-nn-predict", {"model": "tr", "alignment": "al"}, job="pm")
    drive([bank, bureau], "pm")
    state, _ = jobs.load_state(Workspace(bank), "pm")
    expected = reference_outputs({"wss": [bank, bureau], "params": params}, "al")
    assert expected.shape == state.arrays["raw"].shape == (len(state.arrays["raw"]), 4)
    assert np.max(np.abs(state.arrays["raw"] - expected)) < 1e-6
    assert np.allclose(state.arrays["scores"].sum(axis=1), 1.0) and "points" not in state.arrays
    assert "accuracy" in state.results["metrics"]["test"]
    run("-w", str(bank), "predict", "export", "pm", "--out", str(tmp_path / "s.csv"))
    assert list(pd.read_csv(tmp_path / "s.csv").columns) == ["id", "score_0", "score_1", "score_2", "score_3"]
