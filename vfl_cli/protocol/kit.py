"""The protocol kit: one way to write a protocol (decode -> pure step -> encode).

A protocol written on the kit has three parts, the way ``psi.py`` is written:

1. **Typed state**: one frozen dataclass per party role, subclassing :class:`PartyState`. Its
   fields are the party's private, resumable state: JSON values (str, int, float, bool, None,
   lists and dicts of them) and numpy arrays. :meth:`PartyState.load` and
   :meth:`PartyState.store` are the only code that reads or writes the engine's string-keyed
   :class:`~vfl_cli.protocol.base.JobState`; nothing else in a protocol touches ``state.data``.
2. **Typed messages**: one frozen dataclass per artifact kind, subclassing :class:`Message`.
   :meth:`Message.encode` turns it into manifest fields and payload members,
   :meth:`Message.decode` checks a received artifact (kind, round, every field's type) and
   builds it, raising :class:`~vfl_cli.errors.InvalidArtifact` naming the sender and field.
   Override both for ciphertexts (:mod:`vfl_cli.protocol.wire` has the member helpers).
3. **Pure steps**, named for what they produce: ``(ctx, state, messages in) -> Step``. A step
   reads no file and changes nothing it is given; it returns the new state, the next phase,
   the messages to send and, when the party is finished, its results.

:class:`KitProtocol` wires them to the job engine: a table maps each ``(role, phase)`` to a
:class:`Phase` (what the party waits for, and the handler that decodes what arrived, calls the
step and encodes its messages). ``advance`` loads the typed state, runs the handler and copies
the new state into the engine's :class:`JobState` only once the handler has returned, so an
artifact refused half-way through a step changes nothing (the engine also reloads the state
from disk after any error).

See ``docs/protocols/README.md`` for a whole protocol written this way, and
``vfl_cli/protocol/handshake.py`` for the smallest real one.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member, ndarray_member, points_member
from vfl_cli.errors import InvalidArtifact, VflError
from vfl_cli.models.features import aligned_rows, split_rows
from vfl_cli.protocol.base import Expect, JobState, Outgoing, PartyContext, Protocol, need

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "KitProtocol",
    "Message",
    "PartyState",
    "Phase",
    "Step",
    "check_round",
    "finished_job",
    "from_active",
    "nothing",
    "training_rows",
]

S = TypeVar("S", bound="PartyState")
M = TypeVar("M", bound="Message")


def _fields(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a dataclass (annotations are strings under __future__)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_array(tp: Any) -> bool:
    return tp is np.ndarray or np.ndarray in typing.get_args(tp)


def _is_bytes(tp: Any, value: Any) -> bool:
    """Whether ``value`` is the hex text of a ``bytes`` field (bytes travel and rest as hex)."""
    return isinstance(value, str) and bytes in _allowed(tp)


def _json_value(value: Any) -> Any:
    """Numpy scalars, tuples and bytes (hex) to their JSON twins, so that a loaded state equals a
    stored one."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class PartyState:
    """Base of a protocol's typed party state (subclass as a frozen dataclass).

    Every field needs a default: a party starts from ``cls()``. Array fields (typed
    ``np.ndarray`` or ``np.ndarray | None``) live in ``JobState.arrays`` under the field's name,
    the others in ``JobState.data`` (a ``bytes`` field as hex). Override :meth:`load`/:meth:`store`
    only for a field that needs a conversion of its own, and keep that conversion in the state
    class.
    """

    @classmethod
    def load(cls: type[S], job: JobState) -> S:
        """The typed state held in ``job`` (defaults for fields not yet written)."""
        values: dict[str, Any] = {}
        for name, tp in _fields(cls).items():
            source: Mapping[str, Any] = job.arrays if _is_array(tp) else job.data
            if name in source:
                value = source[name]
                values[name] = bytes.fromhex(value) if _is_bytes(tp, value) else value
        return cls(**values)

    def store(self, job: JobState) -> None:
        """Write every field into ``job`` (arrays to ``arrays``, JSON to ``data``)."""
        for name, tp in _fields(type(self)).items():
            value = getattr(self, name)
            if _is_array(tp):
                if value is None:
                    job.arrays.pop(name, None)
                else:
                    job.arrays[name] = np.asarray(value)
            else:
                job.data[name] = _json_value(value)

    def but(self: S, **changes: Any) -> S:
        """A copy with ``changes`` (the state is frozen: a step returns a new one)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Message:
    """Base of a protocol's typed message (subclass as a frozen dataclass with ``kind``).

    The default encoding puts JSON fields in the signed manifest (a ``bytes`` field as hex) and
    array fields in ``.npy`` members, or in ``points`` members (``(n, 32)`` uint8 curve points) for
    the fields named in ``point_fields``; :meth:`decode` refuses a missing field or one of another
    type. A message with ciphertexts overrides :meth:`members` and :meth:`decode` (see
    :mod:`vfl_cli.protocol.wire`).
    """

    kind: ClassVar[str]
    #: array fields sent as ``points`` members (container.points_member), not ``.npy``
    point_fields: ClassVar[tuple[str, ...]] = ()

    def meta(self) -> dict[str, Any]:
        """The manifest fields (readable by whoever carries the file: public values only)."""
        return {
            n: _json_value(getattr(self, n))
            for n, tp in _fields(type(self)).items()
            if not _is_array(tp)
        }

    def members(self) -> list[Member]:
        """The payload members (encrypted to the recipient by the engine)."""
        return [
            points_member(n, getattr(self, n))
            if n in self.point_fields
            else ndarray_member(n, np.asarray(getattr(self, n)))
            for n, tp in _fields(type(self)).items()
            if _is_array(tp)
        ]

    def to(self, recipient: str, step: str, round: int = 0) -> Outgoing:
        """This message as an artifact for ``recipient`` at ``step`` of round ``round``."""
        return Outgoing(recipient, self.kind, step, self.members(), self.meta(), round)

    @classmethod
    def decode(cls: type[M], art: Artifact) -> M:
        """The message ``art`` carries, every field checked.

        Raises:
            InvalidArtifact: another kind, or a field missing or of another type.
        """
        if art.kind != cls.kind:
            raise InvalidArtifact(f"expected {cls.kind} from {art.sender}, got {art.kind}")
        values: dict[str, Any] = {}
        for name, tp in _fields(cls).items():
            if _is_array(tp):
                values[name] = _array_field(art, name, "points" if name in cls.point_fields else "ndarray")
            else:
                values[name] = _meta_field(art, name, tp)
        return cls(**values)

    @classmethod
    def receive(cls: type[M], received: Mapping[str, Artifact], sender: str) -> M:
        """Decode the artifact from ``sender`` (the engine guarantees it is there)."""
        return cls.decode(need(received, sender, cls.kind))


def _array_field(art: Artifact, name: str, member_type: str) -> np.ndarray:
    member = art.members.get(name)
    if member is None or member.type != member_type:
        raise InvalidArtifact(f"{art.kind} from {art.sender} lacks the array {name!r}")
    return art.points(name) if member_type == "points" else art.array(name)


def _allowed(tp: Any) -> tuple[Any, ...]:
    """The runtime types a field annotation admits (``int | None`` -> ``(int, NoneType)``)."""
    args = (
        typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    )
    return tuple(typing.get_origin(a) or a for a in args)


def _meta_field(art: Artifact, name: str, tp: Any) -> Any:
    if name not in art.meta:
        raise InvalidArtifact(f"{art.kind} from {art.sender} lacks the field {name!r}")
    value = art.meta[name]
    allowed = _allowed(tp)
    if Any in allowed:
        return value
    if float in allowed and type(value) is int:
        return float(value)  # JSON writes 1.0 as 1
    if bytes in allowed and isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise InvalidArtifact(f"{art.kind} from {art.sender}: field {name!r} is not hex") from None
    if isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed):
        return value  # a bool is no number
    raise InvalidArtifact(
        f"{art.kind} from {art.sender}: field {name!r} is {value!r:.60}, "
        f"expected {' or '.join(getattr(t, '__name__', str(t)) for t in allowed)}"
    )


def finished_job(ctx: PartyContext, job: str, protocols: tuple[str, ...]) -> dict[str, Any]:
    """The info of ``job``, checked to be a finished job of one of ``protocols`` on this party.

    The one check of "is this a finished alignment" (``protocols=("psi",)``) or "a finished
    training job": the message names the job, what it should be and the party.

    Raises:
        VflError: another protocol's job, or one not finished yet.
    """
    job_info = ctx.job_info(job)
    if job_info["protocol"] not in protocols or not job_info["done"]:
        what = "alignment (psi)" if protocols == ("psi",) else " or ".join(protocols) + " training"
        raise VflError(f"job {job} is not a finished {what} job on {ctx.name}")
    return job_info


def training_rows(ctx: PartyContext) -> pd.DataFrame:
    """This party's aligned training rows of the job's ``alignment``: the split a training job
    with the same ``test_fraction`` and ``seed`` makes (drawn from the aligned ids)."""
    alignment = ctx.params["alignment"]
    finished_job(ctx, alignment, ("psi",))
    arrays = ctx.job_arrays(alignment)
    df = aligned_rows(ctx.data(alignment), arrays, ctx.id_column, alignment)
    split = split_rows(len(df), ctx.params["test_fraction"], ctx.params["seed"],
                       ids=arrays.get("aligned_ids"))
    return df.iloc[np.sort(split.train)].reset_index(drop=True)


def check_round(art: Artifact, expected: int) -> None:
    """Refuse an artifact for another round than the one this party is at."""
    if art.round != expected:
        raise InvalidArtifact(
            f"{art.kind} from {art.sender} is for round {art.round}, but this party is at round "
            f"{expected} (stale, replayed or out of order)"
        )


@dataclass(frozen=True)
class Step(Generic[S]):
    """What a pure step produces: the new state and phase, messages to send, final results.

    ``results`` not None means the party is finished (``phase`` is then ``"done"``).
    """

    state: S
    phase: str
    out: list[Outgoing] = field(default_factory=list)
    results: dict[str, Any] | None = None

    @classmethod
    def finish(
        cls, state: S, results: dict[str, Any], out: list[Outgoing] | None = None
    ) -> Step[S]:
        """The party's last step."""
        return cls(state, "done", list(out or []), results)


Handler = Callable[[PartyContext, S, Mapping[str, Artifact]], Step[S]]
Waits = Callable[[PartyContext, S], list[Expect]]


@dataclass(frozen=True)
class Phase(Generic[S]):
    """One phase of one role: what the party waits for, and the handler run once it is there.

    ``handler`` decodes the received messages, calls a pure step and returns its :class:`Step`;
    ``waits`` is the list of (sender, kind) it needs (an empty list: it acts without input).
    """

    waits: Waits[S]
    handler: Handler[S]


def nothing(ctx: PartyContext, state: Any) -> list[Expect]:
    """``waits`` of a phase that acts without input."""
    return []


def from_active(kind: str) -> Callable[[PartyContext, Any], list[Expect]]:
    """``waits`` of a passive party's phase that takes one ``kind`` artifact from the active party."""
    return lambda ctx, state: [Expect(ctx.active, kind)]


class KitProtocol(Protocol, Generic[S]):
    """A protocol whose parties run a table of :class:`Phase` over typed states.

    Subclasses set ``states`` (role -> :class:`PartyState` subclass) and implement
    :meth:`phases` (``(role, phase) -> Phase``). ``expects`` and ``advance`` are written once,
    here.
    """

    states: ClassVar[Mapping[str, type[PartyState]]] = {}

    def phases(self) -> Mapping[tuple[str, str], Phase[Any]]:
        """The phase table: for each role and phase, what it waits for and its handler."""
        raise NotImplementedError

    def _phase(self, ctx: PartyContext, job: JobState) -> tuple[Phase[Any], PartyState]:
        table = self.phases()
        entry = table.get((ctx.role, job.phase))
        state_type = self.states.get(ctx.role)
        if entry is None or state_type is None:
            raise VflError(f"{self.name}: a {ctx.role} has no step in phase {job.phase!r}")
        return entry, state_type.load(job)

    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        entry, typed = self._phase(ctx, state)
        return entry.waits(ctx, typed)

    def advance(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        """Run the phase's handler; write its new state into ``state`` only after it returned."""
        entry, typed = self._phase(ctx, state)
        step = entry.handler(ctx, typed, received)
        step.state.store(state)
        state.phase = step.phase
        if step.results is not None:
            state.done = True
            state.results = step.results
        return list(step.out)
