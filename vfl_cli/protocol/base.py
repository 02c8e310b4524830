"""How protocols plug into the job machinery.

A protocol is an explicit state machine of pure steps. The job engine (``vfl_cli.jobs``) loads
the party's state and the artifacts that arrived, asks the protocol what it waits for
(:meth:`Protocol.expects`), and once everything is there calls :meth:`Protocol.advance`, which
returns the messages to send. The engine does all file I/O, signing, verification, ledger and
crash-safe commits; protocols never touch files.

Add a protocol on the kit (:mod:`vfl_cli.protocol.kit`) and describe it with one line in
:data:`vfl_cli.protocol.registry.REGISTRY`; see ``docs/protocols/README.md``.

The mutation contract of :meth:`Protocol.advance`: it may change ``state`` in place, and the
engine writes the state back (with the outgoing artifacts, in one commit) only when ``advance``
returns. When it raises, the engine drops the in-memory state and reloads the committed one from
disk, so a refused artifact changes nothing. Kit protocols go further: their steps are pure and
return a new typed state, which the kit copies into ``state`` only after the step succeeded.
"""

from __future__ import annotations

import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from vfl_cli.artifacts.container import Artifact, Member
from vfl_cli.checks import whole
from vfl_cli.errors import InvalidArtifact, VflError
from vfl_cli.names import is_name

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


#: Progress reporting, the one type every layer uses: called with a description and a total
#: (None: unknown), it returns a callback that advances the bar by ``n``. Core code only calls it;
#: the CLI draws the bars.
Progress = Callable[[str, int | None], Callable[[int], None]]


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
    data: Callable[..., pd.DataFrame]  # data() this job's rows; data(job) an earlier job's
    data_file: Callable[..., Path]  # data_file() the file data() reads; data_file(job) likewise
    id_column: str
    label_column: str | None
    features: list[str]
    job_arrays: Callable[[str], dict[str, np.ndarray]]
    job_info: Callable[[str], dict[str, Any]]
    private_key: Callable[[], Any]
    public_key: Callable[[str], Any]
    progress: Progress = no_progress
    #: This party's bound on one process's memory, in bytes (workspace setting, or --memory).
    memory: int | None = None
    #: The data file's CSV format options (vfl.json), for steps that read the file in chunks.
    csv: Mapping[str, Any] = field(default_factory=dict)
    #: A private folder of this job (0700) for lists too large to hold in memory.
    scratch: Callable[[], Path] | None = None
    #: this party's local settings for the job (job.json's ``local``; never in the proposal)
    local: Mapping[str, Any] = field(default_factory=dict)

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

    #: The roles this protocol's parties take; the proposer is the first role's single party.
    roles: ClassVar[tuple[str, ...]] = ("active", "passive")

    def check_parties(self, parties: list[dict[str, str]]) -> None:
        """Refuse a set of parties this protocol cannot run with (default: one active party and
        one or more passive parties)."""
        unique_parties(parties)
        roles = [p["role"] for p in parties]
        lead, *others = self.roles
        if roles.count(lead) != 1 or any(r not in self.roles for r in roles) or len(parties) < 2:
            listing = ", ".join(f"{p['name']} ({p['role']})" for p in parties)
            raise VflError(
                f"{self.name} needs exactly one {lead} party and at least one "
                f"{' or '.join(others)} party; these parties are: {listing}"
            )

    #: Every parameter with its type and range (see :class:`Param`); a protocol with more
    #: rules than ranges overrides :meth:`check_params` and starts from :func:`typed_params`.
    params_spec: ClassVar[Mapping[str, Param]] = {}

    def check_params(self, params: dict[str, Any], parties: list[dict[str, str]]) -> dict[str, Any]:
        """Validate parameters and fill defaults (run by the proposer and by every acceptor)."""
        return typed_params(params, self.params_spec, what=self.name)

    @abstractmethod
    def expects(self, ctx: PartyContext, state: JobState) -> list[Expect]:
        """What this party waits for now. An empty list means it can act without input."""

    @abstractmethod
    def advance(
        self, ctx: PartyContext, state: JobState, received: Mapping[str, Artifact]
    ) -> list[Outgoing]:
        """Take one step: update ``state`` in place and return the messages to send.

        ``received`` maps each expected sender to its artifact (already verified by the engine).
        The engine commits ``state`` with the messages (atomically) only when this returns, and
        reloads the committed state from disk after any error, so a step that raises half-way
        leaves nothing behind on disk; :class:`~vfl_cli.protocol.kit.KitProtocol` also writes
        ``state`` only after its handler returned, so nothing changes in memory either.
        """


#: The most parties one job may name, and the longest list parameter: bounds on the work a
#: received proposal can ask for before anyone looks at data.
MAX_PARTIES = 64
MAX_LIST = 64
#: Seeds are public job parameters (split and mini-batch order), never a secret: 0..2**63-1.
SEED_MAX = 2**63 - 1
_HEX_RE = re.compile(r"(?:[0-9a-fA-F]{2})*")


@dataclass(frozen=True)
class Param:
    """One protocol parameter: its type, default and allowed range, checked by every party.

    ``kind`` is ``int``, ``float``, ``bool``, ``choice``, ``int-list``, ``hex`` or ``job`` (the
    id of an earlier job; required, no default). Build one with :func:`Int`, :func:`Seed`,
    :func:`Float`, :func:`Bool`, :func:`Choice`, :func:`IntList`, :func:`Hex` or :func:`JobRef`.
    """

    kind: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[Any, ...] = ()
    max_len: int = MAX_LIST
    note: str = ""
    #: what a job proposed before this parameter existed did, as a value of it (None: there is no
    #: such value, and this vfl will not step such a job: :func:`with_legacy`)
    legacy: Any = None

    @property
    def required(self) -> bool:
        return self.kind == "job" and self.default is None

    def span(self) -> str:
        """The allowed values in words, as the docs and error messages state them."""
        if self.kind == "int":
            return f"a whole number in {_int_text(self.low)}..{_int_text(self.high)}"
        if self.kind == "float":
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"a finite number in {left}{self.low:g}, {self.high:g}{right}"
        if self.kind == "bool":
            return "true or false"
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind == "int-list":
            return (f"a list of 1..{self.max_len} whole numbers in "
                    f"{_int_text(self.low)}..{_int_text(self.high)}")
        if self.kind == "hex":
            return f"{_int_text(self.low)}..{_int_text(self.high)} bytes as hex digits"
        return "a job id (1-32 lowercase letters, digits, '-' or '_')"

    def check(self, key: str, value: Any, *, what: str) -> Any:
        """``value`` in its checked form, or :class:`VflError` naming key, value and range."""
        checked = _CHECKS[self.kind](self, value)
        if checked is _BAD:
            raise VflError(f"{what} parameter {key} must be {self.span()}, not {_shown(value)}")
        return checked


_BAD = object()


def _int_text(bound: float | None) -> str:
    return "2**63-1" if bound == SEED_MAX else str(int(bound or 0))


def _shown(value: Any) -> str:
    text = repr(value)  # repr escapes control characters: safe to print
    return text if len(text) <= 60 else text[:57] + "..."


def _as_int(p: Param, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer)):
        return _BAD  # a bool is not a number, and text is not parsed here
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return _BAD
    number = int(value)
    ok = (p.low is None or number >= p.low) and (p.high is None or number <= p.high)
    return number if ok else _BAD


def _as_float(p: Param, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return _BAD
    number = float(value)
    if not math.isfinite(number) or p.low is None or p.high is None:
        return _BAD
    low_ok = number > p.low if p.open_low else number >= p.low
    high_ok = number < p.high if p.open_high else number <= p.high
    return number if low_ok and high_ok else _BAD


def _as_bool(p: Param, value: Any) -> Any:
    return value if isinstance(value, bool) else _BAD


def _as_choice(p: Param, value: Any) -> Any:
    return value if isinstance(value, str) and value in p.choices else _BAD


def _as_int_list(p: Param, value: Any) -> Any:
    if not isinstance(value, (list, tuple)) or not 1 <= len(value) <= p.max_len:
        return _BAD
    items = [_as_int(p, v) for v in value]
    return _BAD if any(v is _BAD for v in items) else items


def _as_job(p: Param, value: Any) -> Any:
    if value == "" and p.default == "":
        return value  # an optional job reference left out
    return value if is_name(value) else _BAD  # job ids are names: data, never paths


def _as_hex(p: Param, value: Any) -> Any:
    if not isinstance(value, str) or not _HEX_RE.fullmatch(value):
        return _BAD
    return value.lower() if (p.low or 0) <= len(value) // 2 <= (p.high or 0) else _BAD


_CHECKS: dict[str, Callable[[Param, Any], Any]] = {
    "int": _as_int, "float": _as_float, "bool": _as_bool, "choice": _as_choice,
    "int-list": _as_int_list, "job": _as_job, "hex": _as_hex,
}


def Int(default: int, low: int, high: int, note: str = "", *, legacy: int | None = None) -> Param:
    """A whole number in ``low..high`` (a bool or text is refused; 3.0 is taken as 3)."""
    return Param("int", default, low, high, note=note, legacy=legacy)


def Seed(default: int = 42) -> Param:
    """A public seed (split and mini-batch order) in ``0..2**63-1``; never used for secrets."""
    return Param("int", default, 0, SEED_MAX, note="public; orders rows, never a secret")


def Float(default: float, low: float, high: float, *, open_low: bool = False,
          open_high: bool = False, note: str = "", legacy: float | None = None) -> Param:
    """A finite number between ``low`` and ``high`` (NaN and infinities are refused)."""
    return Param("float", default, low, high, open_low=open_low, open_high=open_high, note=note, legacy=legacy)


def Bool(default: bool, note: str = "") -> Param:
    """``true`` or ``false`` only (1 and "yes" are refused)."""
    return Param("bool", default, note=note)


def Choice(default: str, *choices: str, note: str = "", legacy: str | None = None) -> Param:
    """One of the given strings, exactly."""
    return Param("choice", default, choices=choices, note=note, legacy=legacy)


def IntList(default: list[int], low: int, high: int, max_len: int = MAX_LIST,
            note: str = "") -> Param:
    """A list of 1..max_len whole numbers, each in ``low..high``."""
    return Param("int-list", list(default), low, high, max_len=max_len, note=note)


def Hex(low: int, high: int, note: str = "") -> Param:
    """Between ``low`` and ``high`` bytes written as hex digits (no default)."""
    return Param("hex", None, low, high, note=note)


def JobRef(note: str = "", *, optional: bool = False) -> Param:
    """The id of an earlier job of the same parties (required unless ``optional``, whose
    default ``""`` means none): data, never a path."""
    return Param("job", "" if optional else None, note=note)


def typed_params(params: Any, spec: Mapping[str, Param], *, what: str) -> dict[str, Any]:
    """Check ``params`` against ``spec``: refuse unknown keys and values outside their range,
    fill defaults. The result is its own checked form (checking it again changes nothing).

    Raises:
        VflError: one message naming the parameter, the value and the allowed range.
    """
    if not isinstance(params, Mapping):
        raise VflError(f"{what} parameters must be a table of key = value, not {_shown(params)}")
    unknown = [k for k in params if k not in spec]
    if unknown:
        shown = ", ".join(_shown(k) for k in unknown[:5])
        allowed = f"allowed: {', '.join(spec)}" if spec else f"{what} takes no parameters"
        raise VflError(f"unknown {what} parameter(s) {shown}; {allowed}")
    out: dict[str, Any] = {}
    for key, p in spec.items():
        if key not in params and p.required:
            hint = ": align the parties first (vfl align start)" if key == "alignment" else ""
            raise VflError(f"{what} needs {key}=<job id>{hint}")
        value = params.get(key, p.default)
        out[key] = p.check(key, value, what=what)
    return out


def with_legacy(params: Mapping[str, Any], spec: Mapping[str, Param]) -> dict[str, Any]:
    """A stored job's parameters as this vfl steps them: each parameter added since the job was
    proposed, and declared with a ``legacy`` value, at that value (the job runs as its parties
    agreed); any other difference is left for the engine to refuse."""
    missing = {k: p.legacy for k, p in spec.items() if k not in params and p.legacy is not None}
    return {**params, **missing}


def defaults(spec: Mapping[str, Param]) -> dict[str, Any]:
    """The default value of every optional parameter of ``spec``."""
    return {k: p.default for k, p in spec.items() if not p.required}


def spec_table(spec: Mapping[str, Param]) -> str:
    """A Markdown table of ``spec`` (parameter, default, allowed values), for the protocol docs."""
    rows = ["| parameter | default | allowed |", "|---|---|---|"]
    for key, p in spec.items():
        default = "required" if p.required else "—" if p.default is None else f"`{json.dumps(p.default)}`"
        allowed = p.span() + (f"; {p.note}" if p.note else "")
        rows.append(f"| `{key}` | {default} | {allowed} |")
    return "\n".join(rows)


def unique_parties(parties: list[dict[str, str]]) -> None:
    """Refuse a party named twice (``--with bureau --with bureau``, or a crafted proposal)."""
    names = [p["name"] for p in parties]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise VflError(f"party {', '.join(dup)} is named more than once; each party takes one role")
    if len(names) > MAX_PARTIES:
        raise VflError(f"a job takes at most {MAX_PARTIES} parties, not {len(names)}")


def party_list(raw: Any, *, what: str = "the proposal") -> list[dict[str, str]]:
    """The parties of a received proposal, structurally checked before anything reads them.

    Each entry is a table of strings with a valid party name and a role; names are unique and
    there are 2..MAX_PARTIES of them.

    Raises:
        InvalidArtifact: naming what is wrong.
    """
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_PARTIES:
        raise InvalidArtifact(f"{what}: the parties must be a list of 2..{MAX_PARTIES} parties, "
                              f"not {_shown(raw)}")
    keys = {"name", "role", "signing_fingerprint", "paillier_fingerprint"}
    for entry in raw:
        if (not isinstance(entry, dict) or set(entry) != keys
                or not all(isinstance(v, str) and len(v) <= 128 for v in entry.values())
                or not is_name(entry["name"])):
            raise InvalidArtifact(f"{what}: a malformed party {_shown(entry)}; each party "
                                  f"is a table of {', '.join(sorted(keys))}, a valid name and role")
    try:
        unique_parties(raw)
    except VflError as exc:
        raise InvalidArtifact(f"{what}: {exc}") from None
    return [dict(p) for p in raw]


# ----- decoding received messages: each field checked where it enters ----------------------------
def meta_list(art: Artifact, key: str, *, item: type = str, max_len: int = 1_000_000) -> list[Any]:
    """A list field of a received message's meta, every item of type ``item`` (a bool is not an
    int), at most ``max_len`` long; absent is empty.

    Raises:
        InvalidArtifact: naming the message, the field and what it should be.
    """
    value = art.meta.get(key, [])
    if (not isinstance(value, list) or len(value) > max_len
            or not all(isinstance(v, item) and not isinstance(v, bool) for v in value)):
        raise InvalidArtifact(f"{art.kind} from {art.sender}: {key} must be a list of at most "
                              f"{max_len} {item.__name__} values, not {_shown(value)}")
    return value


def meta_int(art: Artifact, key: str, *, low: int = 0, high: int = SEED_MAX) -> int:
    """A whole-number field of a received message's meta, in ``low..high``."""
    value = art.meta.get(key)
    if not whole(value, low, high):
        raise InvalidArtifact(f"{art.kind} from {art.sender}: {key} must be a whole number in "
                              f"{low}..{_int_text(high)}, not {_shown(value)}")
    return value


def need(received: Mapping[str, Artifact], sender: str, kind: str) -> Artifact:
    """The artifact from ``sender``; the engine guarantees presence, this checks the kind."""
    art = received[sender]
    if art.kind != kind:
        raise VflError(f"expected {kind} from {sender}, got {art.kind}")
    return art


# The registry lives in its own module (plain data, no protocol imports); these names stay
# importable from here for the engine.
from vfl_cli.protocol.registry import REGISTRY as REGISTRY  # noqa: E402
from vfl_cli.protocol.registry import get_protocol as get_protocol  # noqa: E402
