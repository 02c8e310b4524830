"""Signed, structurally wrong artifacts for a party's real step (shared by the fuzz test and
tests/benchmarks/bench_fuzz.py).

A recorded run of real jobs between two workspaces gives, for every message one party sent the
other, the protocol-level message (:class:`Outgoing`) and a copy of the recipient's workspace
just before it took the message. A *mutation* changes that message's structure (a member
dropped, re-typed or re-shaped, a meta field of the wrong type, a huge count, a negative round
or seq, another kind), and the engine's own artifact path signs it with the sender's real key,
so whatever the container does (sealing, ledger heads) the crafted file is what a misbehaving
trusted peer could send. :func:`feed` puts it in the recipient's inbox and runs its step.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vfl_cli import jobs
from vfl_cli.artifacts.container import Member
from vfl_cli.errors import VflError
from vfl_cli.protocol.base import Outgoing
from vfl_cli.workspace import Workspace


@dataclass(frozen=True)
class Case:
    """One genuine message and the recipient's workspace just before it took it."""

    job: str
    sender: Path
    recipient: Path
    file: str  # the genuine file's name in the snapshot's inbox
    seq: int
    message: Outgoing
    snapshot: Path


def _recording(raw: list[tuple[str, str, str, int, Outgoing]]) -> Callable[..., Any]:
    original = jobs._to_artifacts

    def recording(ws: Workspace, job: str, engine: dict[str, Any], outgoing: list[Outgoing]) -> Any:
        out = original(ws, job, engine, outgoing)
        for (name, _, art), msg in zip(out, outgoing, strict=True):
            raw.append((name, ws.name, job, art.seq, msg))
        return out

    return recording


@contextmanager
def recording(monkeypatch: Any) -> Iterator[list[tuple[str, str, str, int, Outgoing]]]:
    """Record every message the engine turns into a file: (file, sender, job, seq, message)."""
    raw: list[tuple[str, str, str, int, Outgoing]] = []
    monkeypatch.setattr(jobs, "_to_artifacts", _recording(raw))
    yield raw


def _carry(src: Path, dst: Path) -> None:
    for f in sorted((src / "outbox").glob(f"*-to-{dst.name}.zip")):
        shutil.move(str(f), dst / "inbox" / f.name)


def act(ws_path: Path, job: str) -> list[Any]:
    """What the recipient does with its inbox: accept the job's proposal, or step the job."""
    ws = Workspace(ws_path)
    if (ws_path / "jobs" / job / "job.json").exists():
        return jobs.step(ws, job)
    return jobs.accept_job(ws, job)


def record_job(parties: list[Path], job: str, raw: list[tuple[str, str, str, int, Outgoing]],
               store: Path, *, limit: int = 400) -> list[Case]:
    """Drive ``job`` to the end, snapshotting each recipient before it takes each message."""
    by_name = {p.name: p for p in parties}
    cases: list[Case] = []
    seen: set[str] = set()
    for _ in range(limit):
        for src in parties:
            for dst in parties:
                if src != dst:
                    _carry(src, dst)
        done = 0
        for ws in parties:
            pending = [f.name for f in (ws / "inbox").glob(f"{job}.*.zip") if f.name not in seen]
            if not pending and not (ws / "jobs" / job / "job.json").exists():
                continue
            for name in pending:
                seen.add(name)
                hit = next(((who, s, m) for n, who, j, s, m in raw if n == name and j == job), None)
                if hit is None:
                    continue
                snap = store / f"{len(list(store.iterdir())):03d}-{ws.name}"
                shutil.copytree(ws, snap, symlinks=True)
                cases.append(Case(job, by_name[hit[0]], ws, name, hit[1], hit[2], snap))
            done += all(r.done for r in act(ws, job))
        if done == len(parties):
            return cases
    raise AssertionError(f"job {job} did not finish")


# ----- mutations of one message ---------------------------------------------------------------
def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _with_member(msg: Outgoing, name: str, member: Member | None) -> Outgoing:
    members = [m for m in msg.members if m.name != name]
    return replace(msg, members=members + ([member] if member is not None else []))


def _reshape(m: Member, how: str) -> Member:
    """An ndarray member with another dtype or shape; other members with their bytes cut."""
    if m.type != "ndarray":
        cut = {"truncate": m.data[: len(m.data) // 2], "extend": m.data + m.data[:8],
               "empty": b""}.get(how, m.data[:-1])
        return Member(m.name, m.type, cut, dict(m.info))
    a = np.load(io.BytesIO(m.data), allow_pickle=False)
    b = {
        "dtype": lambda: a.astype(np.int8) if a.dtype.kind == "f" else a.astype(np.float32),
        "complex": lambda: a.astype(np.complex128) if a.dtype.kind in "fiub" else np.zeros(3),
        "truncate": lambda: a.reshape(-1)[: max(0, a.size // 2)],
        "extend": lambda: np.concatenate([a.reshape(-1), a.reshape(-1)[:3]]),
        "empty": lambda: a.reshape(-1)[:0],
        "scalar": lambda: np.asarray(a.reshape(-1)[0] if a.size else 0),
        "2d": lambda: a.reshape(-1, 1) if a.ndim == 1 else a.reshape(-1),
        "nan": lambda: np.full(a.shape, np.nan) if a.dtype.kind == "f" else a.astype(np.float64) * np.nan,
        "text": lambda: np.array(["x"] * max(1, a.size)),
    }[how]()
    return Member(m.name, "ndarray", _npy(b), {**m.info, "shape": list(b.shape), "dtype": str(b.dtype)})


META_VALUES: list[Any] = [None, -1, 0, 10**30, -(10**30), 1e308, "x", "zz" * 40, [], [1, 2], {}, {"a": 1}, True]
INFO_VALUES: list[Any] = [None, -1, 0, 10**12, "x", [], [10**9, 10**9], {}, 1.5]


def mutate(msg: Outgoing, op: str, pick: int, value_index: int) -> tuple[Outgoing, dict[str, int], str]:  # noqa: C901 (one branch per mutation)
    """The message changed by ``op`` (``pick`` chooses the member or field), the engine's
    sequence override (``{"seq": n}``) for a mutation of the seq, and the op applied (an op
    with nothing to act on, such as dropping a member of a message without one, adds a field)."""
    members = sorted(msg.members, key=lambda m: m.name)
    keys = sorted(msg.meta)
    member = members[pick % len(members)] if members else None
    if op == "drop-member" and member:
        return _with_member(msg, member.name, None), {}, op
    if op == "member-info" and member and member.info:
        key = sorted(member.info)[value_index % len(member.info)]
        info = {**member.info, key: INFO_VALUES[value_index % len(INFO_VALUES)]}
        return _with_member(msg, member.name, Member(member.name, member.type, member.data, info)), {}, op
    if op.startswith("member-") and op != "member-info" and member:
        return _with_member(msg, member.name, _reshape(member, op[len("member-"):])), {}, op
    if op == "retype-member" and member:
        other = "paillier" if member.type == "ndarray" else "ndarray"
        return _with_member(msg, member.name, Member(member.name, other, member.data, dict(member.info))), {}, op
    if op == "extra-member":
        extra = Member("extra", "ndarray", _npy(np.zeros(3)), {"shape": [3], "dtype": "float64"})
        return _with_member(msg, "extra", extra), {}, op
    if op == "drop-meta" and keys:
        return replace(msg, meta={k: v for k, v in msg.meta.items() if k != keys[pick % len(keys)]}), {}, op
    if op == "meta-value" and keys:
        changed = {**msg.meta, keys[pick % len(keys)]: META_VALUES[value_index % len(META_VALUES)]}
        return replace(msg, meta=changed), {}, op
    if op == "extra-meta":
        return replace(msg, meta={**msg.meta, "extra": META_VALUES[value_index % len(META_VALUES)]}), {}, op
    if op == "round":
        return replace(msg, round=[-1, 10**12, msg.round + 1, 2**62][value_index % 4]), {}, op
    if op == "kind":
        kinds = ["handshake/hello", "psi/start", "psi/response", "psi/finish", "hetero/partial",
                 "hetero/gradient", "hetero/reply", "vfl/job-proposal", "nope/nope"]
        others = [k for k in kinds if k != msg.kind]
        return replace(msg, kind=others[value_index % len(others)]), {}, op
    if op == "seq":
        return msg, {"seq": [-1, 0, 10**15, 10**6][value_index % 4]}, op
    return replace(msg, meta={**msg.meta, "extra": 1}), {}, "extra-meta"  # nothing to act on


OPS = ["drop-member", "member-dtype", "member-complex", "member-truncate", "member-extend",
       "member-empty", "member-scalar", "member-2d", "member-nan", "member-text", "member-info",
       "retype-member", "extra-member", "drop-meta", "meta-value", "extra-meta", "round", "kind", "seq"]
#: Mutations a step must refuse whatever the message: a missing or re-typed member, an array
#: of another dtype or rank, another kind, a seq that is not the next one.
MUST_REFUSE = {"drop-member", "member-dtype", "member-complex", "member-2d", "member-text",
               "member-scalar", "retype-member", "kind", "seq"}
#: Mutations a protocol may tolerate: ignored extras, fields a step does not read (a round in a
#: protocol without rounds), or values it cannot check (the active party picks the positions).
TOLERABLE = {"extra-member", "extra-meta", "member-info", "round"}


def signed_bytes(case: Case, msg: Outgoing, override: dict[str, int]) -> tuple[str, bytes]:
    """The message as a file signed by the sender's real key, through the engine's own path."""
    seq = override.get("seq", case.seq)
    ((name, data, _),) = jobs._to_artifacts(Workspace(case.sender), case.job, {"next_seq": {msg.recipient: seq}}, [msg])
    return name, data


def restore(case: Case, work: Path) -> Path:
    """A fresh copy of the recipient's workspace before it took the case's message."""
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(case.snapshot, work, symlinks=True)
    return work


@dataclass
class Outcome:
    refused: bool  # VflError raised, or the file quarantined / left unused in the inbox
    consumed: bool  # the step took the file
    error: str = ""


def feed(case: Case, work: Path, name: str, data: bytes) -> Outcome:
    """Replace the genuine file by ``data`` in ``work`` (a restored copy) and take the step.

    Any exception other than :class:`VflError` propagates: it is the bug being hunted.
    """
    inbox = work / "inbox"
    (inbox / case.file).unlink()
    target = inbox / name
    target.write_bytes(data)
    try:
        act(work, case.job)
    except VflError as exc:
        return Outcome(True, not target.exists() and not _rejected(work, name), str(exc))
    consumed = not target.exists() and not _rejected(work, name)
    return Outcome(not consumed, consumed)


def _rejected(work: Path, name: str) -> bool:
    return any((work / "inbox" / "rejected").glob(f"{name}*")) if (work / "inbox" / "rejected").exists() else False
