"""Hetero linear models: the encrypted protocol equals the plaintext reference, refusals, resume.

Jobs run in-process through the job engine (the same code the CLI calls) with 512-bit keys;
end-to-end runs through the real command are in test_cli_train.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import carry, drive, drive_with_crashes, error_line, fate, introduce, make_party, run
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl_cli import jobs
from vfl_cli.models.features import split_rows
from vfl_cli.models.optim import make_optimizer
from vfl_cli.models.reference import fit_linear, fit_logistic
from vfl_cli.protocol import hetero_linear as hl
from vfl_cli.workspace import Workspace


def align(active: Path, passives: list[Path], job: str = "al") -> None:
    jobs.start_job(Workspace(active), "psi", {}, job=job)
    drive([active, *passives], job)


def train(active: Path, passives: list[Path], protocol: str, params: dict, job: str = "tr") -> dict:
    jobs.start_job(Workspace(active), protocol, {"alignment": "al", **params}, job=job)
    drive([active, *passives], job)
    return {ws.name: jobs.load_state(Workspace(ws), job) for ws in [active, *passives]}


def joined(active: Path, passives: list[Path]) -> tuple[pd.DataFrame, list[list[str]]]:
    """The aligned rows of every party side by side (only a test may join them)."""
    frames, cols = [], []
    for ws in [active, *passives]:
        w = Workspace(ws)
        state, _ = jobs.load_state(w, "al")
        df = w.read_data().iloc[state.arrays["aligned_rows"]].reset_index(drop=True)
        frames.append(df[w.features + ([w.label_column] if w.label_column else [])])
        cols.append(w.features)
    return pd.concat(frames, axis=1), cols


def standardised(X: np.ndarray, train: np.ndarray) -> np.ndarray:
    mean, std = X[train].mean(0), X[train].std(0)
    return (X - mean) / np.where(std > 0, std, 1)


PARAMS = {"epochs": 3, "batch_size": 90, "optimizer": "adam", "learning_rate": 0.05, "test_fraction": 0.25,
          "seed": 5, "l2": 0.01, "approximation": "taylor", "label_epsilon": 0.0,
          "label_bits": 0.0}  # no label noise: exact, to match the references


def test_logistic_equals_the_plaintext_reference(two_parties) -> None:
    bank, bureau = two_parties
    align(bank, [bureau])
    states = train(bank, [bureau], "hetero-lr", PARAMS)
    df, (a_cols, p_cols) = joined(bank, [bureau])
    split = split_rows(len(df), PARAMS["test_fraction"], PARAMS["seed"],
                       ids=jobs.load_state(Workspace(bank), "al")[0].arrays["aligned_ids"])
    X = standardised(df[a_cols + p_cols].to_numpy(float), split.train)
    y = df["label"].to_numpy(float)
    ref = fit_logistic(X[split.train], y[split.train], make_optimizer("adam", lr=0.05, l2=0.01),
                       PARAMS["epochs"], PARAMS["batch_size"], PARAMS["seed"], fixed_batches=True)
    w_bank = states["bank"][0].arrays["weights"]
    w_bureau = states["bureau"][0].arrays["weights"]
    np.testing.assert_allclose(w_bank[:-1], ref.coef[: len(a_cols)], atol=1e-6)
    np.testing.assert_allclose(w_bank[-1], ref.intercept, atol=1e-6)
    np.testing.assert_allclose(w_bureau, ref.coef[len(a_cols):], atol=1e-6)
    results = states["bank"][0].results
    assert results["metrics"]["test"]["auc"] > 0.95
    # the loss A computed through the masked exchange equals the reference's Taylor loss
    assert len(results["history"]) == PARAMS["epochs"]
    aligned_rows = jobs.load_state(Workspace(bank), "al")[0].arrays["aligned_rows"]
    assert set(results["split"]["test_ids"]) == set(Workspace(bank).read_data()["id"].iloc[aligned_rows[split.test]])
    # the passive party learns no metrics and keeps only its own model part
    assert states["bureau"][0].results["metrics"] == {}
    assert set(states["bureau"][0].results["model"]["features"]) == set(p_cols)


def test_three_party_linear_equals_the_reference(tmp_path: Path) -> None:
    frames = {n: pd.read_csv(fate(f"motor_hetero_{n}.csv"), dtype={"idx": str}).sample(frac=0.5, random_state=1)
              for n in ("guest", "host_1", "host_2")}
    paths = {}
    for n, df in frames.items():
        paths[n] = tmp_path / f"{n}.csv"
        df.to_csv(paths[n], index=False)
    a = make_party(tmp_path, "plant", "active", paths["guest"], id_column="idx", label_column="motor_speed")
    p1 = make_party(tmp_path, "s1", "passive", paths["host_1"], id_column="idx")
    p2 = make_party(tmp_path, "s2", "passive", paths["host_2"], id_column="idx")
    introduce(tmp_path, "plant", "s1", "s2")
    align(a, [p1, p2])
    params = dict(PARAMS, epochs=2, l2=0.0, standardise_label=False)  # the reference's raw label
    params.pop("approximation")
    states = train(a, [p1, p2], "hetero-linear", params)
    df, (ca, c1, c2) = joined(a, [p1, p2])
    split = split_rows(len(df), params["test_fraction"], params["seed"],
                       ids=jobs.load_state(Workspace(a), "al")[0].arrays["aligned_ids"])
    X = standardised(df[ca + c1 + c2].to_numpy(float), split.train)
    y = df["motor_speed"].to_numpy(float)
    ref = fit_linear(X[split.train], y[split.train], make_optimizer("adam", lr=0.05),
                     params["epochs"], params["batch_size"], params["seed"], fixed_batches=True)
    got = np.concatenate([states["plant"][0].arrays["weights"][:-1], states["s1"][0].arrays["weights"],
                          states["s2"][0].arrays["weights"]])
    np.testing.assert_allclose(got, ref.coef, atol=1e-6)
    np.testing.assert_allclose(states["plant"][0].arrays["weights"][-1], ref.intercept, atol=1e-6)
    assert "rmse" in states["plant"][0].results["metrics"]["test"]


def centred_reference(XA: np.ndarray, XP: np.ndarray, y: np.ndarray, epochs: int, batch: int, seed: int,
                      lr: float, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy: the centred sigmoid linearisation with Adam, as the protocol runs it."""
    from vfl_cli.models.reference import fixed_minibatches, initial_intercept

    A = np.hstack([XA, np.ones((len(XA), 1))])
    wa, wp = np.zeros(A.shape[1]), np.zeros(XP.shape[1])
    wa[-1] = initial_intercept(y, binary=True)
    opt_a = make_optimizer("adam", lr=lr, l2=l2)
    opt_p = make_optimizer("adam", lr=lr, l2=l2)
    for epoch in range(epochs):
        for rows in fixed_minibatches(len(y), batch, seed=seed, epoch=epoch):
            a, u = A[rows] @ wa, XP[rows] @ wp
            p = 1 / (1 + np.exp(-a))
            d = p * (1 - p) * u + p - y[rows]
            mask = np.ones(len(wa), bool)
            mask[-1] = False
            wa = opt_a.step(wa, A[rows].T @ d / len(rows), mask=mask)
            wp = opt_p.step(wp, XP[rows].T @ d / len(rows))
    return wa, wp


@pytest.mark.parametrize(("three", "killed"), [(False, False), (True, False), (True, True)],
                         ids=["two-parties", "three-parties", "three-parties-killed-and-resumed"])
def test_centred_logistic_equals_its_plaintext_reference(tmp_path: Path, sample, monkeypatch, three: bool,
                                                         killed: bool) -> None:
    """Three parties with a per-row slope: each passive party holds its [[d]] while the other's
    part comes (wait-peers); killed every few commits, the resumed job ends the same."""
    bank = make_party(tmp_path, "bank", "active", sample("breast_active.csv"), label_column="label")
    passive = pd.read_csv(sample("breast_passive.csv"), dtype={"id": str})
    names = ["p1", "p2"] if three else ["p1"]
    column_sets = np.array_split(np.array([c for c in passive.columns if c != "id"]), len(names))
    parties = []
    for name, cols in zip(names, column_sets, strict=True):
        f = tmp_path / f"{name}.csv"
        passive[["id", *cols]].to_csv(f, index=False)
        parties.append(make_party(tmp_path, name, "passive", f))
    introduce(tmp_path, "bank", *names)
    align(bank, parties)
    params = dict(PARAMS, approximation="centred", epochs=2)
    if killed:
        jobs.start_job(Workspace(bank), "hetero-lr", {"alignment": "al", **params}, job="tr")
        drive_with_crashes([bank, *parties], "tr", monkeypatch, every=3, tries=400)
        states = {ws.name: jobs.load_state(Workspace(ws), "tr") for ws in [bank, *parties]}
    else:
        states = train(bank, parties, "hetero-lr", params)
    df, cols = joined(bank, parties)
    split = split_rows(len(df), params["test_fraction"], params["seed"],
                       ids=jobs.load_state(Workspace(bank), "al")[0].arrays["aligned_ids"])
    XA = standardised(df[cols[0]].to_numpy(float), split.train)[split.train]
    XP = standardised(df[[c for part in cols[1:] for c in part]].to_numpy(float), split.train)[split.train]
    wa, wp = centred_reference(XA, XP, df["label"].to_numpy(float)[split.train], 2, 90, params["seed"], 0.05, 0.01)
    np.testing.assert_allclose(states["bank"][0].arrays["weights"], wa, atol=1e-6)
    got_p = np.concatenate([states[n][0].arrays["weights"] for n in names])
    np.testing.assert_allclose(got_p, wp, atol=1e-6)
    # the Brier score A computed through the masked exchange is a probability-scale number
    assert 0 < states["bank"][0].results["history"][-1]["loss"] < 0.25


def test_no_artifact_carries_plaintext_rows(two_parties) -> None:
    bank, bureau = two_parties
    align(bank, [bureau])
    train(bank, [bureau], "hetero-lr", dict(PARAMS, epochs=1, batch_size=0))
    for ws in (bank, bureau):
        for f in (ws / "archive" / "sent").glob("tr.*.zip"):
            manifest = json.loads(__import__("zipfile").ZipFile(f).read("manifest.json"))
            for name, m in manifest["members"].items():
                # no plaintext array in any training message; only ciphertexts and masked values
                assert m["type"] in ("paillier", "masked"), (f.name, name, m["type"])


def _first(ws: Path, pattern: str) -> Path:
    return next((ws / "outbox").glob(pattern))


def test_stale_round_and_wrong_job_are_refused(two_parties) -> None:
    bank, bureau = two_parties
    align(bank, [bureau])
    jobs.start_job(Workspace(bank), "hetero-lr", {"alignment": "al", **dict(PARAMS, batch_size=0)}, job="tr")
    carry(bank, bureau)
    jobs.accept_job(Workspace(bureau), "tr")  # sends partial for round 0
    carry(bureau, bank)
    jobs.step(Workspace(bank), "tr")  # residual round 0
    residual = _first(bank, "*residual*")
    saved = residual.read_bytes()
    carry(bank, bureau)
    jobs.step(Workspace(bureau), "tr")
    carry(bureau, bank)
    jobs.step(Workspace(bank), "tr")  # reply round 0
    carry(bank, bureau)
    jobs.step(Workspace(bureau), "tr")  # update, partial round 1
    # an old residual delivered again is a replay: quarantined, never used
    (bureau / "inbox" / residual.name).write_bytes(saved)
    reports = jobs.step(Workspace(bureau), "tr")
    assert "replayed" in reports[0].rejected[0]["reason"] and not reports[0].received


def test_mismatched_alignment_is_refused(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    align(bank, [bureau])
    # bureau aligns again on its own copy of the job with another salt: a different row order
    jobs.start_job(Workspace(bank), "psi", {}, job="al2")
    drive([bank, bureau], "al2")
    state2, _ = jobs.load_state(Workspace(bureau), "al2")
    # swap bureau's alignment for the other job's result (same ids, other order and fingerprint)
    shutil.copy(bureau / "jobs" / "al2" / "arrays.npz", bureau / "jobs" / "al" / "arrays.npz")
    raw = json.loads((bureau / "jobs" / "al" / "state.json").read_text())
    raw["results"] = state2.results
    (bureau / "jobs" / "al" / "state.json").write_text(json.dumps(raw))
    jobs.start_job(Workspace(bank), "hetero-lr", {"alignment": "al", **PARAMS}, job="tr")
    carry(bank, bureau)
    jobs.accept_job(Workspace(bureau), "tr")
    carry(bureau, bank)
    reports = jobs.step(Workspace(bank), "tr")  # the partial is refused and quarantined
    assert "another alignment" in reports[0].rejected[0]["reason"] and not reports[0].sent


def test_bad_training_parameters_are_refused(two_parties) -> None:
    bank, _ = two_parties
    for params, message in [({}, "alignment="),
                            ({"alignment": "al", "optimizer": "lbfgs"}, "optimizer must be one of"),
                            ({"alignment": "al", "epochs": 0}, "epochs"),
                            ({"alignment": "al", "nope": 1}, "unknown training")]:
        args = ["-w", str(bank), "job", "start", "--protocol", "hetero-lr"]
        for k, v in params.items():
            args += ["--param", f"{k}={v}"]
        assert message in error_line(run(*args, ok=False))


def test_training_before_alignment_finishes_is_refused(two_parties) -> None:
    bank, _ = two_parties
    jobs.start_job(Workspace(bank), "psi", {}, job="al")
    message = error_line(run("-w", str(bank), "job", "start", "--protocol", "hetero-lr", "--param", "alignment=al",
                             ok=False))
    assert "not a finished alignment" in message
    assert len(list((bank / "jobs").iterdir())) == 1


def test_killed_and_resumed_training_finishes_identically(two_parties, monkeypatch) -> None:
    bank, bureau = two_parties
    align(bank, [bureau])
    params = dict(PARAMS, epochs=2)
    jobs.start_job(Workspace(bank), "hetero-lr", {"alignment": "al", **params}, job="tr")
    drive_with_crashes([bank, bureau], "tr", monkeypatch, every=5, tries=400)
    resumed = jobs.load_state(Workspace(bank), "tr")[0].arrays["weights"]
    # the same training without interruptions, in fresh workspaces of the same parties
    df, (a_cols, p_cols) = joined(bank, [bureau])
    split = split_rows(len(df), params["test_fraction"], params["seed"],
                       ids=jobs.load_state(Workspace(bank), "al")[0].arrays["aligned_ids"])
    X = standardised(df[a_cols + p_cols].to_numpy(float), split.train)
    ref = fit_logistic(X[split.train], df["label"].to_numpy(float)[split.train],
                       make_optimizer("adam", lr=0.05, l2=0.01), 2, 90, params["seed"], fixed_batches=True)
    np.testing.assert_allclose(resumed[:-1], ref.coef[: len(a_cols)], atol=1e-6)
    for ws in (bank, bureau):
        assert json.loads(run("-w", str(ws), "audit", "verify", "--json").stdout)["ok"]


def test_whitened_linear_equals_its_reference_and_predicts(tmp_path: Path) -> None:
    from vfl_cli.models.features import Whitener

    frames = {n: pd.read_csv(fate(f"motor_hetero_{n}.csv"), dtype={"idx": str}).sample(frac=0.4, random_state=2)
              for n in ("guest", "host_1")}
    paths = {}
    for n, df in frames.items():
        paths[n] = tmp_path / f"{n}.csv"
        df.to_csv(paths[n], index=False)
    a = make_party(tmp_path, "plant", "active", paths["guest"], id_column="idx", label_column="motor_speed")
    p = make_party(tmp_path, "s1", "passive", paths["host_1"], id_column="idx")
    introduce(tmp_path, "plant", "s1")
    align(a, [p])
    params = {"epochs": 3, "batch_size": 0, "optimizer": "sgd", "learning_rate": 0.5, "momentum": 0.5,
              "test_fraction": 0.25, "seed": 3, "whiten": True, "standardise_label": False}
    states = train(a, [p], "hetero-linear", params)
    df, (ca, cp) = joined(a, [p])
    split = split_rows(len(df), params["test_fraction"], params["seed"],
                       ids=jobs.load_state(Workspace(a), "al")[0].arrays["aligned_ids"])
    blocks = [Whitener.fit(df[c].to_numpy(float)[split.train]).transform(df[c].to_numpy(float)) for c in (ca, cp)]
    X = np.hstack(blocks)
    y = df["motor_speed"].to_numpy(float)
    ref = fit_linear(X[split.train], y[split.train], make_optimizer("sgd", lr=0.5, momentum=0.5), 3, None,
                     params["seed"])
    got = np.concatenate([states["plant"][0].arrays["weights"][:-1], states["s1"][0].arrays["weights"]])
    np.testing.assert_allclose(got, ref.coef, atol=1e-6)
    # whitened columns are uncorrelated on the training rows
    cov = np.cov(blocks[0][split.train].T, bias=True)
    np.testing.assert_allclose(cov, np.eye(len(ca)), atol=1e-6)
    # prediction reuses the saved whitening
    jobs.start_job(Workspace(a), "predict", {"model": "tr", "alignment": "al"}, job="pr")
    drive([a, p], "pr")
    scores = jobs.load_state(Workspace(a), "pr")[0].arrays["scores"]
    np.testing.assert_allclose(scores, X @ ref.coef + ref.intercept, atol=1e-5)


# ----- label noise (issue #14: calibrated noise on what the passive parties see) -----------------


@settings(max_examples=60, deadline=None)
@given(eps=st.floats(0.05, 50.0), delta=st.floats(1e-9, 1e-2), epochs=st.integers(1, 500),
       clip=st.floats(0.1, 100.0))
def test_label_noise_is_calibrated_to_its_epsilon(eps: float, delta: float, epochs: int, clip: float) -> None:
    params = {"label_epsilon": eps, "label_delta": delta, "epochs": epochs, "label_clip": clip}
    sigma = hl.label_noise_sigma(params, True)
    # the noise planned for `epochs` releases per row spends exactly label_epsilon ...
    assert hl.label_epsilon_spent(params, True, epochs) == pytest.approx(eps, rel=1e-9)
    # ... and less when training stops early; more noise for more epochs
    assert hl.label_epsilon_spent(params, True, max(1, epochs // 2)) <= eps * (1 + 1e-12)
    assert hl.label_noise_sigma(dict(params, epochs=epochs + 1), True) > sigma
    # regression offsets are clipped to +-clip, so a label moves one by up to 2 clip
    assert hl.label_noise_sigma(params, False) == pytest.approx(2 * clip * sigma)
    assert hl.label_noise_sigma(dict(params, label_epsilon=0.0), True) == 0.0


def test_label_noise_known_answer() -> None:
    # one release, epsilon 1, delta 1e-5: zCDP rho = (sqrt(ln 1e5 + 1) - sqrt(ln 1e5))^2 = 0.020820,
    # sigma = sqrt(1 / (2 rho)) = 4.9006 (the classic Gaussian mechanism's bound would be 4.845)
    params = {"label_epsilon": 1.0, "label_delta": 1e-5, "epochs": 1, "label_clip": 1.0}
    assert hl.label_noise_sigma(params, True) == pytest.approx(4.9006, abs=1e-3)


def test_label_noise_reaches_the_passive_party_only(two_parties) -> None:
    bank, bureau = two_parties
    align(bank, [bureau])
    params = dict(PARAMS, batch_size=0, epochs=2, approximation="centred", l2=0.0)
    exact = train(bank, [bureau], "hetero-lr", params, job="t0")
    noisy = train(bank, [bureau], "hetero-lr", dict(params, label_epsilon=4.0), job="t1")
    privacy = noisy["bank"][0].results["privacy"]
    assert privacy["releases_per_row"] == 2 and privacy["label_epsilon"] == pytest.approx(4.0)
    noisy_params = noisy["bank"][0].results["model"]["params"]
    assert privacy["label_noise_sigma"] == pytest.approx(hl.label_noise_sigma(noisy_params, True))
    assert exact["bank"][0].results["privacy"]["label_epsilon"] == 0.0
    # the passive party trained on noisy residuals; the noise came from A's own CSPRNG
    w0, w1 = exact["bureau"][0].arrays["weights"], noisy["bureau"][0].arrays["weights"]
    assert np.abs(w0 - w1).max() > 1e-3
    # the cost on test AUC is small at this epsilon
    assert noisy["bank"][0].results["metrics"]["test"]["auc"] > 0.9
    # the HTML report states what the job spent
    from vfl_cli.report import build_report

    assert "label_epsilon 4 spent (delta 1e-05)" in build_report(Workspace(bank), "t1")
    assert "label noise off" in build_report(Workspace(bank), "t0")


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 3000), batch=st.integers(1, 3000), seed=st.integers(0, 2**31), epoch=st.integers(0, 50))
def test_fixed_minibatches_keep_their_rows_and_are_never_small(n: int, batch: int, seed: int, epoch: int) -> None:
    from vfl_cli.models.reference import fixed_minibatches

    batches = fixed_minibatches(n, batch, seed=seed, epoch=epoch)
    assert np.array_equal(np.sort(np.concatenate(batches)), np.arange(n))  # every row once
    assert min(len(b) for b in batches) >= min(batch, n)  # the remainder joins a batch
    # the same rows make up the same batches in every epoch; only their order changes
    other = fixed_minibatches(n, batch, seed=seed, epoch=epoch + 1)
    assert sorted(map(tuple, map(np.sort, batches))) == sorted(map(tuple, map(np.sort, other)))


def test_label_noise_is_on_by_default_for_hetero_lr_only() -> None:
    defaults = hl.check_params({"alignment": "al"})
    assert defaults["label_bits"] == 0.5 and defaults["label_epsilon"] == 0.0
    # hetero-lr: label_bits 0.5 over the default 10 epochs, breast's 455 training rows and 20
    # passive columns: 2^(2 * 0.5 * 455 / (10 * 20)) - 1 = 3.840, sigma = 1 / (2 sqrt(3.840))
    assert hl.label_noise_sigma(defaults, True, 455, 20) == pytest.approx(0.25515, abs=1e-4)
    # without the batch's shape (rows, columns) the information rule has nothing to size
    assert hl.label_noise_sigma(defaults, True) == 0.0
    # formal label DP stays available: epsilon 8 over 10 epochs is sigma 2.18, the larger rule wins
    assert hl.label_noise_sigma(dict(defaults, label_epsilon=8.0), True, 455, 20) == pytest.approx(2.1831, abs=1e-3)
    # hetero-linear: a target has no natural range, so no noise until label_clip is set
    assert hl.label_noise_sigma(defaults, False, 455, 20) == 0.0
    assert hl.label_noise_sigma(dict(defaults, label_epsilon=8.0, label_clip=5.0), False) == pytest.approx(
        10 * 2.1831, abs=1e-2)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(64, 100_000), columns=st.integers(1, 200), epochs=st.integers(1, 200),
       fraction=st.floats(0.01, 0.99))
def test_label_bits_bound_holds_at_the_cap(rows: int, columns: int, epochs: int, fraction: float) -> None:
    """Over `epochs` releases the gradients of `columns` columns carry at most `label_bits` of the
    batch's label bits (exactly that, up to rounding, when every epoch runs)."""
    columns = min(columns, rows // 4)  # the batch bound
    params = {"label_bits": fraction, "epochs": epochs, "label_epsilon": 0.0}
    sigma = hl.label_noise_sigma(params, True, rows, max(1, columns))
    bits = hl.label_information_bits(sigma, epochs, max(1, columns))
    assert sigma > 0 and bits <= fraction * rows * (1 + 1e-6)
    assert hl.label_information_bits(sigma, max(1, epochs // 2), max(1, columns)) <= bits


# ----- typed party state (the protocol kit) --------------------------------------------------------


def test_passive_state_round_trips_with_its_held_parts_and_leaves_nothing_behind() -> None:
    """A passive party's state, with its gradient mask and its held [[d]] and answers to A, is
    written in the job-state layout older versions wrote (so a job started before resumes), reads
    back equal, and a state without them removes every key they used."""
    from vfl_cli.artifacts.container import Member
    from vfl_cli.crypto import paillier
    from vfl_cli.protocol.base import JobState
    from vfl_cli.protocol.wire import ints_member

    pub, _ = paillier.generate_keypair(512)
    d = paillier.encrypt(pub, np.array([0.5, -1.25, 2.0]))
    _, mask = paillier.mask(paillier.encrypt(pub, np.array([1.0, 2.0])), value_bits=60, stat_bits=40)
    answer = (ints_member("grad_reply", [3, 5], pub.n), Member("loss_reply", "masked", b"\x01\x02", {"count": 2}))
    held = hl.Held(d.to_bytes(), d.shape, d.exponent, answer, 2)
    st = hl.PassiveState(t=4, epoch=1, batch=1, weights=np.array([0.1, 0.2]), columns={"bank": 11},
                         label_sigma=0.25, grad_mask=mask, held=held)
    job = JobState()
    st.store(job)
    assert {"stash_d", "member_grad_reply", "member_loss_reply", "weights"} <= set(job.arrays)
    assert job.data["stashed_members"]["meta"] == {"epoch": 1, "batch": 1, "grad_count": 2}
    assert job.data["grad_mask"]["n"] == format(pub.n, "x") and "held" not in job.data
    back = hl.PassiveState.load(job)
    assert back.held == held and back.grad_mask == mask and back.columns == {"bank": 11}
    assert np.array_equal(back.w, st.w) and (back.t, back.epoch, back.batch) == (4, 1, 1)
    assert paillier.EncryptedArray.from_bytes(pub, back.held.d, back.held.shape, back.held.exponent).shape == (3,)
    back.but(held=None, grad_mask=None).store(job)
    assert not {"stash_d", "member_grad_reply", "member_loss_reply"} & set(job.arrays)
    assert not {"stash_d", "stashed_members", "grad_mask", "held"} & set(job.data)
    assert hl.PassiveState.load(job).held is None


def test_active_state_round_trips_its_loss_mask() -> None:
    from vfl_cli.crypto import paillier
    from vfl_cli.protocol.base import JobState

    pub, _ = paillier.generate_keypair(512)
    (_, _), lm = hl.loss_request(np.random.default_rng(1), paillier.encrypt(pub, np.arange(5.0)), 0.25,
                                 np.ones(5), 3)
    st = hl.ActiveState(loss_mask=lm, peer_converged={"bureau": True}, history=[{"epoch": 0, "loss": 0.5}])
    job = JobState()
    st.store(job)
    assert set(job.data["loss_mask"]) == {"s", "cross", "exponent", "count"} and job.data["loss_mask"]["count"] == 3
    back = hl.ActiveState.load(job)
    assert back.loss_mask == lm and back.peer_converged == {"bureau": True} and back.history == st.history
    back.but(loss_mask=None).store(job)
    assert "loss_mask" not in job.data and hl.ActiveState.load(job).loss_mask is None


def test_position_advances_through_batches_and_epochs() -> None:
    st = hl.PassiveState()
    seen = []
    for _ in range(5):
        st = st.advanced(2)
        seen.append((st.t, st.epoch, st.batch))
    assert seen == [(1, 0, 1), (2, 1, 0), (3, 1, 1), (4, 2, 0), (5, 2, 1)]


def test_p1_answers_a_s_requests_and_a_reads_its_exact_gradient_and_loss() -> None:
    """The pure steps of one round between A and P1, without files: A's masked gradient and loss
    requests, P1's answer (decrypted, still masked), and what A reads from it."""
    from vfl_cli.crypto import paillier
    from vfl_cli.errors import InvalidArtifact
    from vfl_cli.protocol.wire import sent_digests

    k1, p1_key = paillier.generate_keypair(512)
    rng = np.random.default_rng(3)
    X, U, offset = rng.normal(size=(20, 3)), rng.normal(size=20), rng.normal(size=20)
    enc_u = paillier.encrypt(k1, U)
    for slope in (0.25, rng.uniform(0.1, 0.25, size=20)):
        request, mask = hl.active_request(X, slope, offset, enc_u)
        loss, lm = hl.loss_request(rng, enc_u, slope, offset, 256)
        res = hl.Residual(0, 0, 3, 0.0, paillier.encrypt(k1, offset), None, request, loss)
        grad_reply, loss_reply = hl.answer_active(p1_key, res, 3, None, 20, {"loss_sample": 256}, "bank")
        ints = [[int.from_bytes(m.data[i:i + m.info["width"]], "big")
                 for i in range(0, len(m.data), m.info["width"])] for m in (grad_reply, loss_reply)]
        d = slope * U + offset
        np.testing.assert_allclose(paillier.unmask(ints[0], mask), X.T @ d, atol=1e-8)
        assert hl.mean_square_from_reply(ints[1], lm) == pytest.approx(np.mean(d**2), abs=1e-9)
        # P1 never decrypts what it sent itself: its own partial scores in A's request are refused
        sent = sent_digests([enc_u.to_bytes()], k1.width)
        echo = hl.Residual(0, 0, 3, 0.0, res.offset, None, request, (enc_u, loss[1]))
        with pytest.raises(InvalidArtifact, match="the loss request from bank holds ciphertexts"):
            hl.answer_active(p1_key, echo, 3, sent, 20, {"loss_sample": 256}, "bank")


def motor_parties(tmp_path: Path, rows: int) -> tuple[Path, list[Path]]:
    frames = {n: pd.read_csv(fate(f"motor_hetero_{n}.csv"), dtype={"idx": str}).sample(n=rows, random_state=2)
              for n in ("guest", "host_1", "host_2")}
    for n, df in frames.items():
        df.to_csv(tmp_path / f"{n}.csv", index=False)
    a = make_party(tmp_path, "plant", "active", tmp_path / "guest.csv", id_column="idx", label_column="motor_speed")
    p1 = make_party(tmp_path, "s1", "passive", tmp_path / "host_1.csv", id_column="idx")
    p2 = make_party(tmp_path, "s2", "passive", tmp_path / "host_2.csv", id_column="idx")
    introduce(tmp_path, "plant", "s1", "s2")
    align(a, [p1, p2])
    return a, [p1, p2]


@pytest.mark.parametrize("epochs", [4, 20])
def test_default_block_cg_job_equals_the_block_replay(tmp_path: Path, epochs: int) -> None:
    """hetero-linear's default at full batch (block CG, three parties: the trial point, the
    curvature P1 squares, alpha and beta) is what reference.fit_linear_blocks(method="cg")
    replays: weights, exchanges run and the stop test, so the replay's motor figures
    (bench_defaults_replay.py) stand for the protocol's."""
    from vfl_cli.models.reference import fit_linear_blocks

    a, (p1, p2) = motor_parties(tmp_path, 300)
    params = {"epochs": epochs, "test_fraction": 0.25, "seed": 11}
    assert hl.optimizer_name({**hl.DEFAULTS, **params}, linear=True) == "cg"
    states = train(a, [p1, p2], "hetero-linear", params)
    df, cols = joined(a, [p1, p2])
    ids = jobs.load_state(Workspace(a), "al")[0].arrays["aligned_ids"]
    tr = split_rows(len(df), params["test_fraction"], params["seed"], ids=ids).train
    y = df["motor_speed"].to_numpy(float)[tr]
    blocks = [standardised(df[c].to_numpy(float), tr)[tr] for c in cols]
    ref = fit_linear_blocks(blocks, (y - y.mean()) / y.std(), epochs=epochs, method="cg")
    got = np.concatenate([states["plant"][0].arrays["weights"][:-1], states["s1"][0].arrays["weights"],
                          states["s2"][0].arrays["weights"]])
    np.testing.assert_allclose(got, ref.coef, atol=1e-6)
    assert states["plant"][0].arrays["weights"][-1] == pytest.approx(ref.intercept, abs=1e-6)
    model = states["plant"][0].results["model"]
    assert model["epochs_run"] == ref.exchanges and model["converged"] is ref.converged
    # the loss A measured under the masks is the replay's (at the weights each exchange starts from)
    history = states["plant"][0].results["history"]
    assert [h["loss"] / 2 for h in history] == pytest.approx([ref.loss_history[0], *ref.loss_history[:-1]], rel=1e-6)
    if epochs == 20:
        assert ref.converged and ref.exchanges < epochs  # the stop test ran, before the cap


def test_block_cg_is_refused_where_it_does_not_apply() -> None:
    """optimizer = "cg" minimises the squared loss exactly at full batch: hetero-lr, mini-batches,
    penalties and label noise are refused at proposal (and acceptance: the same check); auto
    falls back to newton there."""
    from vfl_cli.errors import VflError

    linear, logistic = hl.HeteroLinear(), hl.HeteroLogistic()
    ok = linear.check_params({"alignment": "al", "optimizer": "cg"}, [])
    assert linear.cg(ok) and not linear.cg({**ok, "optimizer": "newton"})
    refused = [({"batch_size": 64}, "full batch"), ({"l2": 0.1}, "penalty"), ({"l1": 0.1}, "penalty"),
               ({"label_epsilon": 1.0, "label_clip": 2.0}, "label noise")]
    for extra, why in refused:
        with pytest.raises(VflError, match=why):
            linear.check_params({"alignment": "al", "optimizer": "cg", **extra}, [])
        auto = linear.check_params({"alignment": "al", **extra}, [])
        assert hl.optimizer_name(auto, linear=True) == ("adam" if "batch_size" in extra else "newton")
    with pytest.raises(VflError, match="hetero-linear"):
        logistic.check_params({"alignment": "al", "optimizer": "cg"}, [])
    assert not logistic.cg(logistic.check_params({"alignment": "al"}, []))


def test_p1_squares_the_cg_direction_on_every_row_and_refuses_echoes() -> None:
    """Block CG's curvature request: A's masked direction scores on every row; P1's ``[Q, cross]``
    gives A ``||X p||^2 / n`` exactly. P1 refuses a request that is not one value per row (a
    sample would make alpha inexact, a single row would be one score squared) and one that holds
    its own ``[[X_1 z_1]]`` ciphertexts."""
    from vfl_cli.crypto import paillier
    from vfl_cli.errors import InvalidArtifact
    from vfl_cli.protocol.wire import sent_digests

    k1, p1_key = paillier.generate_keypair(512)
    rng = np.random.default_rng(5)
    n, X = 30, rng.normal(size=(30, 2))
    z, prev, own = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    enc_z, enc_p, beta = paillier.encrypt(k1, z), paillier.encrypt(k1, prev), 0.37
    scores = enc_p * beta - enc_z
    curv, cm = hl.loss_request(rng, scores, 1, own, n)
    request, _ = hl.active_request(X, 1.0, own, scores)
    res = hl.Residual(1, 0, 2, 0.0, paillier.encrypt(k1, own), None, request, None, beta, curv)
    members = hl.answer_active(p1_key, res, 2, None, n, {"loss_sample": 256}, "plant")
    reply = next(m for m in members if m.name == "curv_reply")
    ints = [int.from_bytes(reply.data[i:i + reply.info["width"]], "big")
            for i in range(0, len(reply.data), reply.info["width"])]
    direction = own + beta * prev - z
    assert hl.mean_square_from_reply(ints, cm) == pytest.approx(direction @ direction / n, rel=1e-9)
    short, _ = hl.loss_request(rng, scores, 1, own, n - 1)
    with pytest.raises(InvalidArtifact, match="the curvature request from plant has the wrong size"):
        hl.answer_active(p1_key, dataclasses.replace(res, curvature=short), 2, None, n, {"loss_sample": 256}, "plant")
    sent = sent_digests([enc_z.to_bytes()], k1.width)
    echo = dataclasses.replace(res, curvature=(enc_z, curv[1]))
    with pytest.raises(InvalidArtifact, match="the curvature request from plant holds ciphertexts"):
        hl.answer_active(p1_key, echo, 2, sent, n, {"loss_sample": 256}, "plant")
