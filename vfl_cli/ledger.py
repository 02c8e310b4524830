"""The party's audit ledger: a signed, hash-chained JSON-lines log of every artifact.

Each line is one entry. ``prev`` holds the SHA-256 of the previous line's canonical JSON (64
zeros for the first), and ``sig`` the party's Ed25519 signature over the entry without ``sig``.
Editing, deleting or reordering any line breaks the chain or a signature; ``verify`` finds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vfl_cli.artifacts.io import canonical_json
from vfl_cli.crypto.signing import Signer, Verifier
from vfl_cli.errors import KeyMismatch, WorkspaceError

GENESIS = "0" * 64


def _entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(entry)).hexdigest()


class Ledger:
    """Append-only access to ``ledger.jsonl``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for lineno, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise WorkspaceError(f"{self.path} line {lineno} is not JSON: {exc}") from exc
        return out

    def has(self, artifact_sha256: str, event: str) -> bool:
        return any(
            e.get("artifact_sha256") == artifact_sha256 and e.get("event") == event
            for e in self.entries()
        )

    def append(self, signer: Signer, event: str, **fields: Any) -> dict[str, Any]:
        """Append one signed entry chained to the last one."""
        entries = self.entries()
        prev = _entry_hash(entries[-1]) if entries else GENESIS
        entry: dict[str, Any] = {
            "seq": len(entries) + 1,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "event": event,
            **fields,
            "prev": prev,
        }
        entry["sig"] = signer.sign(canonical_json(entry))
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, sort_keys=True, ensure_ascii=False) + "\n")
            fh.flush()
        return entry


@dataclass
class VerifyReport:
    """What ``vfl audit verify`` found."""

    entries: int = 0
    files_checked: int = 0
    files_missing: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

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
        prev = _entry_hash(entry)
