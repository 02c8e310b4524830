"""Recipes through the real command: separate vfl processes, files carried between folders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, error_line, run

HANDSHAKE = ROOT / "recipes" / "handshake.toml"


def write_recipe(tmp_path: Path, body: str) -> Path:
    f = tmp_path / "r.toml"
    f.write_text(body)
    return f


def small(recipe: Path, tmp_path: Path, **replace: str) -> Path:
    """A copy of a shipped recipe with small test keys and absolute data paths."""
    text = recipe.read_text().replace('"../sample_data/', f'"{ROOT}/sample_data/')
    text = text.replace("key_bits = 1024", "key_bits = 512").replace("key_bits = 2048", "key_bits = 512")
    for old, new in replace.items():
        text = text.replace(old, new)
    out = tmp_path / recipe.name
    out.write_text(text)
    return out


def test_handshake_recipe_runs_through_separate_processes(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "vfl_cli", "recipe", "run", str(small(HANDSHAKE, tmp_path)),
         "--workdir", str(work), "--json"],
        capture_output=True, text=True, check=True,
    )
    report = json.loads(proc.stdout)
    assert report == json.loads((work / "report.json").read_text())
    assert report["recipe"] == "handshake" and report["protocol"] == "handshake"
    assert report["exchanges"] == 3  # proposal + hello, then reply
    assert report["bytes_exchanged"] > 0
    assert {"setup", "handshake", "total"} <= set(report["timings_s"])
    for party in ("bank", "bureau"):
        assert not list((work / party / "inbox").glob("*.zip"))
        run("-w", str(work / party), "audit", "verify")


def test_recipe_script_lists_every_partys_commands(tmp_path: Path) -> None:
    text = run("recipe", "script", str(HANDSHAKE)).stdout
    assert text.startswith("#!/bin/sh")
    for needle in ("vfl init bank", "vfl init bureau", "vfl keys import bureau.card",
                   "vfl job start --protocol handshake", "vfl job accept handshake-handshake"):
        assert needle in text


@pytest.mark.parametrize("body, message", [
    ("not toml [", "not valid TOML"),
    ("[recipe]\nname='x'\n", "needs a [recipe] table with name and protocol"),
    ("[recipe]\nprotocol='handshake'\n[[party]]\nname='a'\nrole='active'\n", "lacks data, id_column"),
    ("[recipe]\nprotocol='handshake'\n[[party]]\nname='a'\nrole='active'\ndata='x'\nid_column='id'\n",
     "one active party and at least one passive"),
    ("[recipe]\nprotocol='handshake'\n[trian]\n", "unknown table"),
])
def test_recipe_mistakes(tmp_path: Path, body: str, message: str) -> None:
    result = run("recipe", "run", str(write_recipe(tmp_path, body)), "--workdir", str(tmp_path / "w"), ok=False)
    assert message in error_line(result)
    assert not (tmp_path / "w").exists()


def test_recipe_refuses_a_used_workdir(tmp_path: Path) -> None:
    work = tmp_path / "w"
    work.mkdir()
    (work / "keep.txt").write_text("x")
    result = run("recipe", "run", str(small(HANDSHAKE, tmp_path)), "--workdir", str(work), ok=False)
    assert "not empty" in error_line(result)
    assert (work / "keep.txt").read_text() == "x"


def test_recipe_reports_a_partys_failure(tmp_path: Path) -> None:
    bad = small(HANDSHAKE, tmp_path, **{'label_column = "label"': 'label_column = "nope"'})
    message = error_line(run("recipe", "run", str(bad), "--workdir", str(tmp_path / "w"), ok=False))
    assert "no label column 'nope'" in message


def test_dask_scheduler_option_runs_the_engine_on_a_cluster(two_parties, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    from conftest import carry

    bank, bureau = two_parties
    with distributed.LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        run("--dask-scheduler", cluster.scheduler_address, "-w", str(bank), "align", "start", "--job", "al")
        carry(bank, bureau)
        run("--dask-scheduler", cluster.scheduler_address, "-w", str(bureau), "align", "respond", "al")
    assert list((bureau / "outbox").glob("al.*response*"))
