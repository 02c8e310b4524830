"""SecureBoost's encrypted histograms (vfl_cli/crypto/histogram.py): grouped bin sums, forked
workers and the key holder's CRT encryption give exactly what the plain definitions give."""

from __future__ import annotations

import numpy as np
import pytest

from vfl_cli.crypto import histogram as hg
from vfl_cli.crypto import paillier_kernels as _k
from vfl_cli.crypto.paillier_keys import generate_keypair


@pytest.fixture(scope="module")
def keys() -> tuple:
    return generate_keypair(512)


def _rows(keys: tuple, n: int, seed: int = 1) -> tuple[hg.RowLayout, np.ndarray, np.ndarray, object]:
    pub, priv = keys
    rng = np.random.default_rng(seed)
    lay = hg.RowLayout(1, 40, 0, n)
    g, h = lay.quantise(rng.random((n, 1)) - 0.5), lay.quantise(rng.random((n, 1)) * 0.25)
    return lay, g, h, hg.encrypt_rows(pub, lay.encode(g, h), private=priv, n_jobs=1)


def _index(n: int, seed: int = 2) -> tuple[np.ndarray, int]:
    """Four columns (two correlated, one wide, one narrow), two node blocks."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 8, n)
    bins = np.stack([base, (base + rng.integers(0, 2, n)) % 8, rng.integers(0, 32, n),
                     rng.integers(0, 3, n)], 1)
    nb = np.array([8, 8, 32, 3])
    total = int(nb.sum())
    block = rng.integers(0, 2, n)
    return bins + np.r_[0, np.cumsum(nb)[:-1]] + block[:, None] * total, 2 * total


def test_grouped_bin_sums_equal_one_product_per_row_and_column(keys: tuple) -> None:
    pub, priv = keys
    n = 600
    lay, g, h, E = _rows(keys, n)
    index, total = _index(n)
    assert any(len(grp) > 1 for grp in hg.column_groups(index))  # the grouped path is taken
    got = hg.bin_sums(E, index, total, n_jobs=1)
    nsq = pub.nsquare
    plain = [1] * total
    for c, line in zip(E.raw_ciphertexts(), index.tolist(), strict=True):
        for j in line:
            plain[j] = plain[j] * int(c) % nsq
    assert [int(v) for v in got.raw_ciphertexts()] == plain  # the very same ciphertexts
    want = np.zeros((total, 3))
    for j in range(index.shape[1]):
        np.add.at(want, index[:, j], np.c_[np.ones(n), g[:, 0], h[:, 0]])
    assert np.array_equal(lay.decode(priv.decrypt_raw(got)), want)


def test_column_groups_cover_every_column_once() -> None:
    index, _ = _index(500)
    groups = hg.column_groups(index)
    assert sorted(j for grp in groups for j in grp) == list(range(index.shape[1]))
    empty = hg.column_groups(np.zeros((0, 3), dtype=np.int64))
    assert sorted(j for grp in empty for j in grp) == [0, 1, 2]


def test_forked_workers_give_the_in_process_result(keys: tuple) -> None:
    pub, priv = keys
    n = 4096  # above the engine's threshold for workers
    lay, g, h, E = _rows(keys, 64)
    big = E[np.arange(n) % 64]
    index = np.random.default_rng(3).integers(0, 40, size=(n, 3)) + np.array([0, 40, 80])
    one = hg.bin_sums(big, index, 120, n_jobs=1)
    two = hg.bin_sums(big, index, 120, n_jobs=2)
    assert one.to_bytes() == two.to_bytes()
    plains = lay.encode(g, h) * 40  # 2560 rows: encrypted in workers
    enc = hg.encrypt_rows(pub, plains, private=priv, n_jobs=2)
    assert [int(v) for v in priv.decrypt_raw(enc)] == plains
    assert len(set(enc.to_bytes()[i: i + pub.width] for i in range(0, 64 * pub.width, pub.width))) == 64


def test_crt_encryption_uses_whole_windows_of_at_least_the_short_exponent(keys: tuple) -> None:
    pub, priv = keys
    tp, tq = hg._crt_tables(priv._p, priv._q, pub.h, pub.short_exponent_bits)
    assert len(tp) * hg.CRT_WINDOW >= pub.short_exponent_bits
    assert len(tp[0]) == len(tq[0]) == 1 << hg.CRT_WINDOW
    blob = hg.w_encrypt_crt(priv._p, priv._q, pub.h, pub.short_exponent_bits, [5, 5])
    a, b = _k.from_blob(blob, pub.width)
    assert a != b  # fresh randomness per row
    assert [int(v) for v in priv.decrypt_raw(hg.from_own_state(pub, blob, 2))] == [5, 5]


def test_passive_party_sends_only_candidates_that_can_split() -> None:
    from types import SimpleNamespace

    from vfl_cli.models.trees import BoostParams
    from vfl_cli.protocol.sbt_data import _splittable

    # column 0: bins 0..4 with 3, 0, 4, 1, 2 rows; column 1: every row in bin 1 of 3
    xb = np.array([[0, 1]] * 3 + [[2, 1]] * 4 + [[3, 1]] + [[4, 1]] * 2)
    data = SimpleNamespace(params=BoostParams(min_samples_leaf=2), Xb=xb, n_bins=np.array([5, 3]))
    keep = _splittable(data, np.arange(len(xb)), np.array([0, 1]))  # type: ignore[arg-type]
    # candidates bin <= 0 (3 | 7), <= 1 (empty bin: same sums as <= 0), <= 2 (7 | 3),
    # <= 3 (8 | 2); column 1: <= 0 (0 | 10), <= 1 (10 | 0)
    assert keep.tolist() == [True, False, True, True, False, False]
    assert _splittable(data, np.arange(3), np.array([0])).tolist() == [False] * 4  # 3 rows, one bin
