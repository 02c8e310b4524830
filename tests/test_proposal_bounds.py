"""Proposal bounds: every protocol parameter has a type and a range, checked by the proposer and
by every acceptor; a value outside it is refused with one Error line naming parameter, value and
range (issue 12, "absurd signed parameters pass")."""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import error_line, introduce, make_party, run
from hypothesis import given, settings
from hypothesis import strategies as st

from vfl_cli import jobs
from vfl_cli.errors import VflError
from vfl_cli.protocol.base import REGISTRY, Outgoing, Param, get_protocol, spec_table
from vfl_cli.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
VERTICAL = [{"name": "bank", "role": "active"}, {"name": "bureau", "role": "passive"}]
HFL_PARTIES = [{"name": "srv", "role": "server"}, *({"name": f"w{i}", "role": "worker"} for i in range(3))]


def minimal(protocol: str) -> dict[str, Any]:
    """The smallest valid parameters of a protocol: its required job references, nothing else."""
    return {k: "al" for k, p in spec_of(protocol).items() if p.required}


def check(protocol: str, params: dict[str, Any]) -> dict[str, Any]:
    parties = HFL_PARTIES if protocol == "hfl" else VERTICAL
    return get_protocol(protocol).check_params(params, parties)


def spec_of(protocol: str) -> dict[str, Param]:
    target = getattr(REGISTRY[protocol], "target", REGISTRY[protocol])  # "module:Class"
    module = __import__(target.split(":")[0], fromlist=["x"])
    return dict(getattr(module, "PARAMS", None) or get_protocol(protocol).params_spec)


# ----- each attack of the issue, at the proposer ---------------------------------------------
@pytest.mark.parametrize(("protocol", "key", "value", "span"), [
    ("hetero-lr", "epochs", 10**9, "1..10000"),
    ("split-nn", "epochs", 10**9, "1..10000"),
    ("hfl", "rounds", 10**9, "1..10000"),
    ("hetero-lr", "learning_rate", 1e308, "(0, 10]"),
    ("hfl", "learning_rate", 1e308, "(0, 10]"),
    ("hetero-linear", "seed", -1, "0..2**63-1"),
    ("split-nn", "seed", 2**63, "0..2**63-1"),
    ("hetero-lr", "learning_rate", math.nan, "(0, 10]"),
    ("split-nn", "interactive_lr", math.inf, "(0, 10]"),
    ("hetero-lr", "l2", -math.inf, "[0, 100]"),
    ("hetero-lr", "epochs", True, "1..10000"),  # a bool is not an int
    ("hetero-lr", "whiten", 1, "true or false"),  # and an int is not a bool
    ("hfl", "secure_aggregation", "yes", "true or false"),
    ("hetero-lr", "epochs", "10", "1..10000"),  # text is not parsed into a number
    ("hetero-lr", "epochs", 2.5, "1..10000"),
    ("hfl", "hidden", [16] * 17, "1..16 whole numbers"),
    ("hfl", "hidden", [0], "1..4096"),
    ("hfl", "hidden", "16", "1..16 whole numbers"),
    ("hetero-lr", "batch_size", -1, "0..100000000"),
    ("split-nn", "test_fraction", 1.0, "(0, 1)"),
    ("psi", "salt", "00" * 8, "16..64 bytes"),
    ("psi", "salt", "zz" * 16, "16..64 bytes"),
    ("hetero-lr", "optimizer", "lbfgs", "one of "),
])
def test_out_of_range_values_are_refused_naming_parameter_value_and_range(
        protocol: str, key: str, value: Any, span: str) -> None:
    with pytest.raises(VflError) as err:
        check(protocol, {**minimal(protocol), key: value})
    message = str(err.value)
    assert key in message and span in message and repr(value)[:20] in message
    assert "\n" not in message


@pytest.mark.parametrize("value", ["/etc/passwd", "../tr1", "zz/../tr1", "", "al\n", 7, None, ["al"]])
def test_job_references_are_names_never_paths(value: Any) -> None:
    for protocol, key in [("hetero-lr", "alignment"), ("split-nn", "alignment"), ("predict", "model")]:
        with pytest.raises(VflError, match=f"{key} must be a job id"):
            check(protocol, {**minimal(protocol), key: value})


@pytest.mark.parametrize("protocol", sorted(REGISTRY))
def test_unknown_parameters_and_non_tables_are_refused(protocol: str) -> None:
    with pytest.raises(VflError, match=f"unknown {'training' if 'hetero' in protocol else protocol}"):
        check(protocol, {**minimal(protocol), "nope": 1})
    for params in ("epochs=3", ["epochs", 3], 3):
        with pytest.raises(VflError, match="parameters must be a table"):
            check(protocol, params)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", sorted(REGISTRY))
def test_checked_parameters_are_their_own_checked_form(protocol: str) -> None:
    checked = check(protocol, minimal(protocol))
    assert check(protocol, json.loads(json.dumps(checked))) == checked  # as an acceptor sees them


def test_duplicated_parties_are_refused() -> None:
    parties = [{"name": "bank", "role": "active"}, {"name": "bureau", "role": "passive"},
               {"name": "bureau", "role": "passive"}]
    for protocol in ("hetero-lr", "psi", "handshake"):
        with pytest.raises(VflError, match="bureau is named more than once"):
            get_protocol(protocol).check_parties(parties)
    with pytest.raises(VflError, match="w1 is named more than once"):
        get_protocol("hfl").check_parties([*HFL_PARTIES, {"name": "w1", "role": "predictor"}])


def test_protocol_name_must_be_a_known_string() -> None:
    for name in (["psi"], None, 3, "../psi"):
        with pytest.raises(VflError, match="unknown protocol"):
            get_protocol(name)  # type: ignore[arg-type]


# Values of every JSON type, with the edges of the ranges and non-finite floats.
JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 10_000, 10_001, 2**63 - 1, 2**63, 0.0, 1.0, 10.0, 10.000001, 1e-300]),
    st.text(max_size=8), st.lists(st.integers(-5, 5000), max_size=20),
)


@settings(max_examples=150, deadline=None)
@given(protocol=st.sampled_from(sorted(REGISTRY)), data=st.data())
def test_any_value_is_refused_cleanly_or_checked_into_its_range(protocol: str, data: st.DataObject) -> None:
    spec = spec_of(protocol)
    keys = [k for k in spec if not spec[k].required]
    if not keys:
        return
    key = data.draw(st.sampled_from(keys))
    value = data.draw(JSON_VALUES)
    try:
        out = check(protocol, {**minimal(protocol), key: value})
    except VflError as exc:
        assert key in str(exc) and "\n" not in str(exc)
        return
    p, got = spec[key], out[key]
    assert not isinstance(value, bool) or p.kind == "bool"
    if p.kind in ("int", "float"):
        assert isinstance(got, (int, float)) and math.isfinite(got) and p.low <= got <= p.high
    assert check(protocol, json.loads(json.dumps(out))) == out


DOCS = {"hetero-lr": "hetero-linear.md", "split-nn": "split-nn.md", "hfl": "hfl.md", "psi": "psi.md",
        "secureboost": "secureboost.md"}
TABLE = re.compile(r"\| parameter \| default \| allowed \|\n(?:\|.*\|\n)+")


def test_the_protocol_docs_state_the_checked_ranges() -> None:
    for protocol, doc in DOCS.items():
        text = (ROOT / "docs" / "protocols" / doc).read_text()
        assert spec_table(spec_of(protocol)) + "\n" in text, (
            f"docs/protocols/{doc} lacks {protocol}'s parameter table; after changing a parameter "
            "run: python tests/test_proposal_bounds.py --fix-docs")


def fix_docs() -> None:
    """Rewrite each protocol doc's parameter table from the code."""
    for protocol, doc in DOCS.items():
        path = ROOT / "docs" / "protocols" / doc
        table = spec_table(spec_of(protocol)) + "\n"
        text, n = TABLE.subn(lambda _, table=table: table, path.read_text(), count=1)
        if n != 1:
            raise SystemExit(f"{path}: no parameter table to replace")
        path.write_text(text)


# ----- the same values in a signed proposal, at the acceptor ----------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bounds")
    bank = make_party(root, "bank", "active", ROOT / "sample_data" / "breast_active.csv", label_column="label")
    bureau = make_party(root, "bureau", "passive", ROOT / "sample_data" / "breast_passive.csv")
    introduce(root, "bank", "bureau")
    return bank, bureau


def propose(bank: Path, bureau: Path, job: str, **meta: Any) -> Path:
    """A proposal signed with bank's real key, made by the engine's own artifact path."""
    ws = Workspace(bank)
    body = {"protocol": "hetero-lr", "params": check("hetero-lr", {"alignment": "al"}), "proposer": "bank",
            "parties": [jobs._party_entry(ws.card()), jobs._party_entry(ws.peer("bureau"))], **meta}
    ((name, data, _),) = jobs._to_artifacts(ws, job, {"next_seq": {}}, [
        Outgoing("bureau", jobs.PROPOSAL, "proposal", meta=body)])
    path = bureau / "inbox" / name
    path.write_bytes(data)
    return path


def refusal(bureau: Path, job: str, path: Path) -> str:
    """Why bureau refused the proposal: its one Error line, or its quarantine reason."""
    result = run("-w", str(bureau), "job", "accept", job, ok=False)
    assert not (bureau / "jobs" / job / "job.json").exists()
    if result.exit_code == 1:
        reason = error_line(result)
    else:
        reason_file = next((bureau / "inbox" / "rejected").glob(f"{path.name}*reason*"))
        reason = reason_file.read_text()
    assert "Traceback" not in result.output
    path.unlink(missing_ok=True)
    return reason


@pytest.mark.parametrize(("job", "change", "expected"), [
    ("b1", {"epochs": 10**9}, "epochs must be a whole number in 1..10000, not 1000000000"),
    ("b2", {"learning_rate": 1e308}, "learning_rate must be a finite number in (0, 10], not 1e+308"),
    ("b3", {"seed": -1}, "seed must be a whole number in 0..2**63-1, not -1"),
    ("b4", {"epochs": True}, "epochs must be a whole number in 1..10000, not True"),
    ("b5", {"alignment": "/tmp/evil"}, "alignment must be a job id"),
    ("b6", {"whiten": 1}, "whiten must be true or false, not 1"),
])
def test_a_signed_proposal_with_absurd_parameters_is_refused(pair, job: str, change: dict[str, Any],
                                                            expected: str) -> None:
    bank, bureau = pair
    params = {**check("hetero-lr", {"alignment": "al"}), **change}
    path = propose(bank, bureau, job, params=params)
    assert expected in refusal(bureau, job, path)


@pytest.mark.parametrize(("job", "meta", "expected"), [
    ("p1", {"parties": "bank,bureau"}, "parties must be a list"),
    ("p2", {"parties": None}, "parties must be a list"),
    ("p3", {"parties": ["bank", "bureau"]}, "a malformed party"),
    ("p4", {"params": "epochs=3"}, "parameters must be a table"),
    ("p5", {"protocol": ["hetero-lr"]}, "unknown protocol"),
])
def test_a_signed_proposal_with_malformed_terms_is_refused(pair, job: str, meta: dict[str, Any],
                                                           expected: str) -> None:
    bank, bureau = pair
    path = propose(bank, bureau, job, **meta)
    assert expected in refusal(bureau, job, path)


def test_a_signed_proposal_naming_a_party_twice_is_refused(pair) -> None:
    bank, bureau = pair
    ws = Workspace(bank)
    twice = [jobs._party_entry(ws.card()), *[jobs._party_entry(ws.peer("bureau"))] * 2]
    path = propose(bank, bureau, "d1", parties=twice)
    assert "bureau is named more than once" in refusal(bureau, "d1", path)


def test_the_proposer_refuses_absurd_values_from_the_command_line(pair) -> None:
    bank, _ = pair
    base = ["-w", str(bank), "job", "start", "--protocol", "hetero-lr", "--param", "alignment=al"]
    for param, expected in [("epochs=1000000000", "epochs must be a whole number in 1..10000"),
                            ("learning_rate=1e308", "learning_rate must be a finite number in (0, 10]"),
                            ("seed=-1", "seed must be a whole number in 0..2**63-1, not -1"),
                            ("l2=NaN", "l2 must be a finite number in [0, 100], not nan"),
                            ("l2=Infinity", "l2 must be a finite number in [0, 100], not inf")]:
        assert expected in error_line(run(*base, "--param", param, ok=False))
    assert not (bank / "jobs").exists() or not any((bank / "jobs").iterdir())


if __name__ == "__main__" and sys.argv[1:] == ["--fix-docs"]:
    fix_docs()
