"""The artifact container: round trips, sealing to recipient and sender, every damage refused."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vfl_cli.artifacts import _zip
from vfl_cli.artifacts.container import (
    encode,
    ndarray_member,
    new_artifact,
    parse_artifact,
    points_member,
    read_artifact,
    write_artifact,
)
from vfl_cli.artifacts.io import canonical_json
from vfl_cli.crypto.signing import Signer
from vfl_cli.errors import InvalidArtifact, KeyMismatch, OutputExists, VflError

SIGNER = Signer.generate()  # bank, the sender
BUREAU = Signer.generate()  # the recipient
OTHER = Signer.generate()  # a courier, a drop folder, a third party


def _artifact(**members: np.ndarray):
    return new_artifact(kind="test/thing", job="j1", seq=2, step="s", sender="bank",
                        recipient="bureau", round=3, meta={"note": "hi"},
                        members=[ndarray_member(k, v) for k, v in members.items()])


def _encode(art) -> bytes:
    return encode(art, SIGNER, to=BUREAU.verifier)


def _entries(data: bytes) -> dict[str, bytes]:
    return {e.name: bytes(e.content) for e in _zip.unpack(data, max_entries=66, fail=ValueError)}


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.integers(0, 50), elements=st.floats(allow_nan=False)))
def test_round_trip_keeps_arrays_and_fields(values: np.ndarray) -> None:
    loaded = parse_artifact(_encode(_artifact(x=values)), name="f.zip")
    loaded.verify(SIGNER.verifier, what="f.zip")
    art = loaded.open(BUREAU, "bureau").artifact
    np.testing.assert_array_equal(art.array("x"), values)
    assert (art.kind, art.job, art.seq, art.round, art.sender, art.recipient) == (
        "test/thing", "j1", 2, 3, "bank", "bureau")
    assert art.meta == {"note": "hi"}


def test_sender_opens_its_own_copy_and_nobody_else_can() -> None:
    loaded = parse_artifact(_encode(_artifact(x=np.arange(4.0))), name="f.zip")
    np.testing.assert_array_equal(loaded.open(SIGNER, "bank").artifact.array("x"), np.arange(4.0))
    with pytest.raises(InvalidArtifact, match="not sealed to this party"):
        loaded.open(OTHER, "bureau")  # the right name is not enough: it needs bureau's key
    with pytest.raises(InvalidArtifact, match="sealed to bureau and bank, not to insurer"):
        loaded.open(OTHER, "insurer")
    with pytest.raises(VflError, match="still sealed"):
        loaded.artifact.array("x")


def test_file_holds_no_plaintext_member_bytes() -> None:
    values = np.arange(1000, dtype=np.int64) * 7919
    pts = np.random.default_rng(1).integers(0, 256, size=(20, 32), dtype=np.uint8)
    art = new_artifact(kind="k", job="j", seq=1, step="s", sender="bank", recipient="bureau",
                       members=[ndarray_member("v", values), points_member("p", pts)])
    data = _encode(art)
    assert values.tobytes()[8:64] not in data and pts.tobytes()[:32] not in data
    assert b"NUMPY" not in data  # not even the .npy header travels in clear
    manifest = json.loads(_entries(data)["manifest.json"])
    assert manifest["members"]["v"]["shape"] == [1000] and manifest["members"]["p"]["count"] == 20


def test_two_encodings_of_one_artifact_differ() -> None:
    art = _artifact(x=np.arange(3.0))
    a, b = _entries(_encode(art)), _entries(_encode(art))
    assert a["payload/x.npy.sealed"] != b["payload/x.npy.sealed"]  # a fresh content key each time


def test_points_member_round_trip() -> None:
    pts = np.random.default_rng(0).integers(0, 256, size=(7, 32), dtype=np.uint8)
    art = new_artifact(kind="k", job="j", seq=1, step="s", sender="bank", recipient="bureau",
                       members=[points_member("p", pts)])
    loaded = parse_artifact(_encode(art), name="f")
    np.testing.assert_array_equal(loaded.open(BUREAU, "bureau").artifact.points("p"), pts)
    assert loaded.manifest["members"]["p"]["encrypted"] is True


def test_members_in_any_order_round_trip() -> None:
    art = _artifact(zeta=np.arange(2.0), alpha=np.arange(3.0))
    loaded = parse_artifact(_encode(art), name="f.zip").open(BUREAU, "bureau")
    np.testing.assert_array_equal(loaded.artifact.array("zeta"), np.arange(2.0))


def test_container_is_a_plain_zip_with_manifest() -> None:
    data = _encode(_artifact(x=np.arange(3.0)))
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.namelist() == ["manifest.json", "manifest.sig", "payload/x.npy.sealed"]
    assert zf.testzip() is None and all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())


def _rezip(data: bytes, change: dict[str, bytes]) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, change.get(name, src.read(name)))
        for name in set(change) - set(src.namelist()):
            dst.writestr(name, change[name])
    return buf.getvalue()


def test_tampered_member_is_refused() -> None:
    entries = _entries(_encode(_artifact(x=np.arange(3.0))))
    member = bytearray(entries["payload/x.npy.sealed"])
    member[-1] ^= 1
    entries["payload/x.npy.sealed"] = bytes(member)
    with pytest.raises(InvalidArtifact, match="SHA-256"):
        parse_artifact(_zip.pack(list(entries.items())), name="f.zip")


def test_tampered_manifest_fails_signature() -> None:
    entries = _entries(_encode(_artifact(x=np.arange(3.0))))
    entries["manifest.json"] = entries["manifest.json"].replace(b'"round":3', b'"round":4')
    # re-packed canonically, so only the signature can notice the change
    loaded = parse_artifact(_zip.pack(list(entries.items())), name="f.zip")
    with pytest.raises(KeyMismatch, match="signature"):
        loaded.verify(SIGNER.verifier, what="f.zip")


def test_other_signer_is_refused() -> None:
    loaded = parse_artifact(_encode(_artifact(x=np.arange(3.0))), name="f.zip")
    with pytest.raises(KeyMismatch):
        loaded.verify(Signer.generate().verifier, what="f.zip")


def test_unlisted_file_is_refused() -> None:
    entries = _entries(_encode(_artifact(x=np.arange(3.0))))
    entries["payload/extra.bin.sealed"] = b"x" * 64
    with pytest.raises(InvalidArtifact, match="not the members its manifest lists"):
        parse_artifact(_zip.pack(list(entries.items())), name="f.zip")


@pytest.mark.parametrize("flip", [0, 10, 100, 400, -300, -30, -1])
def test_any_flipped_byte_is_refused(flip: int) -> None:
    data = bytearray(_encode(_artifact(x=np.arange(5.0))))
    data[flip] ^= 0x40
    with pytest.raises((InvalidArtifact, KeyMismatch)):
        loaded = parse_artifact(bytes(data), name="f.zip")
        loaded.verify(SIGNER.verifier, what="f.zip")
        loaded.open(BUREAU, "bureau")


def test_zip_header_change_is_refused() -> None:
    data = _encode(_artifact(x=np.arange(3.0)))
    with pytest.raises(InvalidArtifact, match="not canonical"):
        parse_artifact(_rezip(data, {}), name="f.zip")  # same content, other zip timestamps


def test_not_a_zip_is_refused() -> None:
    with pytest.raises(InvalidArtifact, match="not a vfl artifact"):
        parse_artifact(b"hello", name="f.zip")


def test_version_1_is_refused_with_what_to_do() -> None:
    entries = _entries(_encode(_artifact(x=np.arange(3.0))))
    manifest = json.loads(entries["manifest.json"])
    manifest["version"] = 1
    entries["manifest.json"] = canonical_json(manifest)
    with pytest.raises(InvalidArtifact, match="version 1 .payload members in clear. is no longer read"):
        parse_artifact(_zip.pack(list(entries.items())), name="f.zip")


def test_committed_key_binds_recipient_and_sender_to_one_plaintext() -> None:
    """A sender that seals another key to itself than to the recipient is caught on opening."""
    entries = _entries(_encode(_artifact(x=np.arange(3.0))))
    manifest = json.loads(entries["manifest.json"])
    other = _entries(_encode(_artifact(x=np.arange(3.0))))
    manifest["sealed"]["to_sender"] = json.loads(other["manifest.json"])["sealed"]["to_sender"]
    entries["manifest.json"] = canonical_json(manifest)
    loaded = parse_artifact(_zip.pack(list(entries.items())), name="f.zip")
    with pytest.raises(InvalidArtifact, match="does not match the signed commitment"):
        loaded.open(SIGNER, "bank")


def test_npy_header_must_match_the_manifest() -> None:
    art = _artifact(x=np.arange(3.0))
    forged = new_artifact(kind="test/thing", job="j1", seq=2, step="s", sender="bank", recipient="bureau",
                          members=[ndarray_member("x", np.arange(3.0)).__class__(
                              "x", "ndarray", art.members["x"].data, {"shape": [5], "dtype": "float64"})])
    loaded = parse_artifact(_encode(forged), name="f.zip").open(BUREAU, "bureau")
    with pytest.raises(InvalidArtifact, match="manifest says"):
        loaded.artifact.array("x")


def test_write_never_overwrites(tmp_path: Path) -> None:
    art = _artifact(x=np.arange(2.0))
    target = tmp_path / art.default_name()
    write_artifact(target, art, SIGNER, to=BUREAU.verifier)
    before = target.read_bytes()
    with pytest.raises(OutputExists):
        write_artifact(target, art, SIGNER, to=BUREAU.verifier)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert read_artifact(target).sha256 == parse_artifact(before, name="x").sha256


def test_a_name_that_would_be_refused_is_never_written() -> None:
    art = new_artifact(kind="k", job="../j", seq=1, step="s", sender="bank", recipient="bureau")
    with pytest.raises(VflError, match="job id '../j' is not allowed"):
        _encode(art)


def test_sealed_bytes_do_not_depend_on_the_pynacl_api() -> None:
    """The classic secretbox (older PyNaCl) and the easy one give the same bytes, so files agree."""
    from nacl.bindings import crypto_secretbox, crypto_secretbox_open

    from vfl_cli.crypto import sealing

    key = sealing.new_content_key()
    sealed = sealing.encrypt(key, 3, b"member bytes")
    assert crypto_secretbox(b"member bytes", (3).to_bytes(24, "big"), key) == sealed
    assert crypto_secretbox_open(sealed, (3).to_bytes(24, "big"), key) == b"member bytes"
    with pytest.raises(InvalidArtifact, match="does not decrypt"):
        sealing.decrypt(key, 2, sealed, what="member")  # another place, another nonce
