"""Issue #14, findings 1-4 (split-nn): the published attacks, run against real small jobs.

Each attack uses only what one party holds: its job state (as it was at that step), the files in
its own ``archive/``, decrypted with its own key, and the public job parameters (spec, seed). The
test then checks the attack's output against the truth, which only a test can see.

1. The passive party P recomputes the interactive weights and the top network from the job seed,
   solves ``delta`` from the first decrypted ``dL/dh = delta W_P^T`` and reads each label from
   the sign of ``delta`` against the top weights. Before the fix: every label, exactly.
2. P reads the low bits of the decrypted, noised gradient of ``W_P``. Before the fix the noise
   lay on a 2^-32 grid while the value is at 2^-64: the low 32 bits were the gradient's own.
3. The active party A takes its first share ``U0`` for ``W_P`` and solves ``h = z_P U0^-1``.
   Before the fix ``U0 = W_P0``: P's bottom output, exactly.
4. Gradient-based label inference (Li et al., ICLR 2022) on what P receives, ``dL/dh``: norm,
   direction (cosine to one known positive) and principal-direction scores. Inherent to split
   learning; the label protection keeps them near chance (the bound is measured, not exact).
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_protocol_split_nn import PARAMS, SPEC, joined, small_parties, train

from vfl_cli import jobs, privacy
from vfl_cli.artifacts.container import read_artifact
from vfl_cli.crypto import encoding, paillier
from vfl_cli.models import split_spec as ss
from vfl_cli.models.features import split_rows, validation_split
from vfl_cli.protocol import split_nn
from vfl_cli.protocol.wire import read_enc
from vfl_cli.workspace import Workspace

JOB = "tr"


def archived(ws: Path, kind: str) -> list[Any]:
    """This party's received artifacts of one kind, in the order they came."""
    files = sorted(glob.glob(str(ws / "archive" / "received" / f"{JOB}.*.{kind}.*.zip")))
    w = Workspace(ws)
    return [read_artifact(Path(f)).open(w.signer, w.name).artifact for f in files]  # sealed to us


def slots_of(art: Any, name: str, priv: paillier.PrivateKey) -> list[list[int]]:
    """Decrypt a member with the party's own key and split every plaintext into its slots."""
    m = art.members[name]
    x = read_enc(art, name, priv.public)
    return [split_nn.unslot(int(v), priv.public.n, int(m.info["slot_bits"]), int(m.info["slots"]))
            for v in priv.decrypt_raw(x)]


def as_ints(x: np.ndarray) -> np.ndarray:
    """Exact integers (shares, masks, noise): a typed state's own, or the hex text a job state keeps."""
    return np.array([v if isinstance(v, int) else int(str(v), 16) for v in x.flat], dtype=object).reshape(x.shape)


def decrypted_error(art: Any, priv: paillier.PrivateKey, rows: int, k: int) -> np.ndarray:
    """``dL/dh`` as P decrypts it from one ``split/backward`` (``rows x k``)."""
    ints = slots_of(art, "err", priv)
    flat = encoding.decode([v for slot in ints for v in slot], read_enc(art, "err", priv.public).exponent)
    return np.asarray(flat).reshape(k, -1)[:, :rows].T


def truth(bank: Path, bureau: Path) -> tuple[np.ndarray, np.ndarray]:
    """The rows trained on (full batch: in row order; the job's validation rows held out) and
    their labels: only the test sees both."""
    df, _ = joined(bank, [bureau])
    params = jobs.load_info(Workspace(bank), JOB)["params"]
    train = split_rows(len(df), params["test_fraction"], params["seed"],
                       ids=jobs.load_state(Workspace(bank), "al")[0].arrays["aligned_ids"]).train
    rows = train[validation_split(len(train), params["validation_fraction"])[1]]
    return rows, df["label"].to_numpy(float)[rows]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict[str, Any]:
    """One full-batch job on 120 breast rows, with what each party held at its steps recorded."""
    root = Path(request.config.rootpath)
    tmp = tmp_path_factory.mktemp("split-attacks")
    mp = pytest.MonkeyPatch()
    seen: dict[str, Any] = {"a_states": [], "h": [], "exact_grad": []}
    a_step, bottom, plain_matmul = split_nn._a_step, split_nn.bottom_output, paillier.plain_matmul

    def spy_a_step(ctx: Any, state: Any, *args: Any) -> Any:
        # A's state as A holds it at this step (its share U, its masks R): A's own knowledge
        seen["a_states"].append({"share": state.share.copy(), "mask": state.mask.copy()})
        return a_step(ctx, state, *args)

    def spy_bottom(state: Any, inputs: Any, part: str, rows: Any, *, train: bool) -> Any:
        net, h = bottom(state, inputs, part, rows, train=train)
        if part == "passive" and train:
            seen["h"].append(h.copy())  # the truth: P's bottom output
        return net, h

    def spy_matmul(x: Any, enc: Any, *args: Any, **kw: Any) -> Any:
        out = plain_matmul(x, enc, *args, **kw)
        seen["exact_grad"].append(out)  # the truth: the gradient's slots before A's noise
        return out

    # known private seeds (the test-only hook) keep the run deterministic; they are not the job's seed
    mp.setattr(split_nn, "private_seed", lambda role: (1111, 2222)[role == "passive"])
    mp.setattr(split_nn, "_a_step", spy_a_step)
    mp.setattr(split_nn, "bottom_output", spy_bottom)
    mp.setattr(paillier, "plain_matmul", spy_matmul)
    try:
        sample = root / "sample_data"
        bank, bureau = small_parties(tmp, sample / "breast_active.csv", sample / "breast_passive.csv", "label", 120)
        train(bank, bureau, dict(PARAMS, model=SPEC, batch_size=0, epochs=3), job=JOB)
    finally:
        mp.undo()
    return {"bank": bank, "bureau": bureau, **seen}


def label_attack(bureau: Path, rows: int) -> np.ndarray:
    """Finding 1, as P: labels from the seed's weights and the first decrypted ``dL/dh``."""
    ws = Workspace(bureau)
    params = jobs.load_info(ws, JOB)["params"]
    spec, seed = ss.parse_spec(params["model"]), int(params["seed"])
    state, _ = jobs.load_state(ws, JOB)
    kp = state.arrays["share"].shape[0]
    ka = int(next(layer["units"] for layer in reversed(spec.active) if layer["type"] == "dense"))
    _, W_P0 = ss.initial_interactive(spec, ka, kp, seed)  # what the public seed gives
    top = ss.build_part(spec, "top", spec.units, seed)
    assert top is not None
    dl_dh = decrypted_error(archived(bureau, "backward")[0], ws.private_key, rows, kp)
    delta = dl_dh @ np.linalg.pinv(W_P0.T)  # dL/dh = delta W_P0^T
    w_top = top.layers[-1].W[:, 0]  # relu then dense: delta_i = dout_i * w_top * relu'(z_i)
    return (delta @ w_top < 0).astype(float)  # dout = p - y < 0 exactly when y = 1


@pytest.mark.parametrize("from_the_job_seed", [False, True])
def test_passive_party_cannot_read_labels_from_the_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        from_the_job_seed: bool) -> None:
    """Finding 1, as P, on its own 120-row job with the label protection off, so that the private
    randomness alone is what stops the attack (with the default protection the attack is at chance
    even when every weight comes from the job's seed: measured 39 of 67, so the default job above
    cannot tell the fix from its absence). The control derives both parties' private seeds from
    the job's public seed (A: seed, P: seed + 1, the pair ``initial_interactive`` takes), as before
    the fix: the attack then reads the labels."""
    seed = int(PARAMS["seed"])
    seeds = (seed, seed + 1) if from_the_job_seed else (1111, 2222)
    monkeypatch.setattr(split_nn, "private_seed", lambda role: seeds[role == "passive"])
    sample = Path(__file__).resolve().parents[2] / "sample_data"
    bank, bureau = small_parties(tmp_path, sample / "breast_active.csv", sample / "breast_passive.csv", "label", 120)
    train(bank, bureau, dict(PARAMS, model=SPEC, batch_size=0, epochs=1, label_protection=0.0), job=JOB)
    rows, y = truth(bank, bureau)
    accuracy = float(np.mean(label_attack(bureau, len(rows)) == y))
    if from_the_job_seed:
        assert accuracy > 0.85, accuracy  # measured 60 of 67 (the rest have zero gradient)
    else:
        assert max(accuracy, 1 - accuracy) < 0.8, accuracy  # measured 27 of 67: the seed's weights are not the job's


def test_active_party_cannot_solve_the_passive_bottom_output(job: dict[str, Any]) -> None:
    """Finding 3, as A: ``h = z_P U0^-1`` from its first share and its unmasked ``z_P``."""
    bank = job["bank"]
    first = job["a_states"][0]
    art = archived(bank, "activation")[0]
    modulus = Workspace(bank).peer("bureau").paillier.n
    U0, R = as_ints(first["share"]), as_ints(first["mask"])
    m = U0.shape[1]
    sent = int(archived(bank, "forward")[0].meta["rows"])  # the mini-batch, then the validation rows
    raw = split_nn.read_ints(art, "z", sent * m)
    R = R[:sent].ravel()
    z_p = encoding.decode([encoding.signed((v - int(r)) % modulus, modulus) for v, r in zip(raw, R, strict=True)],
                          3 * split_nn.E)
    rows = len(job["h"][0])  # the mini-batch's rows come first
    z_p = np.asarray(z_p).reshape(sent, m)[:rows]
    h_hat = z_p @ np.linalg.pinv(U0.astype(float) / 2.0**64)
    h = job["h"][0]
    error = np.abs(h_hat - h).max() / np.abs(h).max()
    # before the fix: bit-identical (U0 = W_P0); now U0 is one of two independent shares
    assert error > 0.1, error


def gradient_slots(job: dict[str, Any]) -> tuple[list[int], list[int]]:
    """As P: every decrypted slot of the gradient of ``W_P`` (units of 2^-64), and the exact
    value of each slot (which only the test sees), over all backward messages."""
    bureau = job["bureau"]
    priv = Workspace(bureau).private_key
    noisy_all, clean_all = [], []
    for art, exact in zip(archived(bureau, "backward"), job["exact_grad"], strict=True):
        noisy = slots_of(art, "grad", priv)
        clean = [split_nn.unslot(int(v), priv.public.n, int(art.members["grad"].info["slot_bits"]), len(noisy[0]))
                 for v in priv.decrypt_raw(exact)]
        noisy_all += [a for x in noisy for a in x]
        clean_all += [b for y in clean for b in y]
    return noisy_all, clean_all


def low_bits_are_fair(diffs: list[int], bits: int = 32) -> None:
    low = np.array([d & ((1 << bits) - 1) for d in diffs], dtype=np.uint64)
    coins = (low[:, None] >> np.arange(bits, dtype=np.uint64)) & np.uint64(1)
    assert np.count_nonzero(low == 0) == 0
    assert abs(coins.mean() - 0.5) < 4 * 0.5 / np.sqrt(coins.size)  # every low bit is a fair coin (4 sd)
    assert np.abs(coins.mean(axis=0) - 0.5).max() < 0.35


def test_decrypted_gradient_is_masked_in_its_low_bits(job: dict[str, Any]) -> None:
    """Finding 2, as P: the decrypted slot minus the exact value is uniform in its low 32 bits."""
    noisy, clean = gradient_slots(job)
    assert len(noisy) >= 24
    # before the fix every difference was 0 mod 2^32 (the low bits were the gradient's own)
    low_bits_are_fair([a - b for a, b in zip(noisy, clean, strict=True)])


def test_decrypted_gradient_noise_is_2_to_40_wider_than_the_value(job: dict[str, Any]) -> None:
    """As P: the noise on each decrypted slot of the gradient of ``W_P`` exceeds the value by
    2^40, so what P decrypts says nothing of the value, not even its sign."""
    noisy, clean = gradient_slots(job)
    noise = [a - b for a, b in zip(noisy, clean, strict=True)]
    top = max(abs(c) for c in clean)
    assert 0 < top < 2 ** (split_nn.GRAD_BITS + 64)  # the public bound the noise is sized for holds
    # every noise exceeds the largest value by 2^40 (before: |noise| <= 2^21 units, the value ~2^60)
    assert min(abs(e) for e in noise) > top * 2**40
    # and is spread over its whole public width 2^(RHO_BITS + 1)
    assert np.median([abs(e).bit_length() for e in noise]) >= split_nn.RHO_BITS - 2
    # P's best guess of a value's sign, the sign of what it decrypted, is at chance
    agree = [(a > 0) == (b > 0) for a, b in zip(noisy, clean, strict=True) if b]
    assert abs(np.mean(agree) - 0.5) < 4 * 0.5 / np.sqrt(len(agree)), np.mean(agree)


def test_decrypted_activation_is_masked_2_to_40_wider_than_the_value(job: dict[str, Any]) -> None:
    """As P: each slot it decrypts from an activation request is ``h U + R`` exactly, ``R``
    uniform over 2^40 times the public bound of ``|h U|`` (A's secret): the decrypted value
    minus the exact ``h U`` is ``R``, fair in its low bits, and 2^40 times larger than the value."""
    priv = Workspace(job["bureau"]).private_key
    requests = archived(job["bureau"], "activation-request")[:3]  # the three training batches
    masks = []
    for t, art in enumerate(requests):
        U, R = as_ints(job["a_states"][t]["share"]), as_ints(job["a_states"][t]["mask"])
        exact = split_nn.fixed_ints(job["h"][3 * t]).dot(U)  # h at 2^-32 times U at 2^-64: at 2^-96
        width, slots = int(art.members["act"].info["slot_bits"]), int(art.members["act"].info["slots"])
        dec = np.array(slots_of(art, "act", priv), dtype=object).reshape(-1, exact.shape[1], slots)
        dec = dec.transpose(0, 2, 1).reshape(-1, exact.shape[1])[:len(exact)]  # slot s of group g: row g S + s
        assert np.array_equal(dec - exact, R[:len(exact)])  # exactly h U + R: nothing else leaks
        assert max(abs(int(v)) for v in exact.flat) * 2**40 < 2 ** (width - 2)  # the public bound holds
        assert all(0 <= int(r) < 2 ** (width - 2) for r in R.flat)
        masks += [int(r) for r in R[:len(exact)].flat]
    assert np.median([r.bit_length() for r in masks]) >= width - 4  # spread over its whole width
    low_bits_are_fair(masks)


def passive_leaks(bureau: Path, y: np.ndarray, k: int) -> list[dict[str, float]]:
    """Finding 4, as P: the norm, direction and principal-direction attacks on each ``dL/dh`` it
    decrypted (one per epoch in a full-batch job), scored against the labels only a test has."""
    ws = Workspace(bureau)
    return [privacy.leak_aucs(y, decrypted_error(art, ws.private_key, len(y), k))
            for art in archived(bureau, "backward")]


def pooled_leak(bureau: Path, y: np.ndarray, k: int) -> float:
    """P pooling epochs: each training row scored by its ``dL/dh`` summed over every epoch it
    decrypted (full batch: the same rows in the same order each epoch), the worst of the three
    attacks and the best linear score on the sums."""
    ws = Workspace(bureau)
    total = sum(decrypted_error(art, ws.private_key, len(y), k) for art in archived(bureau, "backward"))
    pooled = np.asarray(total)
    return max([*privacy.leak_aucs(y, pooled).values(), ss.linear_leak(y, pooled)])


def cross_epoch_leak(bureau: Path, y: np.ndarray, k: int, m: int) -> float:
    """P stacking epochs without labels: each training row's ``dL/dh`` of every epoch side by side
    (full batch: the same rows in the same order), the top ``m`` principal directions projected
    out (noise that is a row's own, the same in every epoch, lies in at most ``m`` directions,
    the interactive width, shared by every row), then each row scored by the next principal
    directions; the worst of the first three."""
    ws = Workspace(bureau)
    stacked = np.hstack([decrypted_error(art, ws.private_key, len(y), k) for art in archived(bureau, "backward")])
    centred = stacked - stacked.mean(axis=0)
    top = np.linalg.svd(centred, full_matrices=False)[2][:m]
    rest = centred - (centred @ top.T) @ top
    after = np.linalg.svd(rest, full_matrices=False)[2][:3]
    return max(privacy.leak(privacy.roc_auc(y, rest @ v)) for v in after)


def test_gradient_label_inference_stays_near_chance(job: dict[str, Any]) -> None:
    """Finding 4 on the 67-row job: A's meter holds every epoch to the batch's bound exactly, the
    larger of the default's target and chance (67 rows: 2 standard errors of a label-free AUC is
    0.65), and what P decrypts, ``delta' W_P^T``, stays within 0.03 of what A metered."""
    rows, y = truth(job["bank"], job["bureau"])
    k = int(SPEC["passive"][0]["units"])
    bound = max(ss.leak_target(split_nn.PARAMS["label_protection"].default), ss.chance_band(y))
    meter = [h["label_leak_auc"] for h in jobs.load_state(Workspace(job["bank"]), JOB)[0].results["history"]]
    seen = passive_leaks(job["bureau"], y, k)
    assert len(seen) == len(meter) == 3  # full batch: one per epoch
    for epoch, (a, p) in enumerate(zip(meter, seen, strict=True)):
        assert max(a.values()) <= bound, (epoch, a, bound)
        assert max(p.values()) <= bound + 0.03, (epoch, p, a)


@pytest.mark.parametrize("protection", [3.0, 0.0])
def test_the_default_holds_label_inference_to_0_60_on_400_rows(tmp_path: Path, protection: float,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The issue's bound, on a job large enough for it to mean something (225 training rows: a
    label-free AUC is within 0.580 at 2 standard errors): with the default protection every attack
    on every ``dL/dh`` P decrypted is at most 0.60; without it (the control) the same attacks
    read the labels. Real job, 512-bit keys, full batch, 3 epochs, fixed private seeds."""
    monkeypatch.setattr(split_nn, "private_seed", lambda role: (3333, 4444)[role == "passive"])
    sample = Path(__file__).resolve().parents[2] / "sample_data"
    bank, bureau = small_parties(tmp_path, sample / "breast_active.csv", sample / "breast_passive.csv", "label", 400)
    params = dict(PARAMS, model=SPEC, batch_size=0, epochs=3)
    if protection != split_nn.PARAMS["label_protection"].default:
        params["label_protection"] = protection
    train(bank, bureau, params, job=JOB)
    _, y = truth(bank, bureau)
    worst = [max(leak.values()) for leak in passive_leaks(bureau, y, int(SPEC["passive"][0]["units"]))]
    assert len(worst) == 3
    if protection:
        assert ss.chance_band(y) < ss.leak_target(protection) < 0.6
        assert max(worst) <= 0.6, worst  # measured 0.557, 0.536, 0.558
    else:
        # the attacks work (measured 0.949, 0.897, 0.937): the protection is what stops them
        assert min(worst) > 0.7 and max(worst) > 0.9, worst


def test_without_the_pooled_bound_pooling_epochs_reads_the_labels(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``pooled_protection = 0`` (each epoch held, the pool not), on a set whose gradients keep
    their label signal (600 default_credit rows, 24 full-batch epochs, a real job): every epoch P
    decrypts stays at the target, while P, summing each row's ``dL/dh`` over the epochs, reads
    the labels well above it. What the docs say of lifting the bound (0.96-0.99 over
    split_default_credit's 100-200 epochs, benchmarks.md); the default is tested below."""
    monkeypatch.setattr(split_nn, "private_seed", lambda role: (3333, 4444)[role == "passive"])
    fate = Path(__file__).resolve().parents[2] / "sample_data" / "fate"
    guest = pd.read_csv(fate / "default_credit_hetero_guest.csv", dtype={"id": str}, nrows=600)
    guest.rename(columns={"y": "label"}).to_csv(tmp_path / "guest.csv", index=False)
    host = fate / "default_credit_hetero_host.csv"
    bank, bureau = small_parties(tmp_path, tmp_path / "guest.csv", host, "label", 600)
    train(bank, bureau, dict(PARAMS, model=SPEC, batch_size=0, epochs=24, pooled_protection=0.0), job=JOB)
    _, y = truth(bank, bureau)
    k = int(SPEC["passive"][0]["units"])
    single = max(max(leak.values()) for leak in passive_leaks(bureau, y, k))
    pooled = pooled_leak(bureau, y, k)
    # measured: every epoch at most 0.583, pooled 0.705 (with the default pooled bound, the same
    # job: every epoch 0.581, pooled 0.613)
    assert single <= 0.6 and pooled > 0.65, (single, pooled)
    meter = jobs.load_state(Workspace(bank), JOB)[0].results["privacy"]
    assert meter["pooled_protection"] == 0.0 and max(meter["pooled_label_leak_auc"].values()) > 0.65


def test_the_default_holds_the_pooled_attack_on_400_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """P pooling epochs: each row's ``dL/dh`` summed over 8 full-batch epochs of a real job."""
    monkeypatch.setattr(split_nn, "private_seed", lambda role: (3333, 4444)[role == "passive"])
    sample = Path(__file__).resolve().parents[2] / "sample_data"
    bank, bureau = small_parties(tmp_path, sample / "breast_active.csv", sample / "breast_passive.csv", "label", 400)
    train(bank, bureau, dict(PARAMS, model=SPEC, batch_size=0, epochs=8), job=JOB)
    _, y = truth(bank, bureau)
    pooled = pooled_leak(bureau, y, int(SPEC["passive"][0]["units"]))
    # measured 0.581 (fresh noise, the pool in the search; the same with the validation rows held
    # out), 0.584 (row noise), 0.613 (fresh noise without the pool in the search). Over six private
    # seed pairs (2026-12-03): 0.579-0.611 with local_steps 1, 0.577-0.609 with 2 (the default
    # since; this pair 0.602); 0.549-0.654 without the pool in the search. A holds its pool of
    # delta'; P sums delta' W_P^T over a moving W_P, which reads up to about 0.03 more.
    assert pooled <= 0.615, pooled
    # noise that is each row's own, the same in every epoch, is cancelled by stacking epochs:
    # measured 0.621 with split_spec.ROW_SHARE = 1 (the previous default), 0.531 with fresh noise
    # (0.546 with the validation rows held out)
    cross = cross_epoch_leak(bureau, y, int(SPEC["passive"][0]["units"]), int(SPEC["interactive"]["units"]))
    assert cross <= 0.6, cross
