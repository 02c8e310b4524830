"""A signed handshake between all parties: the smallest job, proving the machinery end to end.

Flow: the active party sends each passive party ``handshake/hello`` carrying a random challenge;
each passive party answers ``handshake/reply`` echoing it. The job is done for a passive party
once it has replied, and for the active party once every passive party has answered.

What each party learns: the others' names and that they hold the signing keys on their cards.
No data is read or sent.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

from vfl_cli.artifacts.container import Artifact
from vfl_cli.errors import InvalidArtifact
from vfl_cli.protocol.base import Expect, JobState, Outgoing, PartyContext, Protocol, need

HELLO = "handshake/hello"
REPLY = "handshake/reply"


class Handshake(Protocol):
    name = "handshake"
    summary = "signed hello and reply between all parties (no data)"

    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        if ctx.is_active:
            return [] if state.phase == "start" else [Expect(p, REPLY) for p in ctx.passives]
        return [Expect(ctx.active, HELLO)]

    def advance(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        if ctx.is_active and state.phase == "start":
            challenges = {p: secrets.token_hex(16) for p in ctx.passives}
            state.data["challenges"] = challenges
            state.phase = "wait-replies"
            return [Outgoing(p, HELLO, "hello", meta={"challenge": c}) for p, c in challenges.items()]
        if ctx.is_active:
            for p in ctx.passives:
                reply = need(received, p, REPLY)
                if reply.meta.get("challenge") != state.data["challenges"][p]:
                    raise InvalidArtifact(f"the reply from {p} answers another challenge (stale or replayed)")
            state.done = True
            state.phase = "done"
            state.results = {"confirmed": ctx.passives}
            return []
        hello = need(received, ctx.active, HELLO)
        challenge = hello.meta.get("challenge")
        if not (isinstance(challenge, str) and len(challenge) == 32 and _is_hex(challenge)):
            raise InvalidArtifact(f"the hello from {ctx.active} carries no 16-byte hex challenge")
        state.done = True
        state.phase = "done"
        state.results = {"confirmed": [ctx.active]}
        return [Outgoing(ctx.active, REPLY, "reply", meta={"challenge": challenge})]


def _is_hex(text: str) -> bool:
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return text.isalnum()
