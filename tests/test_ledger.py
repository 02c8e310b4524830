"""The ledger's hash chain and signatures."""

from __future__ import annotations

import json
from pathlib import Path

from vfl_cli.crypto.signing import Signer
from vfl_cli.ledger import Ledger, VerifyReport, verify_chain

SIGNER = Signer.generate()


def _ledger(tmp_path: Path, n: int = 3) -> Ledger:
    ledger = Ledger(tmp_path / "ledger.jsonl")
    for i in range(n):
        ledger.append(SIGNER, "sent", file=f"f{i}.zip", artifact_sha256=str(i) * 64)
    return ledger


def _verify(ledger: Ledger) -> VerifyReport:
    report = VerifyReport()
    verify_chain(ledger.entries(), SIGNER.verifier, report)
    return report


def test_honest_ledger_verifies(tmp_path: Path) -> None:
    report = _verify(_ledger(tmp_path))
    assert report.ok and report.entries == 3


def test_edited_entry_is_found(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    lines = ledger.path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["file"] = "other.zip"
    lines[1] = json.dumps(entry, sort_keys=True)
    ledger.path.write_text("\n".join(lines) + "\n")
    report = _verify(ledger)
    assert not report.ok
    assert any("entry 2: signature" in p for p in report.problems)


def test_deleted_entry_breaks_the_chain(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path)
    lines = ledger.path.read_text().splitlines()
    ledger.path.write_text("\n".join([lines[0], lines[2]]) + "\n")
    problems = _verify(ledger).problems
    assert any("chain broken" in p for p in problems)


def test_other_key_is_refused(tmp_path: Path) -> None:
    report = VerifyReport()
    verify_chain(_ledger(tmp_path).entries(), Signer.generate().verifier, report)
    assert len(report.problems) == 3
