"""How protocols plug into the job machinery.

A protocol is an explicit state machine of pure steps. The job engine (``vfl_cli.jobs``) loads
the party's state and the artifacts that arrived, asks the protocol what it waits for
(:meth:`Protocol.expects`), and once everything is there calls :meth:`Protocol.advance`, which
returns the messages to send. The engine does all file I/O, signing, verification, ledger and
crash-safe commits; protocols never touch files.

Add a protocol by subclassing :class:`Protocol` and registering it in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol as TypingProtocol

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member
from vfl_cli.errors import VflError

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Outgoing:
    """A message a step wants sent; the engine turns it into a signed artifact."""

    recipient: str
    kind: str
    step: str
    members: list[Member] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    round: int = 0


@dataclass(frozen=True)
class Expect:
    """One artifact a party waits for before its next step."""

    sender: str
    kind: str

    def describe(self) -> str:
        return f"{self.kind} from {self.sender}"


@dataclass
class JobState:
    """A party's private, resumable state in one job. ``data`` is JSON, ``arrays`` numpy."""

    phase: str = "start"
    data: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    done: bool = False
    results: dict[str, Any] = field(default_factory=dict)


class Progress(TypingProtocol):
    def __call__(self, description: str, total: int | None = None) -> Callable[[int], None]: ...


def no_progress(description: str, total: int | None = None) -> Callable[[int], None]:
    return lambda n: None


@dataclass
class PartyContext:
    """What a protocol step may know about the party running it.

    Everything is handed in; a step does no I/O of its own. ``data`` and ``job_arrays`` are
    loaders supplied by the engine so that a step only reads what it needs.
    """

    name: str
    role: str
    job: str
    params: Mapping[str, Any]
    parties: list[dict[str, str]]
    rng: np.random.Generator
    data: Callable[..., "pd.DataFrame"]  # data() this job's rows; data(job) an earlier job's
    data_file: Callable[..., Path]  # data_file() the file data() reads; data_file(job) likewise
    id_column: str
    label_column: str | None
    features: list[str]
    job_arrays: Callable[[str], dict[str, np.ndarray]]
    job_info: Callable[[str], dict[str, Any]]
    private_key: Callable[[], Any]
    public_key: Callable[[str], Any]
    progress: Progress = no_progress

    @property
    def active(self) -> str:
        return next(p["name"] for p in self.parties if p["role"] == "active")

    @property
    def passives(self) -> list[str]:
        return [p["name"] for p in self.parties if p["role"] == "passive"]

    @property
    def is_active(self) -> bool:
        return self.role == "active"


class Protocol(ABC):
    """A protocol: parameter checking plus the state machine of one party."""

    name: ClassVar[str]
    summary: ClassVar[str] = ""

    #: The roles this protocol's parties take; the proposer is the first role's single party.
    roles: ClassVar[tuple[str, ...]] = ("active", "passive")

    def check_parties(self, parties: list[dict[str, str]]) -> None:
        """Refuse a set of parties this protocol cannot run with (default: one active party and
        one or more passive parties)."""
        roles = [p["role"] for p in parties]
        lead, *others = self.roles
        if roles.count(lead) != 1 or any(r not in self.roles for r in roles) or len(parties) < 2:
            listing = ", ".join(f"{p['name']} ({p['role']})" for p in parties)
            raise VflError(
                f"{self.name} needs exactly one {lead} party and at least one "
                f"{' or '.join(others)} party; these parties are: {listing}"
            )

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]) -> dict[str, Any]:
        """Validate parameters and fill defaults (run by the proposer and by every acceptor)."""
        return dict(params)

    @abstractmethod
    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        """What this party waits for now. An empty list means it can act without input."""

    @abstractmethod
    def advance(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        """Take one step: update ``state`` in place and return the messages to send.

        ``received`` maps each expected sender to its artifact (already verified by the engine).
        """


#: protocol name -> "module:Class", imported on first use so that start-up stays fast.
REGISTRY: dict[str, str] = {
    "handshake": "vfl_cli.protocol.handshake:Handshake",
    "psi": "vfl_cli.protocol.align:Align",
    "hetero-lr": "vfl_cli.protocol.hetero_linear:HeteroLogistic",
    "hetero-linear": "vfl_cli.protocol.hetero_linear:HeteroLinear",
    "predict": "vfl_cli.protocol.predict:Predict",
    "split-nn": "vfl_cli.protocol.split_nn:SplitNN",
    "hfl": "vfl_cli.protocol.hfl:HFL",
}


def get_protocol(name: str) -> Protocol:
    target = REGISTRY.get(name)
    if target is None:
        raise VflError(f"unknown protocol {name!r}; known protocols: {', '.join(sorted(REGISTRY))}")
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()


def typed_params(
    params: Mapping[str, Any], defaults: Mapping[str, Any], *, what: str, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Refuse unknown keys and fill defaults, coercing each value to its default's type.

    ``required`` keys (kept as strings, such as the alignment job) must be given.
    """
    allowed = [*required, *defaults]
    unknown = set(params) - set(allowed)
    if unknown:
        raise VflError(f"unknown {what} parameter(s) {sorted(unknown)}; allowed: {', '.join(allowed)}")
    out: dict[str, Any] = {}
    for key in required:
        if not params.get(key):
            hint = ": align the parties first (vfl align start)" if key == "alignment" else ""
            raise VflError(f"{what} needs {key}=<job id>{hint}")
        out[key] = str(params[key])
    for key, default in defaults.items():
        value = params.get(key, default)
        try:
            out[key] = type(default)(value)
        except (TypeError, ValueError):
            raise VflError(f"{key} must be a {type(default).__name__}, not {value!r}") from None
    return out


def need(received: Mapping[str, Artifact], sender: str, kind: str) -> Artifact:
    """The artifact from ``sender``; the engine guarantees presence, this checks the kind."""
    art = received[sender]
    if art.kind != kind:
        raise VflError(f"expected {kind} from {sender}, got {art.kind}")
    return art
