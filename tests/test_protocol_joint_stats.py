"""Joint statistics: the encrypted job through real workspaces equals the plaintext computation on
the joined rows (np.corrcoef for Pearson, label sums per bin for the label rate).

Jobs run in-process through the job engine with 512-bit keys, on a subset of default_credit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import FATE, drive, introduce, make_party
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl_cli import jobs
from vfl_cli.crypto import paillier
from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.models.binning import fit_binning
from vfl_cli.models.features import split_rows
from vfl_cli.protocol.joint_stats import (
    ActiveState,
    Products,
    _check_counts,
    _refuse_echo,
    chosen,
    cross_products,
    decrypt_products,
    standardise,
    unmask_events,
    within,
)
from vfl_cli.protocol.wire import load_mask, save_mask, sent_digests
from vfl_cli.workspace import Workspace

ROWS = 300
BASE = {"method": "quantile", "bins": 5, "test_fraction": 0.2, "seed": 7}


def setup_parties(root: Path, *, missing: bool = False) -> list[Path]:
    """default_credit's first rows: the bank's y, x0..x5; the bureau's x0..x4 (optionally with
    blank cells in a column the label rate bins)."""
    guest = pd.read_csv(FATE / "default_credit_hetero_guest.csv", nrows=ROWS)
    host = pd.read_csv(FATE / "default_credit_hetero_host.csv", nrows=ROWS)
    if missing:
        host.loc[np.random.default_rng(3).random(ROWS) < 0.1, "x4"] = np.nan
    guest[["id", "y", "x0", "x1", "x2", "x3", "x4", "x5"]].to_csv(root / "guest.csv", index=False)
    host[["id", "x0", "x1", "x2", "x3", "x4"]].to_csv(root / "host.csv", index=False)
    wss = [make_party(root, "bank", "active", root / "guest.csv", label_column="y"),
           make_party(root, "bureau", "passive", root / "host.csv")]
    introduce(root, "bank", "bureau")
    jobs.start_job(Workspace(wss[0]), "psi", {}, job="al")
    drive(wss, "al")
    return wss


def training_frames(wss: list[Path], params: dict) -> list[pd.DataFrame]:
    """Each party's training rows, in the aligned order (what the job uses)."""
    out = []
    for ws in wss:
        w = Workspace(ws)
        state, _ = jobs.load_state(w, "al")
        df = w.read_data().iloc[state.arrays["aligned_rows"]].reset_index(drop=True)
        split = split_rows(len(df), params["test_fraction"], params["seed"],
                           ids=state.arrays.get("aligned_ids"))
        out.append(df.iloc[np.sort(split.train)].reset_index(drop=True))
    return out


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two aligned parties shared by the tests of this module (each runs its own job id)."""
    return setup_parties(tmp_path_factory.mktemp("jstats"))


def run_job(wss: list[Path], job: str, params: dict) -> list[dict]:
    jobs.start_job(Workspace(wss[0]), "joint-stats", {"alignment": "al", **params}, job=job)
    drive(wss, job)
    return [jobs.load_state(Workspace(ws), job)[0].results for ws in wss]


@pytest.mark.parametrize("reveal", ["active", "passive", "both"])
def test_pearson_equals_corrcoef_on_the_joined_rows(aligned: list[Path], reveal: str) -> None:
    wss = aligned
    params = {**BASE, "active_columns": [2, 4, 5], "passive_columns": [0], "reveal_to": reveal,
              "label_rate": False}
    bank, bureau = run_job(wss, f"js-{reveal}", params)
    a, p = training_frames(wss, params)
    acols, pcols = ["x1", "x3", "x4"], ["x0", "x1", "x2", "x3", "x4"]
    ref = np.corrcoef(np.column_stack([a[acols].to_numpy(), p[pcols].to_numpy()]).T)
    cross = ref[:3, 3:]  # bank's columns x bureau's columns
    assert bank["columns"] == acols and bureau["columns"] == pcols
    np.testing.assert_allclose(bank["within"], ref[:3, :3], atol=1e-9)  # local, plain
    np.testing.assert_allclose(bureau["within"], ref[3:, 3:], atol=1e-9)
    seen_a, seen_p = bank["pearson"]["bureau"], bureau["pearson"]["bank"]
    assert seen_a["theirs"] == [1, 2, 3, 4, 5] and seen_p["theirs"] == [2, 4, 5]
    if reveal in ("active", "both"):
        np.testing.assert_allclose(seen_a["r"], cross, atol=1e-6, rtol=0)
    else:
        assert seen_a["r"] is None
    if reveal in ("passive", "both"):
        np.testing.assert_allclose(seen_p["r"], cross.T, atol=1e-6, rtol=0)
    else:
        assert seen_p["r"] is None
    assert bureau["label_rate"] == [] and bank["label_rate"] == {}


def test_label_rate_per_passive_bin_equals_the_plaintext_rate(tmp_path: Path) -> None:
    wss = setup_parties(tmp_path, missing=True)
    params = {**BASE, "pearson": False, "min_bin_rows": 10}
    bank, bureau = run_job(wss, "js", params)
    a, p = training_frames(wss, params)
    y = a["y"].to_numpy()
    cols = ["x0", "x1", "x2", "x3", "x4"]
    binning = fit_binning(p, cols, method="quantile", max_bins=5)
    xb = binning.transform(p)
    table = bureau["label_rate"]
    assert len(table) == sum(c.n_bins for c in binning.columns)
    checked = withheld = 0
    for row in table:
        in_bin = xb[:, cols.index(row["column"])] == row["bin"]
        assert row["rows"] == int(in_bin.sum())
        if 0 < row["rows"] < 10:
            assert row["events"] is None and row["rate"] is None
            withheld += 1
        elif row["rows"]:
            assert row["events"] == int(y[in_bin].sum())
            assert row["rate"] == pytest.approx(y[in_bin].mean(), abs=1e-12)
            checked += 1
    assert checked >= 15
    assert any(r["bin"] == 0 and r["rows"] > 0 for r in table if r["column"] == "x4")
    # the active party sees bins only under opaque ids: counts, no column names
    assert bank["label_rate"]["bureau"] == {"bins": len(table), "columns": 5,
                                            "withheld": withheld}
    assert "pearson" not in bureau and bank["pearson"] == {}


def test_a_small_bin_is_withheld(aligned: list[Path]) -> None:
    params = {**BASE, "pearson": False, "min_bin_rows": 1000}  # every bin is smaller
    bank, bureau = run_job(aligned, "js-small", params)
    assert all(r["events"] is None for r in bureau["label_rate"] if r["rows"])
    assert bank["label_rate"]["bureau"]["withheld"] == sum(
        1 for r in bureau["label_rate"] if r["rows"])


def test_standardise_and_within_follow_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3)) * [1, 5, 0.1] + [0, 3, -2]
    np.testing.assert_allclose(within(standardise(x)), np.corrcoef(x.T), atol=1e-12)
    x[:, 1] = 4.0  # a constant column correlates 0
    z = standardise(x)
    assert np.all(z[:, 1] == 0) and within(z)[0, 1] == 0


def test_the_job_refuses_impossible_parameters(aligned: list[Path]) -> None:
    ws = Workspace(aligned[0])
    with pytest.raises(VflError, match="pearson=true or label_rate=true"):
        jobs.start_job(ws, "joint-stats", {"alignment": "al", "pearson": False,
                                           "label_rate": False})
    with pytest.raises(VflError, match=r"\[0\] \(every column\)"):
        jobs.start_job(ws, "joint-stats", {"alignment": "al", "active_columns": [0, 2]})
    with pytest.raises(VflError, match="column number 9 of bank"):
        jobs.start_job(ws, "joint-stats", {"alignment": "al", "active_columns": [9]})


def test_the_active_party_refuses_bin_counts_that_do_not_add_up() -> None:
    _check_counts(np.array([3, 2, 5]), np.array([0, 0, 1]), 5, "bureau")  # 3 + 2 and 5
    with pytest.raises(InvalidArtifact, match="do not add up"):
        _check_counts(np.array([3, 1, 5]), np.array([0, 0, 1]), 5, "bureau")
    with pytest.raises(InvalidArtifact, match="do not add up"):
        _check_counts(np.array([6, -1, 5]), np.array([0, 0, 1]), 5, "bureau")


@pytest.fixture(scope="module")
def keys() -> tuple[paillier.PublicKey, paillier.PrivateKey]:
    return paillier.generate_keypair(512)


def test_the_active_party_refuses_its_own_ciphertexts_sent_back(keys) -> None:
    """An echo of A's Enc(z) as 'products' would make A decrypt its own rows for P_j."""
    pub, _ = keys
    z = paillier.encrypt(pub, np.random.default_rng(0).normal(size=(30, 2)))
    st = ActiveState(30, [1, 2], {}, sent_digests([z.to_bytes()], pub.width))
    echo = Products([1], z[:1, :], None, np.zeros(0, np.int64), np.zeros(0, np.int64))
    with pytest.raises(InvalidArtifact, match="refused without decrypting"):
        _refuse_echo(st, echo, "bureau")
    honest, _ = cross_products(z, np.ones((30, 1)), "passive")
    _refuse_echo(st, Products([1], honest, None, np.zeros(0, np.int64),
                              np.zeros(0, np.int64)), "bureau")


def test_products_and_masked_sums_round_trip_and_are_checked(keys) -> None:
    pub, priv = keys
    rng = np.random.default_rng(2)
    za, zp = standardise(rng.normal(size=(40, 2))), standardise(rng.normal(size=(40, 3)))
    z = paillier.encrypt(pub, za)
    c, saved = cross_products(z, zp, "passive")
    got = paillier.unmask(priv.decrypt_raw(c), load_mask(saved)) / 40
    np.testing.assert_allclose(got, zp.T @ za / 40, atol=1e-9)
    plain, _ = cross_products(z, zp, "both")
    prod = Products([1, 2, 3], plain, None, np.zeros(0, np.int64), np.zeros(0, np.int64))
    r, back = decrypt_products(priv, prod, 40, "both", "bureau")
    np.testing.assert_allclose(r, zp.T @ za / 40, atol=1e-9)
    assert back is r
    big, _ = cross_products(z, np.repeat(za[:, :1], 3, axis=1) * 3, "both")  # r = 3: not one
    with pytest.raises(InvalidArtifact, match=r"in \[-1, 1\]"):
        decrypt_products(priv, Products([1, 2, 3], big, None, np.zeros(0, np.int64),
                                        np.zeros(0, np.int64)), 40, "active", "bureau")
    # event sums: a value outside 0..rows of its bin is refused, a withheld bin stays None
    y = paillier.encrypt(pub, np.array([1.0, 0, 1, 1]), exponent=0)
    masked, m = paillier.mask(paillier.EncryptedArray(pub, y.raw_ciphertexts(), (4,), 0))
    raw = priv.decrypt_raw(masked)
    mask = load_mask(save_mask(m))
    assert unmask_events(raw, mask, np.array([1, 1, 1, 1]), np.array([0, 0, 1, 0])) == [
        1, 0, None, 1]
    with pytest.raises(InvalidArtifact, match="outside 0..0"):
        unmask_events(raw, mask, np.array([0, 1, 1, 1]), np.zeros(4, np.int8))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-3, 12), min_size=1, max_size=8))
def test_column_numbers_are_checked_or_refused(numbers: list[int]) -> None:
    features = [f"c{i}" for i in range(6)]
    try:
        got = chosen(features, numbers, "bank")
    except DataError as exc:
        assert "bank, which has columns 1..6" in str(exc)
        assert numbers != [0] and (len(set(numbers)) < len(numbers)
                                   or any(not 1 <= n <= 6 for n in numbers))
    else:
        assert got == (list(range(1, 7)) if numbers == [0] else numbers)


@settings(max_examples=40, deadline=None)
@given(st.integers(3, 40), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_standardised_products_are_numpys_correlations(rows: int, cols: int, seed: int) -> None:
    x = np.random.default_rng(seed).normal(size=(rows, cols)) * 100
    np.testing.assert_allclose(within(standardise(x)), np.corrcoef(x.T).reshape(cols, cols),
                               atol=1e-10)
