"""docs/getting-started.md, followed as written: two workspaces, one drop folder per direction,
``vfl watch`` running on each side, and only the commands the guide has each party type.

Every command is a real ``vfl`` process; the two watches are killed at the end whatever happens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, TEST_KEY_BITS

from vfl_cli.status import workspace_status
from vfl_cli.workspace import Workspace

POLICY = """\
peers = ["hospital"]
protocols = ["psi", "hetero-lr", "predict"]

[params]
epochs = { max = 50 }
learning_rate = { min = 0.0001, max = 1.0 }
"""
DEADLINE_S = 240


class Party:
    """One party's terminal: the commands it types, counted, and its running watch."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name, self.typed = root, name, 0
        self.watch: subprocess.Popen[str] | None = None
        self.log = root / f"{name}.watch.log"

    def vfl(self, *args: str, cwd: Path | None = None, stdout: Path | None = None) -> str:
        self.typed += 1
        out = stdout.open("w") if stdout else subprocess.PIPE
        proc = subprocess.run([sys.executable, "-m", "vfl_cli", *args], cwd=cwd or self.root / self.name,
                              stdout=out, stderr=subprocess.PIPE, text=True, timeout=120, check=False)
        if stdout:
            out.close()
        assert proc.returncode == 0, f"{self.name}$ vfl {' '.join(args)}\n{proc.stderr}"
        return proc.stdout or ""

    def start_watch(self, *args: str) -> None:
        self.typed += 1
        self.watch = subprocess.Popen(
            [sys.executable, "-m", "vfl_cli", "watch", "--interval", "0.3", *args],
            cwd=self.root / self.name, stderr=self.log.open("w"), text=True)

    def wait_for(self, line: str) -> None:
        """What a person does: read the watch's log until it says so."""
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            if line in self.log.read_text():
                return
            assert self.watch is not None and self.watch.poll() is None, self.log.read_text()
            time.sleep(0.3)
        raise AssertionError(f"{self.name}: no '{line}' in {DEADLINE_S} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.watch is not None and self.watch.poll() is None:
            self.watch.terminate()
            try:
                self.watch.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.watch.kill()
                self.watch.wait()


def setup_party(p: Party, role: str, data: Path, peer: str, label: list[str]) -> None:
    p.vfl("init", p.name, "--role", role, "--data", str(data), "--id-column", "id", *label, cwd=p.root)
    p.vfl("keygen", "--key-bits", str(TEST_KEY_BITS), "--insecure-test-keys")
    p.vfl("keys", "export", "--out", f"../to-{peer}/{p.name}.card")


def wire_party(p: Party, peer: str) -> None:
    p.vfl("keys", "import", f"../to-{p.name}/{peer}.card")  # after comparing fingerprints by phone
    p.vfl("peers", "set-drop", peer, f"../to-{peer}")
    p.vfl("peers", "set-pickup", f"../to-{p.name}")


@pytest.mark.slow
def test_getting_started_with_two_watches(tmp_path: Path) -> None:
    os.environ.pop("VFL_WORKSPACE", None)
    for d in ("to-lab", "to-hospital"):
        (tmp_path / d).mkdir()
    new = tmp_path / "new_patients.csv"  # the hospital's new patients: rows to score, no label
    pd.read_csv(ROOT / "sample_data" / "breast_active.csv").drop(columns="label").iloc[::4].to_csv(new, index=False)
    hospital, lab = Party(tmp_path, "hospital"), Party(tmp_path, "lab")
    try:
        setup_party(hospital, "active", ROOT / "sample_data" / "breast_active.csv", "lab", ["--label-column", "label"])
        setup_party(lab, "passive", ROOT / "sample_data" / "breast_passive.csv", "hospital", [])
        wire_party(hospital, "lab")
        wire_party(lab, "hospital")
        (tmp_path / "lab" / "policy.toml").write_text(POLICY)  # an editor, not a vfl command
        lab.start_watch("--policy", "policy.toml")
        hospital.start_watch()

        hospital.vfl("align", "start", "--job", "al")
        hospital.wait_for("[al] done")
        hospital.vfl("train", "start", "--protocol", "hetero-lr", "--alignment", "al", "--epochs", "5",
                     "--learning-rate", "0.1", "--job", "tr")
        hospital.wait_for("[tr] done")
        metrics = json.loads(hospital.vfl("evaluate", "tr", "--json"))
        assert metrics["test"]["auc"] > 0.9
        weights = hospital.vfl("model", "show", "tr", stdout=tmp_path / "weights.txt")
        hospital.vfl("align", "start", "--data", str(new), "--job", "new")
        hospital.wait_for("[new] done")
        hospital.vfl("predict", "start", "--model", "tr", "--alignment", "new", "--job", "pr")
        hospital.wait_for("[pr] done")
        hospital.vfl("predict", "export", "pr", "--out", "../scores.csv")
        lab.wait_for("[pr] done")
    finally:
        hospital.stop()
        lab.stop()
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) > 50 and scores["score"].between(0, 1).all()
    assert weights == "" and "mean_radius" in (tmp_path / "weights.txt").read_text()  # a table, on stdout
    assert "…" not in (tmp_path / "weights.txt").read_text()
    lab_log = lab.log.read_text()
    for job in ("al", "tr", "new", "pr"):
        assert f"[{job}] accepted the" in lab_log
    assert "error" not in lab_log + hospital.log.read_text()
    assert hospital.typed <= 15 and lab.typed <= 15, (hospital.typed, lab.typed)
    assert not list((tmp_path / "to-lab").glob("*.zip")) and not list((tmp_path / "to-hospital").glob("*.zip"))
    assert hospital.watch is not None and hospital.watch.returncode == 0
    progress = {j["job"]: j for j in workspace_status(Workspace(tmp_path / "hospital"))["jobs"]}
    assert (progress["al"]["sent"], progress["al"]["received"]) == (3, 1)  # proposal, start, finish
    assert progress["tr"]["done"] and progress["tr"]["loss"] is not None and progress["tr"]["received"] >= 5
    assert (progress["tr"]["epochs_done"], progress["tr"]["epochs"]) == (5, 5)
