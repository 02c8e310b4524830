"""Tests of the vectorised Paillier engine: correctness against float arithmetic, phe interop,
overflow detection, serialisation checks, masking/packing and the Dask path."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vfl_cli.crypto import encoding, paillier_kernels, parallel
from vfl_cli.crypto import paillier as P
from vfl_cli.errors import CryptoError, EncodingOverflow, InvalidArtifact, KeyMismatch, VflError

RES = 2.0**-32  # resolution of EXPONENT = -8


@pytest.fixture(scope="module")
def keys() -> tuple[P.PublicKey, P.PrivateKey]:
    return P.generate_keypair(512)


@pytest.fixture(scope="module")
def pub(keys):
    return keys[0]


@pytest.fixture(scope="module")
def priv(keys):
    return keys[1]


floats = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
magnitudes = st.one_of(
    floats,
    st.floats(min_value=-1e-3, max_value=1e-3, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0**-33, -(2.0**-33), 123456.789]),
)
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# -- encryption, serialisation, decryption ------------------------------------------------------


@SETTINGS
@given(hnp.arrays(np.float64, st.integers(1, 12), elements=magnitudes))
def test_roundtrip_through_bytes(pub, priv, x):
    e = P.encrypt(pub, x)
    data = e.to_bytes()
    assert len(data) == x.size * pub.width
    back = P.EncryptedArray.from_bytes(pub, data, e.shape, e.exponent)
    got = priv.decrypt(back)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, x, rtol=1e-15, atol=RES / 2)


def test_meta_names_the_key_once(pub, priv):
    e = P.encrypt(pub, np.array([[1.0, 2.0], [3.0, 4.0]]))
    meta = json.loads(json.dumps(e.meta()))
    assert meta["key_id"] == pub.fingerprint and meta["shape"] == [2, 2]
    back = P.EncryptedArray.from_meta(pub, e.to_bytes(), meta)
    np.testing.assert_allclose(priv.decrypt(back), [[1, 2], [3, 4]], atol=RES)
    other, _ = P.generate_keypair(512)
    with pytest.raises(KeyMismatch, match="encrypted under key"):
        P.EncryptedArray.from_meta(other, e.to_bytes(), meta)


def test_two_encryptions_of_one_value_differ(pub, priv):
    a, b = (
        P.encrypt(pub, np.array([0.5, 0.5])).to_bytes(),
        P.encrypt(pub, np.array([0.5])).to_bytes(),
    )
    w = pub.width
    assert len({a[:w], a[w:], b}) == 3


def test_known_answer_djn_form(pub, monkeypatch):
    # With the random bytes fixed, a ciphertext is (1 + m n) * h**a mod n^2 where the bytes are
    # the little-endian digits of a: check it against a direct computation.
    nwin = pub.short_exponent_bits // 8
    fixed = bytes(range(1, nwin + 1))
    monkeypatch.setattr(paillier_kernels.os, "urandom", lambda k: fixed * (k // nwin))
    e = P.encrypt(pub, np.array([-1.25]), n_jobs=1)
    a = int.from_bytes(fixed, "little")
    m = (-round(1.25 * 2**32)) % pub.n
    expected = (1 + m * pub.n) * pow(pub.h, a, pub.nsquare) % pub.nsquare
    assert int(e._c[0]) == expected


def test_encrypt_2d_and_shapes(pub, priv):
    x = np.arange(12.0).reshape(3, 4) - 5.5
    e = P.encrypt(pub, x)
    assert e.shape == (3, 4) and len(e) == 3
    np.testing.assert_allclose(priv.decrypt(e[1]), x[1], atol=RES)
    np.testing.assert_allclose(priv.decrypt(e[np.array([2, 0])]), x[[2, 0]], atol=RES)
    np.testing.assert_allclose(priv.decrypt(e.T), x.T, atol=RES)
    np.testing.assert_allclose(priv.decrypt(e.reshape(-1)), x.ravel(), atol=RES)
    both = P.concatenate([e, e[:1]])
    np.testing.assert_allclose(priv.decrypt(both), np.vstack([x, x[:1]]), atol=RES)


# -- phe interop ------------------------------------------------------------------------------


def test_engine_ciphertexts_decrypt_with_phe(pub, priv):
    x = np.array([3.5, -2.25, 0.0, 1e-9, -123456.5])
    e = P.encrypt(pub, x)
    nums = e.to_phe()
    assert all(num.exponent == P.EXPONENT for num in nums)
    got = [priv.phe.decrypt(num) for num in nums]
    np.testing.assert_allclose(got, x, atol=RES)
    # phe arithmetic on engine ciphertexts
    assert priv.phe.decrypt(nums[0] * 2 + nums[1]) == pytest.approx(4.75, abs=1e-9)


def test_phe_ciphertexts_work_in_engine(pub, priv):
    phe_pub, phe_priv = pub.phe, priv.phe
    x = [1.5, -0.3, 42.0]
    nums = [phe_pub.encrypt(v) for v in x]  # phe picks its own (varying) exponents
    e = P.EncryptedArray.from_phe(pub, nums)
    np.testing.assert_allclose(priv.decrypt(e), x, atol=1e-9)
    mixed = e * 2.0 + P.encrypt(pub, np.array([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(priv.decrypt(mixed), np.array(x) * 2 + 1, atol=1e-8)
    # and back to phe's own private key
    assert phe_priv.decrypt(mixed.to_phe()[2]) == pytest.approx(85.0, abs=1e-8)


def test_jwk_roundtrip_and_pheutil_compat(pub, priv):
    jwk = pub.to_jwk()
    assert jwk["kty"] == "DAJ" and jwk["alg"] == "PAI-GN1" and "vfl_h" in jwk
    assert set(jwk) & {"p", "q", "lambda", "mu"} == set()  # no private field leaks
    assert P.PublicKey.from_jwk(json.loads(json.dumps(jwk))) == pub
    again = P.PrivateKey.from_jwk(json.loads(json.dumps(priv.to_jwk())))
    assert again.public == pub and again.public.fingerprint == pub.fingerprint
    # a pheutil key has no h: accepted, encryption falls back to r**n
    plain = {k: v for k, v in jwk.items() if k != "vfl_h"}
    plain["kid"] = "Paillier public key generated by pheutil on 2026-11-22 10:00:00"
    pk = P.PublicKey.from_jwk(plain)
    assert pk.h is None and pk.fingerprint != pub.fingerprint
    e = P.encrypt(pk, np.array([0.75, -3.0]))
    np.testing.assert_allclose(priv.decrypt(e), [0.75, -3.0], atol=RES)
    with pytest.raises(InvalidArtifact):
        P.PublicKey.from_jwk({"kty": "RSA", "n": jwk["n"]})
    with pytest.raises(InvalidArtifact):
        P.PrivateKey.from_jwk({**priv.to_jwk(), "p": jwk["n"]})


def test_decrypt_under_another_key_is_refused(pub, priv):
    other_pub, _ = P.generate_keypair(256)
    with pytest.raises(KeyMismatch):
        priv.decrypt(P.encrypt(other_pub, np.array([1.0])))


# -- arithmetic ---------------------------------------------------------------------------------


@SETTINGS
@given(
    hnp.arrays(np.float64, 6, elements=st.floats(-1e3, 1e3)),
    hnp.arrays(np.float64, 6, elements=st.floats(-1e3, 1e3)),
    st.floats(-100, 100),
)
def test_arithmetic_matches_floats(pub, priv, a, b, k):
    ea, eb = P.encrypt(pub, a), P.encrypt(pub, b)
    tol = 4 * RES * (1 + abs(k) + np.abs(a) + np.abs(b))
    np.testing.assert_allclose(priv.decrypt(ea + eb), a + b, atol=RES * 2)
    np.testing.assert_allclose(priv.decrypt(ea - eb), a - b, atol=RES * 2)
    np.testing.assert_allclose(priv.decrypt(-ea + 1.5), -a + 1.5, atol=RES * 2)
    np.testing.assert_allclose(priv.decrypt(2.0 - ea), 2.0 - a, atol=RES * 2)
    assert np.all(np.abs(priv.decrypt(ea * k) - a * k) <= tol)
    assert np.all(np.abs(priv.decrypt(ea * b) - a * b) <= tol)
    np.testing.assert_allclose(priv.decrypt(ea * 3), a * 3, atol=RES * 3)
    assert priv.decrypt(ea.sum()) == pytest.approx(a.sum(), abs=RES * 6)


def test_broadcasting_and_axis_sums(pub, priv):
    x = np.arange(6.0).reshape(2, 3) - 2
    e = P.encrypt(pub, x)
    row = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(priv.decrypt(e + row), x + row, atol=RES)
    np.testing.assert_allclose(priv.decrypt(e + P.encrypt(pub, row)), x + row, atol=RES)
    np.testing.assert_allclose(priv.decrypt(e * row), x * row, atol=1e-8)
    np.testing.assert_allclose(priv.decrypt(e.sum(axis=0)), x.sum(axis=0), atol=RES)
    np.testing.assert_allclose(priv.decrypt(e.sum(axis=1)), x.sum(axis=1), atol=RES)


@SETTINGS
@given(
    st.integers(1, 40),
    st.integers(1, 4),
    st.floats(1e-3, 1e3),
    st.integers(0, 2**32 - 1),
)
def test_plain_matmul_matches_numpy(pub, priv, rows, k, scale, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, k)) * scale
    d = rng.uniform(-1, 1, rows)
    ed = P.encrypt(pub, d)
    g = P.plain_matmul(X.T, ed)
    assert g.shape == (k,) and g.exponent == 2 * P.EXPONENT
    tol = RES * (np.abs(X).sum(axis=0) + np.abs(d).sum()) + 1e-12 * np.abs(X.T @ d)
    assert np.all(np.abs(priv.decrypt(g) - X.T @ d) <= tol)


def test_plain_matmul_matrix_and_vector_forms(pub, priv):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((5, 30))
    D = rng.uniform(-2, 2, (30, 3))
    ED = P.encrypt(pub, D)
    np.testing.assert_allclose(priv.decrypt(P.plain_matmul(X, ED)), X @ D, atol=1e-7)
    v = P.plain_matmul(X[0], ED[:, 0].reshape(-1))  # 1-D X: a single dot product
    assert v.shape == ()
    assert float(priv.decrypt(v)) == pytest.approx(X[0] @ D[:, 0], abs=1e-7)
    zero = P.plain_matmul(np.zeros((2, 30)), ED[:, 0].reshape(-1))
    np.testing.assert_array_equal(priv.decrypt(zero), [0.0, 0.0])


def test_enc_matmul_matches_numpy(pub, priv):
    rng = np.random.default_rng(4)
    Z = rng.standard_normal((7, 4))
    W = rng.standard_normal((4, 3)) * 10
    EZ = P.encrypt(pub, Z)
    out = P.enc_matmul(EZ, W)
    assert out.shape == (7, 3)
    np.testing.assert_allclose(priv.decrypt(out), Z @ W, atol=1e-7)
    np.testing.assert_allclose(priv.decrypt(P.enc_matmul(EZ, W[:, 0])), Z @ W[:, 0], atol=1e-7)


def test_enc_matmul_with_tiny_integer_weights_terminates(pub, priv):
    """0/1 and small integer weights made the window search pick 1-bit windows, whose signed
    digits never settled (split-nn's top share limbs hung the job; found 2026-12-01)."""
    rng = np.random.default_rng(6)
    Z = rng.integers(-50, 50, (40, 3)).astype(np.float64)
    EZ = P.encrypt(pub, Z, exponent=0)
    for W in (np.ones((3, 2)), np.eye(3)[:, :2], np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])):
        np.testing.assert_allclose(priv.decrypt(P.enc_matmul(EZ, W, exponent=0)), Z @ W, atol=1e-9)
    with pytest.raises(ValueError, match="at least 2 bits"):
        paillier_kernels.signed_digits(np.array([1, 0, 3]), 1)


# -- masking and packing ----------------------------------------------------------------------


def test_mask_pack_decrypt_unmask_is_exact(pub, priv):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((40, 13))
    d = P.encrypt(pub, rng.uniform(-1, 1, 40)).with_bound(1.0)
    g = P.plain_matmul(X.T, d)  # what the passive party computes
    exact = priv.decrypt(g)  # (only a test can see this)
    masked, m = P.mask(g, value_bits=80, rng=random.Random(7))
    assert masked.fresh
    packed = P.pack(masked)
    assert packed.ciphertexts.size == -(-13 // packed.slots)
    # over the wire and back
    wire = P.Packed.from_bytes(pub, packed.to_bytes(), json.loads(json.dumps(packed.meta())))
    raw = P.decrypt_packed(priv, wire)  # the key holder's view: masked integers only
    np.testing.assert_array_equal(P.unmask(raw, m), exact)
    # unpacked path gives the same integers
    assert priv.decrypt_raw(masked) == raw
    # masked values do not reveal the gradient
    assert not np.allclose(P.unpack(raw, wire), exact)


def test_full_domain_mask_without_bound(pub, priv):
    x = np.array([1.5, -2.0, 1e5])
    e = P.encrypt(pub, x) * 1  # arithmetic result, bound known
    e.bound = None  # as if received from a peer without a declared bound
    masked, m = P.mask(e)
    assert m.bound is None and masked.bound is None
    np.testing.assert_allclose(P.unmask(priv.decrypt_raw(masked), m), x, atol=RES)
    with pytest.raises(EncodingOverflow):
        P.pack(masked)


def test_pack_signed_values_without_mask(pub, priv):
    x = np.array([-3.0, 2.5, 0.0, -1e-6, 7.25])
    e = P.encrypt(pub, x)
    p = P.pack(e, value_bits=40)
    assert p.ciphertexts.fresh and p.ciphertexts.size == 1  # 11 slots of 44 bits in 512 bits
    np.testing.assert_allclose(P.unpack(P.decrypt_packed(priv, p), p), x, atol=RES)


# -- overflow -----------------------------------------------------------------------------------


def test_encrypting_too_large_a_value_overflows(pub):
    with pytest.raises(EncodingOverflow):
        P.encrypt(pub, np.array([2.0**500]))
    with pytest.raises(EncodingOverflow):
        P.encrypt(pub, np.array([np.nan]))


def test_arithmetic_overflow_is_detected_before_it_happens(pub):
    e = P.encrypt(pub, np.array([2.0**240]))
    with pytest.raises(EncodingOverflow):
        e * 2.0**240
    with pytest.raises(EncodingOverflow):
        e.sum() * 2**300
    big = P.encrypt(pub, np.full(3, 2.0**440))
    with pytest.raises(EncodingOverflow):
        P.plain_matmul(np.full((1, 3), 2.0**30), big)


def test_decrypt_detects_wrapped_values(pub, priv):
    quarter = float(pub.n // 4) * 2.0**-32  # encodes to about n/4, inside the plaintext space
    e = P.encrypt(pub, np.array([quarter]))
    with pytest.raises(EncodingOverflow):
        e * 2
    e.bound = None  # bound unknown, as for a peer's ciphertext: phe's overflow band catches it
    with pytest.raises(EncodingOverflow):
        priv.decrypt(e * 2)


def test_packing_headroom_is_checked(pub, priv):
    e = P.encrypt(pub, np.array([1000.0, -5.0]))
    with pytest.raises(EncodingOverflow):
        P.pack(e, value_bits=20)  # the bound (1000 * 2**32) needs 42 bits
    # a peer that lies about its bound: the slot overflow is detected on decryption
    liar = e.with_bound(1.0)
    liar.bound = 2**33
    p = P.pack(liar)
    with pytest.raises(EncodingOverflow):
        P.decrypt_packed(priv, p)
    masked, m = P.mask(liar, value_bits=34)
    with pytest.raises(EncodingOverflow):
        P.unmask(priv.decrypt_raw(masked), m)


# -- deserialisation checks -------------------------------------------------------------------


def test_from_bytes_refuses_bad_payloads(pub):
    e = P.encrypt(pub, np.array([1.0, 2.0]))
    data = e.to_bytes()
    with pytest.raises(InvalidArtifact, match="expected"):
        P.EncryptedArray.from_bytes(pub, data[:-1], (2,), e.exponent)
    with pytest.raises(InvalidArtifact):
        P.EncryptedArray.from_bytes(pub, data, (3,), e.exponent)
    too_big = (pub.nsquare + 5).to_bytes(pub.width, "big")
    with pytest.raises(InvalidArtifact, match="range"):
        P.EncryptedArray.from_bytes(pub, too_big, (1,), e.exponent)
    with pytest.raises(InvalidArtifact):
        P.EncryptedArray.from_bytes(pub, bytes(pub.width), (1,), e.exponent)
    multiple_of_n = (pub.n * 7).to_bytes(pub.width, "big")
    with pytest.raises(InvalidArtifact, match="unit"):
        P.EncryptedArray.from_bytes(pub, multiple_of_n, (1,), e.exponent)


def test_packed_layout_is_checked(pub):
    p = P.pack(P.encrypt(pub, np.array([1.0, 2.0])), value_bits=36)
    meta = p.meta()
    with pytest.raises(InvalidArtifact):
        P.Packed.from_bytes(pub, p.to_bytes(), {**meta, "slots": 100})
    with pytest.raises(InvalidArtifact):
        P.Packed.from_bytes(pub, p.to_bytes(), {**meta, "count": 99})


# -- randomness helpers -----------------------------------------------------------------------


def test_rerandomize_uniform_and_mask(pub, priv):
    x = np.array([0.25, -4.0, 9.0])
    e = P.encrypt(pub, x) * 2
    assert not e.fresh
    r = P.rerandomize(e, n_jobs=1)
    assert r.fresh and r.shape == e.shape and r.exponent == e.exponent
    assert r.to_bytes() != e.to_bytes()
    np.testing.assert_allclose(priv.decrypt(r), 2 * x, atol=RES)
    masked, m = P.mask(e, value_bits=40)
    assert masked.fresh
    np.testing.assert_allclose(P.unmask(priv.decrypt_raw(masked), m), 2 * x, atol=RES)


def test_rerandomize_long_exponent_known_answer(pub, priv, monkeypatch):
    """h**a with a fresh ceil(bits/2)-bit exponent a whose bytes are the window digits."""
    x = np.array([1.5, -2.0])
    e = P.encrypt(pub, x) + P.encrypt(pub, x)
    ebits = P.long_exponent_bits(pub.bits)
    assert ebits == max(P.short_exponent_bits(pub.bits), -(-pub.bits // 16) * 8)
    assert ebits >= pub.bits // 2 and ebits % 8 == 0
    nwin = ebits // 8
    digits = bytes(range(1, nwin + 1))
    monkeypatch.setattr(paillier_kernels.os, "urandom", lambda k: digits * (k // nwin))
    r = P.rerandomize(e, randomiser="long-exponent", n_jobs=1)
    a = int.from_bytes(digits, "little")
    expected = [int(c) * pow(pub.h, a, pub.nsquare) % pub.nsquare for c in e.raw_ciphertexts()]
    assert [int(c) for c in r.raw_ciphertexts()] == expected
    assert r.fresh and r.bound == e.bound
    np.testing.assert_allclose(priv.decrypt(r), 2 * x, atol=RES)


def test_rerandomize_long_exponent_differs_and_decrypts(pub, priv):
    x = np.linspace(-3, 3, 7).reshape(7, 1)
    e = P.encrypt(pub, x).mul(3)
    a = P.rerandomize(e, randomiser="long-exponent")
    b = P.rerandomize(e, randomiser="long-exponent")
    assert a.fresh and b.fresh and a.to_bytes() != b.to_bytes() != e.to_bytes()
    np.testing.assert_allclose(priv.decrypt(a), 3 * x, atol=RES)
    masked, m = P.mask(e, randomiser="long-exponent")
    assert masked.fresh
    np.testing.assert_allclose(P.unmask(priv.decrypt_raw(masked), m).reshape(7, 1), 3 * x, atol=RES)
    with pytest.raises(CryptoError, match="unknown randomiser"):
        P.rerandomize(e, randomiser="cheap")  # type: ignore[arg-type]


def test_rerandomize_long_exponent_without_h_uses_uniform(pub, priv):
    slow = P.PublicKey(pub.n)  # a pheutil key: no DJN generator
    e = P.encrypt(slow, [0.5, 0.25]) * 2
    r = P.rerandomize(e, randomiser="long-exponent", n_jobs=1)
    assert r.fresh and r.to_bytes() != e.to_bytes()
    np.testing.assert_allclose(priv.decrypt(r), [1.0, 0.5], atol=RES)


def test_require_fresh(pub):
    e = P.encrypt(pub, [1.0, 2.0])
    P.require_fresh(e)
    P.require_fresh(e[0:1])
    P.require_fresh(P.pack(e.with_bound(4.0)))
    P.require_fresh(P.concatenate([e, P.rerandomize(e * 2)]))
    for computed in (e * 2, e + 1.0, e + e, -e, e.sum(), P.concatenate([e, e * 2])):
        with pytest.raises(VflError, match="carry no fresh randomness"):
            P.require_fresh(computed, "gradient")
    with pytest.raises(VflError, match="expected encrypted values"):
        P.require_fresh(np.zeros(2))


# -- parallel paths ---------------------------------------------------------------------------


def test_local_process_pool_path(pub, priv):
    x = np.linspace(-1, 1, parallel.MIN_PARALLEL_ITEMS + 44)
    e = P.encrypt(pub, x, n_jobs=2)
    np.testing.assert_allclose(priv.decrypt(e, n_jobs=2), x, atol=RES)


def test_dask_path():
    distributed = pytest.importorskip("distributed")
    pub, priv = P.generate_keypair(256)
    x = np.linspace(-3, 3, parallel.MIN_PARALLEL_ITEMS + 20)
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
        ) as cluster,
        parallel.use_dask(cluster.scheduler_address) as client,
    ):
        assert parallel.effective_n_jobs() == 2
        with distributed.get_task_stream(client) as ts:
            e = P.encrypt(pub, x)
            g = P.plain_matmul(np.ones((1, x.size)), e)
            values = priv.decrypt(e)
        assert len(ts.data) >= 2  # chunks ran on the cluster
    np.testing.assert_allclose(values, x, atol=RES)
    assert float(priv.decrypt(g)[0]) == pytest.approx(x.sum(), abs=1e-6)


def test_numpy_operands_on_the_left(pub, priv):
    x = np.array([1.0, -2.0])
    e = P.encrypt(pub, x)
    r = np.array([0.5, 0.25]) + e
    assert isinstance(r, P.EncryptedArray)
    np.testing.assert_allclose(priv.decrypt(r), x + [0.5, 0.25], atol=RES)
    np.testing.assert_allclose(priv.decrypt(np.float64(3.0) * e), 3 * x, atol=1e-8)
    np.testing.assert_allclose(priv.decrypt(np.array([1.0, 1.0]) - e), 1 - x, atol=RES)


# -- slot layout ------------------------------------------------------------------------------


def test_slot_layout_of_pack_is_public(pub, priv):
    x = np.array([1.0, -2.5, 0.0, 3.25, -1.0])
    e = P.encrypt(pub, x)
    p = P.pack(e, value_bits=40)
    layout = P.SlotLayout.for_value_bits(pub.bits, 40)
    assert p.layout == layout
    assert (layout.slot_bits, layout.slots, layout.offset) == (42 + P.GUARD_BITS, 11, 1 << 40)
    assert layout.ciphertexts(x.size) == p.ciphertexts.size == 1
    assert layout.ciphertexts(23) == 3 and layout.used(2, 23) == 1 and layout.shift(3) == 132
    plain = priv.decrypt_raw(p.ciphertexts)
    assert layout.read_all(plain, pub.n, x.size) == encoding.encode_signed(x, P.EXPONENT)


def test_slot_layout_offset_reads_and_refuses_overflow():
    layout = P.SlotLayout(slot_bits=8, slots=3, offset=100)
    values = [-100, 0, 100]
    plain = sum((v + 100) << (8 * j) for j, v in enumerate(values))
    assert plain == sum(values[j] << (8 * j) for j in range(3)) + layout.offset_plaintext(3)
    assert layout.read(plain, 3) == values
    with pytest.raises(EncodingOverflow, match="overflowed its headroom"):
        layout.read(201, 1)
    with pytest.raises(EncodingOverflow, match="overflowed its slots"):
        layout.read(plain, 2)
    with pytest.raises(CryptoError, match="2 packed plaintexts for 3 values, expected 1"):
        layout.read_all([plain, plain], 1 << 40, 3)


@SETTINGS
@given(st.lists(st.integers(-(2**9) + 1, 2**9 - 1), min_size=1, max_size=12))
def test_signed_slot_layout_round_trip(pub, values):
    """Signed slots (split-nn's packing on the plaintext side) read back exactly."""
    layout = P.SlotLayout.signed_slots(pub.bits, 10, limit=12)
    assert layout.signed and layout.offset == 0 and layout.slots == 12
    assert P.SlotLayout.signed_slots(pub.bits, 10).slots == (pub.bits - 2) // 10
    total = sum(v << layout.shift(j) for j, v in enumerate(values))
    residue = total % pub.n
    assert layout.read_residue(residue, pub.n, len(values)) == values
    assert layout.read_residue(residue, pub.n)[: len(values)] == values
    with pytest.raises(EncodingOverflow, match="overflowed its slot"):
        layout.read_residue((total + (1 << layout.shift(len(values)))) % pub.n, pub.n, len(values))


def test_unpack_masked_reads_a_masked_packed_sum(pub, priv):
    x = np.array([0.5, -1.25, 3.0, -7.5])
    total = P.encrypt(pub, x) * 2.0 + P.encrypt(pub, x)  # exponent -16: values < 2**67
    packed = P.pack(total, value_bits=70)
    masked, m = P.mask(packed.ciphertexts)
    assert m.bound is None and masked.fresh  # full-domain mask: uniform residues to the holder
    meta = json.loads(json.dumps(packed.meta()))
    out = P.unpack_masked(priv.decrypt_raw(masked), m, meta)
    np.testing.assert_allclose(out, 3 * x, atol=4 * RES)
    with pytest.raises(CryptoError):
        P.unpack_masked(priv.decrypt_raw(masked)[:0], m, meta)
    with pytest.raises(InvalidArtifact, match="packed layout"):
        P.unpack_masked(priv.decrypt_raw(masked), m, dict(meta, slots=10**6))
