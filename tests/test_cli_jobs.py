"""Jobs by hand with two workspaces: the handshake, and every refused file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import carry, error_line, introduce, make_party, run

from vfl_cli import jobs
from vfl_cli.workspace import Workspace


def snapshot(ws: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted(ws.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def quarantined(before: dict[str, bytes], after: dict[str, bytes], name: str) -> str:
    """Check that the only change is ``inbox/name`` moved to inbox/rejected/; return the reason."""
    moved = dict(before)
    data = moved.pop(f"inbox/{name}")
    reason = after[f"inbox/rejected/{name}.reason.txt"].decode()
    moved[f"inbox/rejected/{name}"] = data
    moved[f"inbox/rejected/{name}.reason.txt"] = after[f"inbox/rejected/{name}.reason.txt"]
    assert after == moved
    return reason


def start_handshake(bank: Path, job: str = "hs1") -> None:
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", job)


def test_handshake_by_hand(two_parties) -> None:
    bank, bureau = two_parties
    start_handshake(bank)
    assert len(carry(bank, bureau)) == 2  # proposal + hello, one hand-off
    out = json.loads(run("-w", str(bureau), "job", "accept", "hs1", "--json").stdout)
    assert out[0]["done"] and len(out[0]["sent"]) == 1
    carry(bureau, bank)
    out = json.loads(run("-w", str(bank), "step", "--json").stdout)
    assert out[0]["done"] and out[0]["results"] == {"confirmed": ["bureau"]}
    for ws in (bank, bureau):
        verified = json.loads(run("-w", str(ws), "audit", "verify", "--json").stdout)
        assert verified["ok"] and verified["files_checked"] >= 2


def test_step_says_what_to_carry(two_parties) -> None:
    bank, _ = two_parties
    result = run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs1")
    assert "carry it to bureau's inbox" in result.stderr
    result = run("-w", str(bank), "step")
    assert "waiting for handshake/reply from bureau" in result.stderr


def test_step_also_takes_files_from_anywhere(two_parties, tmp_path: Path) -> None:
    bank, bureau = two_parties
    start_handshake(bank)
    drop = tmp_path / "drop"
    drop.mkdir()
    for f in (bank / "outbox").glob("*.zip"):
        shutil.copy(f, drop / f.name)
    proposal = next(drop.glob("*job-proposal*"))
    run("-w", str(bureau), "step", str(proposal))
    assert "waits" in run("-w", str(bureau), "step").stderr  # the proposal is pending acceptance
    run("-w", str(bureau), "job", "accept")
    hello = next(drop.glob("*hello*"))
    run("-w", str(bureau), "step", str(hello))
    assert json.loads(run("-w", str(bureau), "job", "show", "hs1", "--json").stdout)["done"]


def test_tampered_artifact_is_refused_and_nothing_changes(two_parties) -> None:
    bank, bureau = two_parties
    start_handshake(bank)
    carry(bank, bureau)
    hello = next((bureau / "inbox").glob("*hello*"))
    data = bytearray(hello.read_bytes())
    data[len(data) // 2] ^= 0x01
    hello.write_bytes(bytes(data))
    # the proposal is accepted; the damaged file is quarantined with its reason, nothing else
    result = run("-w", str(bureau), "job", "accept", "hs1")
    assert f"Rejected {hello.name}" in result.stderr
    assert hello.name in (bureau / "inbox" / "rejected" / f"{hello.name}.reason.txt").read_text()
    assert jobs.rejected_files(Workspace(bureau))[0]["file"] == hello.name
    before = snapshot(bureau)
    out = json.loads(run("-w", str(bureau), "step", "--json").stdout)
    assert out[0]["waiting_for"] == ["handshake/hello from bank"] and snapshot(bureau) == before


def test_wrong_party_is_refused(two_parties, tmp_path: Path, sample) -> None:
    bank, _ = two_parties
    insurer = make_party(tmp_path, "insurer", "passive", sample("breast_passive.csv"))
    introduce(tmp_path, "bank", "insurer")
    start_handshake(bank)
    for f in (bank / "outbox").glob("*-to-bureau.zip"):
        shutil.copy(f, insurer / "inbox" / f.name)
    before = snapshot(insurer)
    message = error_line(run("-w", str(insurer), "job", "accept", ok=False))
    assert "addressed to bureau" in message and "wrong party" in message and "1 more file" in message
    after = snapshot(insurer)
    assert {k for k in after if k.startswith("inbox/rejected/") and not k.endswith(".txt")} == {
        f"inbox/rejected/{k[6:]}" for k in before if k.startswith("inbox/")}
    assert {k: v for k, v in after.items() if not k.startswith("inbox/")} == {
        k: v for k, v in before.items() if not k.startswith("inbox/")}


def test_replayed_artifact_is_refused(two_parties) -> None:
    bank, bureau = two_parties
    start_handshake(bank)
    saved = {f.name: f.read_bytes() for f in (bank / "outbox").glob("*.zip")}
    carry(bank, bureau)
    run("-w", str(bureau), "job", "accept", "hs1")
    hello = next(n for n in saved if "hello" in n)
    (bureau / "inbox" / hello).write_bytes(saved[hello])
    before = snapshot(bureau)
    out = json.loads(run("-w", str(bureau), "step", "--json").stdout)
    assert "replayed" in out[0]["rejected"][0]["reason"]
    assert "replayed" in quarantined(before, snapshot(bureau), hello)
    proposal = next(n for n in saved if "proposal" in n)
    (bureau / "inbox" / proposal).write_bytes(saved[proposal])
    before = snapshot(bureau)
    message = error_line(run("-w", str(bureau), "job", "accept", ok=False))
    assert "already accepted" in message and f"inbox/rejected/{proposal}" in message
    quarantined(before, snapshot(bureau), proposal)


def test_file_for_an_unaccepted_job_is_refused(two_parties) -> None:
    bank, bureau = two_parties
    start_handshake(bank)
    hello = next((bank / "outbox").glob("*hello*"))
    shutil.move(str(hello), bureau / "inbox" / hello.name)
    result = run("-w", str(bureau), "step")
    assert f"Rejected {hello.name}" in result.stderr and "has not accepted" in result.stderr
    assert "has not accepted" in jobs.rejected_files(Workspace(bureau))[0]["reason"]


def test_early_file_waits_for_the_one_before_it(two_parties) -> None:
    from vfl_cli.artifacts.container import encode, new_artifact

    bank, bureau = two_parties
    start_handshake(bank)
    carry(bank, bureau)
    hello = next((bureau / "inbox").glob("*hello*"))
    saved = hello.read_bytes()
    hello.unlink()  # step 2 has not arrived yet; a genuine, signed step 3 has
    later = new_artifact(kind="handshake/hello", job="hs1", seq=3, step="hello", sender="bank",
                         recipient="bureau", meta={"challenge": "x"})
    (bureau / "inbox" / later.default_name()).write_bytes(encode(later, Workspace(bank).signer,
                                                                          to=Workspace(bureau).signer.verifier))
    run("-w", str(bureau), "job", "accept", "hs1")
    before = snapshot(bureau)
    out = json.loads(run("-w", str(bureau), "step", "--json").stdout)
    assert out[0]["waiting_for"] == ["handshake/hello from bank"] and not out[0]["rejected"]
    assert snapshot(bureau) == before  # it waits in the inbox, untouched
    hello.write_bytes(saved)  # step 2 arrives: the job goes on; the handshake needs no step 3
    out = json.loads(run("-w", str(bureau), "step", "--json").stdout)
    assert out[0]["done"] and out[0]["received"] == [hello.name]
    assert "finished" in out[0]["rejected"][0]["reason"]
    assert not list((bureau / "inbox").glob("*.zip"))


def test_unknown_protocol_and_peer(two_parties) -> None:
    bank, _ = two_parties
    assert "unknown protocol" in error_line(run("-w", str(bank), "job", "start", "--protocol", "nope", ok=False))
    assert "not a trusted peer" in error_line(
        run("-w", str(bank), "job", "start", "--protocol", "handshake", "--with", "ghost", ok=False))


def test_edited_ledger_fails_audit(two_parties) -> None:
    bank, _ = two_parties
    start_handshake(bank)
    ledger = bank / "ledger.jsonl"
    lines = ledger.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["recipient"] = "someone-else"
    lines[0] = json.dumps(entry, sort_keys=True)
    ledger.write_text("\n".join(lines) + "\n")
    message = error_line(run("-w", str(bank), "audit", "verify", ok=False))
    assert "audit failed" in message and "entry 1" in message


def test_tampered_archive_fails_audit(two_parties) -> None:
    bank, _ = two_parties
    start_handshake(bank)
    archived = next((bank / "archive" / "sent").glob("*hello*"))
    data = bytearray(archived.read_bytes())
    data[-5] ^= 1
    archived.write_bytes(bytes(data))
    assert "audit failed" in error_line(run("-w", str(bank), "audit", "verify", ok=False))


def test_step_killed_after_commit_is_completed_without_duplicates(two_parties, monkeypatch) -> None:
    bank, bureau = two_parties
    start_handshake(bank)
    carry(bank, bureau)
    calls = {"n": 0}
    original = jobs._apply

    def crash_midway(ws: Workspace, txn: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the accept commits; the hello step is killed while applying
            plan = json.loads((txn / "plan.json").read_text())
            name = plan["sent"][0]["file"]
            shutil.copyfile(txn / "out" / name, ws.path("archive", "sent", name))
            raise KeyboardInterrupt
        original(ws, txn)

    monkeypatch.setattr(jobs, "_apply", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        jobs.accept_job(Workspace(bureau), "hs1")
    monkeypatch.setattr(jobs, "_apply", original)
    # the next command finishes the committed step exactly once
    reports = jobs.step(Workspace(bureau))
    assert reports == [] or all(not r.sent for r in reports)
    assert len(list((bureau / "outbox").glob("*.zip"))) == 1
    ledger = [json.loads(line) for line in (bureau / "ledger.jsonl").read_text().splitlines()]
    assert [e["event"] for e in ledger] == ["received", "received", "sent"]
    carry(bureau, bank)
    assert json.loads(run("-w", str(bank), "step", "--json").stdout)[0]["done"]
    assert json.loads(run("-w", str(bureau), "audit", "verify", "--json").stdout)["ok"]


def test_step_killed_before_commit_leaves_no_trace(two_parties, monkeypatch) -> None:
    bank, bureau = two_parties
    start_handshake(bank)
    carry(bank, bureau)
    before = snapshot(bureau)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "write_new", killed)  # dies just before the COMMIT marker
    with pytest.raises(KeyboardInterrupt):
        jobs.accept_job(Workspace(bureau), "hs1")
    monkeypatch.undo()
    jobs.step(Workspace(bureau))  # recovery drops the unsealed transaction
    after = snapshot(bureau)
    assert {k: v for k, v in after.items() if not k.startswith("jobs/")} == before
    assert not (bureau / "jobs" / "hs1" / "txn").exists()
    run("-w", str(bureau), "job", "accept", "hs1")
    assert len(list((bureau / "outbox").glob("*.zip"))) == 1
