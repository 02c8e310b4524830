"""The artifact container: round trips, and every kind of damage refused."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vfl_cli.artifacts.container import (
    ndarray_member,
    new_artifact,
    parse_artifact,
    points_member,
    write_artifact,
    encode,
    _pack,
)
from vfl_cli.crypto.signing import Signer
from vfl_cli.errors import InvalidArtifact, KeyMismatch, OutputExists

SIGNER = Signer.generate()


def _artifact(**members: np.ndarray):
    return new_artifact(kind="test/thing", job="j1", seq=2, step="s", sender="bank",
                        recipient="bureau", round=3, meta={"note": "hi"},
                        members=[ndarray_member(k, v) for k, v in members.items()])


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.integers(0, 50), elements=st.floats(allow_nan=False)))
def test_round_trip_keeps_arrays_and_fields(values: np.ndarray) -> None:
    data = encode(_artifact(x=values), SIGNER)
    loaded = parse_artifact(data, name="f.zip")
    loaded.verify(SIGNER.verifier, what="f.zip")
    art = loaded.artifact
    np.testing.assert_array_equal(art.array("x"), values)
    assert (art.kind, art.job, art.seq, art.round, art.sender, art.recipient) == (
        "test/thing", "j1", 2, 3, "bank", "bureau")
    assert art.meta == {"note": "hi"}


def test_points_member_round_trip() -> None:
    pts = np.random.default_rng(0).integers(0, 256, size=(7, 32), dtype=np.uint8)
    art = new_artifact(kind="k", job="j", seq=1, step="s", sender="a", recipient="b",
                       members=[points_member("p", pts)])
    loaded = parse_artifact(encode(art, SIGNER), name="f")
    np.testing.assert_array_equal(loaded.artifact.points("p"), pts)
    assert loaded.artifact.manifest()["members"]["p"]["encrypted"] is True


def test_members_in_any_order_round_trip() -> None:
    art = _artifact(zeta=np.arange(2.0), alpha=np.arange(3.0))
    loaded = parse_artifact(encode(art, SIGNER), name="f.zip")
    np.testing.assert_array_equal(loaded.artifact.array("zeta"), np.arange(2.0))


def test_container_is_a_plain_zip_with_manifest() -> None:
    data = encode(_artifact(x=np.arange(3.0)), SIGNER)
    names = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert names == ["manifest.json", "manifest.sig", "payload/x.npy"]


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
    data = encode(_artifact(x=np.arange(3.0)), SIGNER)
    member = bytearray(zipfile.ZipFile(io.BytesIO(data)).read("payload/x.npy"))
    member[-1] ^= 1
    with pytest.raises(InvalidArtifact, match="SHA-256"):
        parse_artifact(_rezip(data, {"payload/x.npy": bytes(member)}), name="f.zip")


def test_tampered_manifest_fails_signature() -> None:
    data = encode(_artifact(x=np.arange(3.0)), SIGNER)
    zf = zipfile.ZipFile(io.BytesIO(data))
    manifest = zf.read("manifest.json").replace(b'"round":3', b'"round":4')
    # re-packed canonically, so only the signature can notice the change
    forged = _pack(manifest, zf.read("manifest.sig"), [("payload/x.npy", zf.read("payload/x.npy"))])
    loaded = parse_artifact(forged, name="f.zip")
    with pytest.raises(KeyMismatch, match="signature"):
        loaded.verify(SIGNER.verifier, what="f.zip")


def test_other_signer_is_refused() -> None:
    loaded = parse_artifact(encode(_artifact(x=np.arange(3.0)), SIGNER), name="f.zip")
    with pytest.raises(KeyMismatch):
        loaded.verify(Signer.generate().verifier, what="f.zip")


def test_unlisted_file_is_refused() -> None:
    data = _rezip(encode(_artifact(x=np.arange(3.0)), SIGNER), {"payload/extra.bin": b"x"})
    with pytest.raises(InvalidArtifact, match="does not list"):
        parse_artifact(data, name="f.zip")


@pytest.mark.parametrize("flip", [0, 10, 100, -30, -1])
def test_any_flipped_byte_is_refused(flip: int) -> None:
    data = bytearray(encode(_artifact(x=np.arange(5.0)), SIGNER))
    data[flip] ^= 0x40
    with pytest.raises((InvalidArtifact, KeyMismatch)):
        parse_artifact(bytes(data), name="f.zip").verify(SIGNER.verifier, what="f.zip")


def test_zip_header_change_is_refused() -> None:
    data = encode(_artifact(x=np.arange(3.0)), SIGNER)
    with pytest.raises(InvalidArtifact, match="altered outside"):
        parse_artifact(_rezip(data, {}), name="f.zip")  # same content, other zip timestamps


def test_not_a_zip_is_refused() -> None:
    with pytest.raises(InvalidArtifact, match="not a vfl artifact|damaged"):
        parse_artifact(b"hello", name="f.zip")


def test_write_never_overwrites(tmp_path: Path) -> None:
    art = _artifact(x=np.arange(2.0))
    target = tmp_path / art.default_name()
    write_artifact(target, art, SIGNER)
    before = target.read_bytes()
    with pytest.raises(OutputExists):
        write_artifact(target, art, SIGNER)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
