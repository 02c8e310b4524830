"""Recipes through the real command: separate vfl processes, files carried between folders."""

from __future__ import annotations

import json
import os
import re
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
    text = re.sub(r"(?m)^key_bits = (1024|2048)\b", "key_bits = 512", text)  # not in comments
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


def run_scripts(recipe: Path, tmp_path: Path, timeout: float) -> dict[str, subprocess.CompletedProcess[str]]:
    """Write the per-party scripts and run them at once, each as its own shell, as on two machines."""
    out = tmp_path / "scripts"
    run("recipe", "script", str(recipe), "--out-dir", str(out))
    env = dict(os.environ, VFL=f"{sys.executable} -m vfl_cli")
    env.pop("VFL_WORKSPACE", None)
    procs = {}
    for script in sorted(out.glob("*.sh"), reverse=True):  # the responder first: order is free
        work = tmp_path / f"machine-{script.stem}"
        work.mkdir()
        procs[script.stem] = subprocess.Popen(["sh", str(script), str(tmp_path / "exchange"), str(work)],
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    done = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=timeout)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def test_recipe_scripts_run_one_per_party(tmp_path: Path) -> None:
    done = run_scripts(small(HANDSHAKE, tmp_path), tmp_path, timeout=180)
    for name, proc in done.items():
        assert proc.returncode == 0, f"{name}.sh:\n{proc.stderr}"
    assert done["bureau"].stdout.strip() == "bureau: done"
    assert (tmp_path / "machine-bank" / "bank" / "report.html").exists()
    status = run("-w", str(tmp_path / "machine-bureau" / "bureau"), "status", "--json").stdout
    assert json.loads(status)["jobs"][0]["done"]
    text = (tmp_path / "scripts" / "bank.sh").read_text()
    assert text.index("while [ ! -f") < text.index("keys import") < text.index("job start")
    err = error_line(run("recipe", "script", str(HANDSHAKE), "--out-dir", str(tmp_path / "scripts"), ok=False))
    assert err == f"Error: {tmp_path / 'scripts' / 'bank.sh'} already exists; choose another name or pass --force"


@pytest.mark.slow
def test_recipe_scripts_train_evaluate_and_report(tmp_path: Path) -> None:
    recipe = small(ROOT / "recipes" / "demo.toml", tmp_path, **{"\nkey_bits = 512": "\nkey_bits = 512\nepochs = 3"})
    done = run_scripts(recipe, tmp_path, timeout=400)
    for name, proc in done.items():
        assert proc.returncode == 0, f"{name}.sh:\n{proc.stderr}"
    assert "auc" in done["hospital"].stdout  # vfl evaluate's table, on stdout
    assert (tmp_path / "machine-hospital" / "hospital" / "report.html").stat().st_size > 1000
    assert not list((tmp_path / "exchange").rglob("*.zip"))  # every file was picked up


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
