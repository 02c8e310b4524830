"""The party's audit ledger: a signed, hash-chained JSON-lines log of every artifact.

Each line is one entry. ``prev`` holds the SHA-256 of the previous line's canonical JSON (64
zeros for the first), and ``sig`` the party's Ed25519 signature over the entry without ``sig``.
Editing, deleting or reordering any line breaks the chain or a signature; ``verify_chain``
finds it.

Power loss and shortening:

- Every append is fsynced (and the folder, when the append creates the file), so an entry a
  command reported is on disk.
- A torn last line (power loss or a full disk in the middle of an append) is not an entry: it is
  moved aside into ``ledger.torn`` before the next append (:meth:`Ledger.repair`), so no later
  command fails on it, and ``vfl audit verify`` reports it as a warning. The step that was
  writing it is still sealed in its job's transaction and is logged again when it completes.
- After each append the party signs a checkpoint, ``ledger.head``: the entry count and the
  head hash. A ledger shorter than its checkpoint, or whose entry at that count differs, was
  truncated or rolled back. Restoring an older checkpoint with it is caught by the heads the
  archived artifacts carry (see ``vfl_cli.audit``) and, across parties, by reconciling exports.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vfl_cli.artifacts.io import canonical_json, pretty_json, replace_atomic
from vfl_cli.crypto.signing import Signer, Verifier
from vfl_cli.errors import KeyMismatch, WorkspaceError

GENESIS = "0" * 64
TORN = "ledger.torn"
CHECKPOINT = "ledger.head"


def entry_hash(entry: dict[str, Any]) -> str:
    """The SHA-256 that the next entry's ``prev`` (and a head) names."""
    return hashlib.sha256(canonical_json(entry)).hexdigest()


_entry_hash = entry_hash  # the name older code imported


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split(data: bytes) -> tuple[bytes, bytes]:
    """(complete entries, torn tail). A line is an entry once its newline is written and it
    parses; only the last line can be torn: a bad line before it is damage, not a crash."""
    cut = data.rfind(b"\n") + 1
    body, tail = data[:cut], data[cut:]
    if body:
        start = body.rfind(b"\n", 0, len(body) - 1) + 1
        try:
            json.loads(body[start:])
        except (json.JSONDecodeError, UnicodeDecodeError):
            body, tail = body[:start], body[start:] + tail
    return body, tail


class Ledger:
    """Append-only access to ``ledger.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.torn_path = path.with_name(TORN)
        self.checkpoint_path = path.with_name(CHECKPOINT)
        self._cache: tuple[tuple[int, int, int], list[dict[str, Any]]] | None = None

    # ----- reading ---------------------------------------------------------------------------
    def _read(self) -> tuple[bytes, bytes]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return b"", b""
        return _split(data)

    def entries(self) -> list[dict[str, Any]]:
        """Every complete entry (a torn last line is left out)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return []
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if self._cache is not None and self._cache[0] == stamp:
            return list(self._cache[1])
        body, _ = self._read()
        out = []
        for lineno, line in enumerate(body.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise WorkspaceError(
                    f"{self.path} line {lineno} is not JSON ({exc}); the ledger was damaged "
                    "by hand: keep a copy and compare with 'vfl audit verify'"
                ) from exc
            if not isinstance(entry, dict):
                raise WorkspaceError(f"{self.path} line {lineno} is not a ledger entry")
            out.append(entry)
        self._cache = (stamp, out)
        return list(out)

    def has(self, artifact_sha256: str, event: str) -> bool:
        return any(
            e.get("artifact_sha256") == artifact_sha256 and e.get("event") == event
            for e in self.entries()
        )

    def head(self) -> dict[str, Any]:
        """``{"count": n, "sha256": hash of entry n}`` (64 zeros for an empty ledger)."""
        entries = self.entries()
        return {"count": len(entries), "sha256": entry_hash(entries[-1]) if entries else GENESIS}

    # ----- writing ---------------------------------------------------------------------------
    def repair(self) -> int:
        """Move a torn last line into ``ledger.torn``; return how many bytes were moved."""
        body, tail = self._read()
        if not tail:
            return 0
        with self.torn_path.open("ab") as fh:
            fh.write(tail + (b"" if tail.endswith(b"\n") else b"\n"))
            fh.flush()
            os.fsync(fh.fileno())
        with self.path.open("r+b") as fh:
            fh.truncate(len(body))
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(self.path.parent)
        self._cache = None
        return len(tail)

    def append(self, signer: Signer, event: str, *, checkpoint: bool = True, **fields: Any) -> dict[str, Any]:
        """Append one signed entry chained to the last one, fsynced; then sign the checkpoint
        (a caller appending several entries at once passes ``checkpoint=False`` and signs it
        once after the last, with :meth:`write_checkpoint`)."""
        self.repair()
        entries = self.entries()
        entry: dict[str, Any] = {
            "seq": len(entries) + 1,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "event": event,
            **fields,
            "prev": entry_hash(entries[-1]) if entries else GENESIS,
        }
        entry["sig"] = signer.sign(canonical_json(entry))
        created = not self.path.exists()
        with self.path.open("ab") as fh:
            fh.write((json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
        if created:
            _fsync_dir(self.path.parent)
        st = os.stat(self.path)
        self._cache = ((st.st_ino, st.st_size, st.st_mtime_ns), [*entries, entry])
        if checkpoint:
            self.write_checkpoint(signer, self.head())
        return entry

    def write_checkpoint(self, signer: Signer, head: dict[str, Any]) -> None:
        """Sign ``head`` (``{"count", "sha256"}``) into ``ledger.head``, atomically."""
        body = {"count": head["count"], "sha256": head["sha256"]}
        replace_atomic(self.checkpoint_path, pretty_json(dict(body, sig=signer.sign(canonical_json(body)))),
                       mode=0o600)

    def checkpoint(self) -> dict[str, Any] | None:
        """The signed checkpoint as stored (unchecked), or None when there is none."""
        try:
            raw = json.loads(self.checkpoint_path.read_bytes()[:4096])
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"count": None, "sha256": None, "sig": ""}
        return raw if isinstance(raw, dict) else {"count": None, "sha256": None, "sig": ""}

    def torn_bytes(self) -> int:
        """How many bytes of torn lines were ever moved aside."""
        try:
            return self.torn_path.stat().st_size
        except FileNotFoundError:
            return 0


@dataclass
class VerifyReport:
    """What ``vfl audit verify`` found."""

    entries: int = 0
    files_checked: int = 0
    files_missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "files_checked": self.files_checked,
            "files_missing": self.files_missing,
            "problems": self.problems,
            "warnings": self.warnings,
        }


def verify_chain(entries: list[dict[str, Any]], verifier: Verifier, report: VerifyReport) -> None:
    """Check sequence numbers, the hash chain and each entry's signature."""
    prev = GENESIS
    for i, entry in enumerate(entries, 1):
        report.entries += 1
        body = {k: v for k, v in entry.items() if k != "sig"}
        if entry.get("seq") != i:
            report.problems.append(f"entry {i}: sequence number is {entry.get('seq')!r}, expected {i}")
        if entry.get("prev") != prev:
            report.problems.append(f"entry {i}: hash chain broken (an entry before it was changed or removed)")
        try:
            verifier.verify(canonical_json(body), str(entry.get("sig", "")), what=f"ledger entry {i}")
        except KeyMismatch:
            report.problems.append(f"entry {i}: signature does not match (entry edited)")
        prev = entry_hash(entry)


def check_head(entries: list[dict[str, Any]], head: Any, *, what: str) -> str | None:
    """Whether ``entries`` hold the head ``{"count", "sha256"}`` that ``what`` recorded.

    Returns None when they do, else the problem (shorter: truncated; other hash: rewritten).
    """
    if not isinstance(head, dict) or not isinstance(head.get("count"), int) or head["count"] < 0:
        return f"{what} records a malformed ledger head {str(head)[:60]!r}"
    count = head["count"]
    if count > len(entries):
        return (f"{what} was made when the ledger had {count} entries; it has {len(entries)} "
                "(truncated or rolled back)")
    have = entry_hash(entries[count - 1]) if count else GENESIS
    if have != head.get("sha256"):
        return f"{what} names another entry {count} than the ledger holds (rewritten or rolled back)"
    return None


def check_checkpoint(ledger: Ledger, entries: list[dict[str, Any]], verifier: Verifier,
                     report: VerifyReport) -> None:
    """The signed checkpoint must be valid and the ledger must still hold its head."""
    cp = ledger.checkpoint()
    if cp is None:
        if entries:
            report.warnings.append(f"{CHECKPOINT} is missing (a workspace from an older vfl, or deleted)")
        return
    body = {"count": cp.get("count"), "sha256": cp.get("sha256")}
    try:
        verifier.verify(canonical_json(body), str(cp.get("sig", "")), what=CHECKPOINT)
    except KeyMismatch:
        report.problems.append(f"{CHECKPOINT}: signature does not match (edited)")
        return
    problem = check_head(entries, body, what=f"the signed checkpoint {CHECKPOINT}")
    if problem:
        report.problems.append(problem)
