"""Re-checking a workspace's ledger, its archive, and a peer's ledger against it.

``verify_workspace`` finds, on one party's own files:

1. edits and reorders: the hash chain, sequence numbers and signatures of the ledger;
2. a shortened or restored ledger: the signed checkpoint (``ledger.head``), the ledger head that
   every archived sent artifact carries in its signed manifest, every archived file that the
   ledger no longer names, and the ledger count each job recorded at its last step;
3. a deleted ledger: a missing ``ledger.jsonl`` next to a non-empty archive or a checkpoint;
4. changed archive files: each archived file named by the ledger is re-read and re-verified.

A torn last line (power loss) is not a problem but a warning: it was moved aside into
``ledger.torn`` and the step that was writing it was logged again when it completed.

A party that rolls back its whole folder (ledger, checkpoint, archive and jobs together) is
found by ``reconcile``: the peer's export holds what the peer received from it, and the ledger
heads the party signed into each artifact it sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vfl_cli.artifacts.container import MAX_BYTES, read_artifact
from vfl_cli.artifacts.io import canonical_json, pretty_json, read_regular
from vfl_cli.crypto.signing import Verifier
from vfl_cli.errors import KeyMismatch, VflError, WorkspaceError
from vfl_cli.keyring import own_keyring, peer_keyring, verifier_for_key
from vfl_cli.ledger import TORN, VerifyReport, check_checkpoint, check_head, verify_chain
from vfl_cli.names import is_name
from vfl_cli.workspace import Workspace, now

EXPORT_FORMAT = "vfl-ledger-export"
#: A peer's export is untrusted input: read at most this much.
MAX_EXPORT_BYTES = 256 << 20
_FOLDERS = {"sent": "sent", "received": "received"}


def verify_workspace(ws: Workspace) -> VerifyReport:
    """Check the ledger, its checkpoint and the archive against each other (see module doc)."""
    report = VerifyReport()
    try:
        entries = ws.ledger.entries()
    except WorkspaceError as exc:
        report.problems.append(str(exc))
        return report
    _check_presence(ws, entries, report)
    keys = own_keyring(ws)  # entries signed before a 'vfl keys rotate' verify by the retired key
    verify_chain(entries, keys, report)
    check_checkpoint(ws.ledger, entries, keys, report)
    _torn_warnings(ws, report)
    archived = _archived(ws, entries, report)
    _check_logged_files(entries, archived, report)
    _check_job_counts(ws, entries, report)
    return report


def _check_presence(ws: Workspace, entries: list[dict[str, Any]], report: VerifyReport) -> None:
    if ws.ledger.path.exists():
        return
    held = [f for event in _FOLDERS.values() for f in _archive_files(ws, event)]
    if held or ws.ledger.checkpoint() is not None:
        report.problems.append(
            f"{ws.ledger.path.name} is missing, but the archive holds {len(held)} file(s) and "
            f"{ws.ledger.checkpoint_path.name} says it had entries (deleted)"
        )


def _torn_warnings(ws: Workspace, report: VerifyReport) -> None:
    moved = ws.ledger.torn_bytes()
    if moved:
        report.warnings.append(
            f"{TORN} holds {moved} bytes of half-written ledger line(s) moved aside (power loss or "
            "a full disk during an append); the steps that wrote them were logged again"
        )
    if ws.ledger._read()[1]:
        report.warnings.append("the ledger's last line is half-written; the next command moves it "
                               f"into {TORN}")


def _archive_files(ws: Workspace, event: str) -> list[Path]:
    folder = ws.path("archive", _FOLDERS[event])
    if not folder.is_dir():
        return []
    return [f for f in sorted(folder.iterdir()) if not f.name.startswith(".")]


def _pending(ws: Workspace) -> set[tuple[str, str]]:
    """(event, file) of sealed steps not yet applied: archived, not logged yet, and fine."""
    out: set[tuple[str, str]] = set()
    for txn in ws.path("jobs").glob("*/txn"):
        if (txn / "COMMIT").exists():
            plan = json.loads((txn / "plan.json").read_text())
            out |= {(event, e["file"]) for event in ("sent", "received") for e in plan[event]}
    return out


def _archived(ws: Workspace, entries: list[dict[str, Any]],
              report: VerifyReport) -> dict[tuple[str, str], str]:
    """Read and verify every archived file: (event, name) -> SHA-256 (or "" when unreadable).

    Also: a file the ledger does not name means the ledger lost entries; a sent file's signed
    ledger head must still be in the ledger.
    """
    logged = {(e.get("event"), e.get("file")) for e in entries}
    pending = _pending(ws)
    out: dict[tuple[str, str], str] = {}
    for event in _FOLDERS:
        for f in _archive_files(ws, event):
            where = f"archive/{event}/{f.name}"
            if (event, f.name) not in logged and (event, f.name) not in pending:
                report.problems.append(f"{where} is not in the ledger (entries were cut or rolled back)")
            try:
                # this party's own copies: as large as its max_file_size let in (or the default)
                loaded = read_artifact(f, max_bytes=max(ws.max_file_size, MAX_BYTES))
                art = loaded.artifact
                loaded.verify(_verifier(ws, art.sender, where, art.sender_key), what=where)
            except (VflError, KeyMismatch) as exc:
                report.problems.append(str(exc))
                out[(event, f.name)] = ""
                continue
            out[(event, f.name)] = loaded.sha256
            head = art.meta.get("ledger_head")
            if event == "sent" and head is not None:
                problem = check_head(entries, head, what=where)
                if problem:
                    report.problems.append(problem)
    return out


def _verifier(ws: Workspace, sender: str, where: str, fingerprint: str = "") -> Verifier:
    # a file signed before a key rotation, or by a peer since removed, verifies by that key
    old = verifier_for_key(ws, sender, fingerprint) if is_name(sender) else None
    if old is not None:
        return old
    if sender == ws.name:
        return ws.signer.verifier
    card = ws.peers().get(sender)  # by exact name: a sender "../x" is simply unknown
    if card is None:
        raise VflError(f"{where}: its sender {sender[:40]!r} is not a trusted peer")
    return card.verifier


def _check_logged_files(entries: list[dict[str, Any]], archived: dict[tuple[str, str], str],
                        report: VerifyReport) -> None:
    for e in entries:
        event = e.get("event")
        if event not in _FOLDERS:
            continue
        key = (event, str(e.get("file")))
        if key not in archived:
            report.files_missing.append(key[1])
            continue
        report.files_checked += 1
        if archived[key] and archived[key] != e.get("artifact_sha256"):
            report.problems.append(f"archive/{event}/{key[1]}: differs from the file the ledger recorded")


def _check_job_counts(ws: Workspace, entries: list[dict[str, Any]], report: VerifyReport) -> None:
    for state in sorted(ws.path("jobs").glob("*/state.json")):
        try:
            count = json.loads(state.read_text())["engine"].get("ledger_count")
        except (OSError, ValueError, KeyError, AttributeError):
            continue
        if isinstance(count, int) and count > len(entries):
            report.problems.append(
                f"job {state.parent.name} logged its last step as ledger entry {count}; the ledger "
                f"has {len(entries)} (truncated or rolled back)"
            )


# ----- export and reconcile ----------------------------------------------------------------------
def export_ledger(ws: Workspace) -> bytes:
    """This party's whole ledger, signed, for a peer's ``vfl audit reconcile``."""
    body = {
        "format": EXPORT_FORMAT,
        "version": 1,
        "party": ws.name,
        "signing_fingerprint": ws.signer.verifier.fingerprint,
        "exported": now(),
        "entries": ws.ledger.entries(),
    }
    return pretty_json(dict(body, signature=ws.signer.sign(canonical_json(body))))


@dataclass
class ReconcileReport:
    """What ``vfl audit reconcile`` found."""

    peer: str
    files_matched: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "peer": self.peer, "files_matched": self.files_matched,
                "problems": self.problems, "warnings": self.warnings}


def read_export(ws: Workspace, path: Path) -> tuple[str, list[dict[str, Any]]]:
    """A peer's signed export: (peer name, entries), after checking it is the trusted peer's.

    Raises:
        VflError: the file is not an export, not from a trusted peer, or not signed by it.
    """
    try:
        raw = json.loads(bytes(read_regular(path, max_bytes=MAX_EXPORT_BYTES)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise VflError(f"{path} is not a ledger export (made by 'vfl audit export'): {exc}") from None
    if not isinstance(raw, dict) or raw.get("format") != EXPORT_FORMAT or raw.get("version") != 1:
        raise VflError(f"{path} is not a ledger export (made by 'vfl audit export')")
    party, entries = raw.get("party"), raw.get("entries")
    if (not isinstance(party, str) or not is_name(party) or not isinstance(entries, list)
            or not all(isinstance(e, dict) for e in entries)):
        raise VflError(f"{path} is a malformed ledger export (party or entries)")
    if party == ws.name:
        raise VflError(f"{path} is {ws.name}'s own export; reconcile with a peer's export")
    card = ws.peers().get(party)
    if card is None:
        raise VflError(f"{path} is the export of {party}, who is not a trusted peer of {ws.name}")
    body = {k: v for k, v in raw.items() if k != "signature"}
    card.verifier.verify(canonical_json(body), str(raw.get("signature", "")), what=str(path))
    return party, entries


def reconcile(ws: Workspace, path: Path) -> ReconcileReport:
    """Check this party's and a peer's records of every file they exchanged against each other.

    Every file one logged as sent to the other is logged by the other as received with the same
    SHA-256 (a file only one side logged as sent is a warning: still in transit; one only logged
    as received is a problem: the sender's ledger lost it), and the ledger head each side signed
    into the artifacts it sent is a prefix of its ledger now.
    """
    peer, theirs = read_export(ws, path)
    mine = ws.ledger.entries()
    report = ReconcileReport(peer)
    chain = VerifyReport()
    verify_chain(theirs, peer_keyring(ws, peer), chain)
    report.problems += [f"{peer}'s ledger: {p}" for p in chain.problems]
    for sender, recipient, sent_log, got_log in ((ws.name, peer, mine, theirs), (peer, ws.name, theirs, mine)):
        _compare(report, sender, recipient, _transfers(sent_log, "sent", sender, recipient),
                 _transfers(got_log, "received", sender, recipient))
        for e in _transfers(got_log, "received", sender, recipient).values():
            if e.get("sender_ledger") is not None:
                problem = check_head(sent_log, e["sender_ledger"], what=f"{e.get('file')} (from {sender})")
                if problem:
                    report.problems.append(f"{sender}'s ledger: {problem}")
    return report


def _transfers(entries: list[dict[str, Any]], event: str, sender: str,
               recipient: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Entries of ``event`` on the channel sender -> recipient, by (job, step number)."""
    return {(str(e.get("job")), str(e.get("artifact_seq"))): e for e in entries
            if e.get("event") == event and e.get("sender") == sender and e.get("recipient") == recipient}


def _compare(report: ReconcileReport, sender: str, recipient: str,
             sent: dict[tuple[str, str], dict[str, Any]], got: dict[tuple[str, str], dict[str, Any]]) -> None:
    for key, e in got.items():
        s = sent.get(key)
        if s is None:
            report.problems.append(
                f"{recipient} logged {e.get('file')} as received from {sender}, but {sender}'s "
                "ledger has no such send (its ledger was cut or rolled back)")
        elif s.get("artifact_sha256") != e.get("artifact_sha256"):
            report.problems.append(f"{e.get('file')}: {sender} logged SHA-256 {str(s.get('artifact_sha256'))[:16]}, "
                                   f"{recipient} {str(e.get('artifact_sha256'))[:16]}")
        else:
            report.files_matched += 1
    for key, s in sent.items():
        if key not in got:
            report.warnings.append(f"{s.get('file')}: sent by {sender}, not logged as received by "
                                   f"{recipient} (still in transit, or lost)")
