"""``vfl status`` and results on stdout, never cut when piped (issue 16)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import carry, run


def vfl_to_file(ws: Path, out: Path, *args: str) -> str:
    """Run ``vfl -w WS ARGS > OUT`` as a real process (stdout a file, not a terminal)."""
    with out.open("w") as fh:
        subprocess.run([sys.executable, "-m", "vfl_cli", "-w", str(ws), *args], stdout=fh,
                       stderr=subprocess.PIPE, check=True, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"})
    return out.read_text()


def test_status_lists_jobs_files_to_carry_arrived_and_rejected(two_parties) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    s = json.loads(run("-w", str(bank), "status", "--json").stdout)
    assert [(j["job"], j["phase"], j["done"], j["sent"], j["received"]) for j in s["jobs"]] == [
        ("hs", "wait-replies", False, 2, 0)]
    assert [(o["file"], o["recipient"], o["drop"]) for o in s["outbox"]] == [
        ("hs.001.job-proposal.bank-to-bureau.zip", "bureau", None),
        ("hs.002.hello.bank-to-bureau.zip", "bureau", None)]
    carry(bank, bureau)
    (bureau / "inbox" / "junk.001.hello.bank-to-bureau.zip").write_bytes(b"junk")
    text = run("-w", str(bureau), "status").stdout
    assert "Arrived, not used yet (3):" in text
    assert "hs.001.job-proposal.bank-to-bureau.zip  (a proposal: vfl job accept / vfl job reject)" in text
    run("-w", str(bureau), "job", "accept", "hs")
    s = json.loads(run("-w", str(bureau), "status", "--json").stdout)
    assert [(j["job"], j["done"], j["received"], j["sent"]) for j in s["jobs"]] == [("hs", True, 2, 1)]
    assert s["inbox"] == []
    assert [r["file"] for r in s["rejected"]] == ["junk.001.hello.bank-to-bureau.zip"]
    assert s["rejected"][0]["reason"]
    text = run("-w", str(bureau), "status").stdout
    assert "Rejected (1):\n  junk.001.hello.bank-to-bureau.zip: " in text
    assert "hs.001.reply.bureau-to-bank.zip  -> bank" in text


def test_audit_show_writes_the_whole_table_to_a_file(two_parties, tmp_path: Path) -> None:
    bank, _ = two_parties
    long_job = "handshake-with-a-long-job-name-1"
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", long_job)
    text = vfl_to_file(bank, tmp_path / "audit.txt", "audit", "show")
    assert "…" not in text and "\x1b[" not in text  # nothing cut, no colour codes in a file
    for f in (bank / "archive" / "sent").iterdir():
        assert f.name in text
    assert max(len(line) for line in text.splitlines()) > 120
    jobs = vfl_to_file(bank, tmp_path / "jobs.txt", "job", "list")
    assert long_job in jobs and "…" not in jobs
    shown = vfl_to_file(bank, tmp_path / "job.txt", "job", "show", long_job)
    assert json.loads(shown)["job"] == long_job  # plain JSON on stdout, no colour codes
