"""Jobs across vfl versions: a proposal made by a vfl whose protocol has other parameters, and a job
proposed before this vfl added one, are refused with one ``Error:`` line that says what differs and
what to do, never stepped with parameters their parties did not agree on (nor a KeyError)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import carry, error_line, run

from vfl_cli import jobs
from vfl_cli.protocol.align import Align
from vfl_cli.protocol.base import Int, get_protocol, with_legacy


def _files(ws: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for p in sorted(ws.rglob("*")) if p.is_file()}


def test_a_proposal_from_a_vfl_with_another_parameter_is_refused_naming_it(
        two_parties: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    bank, bureau = two_parties
    # the proposer's vfl knows a psi parameter this one does not
    monkeypatch.setattr(Align, "params_spec", {**Align.params_spec, "rounds": Int(3, 1, 9)})
    run("-w", str(bank), "align", "start", "--job", "al")
    monkeypatch.undo()
    carry(bank, bureau)
    line = error_line(run("-w", str(bureau), "job", "accept", "al", ok=False))
    assert "rounds" in line and "another vfl version" in line and "both parties need the same one" in line
    assert not (bureau / "jobs" / "al").exists()  # nothing accepted


def test_a_job_proposed_before_a_parameter_existed_is_not_stepped(two_parties: tuple[Path, Path]) -> None:
    bank, bureau = two_parties
    run("-w", str(bank), "align", "start", "--job", "al")
    carry(bank, bureau)
    run("-w", str(bureau), "job", "accept", "al")
    carry(bureau, bank)
    # as an older vfl wrote it: no salt (the parameter this vfl would now fill with a fresh one)
    info_file = bank / "jobs" / "al" / "job.json"
    info = json.loads(info_file.read_text())
    del info["params"]["salt"]
    info_file.write_text(json.dumps(info))
    before = _files(bank)
    line = error_line(run("-w", str(bank), "step", ok=False))
    assert "job al was started by another vfl version" in line and "no salt" in line
    assert "vfl job cancel al" in line
    assert _files(bank) == before  # nothing stepped, the bureau's reply still in the inbox
    # what it says to do works
    run("-w", str(bank), "job", "cancel", "al")
    shown = json.loads(run("-w", str(bank), "job", "show", "al", "--json").stdout)
    assert shown["phase"] == "cancelled"


def test_params_drift_names_missing_changed_and_unknown_parameters() -> None:
    split = get_protocol("split-nn")
    parties = [{"name": "a", "role": "active"}, {"name": "p", "role": "passive"}]
    checked = split.check_params({"alignment": "al"}, parties)
    assert jobs.params_drift(split, checked, parties) == ""
    older = {k: v for k, v in checked.items() if k != "lr_decay"}
    assert jobs.params_drift(split, older, parties) == "no lr_decay"
    assert "changed" in jobs.params_drift(split, {**checked, "epochs": 3.0, "model": {}}, parties)
    assert "unknown split-nn parameter" in jobs.params_drift(split, {**checked, "warmup": 1}, parties)


def test_a_parameter_added_with_a_legacy_value_keeps_an_older_job_stepping_as_agreed() -> None:
    split = get_protocol("split-nn")
    parties = [{"name": "a", "role": "active"}, {"name": "p", "role": "passive"}]
    checked = split.check_params({"alignment": "al"}, parties)
    older = {k: v for k, v in checked.items() if k != "lr_decay"}  # proposed before lr_decay existed
    stepped = with_legacy(older, split.params_spec)
    assert stepped["lr_decay"] == 0.0 != checked["lr_decay"]  # a constant rate, as its parties agreed
    assert jobs.params_drift(split, stepped, parties) == ""  # so the engine steps it
    assert with_legacy(checked, split.params_spec) == checked  # a current job is left as it is
    # local_steps came later still: a job without it steps A's layers once per exchange, as before
    assert with_legacy({k: v for k, v in checked.items() if k != "local_steps"},
                       split.params_spec)["local_steps"] == 1 != checked["local_steps"]
    # a parameter without a legacy value is not filled: such a job is refused (above)
    assert "salt" not in with_legacy({}, get_protocol("psi").params_spec)
