"""A signed handshake between all parties: the smallest job, proving the machinery end to end.

Flow: the active party sends each passive party ``handshake/hello`` carrying a random challenge;
each passive party answers ``handshake/reply`` echoing it. The job is done for a passive party
once it has replied, and for the active party once every passive party has answered.

What each party learns: the others' names and that they hold the signing keys on their cards.
No data is read or sent.

Written on the kit (:mod:`vfl_cli.protocol.kit`): typed state and messages, pure steps.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vfl_cli.artifacts.container import Artifact
from vfl_cli.errors import InvalidArtifact
from vfl_cli.protocol.base import Expect, PartyContext
from vfl_cli.protocol.kit import KitProtocol, Message, PartyState, Phase, Step, nothing

__all__ = ["HELLO", "REPLY", "Handshake", "Hello", "Reply"]

HELLO = "handshake/hello"
REPLY = "handshake/reply"


# ----- messages -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Hello(Message):
    """Active -> each passive party: a fresh 16-byte challenge, as 32 hex digits."""

    kind = HELLO
    challenge: str

    @classmethod
    def decode(cls, art: Artifact) -> Hello:
        hello = super().decode(art) if isinstance(art.meta.get("challenge"), str) else None
        if hello is None or not _is_challenge(hello.challenge):
            raise InvalidArtifact(f"the hello from {art.sender} carries no 16-byte hex challenge")
        return hello


@dataclass(frozen=True)
class Reply(Message):
    """Passive -> active: the challenge it received, echoed."""

    kind = REPLY
    challenge: Any  # checked against the challenge sent (:func:`confirm`), whatever it holds

    @classmethod
    def decode(cls, art: Artifact) -> Reply:
        if art.kind != REPLY:
            raise InvalidArtifact(f"expected {REPLY} from {art.sender}, got {art.kind}")
        return cls(art.meta.get("challenge"))


# ----- states ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActiveState(PartyState):
    challenges: dict[str, str] = field(default_factory=dict)  # passive party -> its challenge


@dataclass(frozen=True)
class PassiveState(PartyState):
    pass


# ----- pure steps -----------------------------------------------------------------------------
def challenge(passives: list[str]) -> tuple[ActiveState, dict[str, Hello]]:
    """A fresh challenge per passive party, from this party's CSPRNG."""
    hellos = {p: Hello(secrets.token_hex(16)) for p in passives}
    return ActiveState({p: h.challenge for p, h in hellos.items()}), hellos


def confirm(state: ActiveState, replies: Mapping[str, Reply]) -> list[str]:
    """The passive parties confirmed: every reply must echo the challenge sent to its sender."""
    for p, reply in replies.items():
        if reply.challenge != state.challenges[p]:
            raise InvalidArtifact(
                f"the reply from {p} answers another challenge (stale or replayed)"
            )
    return list(replies)


def answer(hello: Hello) -> Reply:
    """The reply to a hello: its challenge, echoed."""
    return Reply(hello.challenge)


# ----- handlers: decode -> step -> encode ------------------------------------------------------
def _send_hellos(ctx: PartyContext, state: ActiveState, received: Any) -> Step[ActiveState]:
    new, hellos = challenge(ctx.passives)
    return Step(new, "wait-replies", [h.to(p, "hello") for p, h in hellos.items()])


def _check_replies(
    ctx: PartyContext, state: ActiveState, received: Mapping[str, Artifact]
) -> Step[ActiveState]:
    replies = {p: Reply.receive(received, p) for p in ctx.passives}
    return Step.finish(state, {"confirmed": confirm(state, replies)})


def _reply(
    ctx: PartyContext, state: PassiveState, received: Mapping[str, Artifact]
) -> Step[PassiveState]:
    reply = answer(Hello.receive(received, ctx.active))
    return Step.finish(state, {"confirmed": [ctx.active]}, [reply.to(ctx.active, "reply")])


def _replies_from(ctx: PartyContext, state: Any) -> list[Expect]:
    return [Expect(p, REPLY) for p in ctx.passives]


def _hello_from(ctx: PartyContext, state: Any) -> list[Expect]:
    return [Expect(ctx.active, HELLO)]


class Handshake(KitProtocol[Any]):
    name = "handshake"
    states = {"active": ActiveState, "passive": PassiveState}

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        return {
            ("active", "start"): Phase(nothing, _send_hellos),
            ("active", "wait-replies"): Phase(_replies_from, _check_replies),
            ("passive", "start"): Phase(_hello_from, _reply),
        }


def _is_challenge(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return len(text) == 32 and text.isalnum()
