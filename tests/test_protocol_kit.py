"""The protocol kit: a toy protocol added by this file alone plus one registry line.

``row-count`` (the example of docs/protocols/README.md): the active party sends every passive
party a fresh nonce; each answers with the nonce and the number of rows in its data file (an
aggregate it agrees to reveal). It runs through the real ``vfl`` commands, like any protocol.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import carry, error_line, run

from vfl_cli.artifacts.container import Artifact
from vfl_cli.crypto import paillier
from vfl_cli.errors import CryptoError, InvalidArtifact, VflError
from vfl_cli.protocol.base import Expect, JobState, PartyContext
from vfl_cli.protocol.kit import KitProtocol, Message, PartyState, Phase, Step, nothing
from vfl_cli.protocol.registry import (
    REGISTRY,
    ModelTable,
    ProtocolInfo,
    get_protocol,
    model_table,
    names,
    register,
)
from vfl_cli.protocol.wire import enc_member, packed_member

ASK, COUNT = "toy/ask", "toy/count"


# ----- messages and states: frozen dataclasses ----------------------------------------------------
@dataclass(frozen=True)
class Ask(Message):
    kind = ASK
    nonce: str


@dataclass(frozen=True)
class Count(Message):
    kind = COUNT
    nonce: str
    rows: int


@dataclass(frozen=True)
class ActiveState(PartyState):
    nonces: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PassiveState(PartyState):
    pass


# ----- pure steps, named for what they produce ------------------------------------------------
def ask(passives: list[str]) -> tuple[ActiveState, dict[str, Ask]]:
    asks = {p: Ask(secrets.token_hex(8)) for p in passives}
    return ActiveState({p: a.nonce for p, a in asks.items()}), asks


def count(request: Ask, rows: int) -> Count:
    return Count(request.nonce, rows)


def tally(state: ActiveState, counts: Mapping[str, Count]) -> dict[str, int]:
    for p, c in counts.items():
        if c.nonce != state.nonces[p]:
            raise InvalidArtifact(f"the count from {p} answers another request (stale or replayed)")
    return {p: c.rows for p, c in counts.items()}


# ----- handlers: decode -> step -> encode ------------------------------------------------------
def _send_asks(ctx: PartyContext, state: ActiveState, received: Any) -> Step[ActiveState]:
    new, asks = ask(ctx.passives)
    return Step(new, "wait-counts", [a.to(p, "ask") for p, a in asks.items()])


def _tally(ctx: PartyContext, state: ActiveState, received: Mapping[str, Artifact]) -> Step[ActiveState]:
    counts = {p: Count.receive(received, p) for p in ctx.passives}
    return Step.finish(state, {"rows": tally(state, counts)})


def _answer(ctx: PartyContext, state: PassiveState, received: Mapping[str, Artifact]) -> Step[PassiveState]:
    reply = count(Ask.receive(received, ctx.active), len(ctx.data()))
    return Step.finish(state, {"sent_rows": reply.rows}, [reply.to(ctx.active, "count")])


class RowCount(KitProtocol[Any]):
    name = "row-count"
    states = {"active": ActiveState, "passive": PassiveState}

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _send_asks),
            ("active", "wait-counts"): Phase(
                lambda ctx, s: [Expect(p, COUNT) for p in ctx.passives], _tally),
            ("passive", "start"): Phase(lambda ctx, s: [Expect(ctx.active, ASK)], _answer),
        }


# ----- the one registry line (in a fixture, so that other test files never see the toy) --------
@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    register("row-count", ProtocolInfo(f"{__name__}:RowCount", "each passive party's row count"))
    yield
    REGISTRY.pop("row-count")


# ----- tests -----------------------------------------------------------------------------------
def test_the_toy_protocol_runs_through_the_real_commands(two_parties, sample) -> None:
    bank, bureau = two_parties
    rows = len(pd.read_csv(sample("breast_passive.csv")))
    run("-w", str(bank), "job", "start", "--protocol", "row-count", "--job", "rc")
    assert len(carry(bank, bureau)) == 2  # proposal + ask
    out = json.loads(run("-w", str(bureau), "job", "accept", "rc", "--json").stdout)
    assert out[0]["done"] and out[0]["results"] == {"sent_rows": rows}
    carry(bureau, bank)
    out = json.loads(run("-w", str(bank), "step", "--json").stdout)
    assert out[0]["done"] and out[0]["results"] == {"rows": {"bureau": rows}}


def test_a_stale_answer_is_refused_and_the_state_is_unchanged() -> None:
    state = JobState(phase="wait-counts", data={"nonces": {"bureau": "aa"}})
    before = (state.phase, dict(state.data), state.done)
    ctx: Any = type("Ctx", (), {"role": "active", "passives": ["bureau"]})()
    art = Artifact(kind=COUNT, job="rc", seq=1, step="count", round=0, sender="bureau",
                   recipient="bank", meta={"nonce": "bb", "rows": 3}, members={})
    with pytest.raises(InvalidArtifact, match="answers another request"):
        RowCount().advance(ctx, state, {"bureau": art})
    assert (state.phase, state.data, state.done) == before


def test_a_message_field_of_another_type_is_refused() -> None:
    art = Artifact(kind=COUNT, job="rc", seq=1, step="count", round=0, sender="bureau",
                   recipient="bank", meta={"nonce": "aa", "rows": True}, members={})
    with pytest.raises(InvalidArtifact, match="field 'rows' is True, expected int"):
        Count.decode(art)
    with pytest.raises(InvalidArtifact, match="lacks the field 'rows'"):
        Count.decode(Artifact(kind=COUNT, job="rc", seq=1, step="count", round=0, sender="b",
                              recipient="bank", meta={"nonce": "aa"}, members={}))
    with pytest.raises(InvalidArtifact, match="expected toy/count from b, got toy/ask"):
        Count.decode(Artifact(kind=ASK, job="rc", seq=1, step="ask", round=0, sender="b",
                              recipient="bank", meta={"nonce": "aa"}, members={}))


@dataclass(frozen=True)
class _Mixed(PartyState):
    t: int = 0
    history: list[float] = field(default_factory=list)
    weights: np.ndarray | None = None


def test_a_state_round_trips_through_the_job_state() -> None:
    job = JobState()
    assert _Mixed.load(job) == _Mixed()  # a party starts from the defaults
    state = _Mixed(t=3, history=[0.5, np.float64(0.25)], weights=np.arange(3.0))
    state.store(job)
    assert job.data == {"t": 3, "history": [0.5, 0.25]} and set(job.arrays) == {"weights"}
    loaded = _Mixed.load(job)
    assert loaded.t == 3 and loaded.history == [0.5, 0.25]
    assert loaded.weights is not None and np.array_equal(loaded.weights, np.arange(3.0))
    loaded.but(weights=None).store(job)
    assert "weights" not in job.arrays


def test_the_registry_describes_protocols() -> None:
    assert get_protocol("row-count").name == "row-count"
    assert {"hetero-lr", "hetero-linear"} <= set(names(trains=True))
    assert not {"handshake", "psi", "predict", "hfl", "row-count"} & set(names(trains=True))
    assert REGISTRY["hfl"].roles == ("server", "worker", "predictor")
    assert not REGISTRY["hfl"].needs_alignment and REGISTRY["split-nn"].needs_alignment
    with pytest.raises(VflError, match="already registered"):
        register("row-count", ProtocolInfo("elsewhere:Other", "another"))


def test_an_unknown_protocol_is_refused_with_the_known_ones(two_parties) -> None:
    bank, _ = two_parties
    result = run("-w", str(bank), "job", "start", "--protocol", "nope", ok=False)
    message = error_line(result)
    assert message.startswith("Error: unknown protocol 'nope'; known protocols: ")
    assert "row-count" in message and "handshake" in message


def rows_table(card: Mapping[str, Any]) -> ModelTable:
    return ModelTable(("party", "rows"), tuple((p, str(n)) for p, n in card["rows"].items()))


def test_a_model_renderer_may_be_named_and_imported_on_first_use() -> None:
    register("row-count-card", ProtocolInfo(f"{__name__}:RowCount", "rows",
                                            model=f"{__name__}:rows_table"))
    try:
        table = model_table("row-count-card", {"rows": {"bureau": 12}})
        assert table == ModelTable(("party", "rows"), (("bureau", "12"),))
        with pytest.raises(VflError, match="handshake trains no model to show"):
            model_table("handshake", {})
    finally:
        REGISTRY.pop("row-count-card")


def test_wire_members_carry_only_fresh_ciphertexts() -> None:
    """enc_member/packed_member are where ciphertexts leave a party: a ciphertext computed from
    others (its randomness a function of theirs and of this party's operands) is refused until
    it is re-randomised."""
    pub, _ = paillier.generate_keypair(512)
    x = paillier.encrypt(pub, np.array([1.0, -2.0, 3.5]))
    assert enc_member("x", x).info["shape"] == [3]
    computed = x + x
    with pytest.raises(CryptoError, match="fresh"):
        enc_member("x", computed)
    assert enc_member("x", paillier.rerandomize(computed)).data != computed.to_bytes()
    packed = paillier.pack(x)
    assert packed_member("p", packed).info["packed"] == packed.meta()
    stale = dataclasses.replace(packed, ciphertexts=packed.ciphertexts + packed.ciphertexts)
    with pytest.raises(CryptoError, match="fresh"):
        packed_member("p", stale)
