"""Lint and type checks of the package, as configured in pyproject.toml (issue #13).

``ruff check vfl_cli tests`` (rules E, F, I, B, UP, SIM, C90, over the benchmarks too) and ``mypy`` (``strict = true``,
``files = ["vfl_cli"]``) must both report nothing. They run here so that the README's test
command, ``python -m pytest``, is the whole of CI. Both tools come with the ``test`` extra.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed; install the test extra: pip install -e '.[test]'")
    return subprocess.run([sys.executable, "-m", tool, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)


def test_the_configuration_is_the_agreed_one() -> None:
    """Turning a rule set or strict mode off in pyproject.toml would make the two checks below hollow."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]
    assert config["mypy"]["strict"] is True
    assert config["mypy"]["files"] == ["vfl_cli"]
    assert set(config["ruff"]["lint"]["select"]) >= {"E", "F", "I", "B", "UP", "SIM", "C90"}
    assert config["ruff"]["lint"]["mccabe"]["max-complexity"] <= 10


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "--no-cache", "vfl_cli", "tests")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_mypy_strict_finds_nothing() -> None:
    done = _run("mypy")  # the files and the strict flag come from [tool.mypy] in pyproject.toml
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
