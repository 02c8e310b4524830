"""Issue 12, part B: a ledger that survives power loss and cannot be shortened unseen.

A child process appends in a loop and is killed (SIGKILL) at random moments; torn lines are
written as a power cut leaves them; truncation, rollback and deletion are each found by
``vfl audit verify`` or ``vfl audit reconcile``.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import carry, error_line, run

from vfl_cli import jobs
from vfl_cli.ledger import Ledger
from vfl_cli.workspace import Workspace

APPENDER = """
import sys
from pathlib import Path
from vfl_cli.workspace import Workspace
ws = Workspace(Path(sys.argv[1]))
signer = ws.signer
print("ready", flush=True)
for i in range(10**6):
    ws.ledger.append(signer, "note", n=i, pad="x" * 3000)
"""


def handshake(bank: Path, bureau: Path, job: str) -> None:
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", job)
    carry(bank, bureau)
    run("-w", str(bureau), "job", "accept", job)
    carry(bureau, bank)
    run("-w", str(bank), "step")


def verify(ws: Path) -> dict:
    return json.loads(run("-w", str(ws), "audit", "verify", "--json", ok=False).stdout)


def test_killed_mid_append_the_workspace_stays_usable(two_parties) -> None:
    bank, bureau = two_parties
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", APPENDER, str(bank)], stdout=subprocess.PIPE)
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        time.sleep(0.02 + secrets.randbelow(200) / 1000)  # a random point of the loop
        child.send_signal(signal.SIGKILL)
        child.wait()
        # the next command repairs whatever was torn, and the ledger still chains
        report = json.loads(run("-w", str(bank), "audit", "verify", "--json").stdout)
        assert report["ok"], report["problems"]
        jobs.step(Workspace(bank))
        assert Ledger(bank / "ledger.jsonl").entries()
    handshake(bank, bureau, "after")
    report = json.loads(run("-w", str(bank), "audit", "verify", "--json").stdout)
    assert report["ok"] and report["files_checked"] == 3


def test_a_torn_last_line_is_moved_aside_at_any_byte(two_parties) -> None:
    bank, bureau = two_parties
    handshake(bank, bureau, "hs1")
    ledger = bank / "ledger.jsonl"
    whole = ledger.read_bytes()
    line = json.dumps({"seq": 4, "event": "note", "pad": "y" * 200, "prev": "0" * 64}).encode() + b"\n"
    for cut in sorted({1, len(line) - 1, *(1 + secrets.randbelow(len(line) - 1) for _ in range(4))}):
        ledger.write_bytes(whole + line[:cut])  # a power cut in the middle of an append
        shutil.rmtree(bank / "ledger.torn", ignore_errors=True)
        (bank / "ledger.torn").unlink(missing_ok=True)
        assert len(Ledger(ledger).entries()) == 3  # the torn line is not an entry
        report = verify(bank)
        assert report["ok"] and any("half-written" in w for w in report["warnings"])
        run("-w", str(bank), "step")  # any command under the lock repairs it
        assert ledger.read_bytes() == whole
        assert (bank / "ledger.torn").read_bytes().startswith(line[:cut])
        report = verify(bank)
        assert report["ok"] and any("ledger.torn" in w for w in report["warnings"])
    handshake(bank, bureau, "hs2")  # later commands chain on from the last whole entry
    assert verify(bank)["ok"]


def test_truncation_is_found(two_parties) -> None:
    bank, bureau = two_parties
    handshake(bank, bureau, "hs1")
    ledger = bank / "ledger.jsonl"
    lines = ledger.read_text().splitlines(keepends=True)
    ledger.write_text("".join(lines[:-1]))  # the last entry cut off, cleanly
    message = error_line(run("-w", str(bank), "audit", "verify", ok=False))
    assert "audit failed" in message
    problems = verify(bank)["problems"]
    assert any("not in the ledger" in p for p in problems)
    assert any("ledger.head" in p and "truncated or rolled back" in p for p in problems)


def test_rollback_to_an_older_copy_is_found(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    handshake(bank, bureau, "hs1")
    saved = {n: (bank / n).read_bytes() for n in ("ledger.jsonl", "ledger.head")}
    handshake(bank, bureau, "hs2")
    for name, data in saved.items():  # ledger and its checkpoint restored together
        (bank / name).write_bytes(data)
    problems = verify(bank)["problems"]
    assert any("archive/sent/hs2." in p and "not in the ledger" in p for p in problems)
    assert any("job hs2" in p for p in problems)


def test_a_deleted_ledger_is_found(two_parties) -> None:
    bank, bureau = two_parties
    handshake(bank, bureau, "hs1")
    (bank / "ledger.jsonl").unlink()
    assert "missing" in error_line(run("-w", str(bank), "audit", "verify", ok=False))
    (bank / "ledger.head").unlink()
    assert "audit failed" in error_line(run("-w", str(bank), "audit", "verify", ok=False))


def test_reconcile_agrees_on_an_honest_exchange(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    handshake(bank, bureau, "hs1")
    for me, peer in ((bank, bureau), (bureau, bank)):
        export = tmp_path / f"{peer.name}.ledger.json"
        run("-w", str(peer), "audit", "export", "--out", str(export), "--force")
        out = json.loads(run("-w", str(me), "audit", "reconcile", str(export), "--json").stdout)
        assert out["ok"] and out["files_matched"] == 3 and not out["warnings"]


def test_reconcile_finds_a_whole_workspace_rolled_back(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    handshake(bank, bureau, "hs1")
    copy = tmp_path / "bank-copy"
    shutil.copytree(bank, copy, symlinks=True)
    handshake(bank, bureau, "hs2")
    shutil.rmtree(bank)
    shutil.copytree(copy, bank, symlinks=True)  # ledger, checkpoint, archive and jobs together
    assert verify(bank)["ok"]  # alone, a party cannot see its whole folder restored
    run("-w", str(bureau), "audit", "export", "--out", str(tmp_path / "bureau.json"))
    run("-w", str(bank), "audit", "export", "--out", str(tmp_path / "bank.json"))
    message = error_line(run("-w", str(bank), "audit", "reconcile", str(tmp_path / "bureau.json"), ok=False))
    assert "reconcile with bureau" in message and "no such send" in message
    out = json.loads(run("-w", str(bureau), "audit", "reconcile", str(tmp_path / "bank.json"), "--json",
                         ok=False).stdout)
    assert not out["ok"] and any("hs2." in p and "no such send" in p for p in out["problems"])


def test_reconcile_finds_a_peer_ledger_cut_below_a_head_it_signed(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    handshake(bank, bureau, "hs1")
    handshake(bank, bureau, "hs2")
    # bank cuts its ledger below the head its hs2 files carried, and signs a fresh export
    entries = Ledger(bank / "ledger.jsonl").entries()
    keep = next(i for i, e in enumerate(entries) if e.get("job") == "hs2") - 1
    (bank / "ledger.jsonl").write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries[:keep]))
    run("-w", str(bank), "audit", "export", "--out", str(tmp_path / "bank.json"))
    out = json.loads(run("-w", str(bureau), "audit", "reconcile", str(tmp_path / "bank.json"), "--json",
                         ok=False).stdout)
    assert any("bank's ledger" in p and "truncated or rolled back" in p for p in out["problems"])


def test_reconcile_refuses_an_edited_or_foreign_export(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    handshake(bank, bureau, "hs1")
    export = tmp_path / "bureau.json"
    run("-w", str(bureau), "audit", "export", "--out", str(export))
    raw = json.loads(export.read_text())
    raw["entries"] = raw["entries"][:-1]
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(raw))
    assert "signature" in error_line(run("-w", str(bank), "audit", "reconcile", str(edited), ok=False))
    own = tmp_path / "own.json"
    run("-w", str(bank), "audit", "export", "--out", str(own))
    assert "own export" in error_line(run("-w", str(bank), "audit", "reconcile", str(own), ok=False))
    (tmp_path / "junk.json").write_text("[1, 2")
    assert "not a ledger export" in error_line(
        run("-w", str(bank), "audit", "reconcile", str(tmp_path / "junk.json"), ok=False))
