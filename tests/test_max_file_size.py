"""The size cap on untrusted files is a workspace setting (issue 12, "bounded work before trust").

``vfl init --max-file-size`` or ``vfl config set max_file_size SIZE`` stores it in vfl.json
(default 2 GiB, room for a 10M-id alignment); every read of a file from outside (the inbox,
'vfl step FILE', a drop folder, 'vfl inspect' inside the workspace) uses it, and a file over it
is quarantined with a reason that names the setting and how to raise it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import carry, error_line, run

from vfl_cli import jobs, workspace
from vfl_cli.artifacts.container import MAX_BYTES
from vfl_cli.workspace import Workspace, format_size, parse_size


def test_init_and_config_store_the_setting(tmp_path: Path, sample) -> None:
    ws = tmp_path / "bank"
    run("init", str(ws), "--role", "active", "--data", str(sample("breast_active.csv")), "--id-column", "id",
        "--label-column", "label", "--max-file-size", "3GiB")
    assert json.loads((ws / "vfl.json").read_text())["max_file_size"] == 3 << 30
    shown = json.loads(run("-w", str(ws), "config", "--json").stdout)
    assert shown["max_file_size"] == {"value": 3 << 30, "default": False}
    run("-w", str(ws), "config", "set", "max_file_size", "500MB")
    assert Workspace(ws).max_file_size == 500_000_000
    assert "max_file_size = 477 MiB" in run("-w", str(ws), "config").stdout


@pytest.mark.parametrize("args, message", [
    (("set", "max_file_size", "8GiB"), "between 1 MiB and 4 GiB"),
    (("set", "max_file_size", "lots"), "must be a size such as 2GiB"),
    (("set", "max_file_size", "10"), "between 1 MiB and 4 GiB"),
    (("set", "max_bytes", "1GiB"), "unknown setting 'max_bytes'"),
])
def test_a_bad_setting_is_refused_and_nothing_changes(two_parties, args: tuple[str, ...], message: str) -> None:
    bank, _ = two_parties
    before = (bank / "vfl.json").read_bytes()
    assert message in error_line(run("-w", str(bank), "config", *args, ok=False))
    assert (bank / "vfl.json").read_bytes() == before


def test_the_default_fits_the_largest_file_of_a_10m_id_alignment(two_parties) -> None:
    """Measured, not assumed: bytes per id of the largest file of a real alignment (569 ids,
    fixed overhead counted as if it grew with the ids, so an over-estimate) times 10M."""
    bank, bureau = two_parties
    assert Workspace(bank).max_file_size == MAX_BYTES == 2 << 30
    run("-w", str(bank), "job", "start", "--protocol", "psi", "--job", "al")
    largest = 0
    for _ in range(6):
        for a, b in ((bank, bureau), (bureau, bank)):
            largest = max([largest, *((a / "outbox" / f).stat().st_size for f in
                                      [p.name for p in (a / "outbox").glob("*-to-*.zip")])])
            carry(a, b)
        if (bureau / "jobs" / "al").exists():
            run("-w", str(bureau), "step")
        else:
            run("-w", str(bureau), "job", "accept", "al")
        run("-w", str(bank), "step")
    ids = len(Workspace(bank).read_data())
    assert largest > 32 * ids  # the file holding one curve point per id was seen
    assert 10_000_000 * largest / ids < MAX_BYTES, f"{largest / ids:.1f} B/id"


def test_a_file_over_the_setting_is_quarantined_naming_it_then_taken_once_raised(
        two_parties, monkeypatch: pytest.MonkeyPatch) -> None:
    bank, bureau = two_parties
    # the 1 MiB floor of the setting is lowered so that a handshake file (a few kB) can exceed it
    monkeypatch.setattr(workspace, "MIN_FILE_SIZE", 1)
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    files = carry(bank, bureau)  # the proposal and the hello
    sizes = {f: (bureau / "inbox" / f).stat().st_size for f in files}
    run("-w", str(bureau), "config", "set", "max_file_size", str(min(sizes.values()) - 1))
    result = run("-w", str(bureau), "job", "accept", "hs", ok=False)
    assert "Traceback" not in result.output
    listed = {r["file"]: r["reason"] for r in jobs.rejected_files(Workspace(bureau))}
    assert set(listed) == set(files)
    for f, reason in listed.items():
        assert f"{sizes[f]:,} bytes exceeds this workspace's max_file_size setting" in reason
        assert "vfl config set max_file_size" in reason
        assert f in run("-w", str(bureau), "status").output
    assert not (bureau / "jobs" / "hs").exists()  # the refused files changed nothing
    # raised again: the same files, handed over again, are taken
    run("-w", str(bureau), "config", "set", "max_file_size", "2GiB")
    for f in files:
        shutil.move(str(bureau / "inbox" / "rejected" / f), bureau / "inbox" / f)
    run("-w", str(bureau), "job", "accept", "hs")
    assert jobs.load_state(Workspace(bureau), "hs")[0].phase != "start"


def test_step_with_a_file_argument_uses_the_setting_too(two_parties, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    bank, bureau = two_parties
    monkeypatch.setattr(workspace, "MIN_FILE_SIZE", 1)
    run("-w", str(bank), "job", "start", "--protocol", "handshake", "--job", "hs")
    hello = max((bank / "outbox").glob("*-to-bureau.zip"), key=lambda f: f.stat().st_size)
    run("-w", str(bureau), "config", "set", "max_file_size", str(hello.stat().st_size - 1))
    line = error_line(run("-w", str(bureau), "step", str(hello), ok=False))
    assert "max_file_size" in line and not (bureau / "inbox" / hello.name).exists()


def test_sizes_are_read_as_people_write_them() -> None:
    assert parse_size("2GiB") == 2 << 30 and parse_size("1.5 GiB") == 3 << 29
    assert parse_size("500MB") == 500_000_000 and parse_size(4 << 30) == 4 << 30
    assert format_size(2 << 30) == "2 GiB" and format_size(3 << 29) == "1.5 GiB"
