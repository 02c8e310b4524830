"""Shared fixtures: the real ``vfl`` command through CliRunner, party workspaces, sample data."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from vfl_cli.cli import cli

ROOT = Path(__file__).resolve().parents[1]
FATE = ROOT / "sample_data" / "fate"
TEST_KEY_BITS = 512

# Unit tests run the engine in-process: no worker pools to start per test.
os.environ.setdefault("VFL_N_JOBS", "1")


def fate(name: str) -> Path:
    """A FATE example data file from sample_data/fate/ (see its SOURCES.md)."""
    path = FATE / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in sample_data/fate/ (see its SOURCES.md)")
    return path


@pytest.fixture
def sample() -> Callable[[str], Path]:
    return lambda name: ROOT / "sample_data" / name


def run(*args: str, ok: bool = True) -> Result:
    """Run ``vfl ARGS``. Success paths raise on any exception; failures return the result."""
    result = CliRunner().invoke(cli, list(args), catch_exceptions=not ok)
    if ok and result.exit_code != 0:
        raise AssertionError(f"vfl {' '.join(args)} exited {result.exit_code}:\n{result.output}")
    return result


def error_line(result: Result) -> str:
    """The single ``Error:`` line of a failed command (and check it failed as a user error)."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def make_party(root: Path, name: str, role: str, data: Path, id_column: str = "id",
               label_column: str | None = None) -> Path:
    ws = root / name
    args = ["init", str(ws), "--name", name, "--role", role, "--data", str(data), "--id-column", id_column]
    if label_column:
        args += ["--label-column", label_column]
    run(*args)
    run("-w", str(ws), "keygen", "--key-bits", str(TEST_KEY_BITS), "--insecure-test-keys")
    run("-w", str(ws), "keys", "export", "--out", str(root / f"{name}.card"))
    return ws


def introduce(root: Path, *names: str) -> None:
    for a in names:
        for b in names:
            if a != b:
                run("-w", str(root / a), "keys", "import", str(root / f"{b}.card"))


def carry(src: Path, dst: Path) -> list[str]:
    """Move every file in ``src``'s outbox addressed to ``dst`` into ``dst``'s inbox."""
    moved = []
    for f in sorted((src / "outbox").glob(f"*-to-{dst.name}.zip")):
        shutil.move(str(f), dst / "inbox" / f.name)
        moved.append(f.name)
    return moved


def received(ws: Path, job: str) -> list[Any]:
    """Every artifact of ``job`` that the party at ``ws`` received, opened with its own key (what
    an attack playing that party may read)."""
    from vfl_cli.artifacts.container import read_artifact
    from vfl_cli.workspace import Workspace

    w = Workspace(ws)
    files = sorted((ws / "archive" / "received").glob(f"{job}.*.zip"))
    return [read_artifact(f).open(w.signer, w.name).artifact for f in files]


def drive(parties: list[Path], job: str, *, limit: int = 10_000) -> None:
    """Carry files and step every party in-process until all are done (like the recipe runner)."""
    from vfl_cli import jobs
    from vfl_cli.workspace import Workspace

    for _ in range(limit):
        for src in parties:
            for dst in parties:
                if src != dst:
                    carry(src, dst)
        done = 0
        for ws in parties:
            w = Workspace(ws)
            if (ws / "jobs" / job / "job.json").exists():
                reports = jobs.step(w, job)
            elif any((ws / "inbox").glob(f"{job}.001.*")):
                reports = jobs.accept_job(w, job)
            else:
                continue
            done += all(r.done for r in reports)
        if done == len(parties):
            return
    raise AssertionError("job did not finish")


def drive_with_crashes(parties: list[Path], job: str, monkeypatch: pytest.MonkeyPatch, *, every: int,
                       tries: int = 400) -> None:
    """Drive a job while every ``every``-th commit dies half-way through being applied.

    The dying commit has already copied one outgoing file into the archive, then raises
    KeyboardInterrupt, as a killed process would stop; the next command must finish it.
    """
    import json

    from vfl_cli import jobs

    calls = {"n": 0}
    original = jobs._apply

    def flaky(ws: Any, txn: Path) -> None:
        calls["n"] += 1
        if calls["n"] % every == 0:
            plan = json.loads((txn / "plan.json").read_text())
            for e in plan["sent"][:1]:
                shutil.copyfile(txn / "out" / e["file"], ws.path("archive", "sent", e["file"]))
            raise KeyboardInterrupt
        original(ws, txn)

    monkeypatch.setattr(jobs, "_apply", flaky)
    for _ in range(tries):
        try:
            drive(parties, job, limit=1)
        except (KeyboardInterrupt, AssertionError):
            continue
        break
    monkeypatch.setattr(jobs, "_apply", original)
    drive(parties, job)


@pytest.fixture
def two_parties(tmp_path: Path, sample: Callable[[str], Path]) -> tuple[Path, Path]:
    bank = make_party(tmp_path, "bank", "active", sample("breast_active.csv"), label_column="label")
    bureau = make_party(tmp_path, "bureau", "passive", sample("breast_passive.csv"))
    introduce(tmp_path, "bank", "bureau")
    return bank, bureau
