"""Split neural networks: the encrypted protocol equals a plaintext reference, masking, resume,
refusals. Jobs run in-process through the job engine with 512-bit keys on small data."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import carry, drive_with_crashes, fate, introduce, make_party, run
from test_protocol_hetero_linear import align, drive, standardised

from vfl_cli import jobs
from vfl_cli.errors import VflError
from vfl_cli.models import split_spec as ss
from vfl_cli.models.features import split_rows
from vfl_cli.protocol import split_nn
from vfl_cli.protocol.split_nn import check_params
from vfl_cli.workspace import Workspace

SPEC = {
    "head": "binary",
    "active": [{"type": "dense", "units": 3, "init": "he"}, {"type": "relu"}],
    "passive": [{"type": "dense", "units": 3, "init": "he"}, {"type": "tanh"}, {"type": "dropout", "rate": 0.2}],
    "interactive": {"units": 3},
    "top": [{"type": "relu"}, {"type": "dense", "units": 1}],
}
#: The parties' private seeds, injected through the test-only hook so the reference can match.
SEEDS = (1111, 2222)


@pytest.fixture(autouse=True)
def known_private_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(split_nn, "private_seed", lambda role: SEEDS[role == "passive"])


PARAMS = {"epochs": 2, "batch_size": 40, "optimizer": "adam", "learning_rate": 0.05, "l2": 0.01,
          "interactive_lr": 0.1, "interactive_momentum": 0.9, "test_fraction": 0.25, "seed": 3}


def small_parties(tmp_path: Path, active_csv: Path, passive_csv: Path, label: str, rows: int,
                  id_column: str = "id") -> tuple[Path, Path]:
    a = pd.read_csv(active_csv, dtype={id_column: str}).head(rows)
    p = pd.read_csv(passive_csv, dtype={id_column: str})
    p = p[p[id_column].isin(a[id_column])]
    a.to_csv(tmp_path / "a.csv", index=False)
    p.to_csv(tmp_path / "p.csv", index=False)
    bank = make_party(tmp_path, "bank", "active", tmp_path / "a.csv", id_column=id_column, label_column=label)
    bureau = make_party(tmp_path, "bureau", "passive", tmp_path / "p.csv", id_column=id_column)
    introduce(tmp_path, "bank", "bureau")
    align(bank, [bureau])
    return bank, bureau


def joined(active: Path, passives: list[Path]) -> tuple[pd.DataFrame, list[list[str]]]:
    """The aligned rows side by side, columns prefixed by party (FATE's files share names)."""
    frames, cols = [], []
    for ws in [active, *passives]:
        w = Workspace(ws)
        state, _ = jobs.load_state(w, "al")
        df = w.read_data().iloc[state.arrays["aligned_rows"]].reset_index(drop=True)
        df = df[w.features + ([w.label_column] if w.label_column else [])]
        df.columns = [f"{ws.name}:{c}" if c in w.features else c for c in df.columns]
        frames.append(df)
        cols.append([f"{ws.name}:{c}" for c in w.features])
    return pd.concat(frames, axis=1), cols


def train(bank: Path, bureau: Path, params: dict, job: str = "tr") -> dict:
    jobs.start_job(Workspace(bank), "split-nn", {"alignment": "al", **params}, job=job)
    drive([bank, bureau], job)
    return {ws.name: jobs.load_state(Workspace(ws), job)[0] for ws in (bank, bureau)}


def reference(bank: Path, bureau: Path, params: dict, label: str) -> tuple[ss.SplitModel, list[float], np.ndarray]:
    full = dict(check_params({"alignment": "al", **params}, [{"role": "active"}, {"role": "passive"}]))
    df, (a_cols, p_cols) = joined(bank, [bureau])
    split = split_rows(len(df), full["test_fraction"], full["seed"],
                       ids=jobs.load_state(Workspace(bank), "al")[0].arrays["aligned_ids"])
    XA = standardised(df[a_cols].to_numpy(float), split.train)
    XP = standardised(df[p_cols].to_numpy(float), split.train)
    y = df[label].to_numpy(float)
    model, history = ss.central_fit(ss.parse_spec(full["model"]), XA[split.train], XP[split.train],
                                    y[split.train], full, seeds=SEEDS)
    return model, history, model.predict(XA[split.test], XP[split.test])


def shares_sum(a: Any, p: Any) -> np.ndarray:
    """``W_P = U + V`` from the two parties' job states (exact integers at 2^-64)."""
    total = split_nn.share_ints(a) + split_nn.share_ints(p)
    return np.array([float(v) for v in total.flat]).reshape(total.shape) / 2.0**64


def test_binary_equals_the_plaintext_reference(tmp_path: Path, sample) -> None:
    bank, bureau = small_parties(tmp_path, sample("breast_active.csv"), sample("breast_passive.csv"), "label", 120)
    params = dict(PARAMS, model=SPEC)
    states = train(bank, bureau, params)
    model, history, _ = reference(bank, bureau, params, "label")
    a, p = states["bank"], states["bureau"]
    # the shares of W_P (exact integers at 2^-64) sum to the reference's W_P; each alone is far
    # from it: noised by 2^40 times the gradient's public bound, so about 2^60 in value
    np.testing.assert_allclose(shares_sum(a, p), model.W_P, atol=1e-6)
    assert min(abs(int(v)) for v in split_nn.share_ints(p).flat) > 2**(64 + 40)
    np.testing.assert_allclose(a.arrays["W_A"], model.W_A, atol=1e-6)
    np.testing.assert_allclose(a.arrays["b"], model.b, atol=1e-6)
    np.testing.assert_allclose(a.arrays["net_top"], model.top.get_flat(), atol=1e-6)
    np.testing.assert_allclose(a.arrays["net_active"], model.bottom_a.get_flat(), atol=1e-6)
    np.testing.assert_allclose(p.arrays["net_passive"], model.bottom_p.get_flat(), atol=1e-6)
    np.testing.assert_allclose([h["loss"] for h in a.results["history"]], history, atol=1e-6)
    assert 0.5 < a.results["metrics"]["test"]["auc"] <= 1.0
    n = len(joined(bank, [bureau])[0])
    assert len(a.results["split"]["test_ids"]) == round(n * 0.25)
    # model cards: which party computes each layer, plaintext or ciphertext
    layers = a.results["model"]["layers"]
    assert [row["mode"] for row in layers].count("ciphertext") == 1
    assert {row["party"] for row in layers if row["part"] == "bottom"} == {"bank", "bureau"}
    assert p.results["metrics"] == {}
    # vfl model show prints that table
    shown = run("-w", str(bank), "model", "show", "tr")
    text = shown.stdout + shown.stderr
    assert "ciphertext" in text and "interactive" in text and "bureau" in text
    assert json.loads(run("-w", str(bureau), "model", "show", "tr", "--json").stdout)["layers"][0]["party"] == "bank"


def test_multiclass_equals_the_plaintext_reference(tmp_path: Path) -> None:
    bank, bureau = small_parties(tmp_path, fate("vehicle_scale_hetero_guest.csv"),
                                 fate("vehicle_scale_hetero_host.csv"), "y", 100)
    spec = {"head": "multiclass", "passive": [{"type": "dense", "units": 3}, {"type": "sigmoid"}],
            "interactive": {"units": 4}, "top": [{"type": "tanh"}, {"type": "dense", "units": 4}]}
    params = dict(PARAMS, model=spec, epochs=1, optimizer="sgd", momentum=0.5, learning_rate=0.1, l2=0.0)
    states = train(bank, bureau, params)
    model, _history, proba = reference(bank, bureau, params, "y")
    a, p = states["bank"], states["bureau"]
    np.testing.assert_allclose(shares_sum(a, p), model.W_P, atol=1e-6)
    np.testing.assert_allclose(a.arrays["W_A"], model.W_A, atol=1e-6)  # no active bottom: raw features
    np.testing.assert_allclose(p.arrays["net_passive"], model.bottom_p.get_flat(), atol=1e-6)
    metrics = a.results["metrics"]["test"]
    df, _ = joined(bank, [bureau])
    split = split_rows(len(df), 0.25, PARAMS["seed"],
                       ids=jobs.load_state(Workspace(bank), "al")[0].arrays["aligned_ids"])
    assert metrics["accuracy"] == pytest.approx(float(np.mean(proba.argmax(1) == df["y"].to_numpy()[split.test])))


def test_no_artifact_carries_plaintext_values(tmp_path: Path, sample) -> None:
    bank, bureau = small_parties(tmp_path, sample("breast_active.csv"), sample("breast_passive.csv"), "label", 60)
    train(bank, bureau, dict(PARAMS, model=SPEC, epochs=1, batch_size=0))
    kinds = set()
    for ws in (bank, bureau):
        for f in (ws / "archive" / "sent").glob("tr.*.zip"):
            manifest = json.loads(zipfile.ZipFile(f).read("manifest.json"))
            kinds.add(manifest["kind"])
            for name, m in manifest["members"].items():
                # only ciphertexts and masked integers: no ndarray of per-sample values
                assert m["type"] in ("paillier", "masked"), (f.name, name, m["type"])
    assert {"split/forward", "split/activation-request", "split/activation", "split/backward"} <= kinds


def test_killed_and_resumed_training_finishes_identically(tmp_path: Path, sample, monkeypatch) -> None:
    bank, bureau = small_parties(tmp_path, sample("breast_active.csv"), sample("breast_passive.csv"), "label", 80)
    params = dict(PARAMS, model=SPEC, epochs=1)
    jobs.start_job(Workspace(bank), "split-nn", {"alignment": "al", **params}, job="tr")
    drive_with_crashes([bank, bureau], "tr", monkeypatch, every=3, tries=200)
    model, _, _ = reference(bank, bureau, params, "label")
    a = jobs.load_state(Workspace(bank), "tr")[0]
    p = jobs.load_state(Workspace(bureau), "tr")[0]
    np.testing.assert_allclose(shares_sum(a, p), model.W_P, atol=1e-6)
    np.testing.assert_allclose(a.arrays["W_A"], model.W_A, atol=1e-6)


@pytest.mark.parametrize("model, message", [
    ({"passive": [{"type": "conv", "units": 3}]}, "unknown type 'conv'"),
    ({"top": [{"type": "dense", "units": 2}]}, "the binary head needs 1 output"),
    ({"top": [{"type": "relu", "mode": "ciphertext"}]}, "top layers are plaintext layers"),
    ({"interactive": {"units": 4, "mode": "plaintext"}}, "must be a ciphertext layer"),
    ({"interactive": {"units": 0}}, "units must be a whole number >= 1"),
    ({"bottom": []}, "unknown key(s) ['bottom']"),
])
def test_bad_specs_are_refused_with_one_clear_error(model: dict, message: str) -> None:
    with pytest.raises(VflError) as err:
        check_params({"alignment": "al", "model": model}, [{"role": "active"}, {"role": "passive"}])
    assert message in str(err.value)


def test_class_count_mismatch_is_refused(tmp_path: Path) -> None:
    bank, _bureau = small_parties(tmp_path, fate("vehicle_scale_hetero_guest.csv"),
                                 fate("vehicle_scale_hetero_host.csv"), "y", 40)
    spec = {"head": "multiclass", "top": [{"type": "dense", "units": 3}]}
    with pytest.raises(VflError, match="the labels hold 4 classes"):
        jobs.start_job(Workspace(bank), "split-nn", {"alignment": "al", "model": spec}, job="tr")


def test_each_party_draws_its_secrets_from_its_own_private_seed(tmp_path: Path, sample,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the test hook: each party's seed is its own 128-bit draw, kept in its job state;
    the job equals the reference built from those two seeds, and not the one from the job's seed."""
    monkeypatch.undo()  # production's private_seed
    bank, bureau = small_parties(tmp_path, sample("breast_active.csv"), sample("breast_passive.csv"), "label", 60)
    params = dict(PARAMS, model=SPEC, epochs=1)
    states = train(bank, bureau, params)
    sa, sp = (int(states[n].data["private_seed"], 16) for n in ("bank", "bureau"))
    assert sa != sp and max(sa, sp) > 2**64
    full = dict(check_params({"alignment": "al", **params}, [{"role": "active"}, {"role": "passive"}]))
    df, (a_cols, p_cols) = joined(bank, [bureau])
    split = split_rows(len(df), full["test_fraction"], full["seed"],
                       ids=jobs.load_state(Workspace(bank), "al")[0].arrays["aligned_ids"])
    XA = standardised(df[a_cols].to_numpy(float), split.train)[split.train]
    XP = standardised(df[p_cols].to_numpy(float), split.train)[split.train]
    y = df["label"].to_numpy(float)[split.train]
    spec = ss.parse_spec(full["model"])
    own, _ = ss.central_fit(spec, XA, XP, y, full, seeds=(sa, sp))
    public, _ = ss.central_fit(spec, XA, XP, y, full)
    a, p = states["bank"], states["bureau"]
    np.testing.assert_allclose(shares_sum(a, p), own.W_P, atol=1e-6)
    np.testing.assert_allclose(a.arrays["net_top"], own.top.get_flat(), atol=1e-6)
    assert np.abs(a.arrays["net_top"] - public.top.get_flat()).max() > 1e-3
    assert "private_seed" not in json.dumps(a.results) + json.dumps(p.results)


def test_the_two_initial_shares_are_independent_and_neither_is_the_weights() -> None:
    spec = ss.parse_spec(SPEC)
    U0, V0 = ss.initial_share(spec, 3, 11), ss.initial_share(spec, 3, 12)
    _, W_P0 = ss.initial_interactive(spec, 3, 3, (11, 12))
    np.testing.assert_array_equal(U0 + V0, W_P0)
    assert np.abs(U0 - W_P0).min() > 0 and np.abs(V0 - W_P0).min() > 0
    # A's share does not depend on P's draw: another passive seed changes W_P0 by V0's change only
    _, other = ss.initial_interactive(spec, 3, 3, (11, 13))
    np.testing.assert_allclose(other - W_P0, ss.initial_share(spec, 3, 13) - V0, atol=1e-15)


def test_the_slot_layout_is_public_and_a_key_too_small_is_refused() -> None:
    """Widths depend only on the key size, P's output width and the public params."""
    params = {"interactive_lr": 0.5, "interactive_momentum": 0.9}
    share_bits, width, slots = split_nn.layout(2048, 2, params)
    assert (share_bits, width, slots) == (133, 220, 9)
    # the mask R is 2^40 wider than the bound of |h U|: h < 2^44 units, U < 2^share_bits, k terms
    assert width - 2 == 44 + share_bits + 1 + split_nn.STAT_BITS
    assert split_nn.RHO_BITS == split_nn.GRAD_BITS + 64 + split_nn.STAT_BITS
    with pytest.raises(VflError, match="use key_bits >= 256"):
        split_nn.layout(200, 2, params)


def test_a_gradient_above_its_public_bound_is_refused_before_anything_is_sent() -> None:
    """A sizes the noise on the gradient of W_P for |slot| < 2^20; a batch that may exceed it
    (2^12 sum |delta| over a slot's rows) ends the job with an error instead of a thinner mask."""
    delta = np.full((6, 2), 2.0**20 / 2**12 / 3)  # 3 rows per slot with 2 slots: the bound exactly
    with pytest.raises(VflError, match="above the protocol's public bound 2\\^20"):
        split_nn.backward_message(None, None, None, None, delta, delta,  # type: ignore[arg-type]
                                  np.zeros((2, 2, 2), dtype=object), 220)


def test_a_replayed_request_is_refused_and_the_state_is_unchanged(tmp_path: Path, sample) -> None:
    """On the kit a refused artifact changes nothing: P, at round 1, receives round 0's activation
    request again; it is quarantined, nothing is sent and P's job state is what it was."""
    bank, bureau = small_parties(tmp_path, sample("breast_active.csv"), sample("breast_passive.csv"), "label", 60)
    jobs.start_job(Workspace(bank), "split-nn", {"alignment": "al", **dict(PARAMS, model=SPEC, batch_size=0)}, job="tr")
    carry(bank, bureau)
    jobs.accept_job(Workspace(bureau), "tr")  # forward, round 0
    carry(bureau, bank)
    jobs.step(Workspace(bank), "tr")  # activation request, round 0
    request = next((bank / "outbox").glob("*activation-request*"))
    name, saved = request.name, request.read_bytes()
    for src, dst in [(bank, bureau), (bureau, bank), (bank, bureau)]:  # activation, backward, forward r1
        carry(src, dst)
        jobs.step(Workspace(dst), "tr")
    before = jobs.load_state(Workspace(bureau), "tr")[0]
    (bureau / "inbox" / name).write_bytes(saved)
    reports = jobs.step(Workspace(bureau), "tr")
    assert reports[0].rejected and "replayed" in reports[0].rejected[0]["reason"] and not reports[0].sent
    after = jobs.load_state(Workspace(bureau), "tr")[0]
    assert after.phase == before.phase == "wait-request" and after.data == before.data
    assert sorted(after.arrays) == sorted(before.arrays)
    assert all(np.array_equal(after.arrays[k], before.arrays[k]) for k in before.arrays)


def test_the_typed_state_round_trips_through_the_job_state() -> None:
    """Only the state classes convert: exact integers of any size as hex text (no Python objects in
    the job state's arrays), the networks as net_<part>, the private seed as hex, the stashed
    ciphertexts as bytes; loading what was stored gives the same state."""
    from vfl_cli.protocol.base import JobState

    big = np.array([[2**130 + 7, -(2**125)], [0, -3]], dtype=object)
    state = split_nn.ActiveState(
        t=4, epoch=1, batch=2, fingerprint="ab", seed=2**127 + 5, opt={"top": [{"t": 3}]},
        nets={"top": np.arange(3.0)}, share=big, velocity=-big, rho=big[None], mask=big + 1,
        h=split_nn.Sealed(b"\x01\x02\x03\x04", (2, 2), -8), history=[{"epoch": 0, "loss": 0.5}],
        losses=[0.25], W_A=np.ones((2, 2)), b=np.zeros(2))
    job = JobState()
    state.store(job)
    assert job.data["private_seed"] == f"{2**127 + 5:x}" and "seed" not in job.data and "nets" not in job.data
    assert all(a.dtype != object for a in job.arrays.values())
    assert {"net_top", "share", "velocity", "rho", "mask", "stash_h", "W_A", "b"} <= set(job.arrays)
    assert "stash_v" not in job.arrays and "h" not in job.data
    back = split_nn.ActiveState.load(job)
    for name in ("share", "velocity", "rho", "mask"):
        assert np.array_equal(getattr(back, name), getattr(state, name)), name
    assert back.h == state.h and back.v is None and back.seed == state.seed
    assert np.array_equal(back.nets["top"], state.nets["top"]) and back.opt == state.opt
    assert (back.t, back.epoch, back.batch, back.history, back.losses) == (4, 1, 2, state.history, [0.25])
    assert back.advanced(3) == back.but(t=5, epoch=2, batch=0)  # the last batch of an epoch
    assert np.array_equal(split_nn.share_ints(job), big)


def test_only_fresh_ciphertexts_leave_a_party() -> None:
    """The masks and noise ride in with the crypto layer's long-exponent re-randomiser: fresh, and
    decrypting to the exact sums; a computed ciphertext is refused by the message encoder."""
    from vfl_cli.crypto import paillier
    from vfl_cli.errors import CryptoError, InvalidArtifact

    pub, priv = paillier.generate_keypair(512)
    x = paillier.encrypt(pub, np.array([[1.0, -2.0], [3.0, 4.0]]), exponent=0)
    computed = x + x
    ints = np.array([[2**150, -5], [7, -(2**140)]], dtype=object)
    fresh = split_nn.add_fresh(computed, ints)
    assert not computed.fresh and fresh.fresh
    assert [encoding_signed(v, pub.n) for v in priv.decrypt_raw(fresh)] == [2 + 2**150, -9, 13, 8 - 2**140]
    with pytest.raises(CryptoError, match="carry no fresh randomness"):
        split_nn.Request(0, 0, False, computed, 1, 100).members()
    assert split_nn.Request(0, 0, False, fresh, 1, 100).members()[0].name == "act"
    # slots through the crypto layer's signed layout; an overflow is an invalid artifact
    packed = split_nn.pack_slots(np.array([[5], [-3]], dtype=object), 10)
    assert split_nn.unslot(int(packed[0]) % pub.n, pub.n, 10, 2) == [5, -3]
    with pytest.raises(InvalidArtifact, match="overflowed its slot"):
        split_nn.unslot(1 << 30, pub.n, 10, 2)


def encoding_signed(v: int, n: int) -> int:
    return v - n if v > n // 2 else v


def test_local_steps_move_only_the_active_partys_layers_within_an_exchange() -> None:
    """``local_steps``: A steps its own layers again on the ``z_P`` it holds; P's part (its bottom
    and ``W_P``) learns from the first pass only, so after one exchange it is the same whatever
    A did locally, while A's layers differ."""
    rng = np.random.default_rng(5)
    XA, XP = rng.standard_normal((60, 4)), rng.standard_normal((60, 3))
    y = (XA[:, 0] + XP[:, 0] > 0).astype(float)
    full = dict(check_params({"alignment": "al", **PARAMS, "model": SPEC}, [{"role": "active"}, {"role": "passive"}]),
                batch_size=0, validation_fraction=0.0)  # the model after the exchange, not a kept one
    spec = ss.parse_spec(SPEC)
    once, _ = ss.central_fit(spec, XA, XP, y, {**full, "local_steps": 1}, epochs=1, seeds=SEEDS)
    thrice, _ = ss.central_fit(spec, XA, XP, y, {**full, "local_steps": 3}, epochs=1, seeds=SEEDS)
    np.testing.assert_array_equal(once.W_P, thrice.W_P)
    np.testing.assert_array_equal(once.bottom_p.get_flat(), thrice.bottom_p.get_flat())
    assert not np.allclose(once.W_A, thrice.W_A)
    assert not np.allclose(once.top.get_flat(), thrice.top.get_flat())
    assert not np.allclose(once.bottom_a.get_flat(), thrice.bottom_a.get_flat())
