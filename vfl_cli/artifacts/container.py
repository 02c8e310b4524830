"""The one container for everything that crosses between parties.

An artifact is a plain zip file of stored (never compressed) entries that any auditor can list
with standard tools::

    manifest.json              signed, human-readable: kind, job, step, sender, recipient, members
    manifest.sig               hex Ed25519 signature of manifest.json's exact bytes by the sender
    payload/<name>.npy.sealed  a numpy .npy array, encrypted to the recipient and the sender
    payload/<name>.bin.sealed  fixed-width binary (Paillier ciphertexts, curve points), encrypted

The manifest lists every payload member with the SHA-256 and size of its encrypted bytes, so
the signature of ``manifest.json`` covers the whole file; the members' content key is sealed to
the recipient and to the sender (:mod:`vfl_cli.crypto.sealing`), so a courier or a drop folder
learns kinds, counts and sizes, and no values.

A received file is untrusted: reading it is bounded before anything is trusted (regular files
only, a size cap, the canonical zip layout of :mod:`vfl_cli.artifacts._zip`, a bounded manifest
whose every field is checked by :mod:`vfl_cli.artifacts.manifest`); then the signature is checked
against the sender's trusted key (:meth:`Loaded.verify`); then the payload is opened with this
party's own key (:meth:`Loaded.open`).
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vfl_cli.artifacts import _zip
from vfl_cli.artifacts import manifest as mf
from vfl_cli.artifacts.io import canonical_json, read_regular, shown_path, write_new
from vfl_cli.artifacts.manifest import FORMAT, MEMBER_TYPES, VERSION, member_file
from vfl_cli.crypto import sealing
from vfl_cli.crypto.signing import Signer, Verifier
from vfl_cli.errors import InvalidArtifact, KeyMismatch, VflError

__all__ = [
    "FORMAT", "MAX_BYTES", "MEMBER_TYPES", "VERSION", "Artifact", "Loaded", "Member", "encode",
    "ndarray_member", "new_artifact", "parse_artifact", "points_member", "read_artifact",
    "write_artifact",
]

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
#: Default cap on an artifact file's size: room for a 10M-id alignment step (two 32-byte points
#: per id, sealed) with margin. A workspace sets its own: ``vfl config set max_file_size 4GiB``
#: (:attr:`vfl_cli.workspace.Workspace.max_file_size`).
MAX_BYTES = 2 << 30
_SIGNATURE_RE = re.compile(rb"[0-9a-f]{128}\n")
#: .npy dtypes a member may hold: numbers, booleans, fixed-width strings; never objects.
_NPY_KINDS = frozenset("biufcSU")


@dataclass(frozen=True)
class Member:
    """One payload member: its bytes (plaintext, or sealed in a parsed, unopened artifact)."""

    name: str
    type: str
    data: bytes
    info: Mapping[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return member_file(self.name, self.type)


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
    """A decoded artifact: manifest fields plus payload members.

    ``sealed`` is true for an artifact parsed from a file and not yet opened: its members then
    hold encrypted bytes, and reading them raises an error.
    """

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
    sealed: bool = False

    def header(self) -> dict[str, Any]:
        """The manifest fields that describe the artifact (all but members and sealing)."""
        return {
            "format": FORMAT, "version": VERSION, "kind": self.kind, "job": self.job,
            "seq": self.seq, "step": self.step, "round": self.round, "sender": self.sender,
            "sender_key": self.sender_key, "recipient": self.recipient, "created": self.created,
            "nonce": self.nonce, "meta": dict(self.meta),
        }

    def default_name(self) -> str:
        """``<job>.<seq>.<kind>.<sender>-to-<recipient>.zip``: says what it is and where it goes."""
        short_kind = self.kind.split("/")[-1]
        return f"{self.job}.{self.seq:03d}.{short_kind}.{self.sender}-to-{self.recipient}.zip"

    def array(self, name: str) -> np.ndarray:
        """A plaintext ``ndarray`` member, checked against the shape and dtype in the manifest."""
        m = self._member(name, "ndarray")
        return _load_npy(m, what=f"member {name!r}")

    def points(self, name: str) -> np.ndarray:
        """A ``points`` member as an ``(n, 32)`` uint8 array."""
        m = self._member(name, "points")
        count = m.info.get("count", -1)
        if type(count) is not int or len(m.data) != count * 32:
            raise InvalidArtifact(
                f"member {name!r} holds {len(m.data)} bytes, expected {count!r} points of 32 bytes"
            )
        return np.frombuffer(m.data, dtype=np.uint8).reshape(count, 32)

    def _member(self, name: str, type_: str) -> Member:
        if self.sealed:
            raise VflError(f"{self.kind} artifact is still sealed; open it with this party's key first")
        m = self.members.get(name)
        if m is None:
            raise InvalidArtifact(f"{self.kind} artifact has no member {name!r}")
        if m.type != type_:
            raise InvalidArtifact(f"member {name!r} is {m.type}, expected {type_}")
        return m


def _load_npy(m: Member, *, what: str) -> np.ndarray:
    """Parse a .npy member without trusting its header: the header's shape and dtype must match
    the manifest and account for every byte, before any array is allocated."""
    buf = io.BytesIO(m.data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise InvalidArtifact(f"{what} is not a valid .npy array: {exc}") from None
    if dtype.hasobject or dtype.kind not in _NPY_KINDS or dtype.itemsize == 0:
        raise InvalidArtifact(f"{what} holds dtype {dtype}, which is not a plain numeric array")
    if list(shape) != m.info.get("shape") or str(dtype) != m.info.get("dtype"):
        raise InvalidArtifact(f"{what} holds {dtype}{list(shape)}, but its manifest says "
                              f"{m.info.get('dtype')!r}{m.info.get('shape')!r}")
    count = math.prod(shape)
    if count * dtype.itemsize != len(m.data) - buf.tell():
        raise InvalidArtifact(f"{what} holds {len(m.data) - buf.tell()} data bytes, its header "
                              f"says {count} values of {dtype.itemsize} bytes")
    flat = np.frombuffer(m.data, dtype=dtype, count=count, offset=buf.tell())
    return flat.reshape(shape, order="F" if fortran else "C").copy()


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


#: The cost of payload encryption in this process (benchmarks): seconds spent sealing members and
#: content keys (:func:`encode`) and opening them (:meth:`Loaded.open`), and the bytes. With
#: ``VFL_SEAL_TIMING=FILE`` in the environment every vfl process appends it to FILE as one JSON
#: line when it exits (tests/benchmarks/bench_align_cli.py sums them over a whole run).
SEAL_METER: dict[str, float] = {"seal_s": 0.0, "open_s": 0.0, "sealed_bytes": 0, "opened_bytes": 0,
                                "artifacts_sealed": 0, "artifacts_opened": 0}


def _write_seal_meter(path: str) -> None:
    if SEAL_METER["artifacts_sealed"] or SEAL_METER["artifacts_opened"]:
        line = json.dumps({"pid": os.getpid(), "process_s": time.process_time(), **SEAL_METER})
        with open(path, "a", encoding="utf-8") as fh:  # one short line, appended: processes do not mix
            fh.write(line + "\n")


if os.environ.get("VFL_SEAL_TIMING"):
    atexit.register(_write_seal_meter, os.environ["VFL_SEAL_TIMING"])


def encode(artifact: Artifact, signer: Signer, *, to: Verifier) -> bytes:
    """Seal the payload to ``to`` (the recipient's key) and the sender, sign, pack into zip bytes.

    Raises:
        VflError: if a field would make a file that readers refuse (a bad name, a manifest
            over its size limit), so no such file is ever written.
    """
    if artifact.sealed:
        raise VflError("an artifact read from a file cannot be sent again; make a new one")
    started = time.perf_counter()
    key = sealing.new_content_key()
    members = sorted(artifact.members.values(), key=lambda m: m.name)
    sealed = [sealing.encrypt(key, i, m.data) for i, m in enumerate(members)]
    seal_info = {
        "cipher": sealing.CIPHER,
        "key_commitment": sealing.commitment(key),
        "to_recipient": sealing.seal_key(key, to.box_key()),
        "to_sender": sealing.seal_key(key, signer.verifier.box_key()),
    }
    SEAL_METER["seal_s"] += time.perf_counter() - started
    SEAL_METER["sealed_bytes"] += sum(len(m.data) for m in members)
    SEAL_METER["artifacts_sealed"] += 1
    manifest = dict(
        artifact.header(),
        sender_key=signer.verifier.fingerprint,
        members={m.name: _describe(m, data) for m, data in zip(members, sealed, strict=True)},
        sealed=seal_info,
    )
    manifest_bytes = canonical_json(manifest)
    mf.load(manifest_bytes, lambda reason: VflError(f"cannot write {artifact.kind} artifact: {reason}"))
    signature = (signer.sign(manifest_bytes) + "\n").encode("ascii")
    entries = [(MANIFEST, manifest_bytes), (SIGNATURE, signature)]
    return _zip.pack(entries + [(m.file, data) for m, data in zip(members, sealed, strict=True)])


def _describe(m: Member, sealed: bytes) -> dict[str, Any]:
    """A member's manifest entry: what it is and the hash and size of its *encrypted* bytes.

    No hash of the plaintext is published: it would let anyone confirm a guess of the values.
    """
    return {
        "file": m.file,
        "type": m.type,
        "encrypted": m.type != "ndarray",
        "sha256": hashlib.sha256(sealed).hexdigest(),
        "size": len(sealed),
        **dict(m.info),
    }


def write_artifact(path: Path, artifact: Artifact, signer: Signer, *, to: Verifier) -> bytes:
    """Write a sealed, signed artifact atomically, never overwriting; return the file's bytes."""
    data = encode(artifact, signer, to=to)
    write_new(path, data)
    return data


@dataclass(frozen=True)
class Loaded:
    """An artifact as read from a file: structurally checked, not yet trusted.

    :meth:`verify` checks the signature against the sender's trusted key; :meth:`open` then
    decrypts the members with this party's own key.
    """

    artifact: Artifact
    manifest: Mapping[str, Any]
    manifest_bytes: bytes
    signature: str
    sha256: str
    size: int
    source: str = ""

    @property
    def opened(self) -> bool:
        return not self.artifact.sealed

    def verify(self, verifier: Verifier, *, what: str) -> None:
        if verifier.fingerprint != self.artifact.sender_key:
            raise KeyMismatch(
                f"{what} says it was signed by key {self.artifact.sender_key[:16]}, but "
                f"{self.artifact.sender}'s trusted key is {verifier.fingerprint[:16]}; "
                f"compare fingerprints with 'vfl keys show' on both sides"
            )
        verifier.verify(self.manifest_bytes, self.signature, what=what)

    def open(self, signer: Signer, party: str) -> Loaded:
        """Decrypt the members with ``party``'s own key; call :meth:`verify` first.

        Raises:
            InvalidArtifact: if ``party`` is neither recipient nor sender, or a member does not
                decrypt under the key the manifest commits to.
        """
        if not self.artifact.sealed:
            return self
        art, what = self.artifact, self.source or "artifact"
        slot = "to_recipient" if party == art.recipient else "to_sender" if party == art.sender else ""
        if not slot:
            raise InvalidArtifact(f"{what} is sealed to {art.recipient} and {art.sender}, not to {party}")
        sealed = self.manifest["sealed"]
        started = time.perf_counter()
        key = sealing.open_key(sealed[slot], sealed["key_commitment"], signer.box_key(), what=what)
        members = {
            name: dataclasses.replace(m, data=sealing.decrypt(key, i, m.data, what=f"{what}: member {name!r}"))
            for i, (name, m) in enumerate(sorted(art.members.items()))
        }
        SEAL_METER["open_s"] += time.perf_counter() - started
        SEAL_METER["opened_bytes"] += sum(len(m.data) for m in members.values())
        SEAL_METER["artifacts_opened"] += 1
        return dataclasses.replace(self, artifact=dataclasses.replace(art, members=members, sealed=False))


def read_artifact(path: Path, *, max_bytes: int = MAX_BYTES, limit: str | None = None) -> Loaded:
    """Read and structurally check an artifact file, bounded before anything is trusted.

    Only a regular file (no symlink, FIFO, device or folder) of at most ``max_bytes`` is read
    (a workspace passes its ``max_file_size`` setting, and ``limit`` naming it for the message).
    The signature is then checked by :meth:`Loaded.verify` against the sender's trusted key.

    Raises:
        InvalidArtifact: naming the file and what is wrong.
    """
    data = read_regular(path, max_bytes=max_bytes, limit=limit)
    return parse_artifact(data, name=shown_path(path), max_bytes=max_bytes)


def parse_artifact(data: bytes | bytearray, *, name: str, max_bytes: int = MAX_BYTES) -> Loaded:
    """Check artifact bytes in a fixed order, each check bounded by the ones before it.

    1. size at most ``max_bytes``; 2. the canonical zip layout, at most 2 + MAX_MEMBERS
    entries, stored only; 3. manifest.json first, at most 1 MiB, bounded depth, canonical
    JSON, every field of the right form; 4. manifest.sig a hex signature; 5. the other entries
    exactly the manifest's members, in order, of the declared sizes; 6. their SHA-256.

    Raises:
        InvalidArtifact: naming ``name`` and the first check that failed.
    """

    def fail(reason: str) -> InvalidArtifact:
        return InvalidArtifact(f"{name}: {reason}")

    if len(data) > max_bytes:
        raise fail(f"{len(data):,} bytes exceeds the {max_bytes:,}-byte limit for an artifact")
    entries = _zip.unpack(data, max_entries=2 + mf.MAX_MEMBERS, fail=fail)
    if [e.name for e in entries[:2]] != [MANIFEST, SIGNATURE]:
        raise fail("not a vfl artifact (manifest.json and manifest.sig must come first)")
    if entries[0].size > mf.MAX_MANIFEST_BYTES:
        raise fail(f"manifest of {entries[0].size:,} bytes exceeds the {mf.MAX_MANIFEST_BYTES:,}-byte limit")
    manifest_bytes = bytes(entries[0].content)
    manifest = mf.load(manifest_bytes, fail)
    signature = bytes(entries[1].content)
    if not _SIGNATURE_RE.fullmatch(signature):
        raise fail("manifest.sig is not a hex Ed25519 signature")
    members = _members(manifest, entries[2:], fail)
    artifact = Artifact(
        kind=manifest["kind"], job=manifest["job"], seq=manifest["seq"], step=manifest["step"],
        round=manifest["round"], sender=manifest["sender"], recipient=manifest["recipient"],
        meta=manifest["meta"], members=members, sender_key=manifest["sender_key"],
        created=manifest["created"], nonce=manifest["nonce"], sealed=True,
    )
    digest = hashlib.sha256(data).hexdigest()
    return Loaded(artifact, manifest, manifest_bytes, signature.decode("ascii").strip(), digest,
                  len(data), name)


def _members(manifest: Mapping[str, Any], entries: list[_zip.Entry], fail: mf.Fail) -> dict[str, Member]:
    """Match zip entries to the manifest's members: names and sizes first, then hashes."""
    listed = sorted(manifest["members"].items())
    expected = [desc["file"] for _, desc in listed]
    found = [e.name for e in entries]
    if found != expected:
        extra = [n for n in found if n not in expected] or [n for n in found if found.count(n) > 1]
        missing = [n for n in expected if n not in found]
        raise fail(f"its zip entries are not the members its manifest lists (unlisted or repeated: "
                   f"{extra[:3]!r}, missing: {missing[:3]!r})")
    for (mname, desc), entry in zip(listed, entries, strict=True):
        if entry.size != desc["size"]:
            raise fail(f"member {mname!r} holds {entry.size} bytes, its manifest says {desc['size']}")
    members = {}
    for (mname, desc), entry in zip(listed, entries, strict=True):
        if hashlib.sha256(entry.content).hexdigest() != desc["sha256"]:
            raise fail(f"member {mname!r} does not match its SHA-256 in the manifest (tampered)")
        info = {k: v for k, v in desc.items() if k not in mf.MEMBER_FIELDS}
        members[mname] = Member(mname, desc["type"], bytes(entry.content), info)
    return members
