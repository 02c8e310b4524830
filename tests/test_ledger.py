"""The ledger's hash chain and signatures."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_every_append_is_fsynced(tmp_path: Path, monkeypatch) -> None:
    import os
    import stat

    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    ledger = _ledger(tmp_path, 2)
    ledger_file = str(ledger.path)
    assert synced.count(ledger_file) == 2  # each entry, before the command goes on
    assert synced[synced.index(ledger_file) + 1] == "dir"  # the folder, when the file was created


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=0, max_value=10_000))
def test_a_torn_tail_is_never_an_entry(tmp_path_factory, cut: int) -> None:
    folder = tmp_path_factory.mktemp("torn")
    ledger = _ledger(folder, 2)
    whole = ledger.path.read_bytes()
    extra = Ledger(folder / "other.jsonl")
    extra.append(SIGNER, "sent", file="x.zip", artifact_sha256="9" * 64)
    line = extra.path.read_bytes()
    torn = line[: cut % len(line)]
    ledger.path.write_bytes(whole + torn)
    assert len(Ledger(ledger.path).entries()) == 2
    assert Ledger(ledger.path).repair() == len(torn)
    assert ledger.path.read_bytes() == whole
    assert _verify(Ledger(ledger.path)).ok
