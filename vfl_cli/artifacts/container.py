"""The one container for everything that crosses between parties.

An artifact is a plain zip file (stored, not compressed: ciphertexts do not compress) that any
auditor can open with standard tools::

    manifest.json       signed, human-readable: kind, job, step, sender, recipient, members
    manifest.sig        hex Ed25519 signature of manifest.json's exact bytes by the sender
    payload/<name>.npy  plaintext arrays (numpy .npy)
    payload/<name>.bin  fixed-width binary: Paillier ciphertexts or blinded curve points

The manifest lists every payload member with its SHA-256, size and whether it is encrypted, so
checking the signature of ``manifest.json`` covers the whole file. A reader refuses a file whose
signature, hashes, format version or addressing is wrong, naming the file and the reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vfl_cli.artifacts.io import canonical_json, write_new
from vfl_cli.crypto.signing import Signer, Verifier
from vfl_cli.errors import InvalidArtifact, KeyMismatch

FORMAT = "vfl-artifact"
VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"

#: Member types and whether their content is encrypted or blinded (never plaintext data).
MEMBER_TYPES: dict[str, str] = {
    "ndarray": "plaintext array",
    "paillier": "Paillier ciphertexts",
    "points": "blinded X25519 points",
    "masked": "masked integers",
}


@dataclass(frozen=True)
class Member:
    """One payload member: its bytes and the description that goes into the manifest."""

    name: str
    type: str
    data: bytes
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return f"payload/{self.name}.{'npy' if self.type == 'ndarray' else 'bin'}"

    def describe(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "type": self.type,
            "encrypted": self.type != "ndarray",
            "sha256": hashlib.sha256(self.data).hexdigest(),
            "size": len(self.data),
            **dict(self.info),
        }


def ndarray_member(name: str, array: np.ndarray) -> Member:
    """A plaintext numpy array member (stored as .npy, no pickles)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return Member(name, "ndarray", buf.getvalue(), {"shape": list(array.shape), "dtype": str(array.dtype)})


def points_member(name: str, points: np.ndarray) -> Member:
    """Blinded curve points, ``(n, 32)`` uint8, as fixed-width bytes."""
    pts = np.ascontiguousarray(points, dtype=np.uint8)
    if pts.ndim != 2 or pts.shape[1] != 32:
        raise ValueError("points must be an (n, 32) uint8 array")
    return Member(name, "points", pts.tobytes(), {"count": int(pts.shape[0]), "width": 32})


@dataclass(frozen=True)
class Artifact:
    """A decoded artifact: manifest fields plus payload members."""

    kind: str
    job: str
    seq: int
    step: str
    round: int
    sender: str
    recipient: str
    meta: Mapping[str, Any]
    members: Mapping[str, Member]
    sender_key: str = ""
    created: str = ""
    nonce: str = ""

    def manifest(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "kind": self.kind,
            "job": self.job,
            "seq": self.seq,
            "step": self.step,
            "round": self.round,
            "sender": self.sender,
            "sender_key": self.sender_key,
            "recipient": self.recipient,
            "created": self.created,
            "nonce": self.nonce,
            "meta": dict(self.meta),
            "members": {m.name: m.describe() for m in self.members.values()},
        }

    def default_name(self) -> str:
        """``<job>.<seq>.<kind>.<sender>-to-<recipient>.zip``: says what it is and where it goes."""
        short_kind = self.kind.split("/")[-1]
        return f"{self.job}.{self.seq:03d}.{short_kind}.{self.sender}-to-{self.recipient}.zip"

    def array(self, name: str) -> np.ndarray:
        """A plaintext ``ndarray`` member."""
        m = self._member(name, "ndarray")
        try:
            return np.load(io.BytesIO(m.data), allow_pickle=False)
        except ValueError as exc:
            raise InvalidArtifact(f"member {name!r} is not a valid .npy array: {exc}") from exc

    def points(self, name: str) -> np.ndarray:
        """A ``points`` member as an ``(n, 32)`` uint8 array."""
        m = self._member(name, "points")
        count = int(m.info.get("count", -1))
        if len(m.data) != count * 32:
            raise InvalidArtifact(
                f"member {name!r} holds {len(m.data)} bytes, expected {count} points of 32 bytes"
            )
        return np.frombuffer(m.data, dtype=np.uint8).reshape(count, 32)

    def _member(self, name: str, type_: str) -> Member:
        m = self.members.get(name)
        if m is None:
            raise InvalidArtifact(f"{self.kind} artifact has no member {name!r}")
        if m.type != type_:
            raise InvalidArtifact(f"member {name!r} is {m.type}, expected {type_}")
        return m


def new_artifact(
    *,
    kind: str,
    job: str,
    seq: int,
    step: str,
    sender: str,
    recipient: str,
    round: int = 0,
    meta: Mapping[str, Any] | None = None,
    members: list[Member] | tuple[Member, ...] = (),
) -> Artifact:
    """Make an unsigned artifact with a fresh nonce and creation time."""
    return Artifact(
        kind=kind,
        job=job,
        seq=seq,
        step=step,
        round=round,
        sender=sender,
        recipient=recipient,
        meta=dict(meta or {}),
        members={m.name: m for m in members},
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        nonce=secrets.token_hex(16),
    )


def encode(artifact: Artifact, signer: Signer) -> bytes:
    """Sign the manifest and pack the artifact into zip bytes."""
    manifest = dict(artifact.manifest(), sender_key=signer.verifier.fingerprint)
    manifest_bytes = canonical_json(manifest)
    signature = (signer.sign(manifest_bytes) + "\n").encode("ascii")
    members = sorted(artifact.members.values(), key=lambda m: m.name)
    return _pack(manifest_bytes, signature, [(m.file, m.data) for m in members])


_EPOCH = (1980, 1, 1, 0, 0, 0)


def _pack(manifest_bytes: bytes, signature: bytes, members: list[tuple[str, bytes]]) -> bytes:
    """The one canonical zip encoding: fixed order, times and attributes, no compression.

    Because the encoding is canonical, a reader re-packs what it parsed and compares: a change
    to any byte of the file, even in zip headers the signature does not cover, is refused.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in [(MANIFEST, manifest_bytes), (SIGNATURE, signature), *members]:
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, data)
    return buf.getvalue()


def write_artifact(path: Path, artifact: Artifact, signer: Signer) -> bytes:
    """Write a signed artifact atomically, never overwriting; return the file's bytes."""
    data = encode(artifact, signer)
    write_new(path, data)
    return data


@dataclass(frozen=True)
class Loaded:
    """An artifact as read from disk, before its signature is checked against a trusted key."""

    artifact: Artifact
    manifest_bytes: bytes
    signature: str
    sha256: str
    size: int

    def verify(self, verifier: Verifier, *, what: str) -> None:
        if verifier.fingerprint != self.artifact.sender_key:
            raise KeyMismatch(
                f"{what} says it was signed by key {self.artifact.sender_key[:16]}, but "
                f"{self.artifact.sender}'s trusted key is {verifier.fingerprint[:16]}; "
                f"compare fingerprints with 'vfl keys show' on both sides"
            )
        verifier.verify(self.manifest_bytes, self.signature, what=what)


def read_artifact(path: Path) -> Loaded:
    """Read and structurally check an artifact (format, fields, member hashes).

    The signature is checked by :meth:`Loaded.verify` against the sender's trusted key.

    Raises:
        InvalidArtifact: naming the file and what is wrong.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidArtifact(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_artifact(data, name=str(path))


def parse_artifact(data: bytes, *, name: str) -> Loaded:
    def bad(reason: str) -> InvalidArtifact:
        return InvalidArtifact(f"{name}: {reason}")

    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        names = set(zf.namelist())
        if MANIFEST not in names or SIGNATURE not in names:
            raise bad("not a vfl artifact (no manifest.json / manifest.sig)")
        manifest_bytes = zf.read(MANIFEST)
        signature_bytes = zf.read(SIGNATURE)
        signature = signature_bytes.decode("ascii").strip()
        manifest = json.loads(manifest_bytes)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise bad("not a vfl artifact (wrong format field)")
        if manifest.get("version") != VERSION:
            raise bad(
                f"format version {manifest.get('version')!r} is not supported (this vfl reads "
                f"version {VERSION}); upgrade vfl on both sides"
            )
        members: dict[str, Member] = {}
        for mname, desc in dict(manifest.get("members", {})).items():
            content = zf.read(desc["file"])
            if hashlib.sha256(content).hexdigest() != desc["sha256"]:
                raise bad(f"member {mname!r} does not match its SHA-256 in the manifest (tampered)")
            info = {k: v for k, v in desc.items() if k not in ("file", "type", "encrypted", "sha256", "size")}
            if desc["type"] not in MEMBER_TYPES:
                raise bad(f"member {mname!r} has unknown type {desc['type']!r}")
            members[mname] = Member(mname, desc["type"], content, info)
        extra = names - {MANIFEST, SIGNATURE} - {m.file for m in members.values()}
        if extra:
            raise bad(f"holds files the manifest does not list: {sorted(extra)[:3]}")
        artifact = Artifact(
            kind=str(manifest["kind"]),
            job=str(manifest["job"]),
            seq=int(manifest["seq"]),
            step=str(manifest["step"]),
            round=int(manifest["round"]),
            sender=str(manifest["sender"]),
            recipient=str(manifest["recipient"]),
            meta=dict(manifest.get("meta", {})),
            members=members,
            sender_key=str(manifest["sender_key"]),
            created=str(manifest.get("created", "")),
            nonce=str(manifest.get("nonce", "")),
        )
        ordered = sorted(members.values(), key=lambda m: m.name)
        repacked = _pack(manifest_bytes, signature_bytes, [(m.file, m.data) for m in ordered])
        if repacked != data:
            raise bad("the zip container was altered outside its signed content (not canonical)")
    except InvalidArtifact:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise bad(f"damaged or not a vfl artifact ({type(exc).__name__}: {exc})") from exc
    return Loaded(artifact, manifest_bytes, signature, hashlib.sha256(data).hexdigest(), len(data))
