"""joint-stats: what crosses between the parties, checked on the files each one received, and the
active party's attack on the passive party's standardised columns.

A party may combine everything it holds: its archive of received artifacts (opened as the
recipient), its job state, its own Paillier key and the public parameters. Neither party may get
the other's per-row values, column names or bin boundaries in plaintext, nor the labels; the
active party, with reveal_to=passive, decrypts only uniformly masked values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import FATE, drive, introduce, make_party, received
from test_protocol_joint_stats import run_job, setup_parties, training_frames

from vfl_cli import jobs
from vfl_cli.errors import VflError
from vfl_cli.models.binning import Binning
from vfl_cli.protocol.joint_stats import standardise
from vfl_cli.protocol.wire import read_enc
from vfl_cli.workspace import Workspace

PARAMS = {"method": "quantile", "bins": 6, "test_fraction": 0.2, "seed": 7, "min_bin_rows": 5}
ACTIVE = ["x0", "x1", "x2", "x3", "x4", "x5"]
PASSIVE = ["x0", "x1", "x2", "x3", "x4"]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("jstats")
    wss = setup_parties(root, missing=True)
    out = {"bank": wss[0], "bureau": wss[1]}
    for reveal in ("active", "passive"):
        out[reveal] = run_job(wss, f"js-{reveal}", {**PARAMS, "reveal_to": reveal})
    a, p = training_frames(wss, PARAMS)
    out["za"] = standardise(a[ACTIVE].to_numpy(dtype=float))
    out["zp"] = standardise(p[PASSIVE].to_numpy(dtype=float))
    out["frames"] = (a, p)
    return out


def _blob(art: Any) -> bytes:
    return b"".join(m.data for m in art.members.values()) + repr(art.meta).encode()


def _clear(art: Any) -> bytes:
    """The manifest and the plain arrays (where a name would be readable; a two-letter name
    occurs by chance in kilobytes of ciphertexts or masked values)."""
    return b"".join(m.data for m in art.members.values() if m.type == "ndarray") + repr(
        art.meta).encode()


def _needles(values: np.ndarray) -> list[bytes]:
    """A few values as float64 bytes and as text (how a plaintext leak would look)."""
    picked = [float(v) for v in values.ravel()[:: max(1, values.size // 40)] if np.isfinite(v)]
    return ([np.float64(v).tobytes() for v in picked]
            + [f"{v:.6f}".encode() for v in picked if abs(v) > 1e-3])


def test_no_artifact_carries_rows_names_or_boundaries(job: dict[str, Any]) -> None:
    a, p = job["frames"]
    bureau_state, _ = jobs.load_state(Workspace(job["bureau"]), "js-active")
    cuts = np.array([c for col in Binning.from_json(bureau_state.data["binning"]).columns
                     for c in col.cuts])
    assert len(cuts) >= 15
    to_bank = [a_ for j in ("js-active", "js-passive") for a_ in received(job["bank"], j)]
    to_bureau = [a_ for j in ("js-active", "js-passive") for a_ in received(job["bureau"], j)]
    assert {x.kind for x in to_bank} == {"jstats/products"}
    assert {x.kind for x in to_bureau} >= {"jstats/columns", "jstats/result"}
    bureau_secrets = (_needles(p[PASSIVE].to_numpy(dtype=float)) + _needles(job["zp"])
                      + _needles(cuts))
    bank_secrets = _needles(a[ACTIVE].to_numpy(dtype=float)) + _needles(job["za"])
    for art in to_bank:
        assert not any(n in _blob(art) for n in bureau_secrets)
        assert not any(f"x{i}".encode() in _clear(art) for i in range(5))
    for art in to_bureau:
        assert not any(n in _blob(art) for n in bank_secrets)
        assert not any(n.encode() in _clear(art) for n in [*ACTIVE, "'y'"])
    rows = job["active"][0]["rows"]
    for art in to_bank + to_bureau:  # nothing per row but ciphertexts
        for name, m in art.members.items():
            if m.type == "ndarray":
                assert art.array(name).shape[0] != rows, (art.kind, name)


def test_labels_and_columns_reach_the_passive_party_only_encrypted(job: dict[str, Any]) -> None:
    bank, bureau = Workspace(job["bank"]), Workspace(job["bureau"])
    for art in (x for x in received(job["bureau"], "js-active") if x.kind == "jstats/columns"):
        assert set(art.members) == {"z", "y"}
        for m in art.members.values():
            assert m.type == "paillier" and m.info["key_id"] == bank.public_key.fingerprint
    assert bank.public_key.fingerprint != bureau.public_key.fingerprint


def _decoded(job: dict[str, Any], reveal: str, member: str) -> tuple[list[int], int]:
    """What the active party decrypts of the products it received: residues modulo n."""
    ws = Workspace(job["bank"])
    (art,) = [x for x in received(job["bank"], f"js-{reveal}") if x.kind == "jstats/products"]
    x = read_enc(art, member, ws.private_key.public)
    return ws.private_key.decrypt_raw(x), ws.private_key.public.n


def _signed(v: int, n: int) -> int:
    """A residue read as the signed integer nearest zero (as A would try to decode it)."""
    return v - n if v > n // 2 else v


def _attack(za: np.ndarray, r: np.ndarray) -> np.ndarray:
    """A's least-squares estimate of each passive column from correlations with its own columns:
    z_p ~ Z_A b with (Z_A^T Z_A / n) b = r (the best linear guess those figures allow)."""
    sigma = za.T @ za / len(za)
    return za @ np.linalg.lstsq(sigma, r.T, rcond=None)[0]


def test_revealed_correlations_give_only_the_inherent_projection(job: dict[str, Any]) -> None:
    """reveal_to=active: A's best per-row estimate of a passive column from the correlations
    is its projection on A's columns; its error is 1 - R^2 of that regression, no better."""
    za, zp = job["za"], job["zp"]
    r = np.array(job["active"][0]["pearson"]["bureau"]["r"]).T  # passive x active
    guess = _attack(za, r)
    mse = ((guess - zp) ** 2).mean(axis=0)
    fit = za @ np.linalg.lstsq(za, zp, rcond=None)[0]  # the plaintext regression (the bound)
    r2 = 1 - ((fit - zp) ** 2).mean(axis=0)
    np.testing.assert_allclose(mse, 1 - r2, atol=1e-5)
    assert mse.min() > 0.75, mse  # chance (guess 0) is 1.0: no row is recovered
    print(f"reveal_to=active, A's estimate of each passive column: MSE {np.round(mse, 3)}")


def test_masked_decryptions_tell_the_active_party_nothing(job: dict[str, Any]) -> None:
    """reveal_to=passive: what A decrypts is the products plus a uniform mask modulo n."""
    raw, n = _decoded(job, "passive", "c")
    rows = job["passive"][0]["rows"]
    values = [_signed(v, n) for v in raw]
    r = np.array([float(v) / 16.0**16 / rows for v in values])
    assert np.all(np.abs(r) > 1e6)  # none even looks like a correlation (|r| <= 1)
    top = np.array([v / n for v in raw], dtype=float)  # uniform on [0, 1) if masked uniformly
    assert 0.25 < top.mean() < 0.75 and top.std() > 0.15
    # the attack on them anyway: its error against the truth, scaled the best way for A
    guess = _attack(job["za"], r.reshape(len(PASSIVE), len(ACTIVE)))
    guess = guess / guess.std(axis=0)
    corr = np.array([np.corrcoef(guess[:, j], job["zp"][:, j])[0, 1] for j in range(5)])
    # chance: the same estimate from uniformly random residues in place of the decryptions
    rng = np.random.default_rng()
    chance = []
    for _ in range(200):
        width = (n.bit_length() + 7) // 8 + 8  # 64 extra bits: uniform modulo n
        fake = np.array([_signed(int.from_bytes(rng.bytes(width), "big") % n, n) / 16.0**16
                         / rows for _ in range(len(raw))])
        g = _attack(job["za"], fake.reshape(len(PASSIVE), len(ACTIVE)))
        chance.append([abs(np.corrcoef(g[:, j], job["zp"][:, j])[0, 1]) for j in range(5)])
    print(f"reveal_to=passive, A's estimate vs truth: correlation {np.round(corr, 3)}; "
          f"|correlation| from random residues: mean {np.mean(chance, axis=0).round(3)}, "
          f"95th percentile {np.percentile(chance, 95, axis=0).round(3)}")
    sums, _ = _decoded(job, "passive", "s")
    assert all(not 0 <= _signed(v, n) <= rows for v in sums)  # no event count among them


def test_a_job_naming_too_many_columns_for_its_rows_is_refused(tmp_path: Path) -> None:
    """With a >= rows, A would solve Z_A^T z_p = n r for z_p: the job refuses 10 rows a column."""
    guest = pd.read_csv(FATE / "default_credit_hetero_guest.csv", nrows=60)
    host = pd.read_csv(FATE / "default_credit_hetero_host.csv", nrows=60)
    guest.to_csv(tmp_path / "g.csv", index=False)
    host.to_csv(tmp_path / "h.csv", index=False)
    wss = [make_party(tmp_path, "bank", "active", tmp_path / "g.csv", label_column="y"),
           make_party(tmp_path, "bureau", "passive", tmp_path / "h.csv")]
    introduce(tmp_path, "bank", "bureau")
    jobs.start_job(Workspace(wss[0]), "psi", {}, job="al")
    drive(wss, "al")
    with pytest.raises(VflError, match="too few for 13 columns"):
        jobs.start_job(Workspace(wss[0]), "joint-stats", {"alignment": "al"}, job="js")
