"""The job engine: proposals, acceptance, steps, crash-safe commits.

A job is one protocol run agreed by all parties. The proposer sends every other party a signed
``vfl/job-proposal`` naming the protocol, its parameters and every party's key fingerprints; each
party accepts it explicitly, so all run the same signed parameters.

Every artifact carries ``seq``, its position on the channel sender -> recipient within the job.
A receiver takes exactly the next one: a lower ``seq`` is a replay, a higher one waits for the
missing file. Together with the signature, the job id and the recipient this refuses replayed,
reordered, misdirected and foreign files.

Each step is a transaction. The new state, the artifacts it sends and the inbox files it
consumed are first written to ``jobs/<job>/txn/`` and sealed with a ``COMMIT`` marker; only then
are they applied (outbox, archive, ledger, state), each part idempotently. A step killed before
the marker leaves no trace and simply runs again; one killed after it is completed on the next
command. Nothing is lost or sent twice.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import os
import secrets
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vfl_cli.artifacts.container import (
    Artifact,
    Loaded,
    encode,
    new_artifact,
    parse_artifact,
    read_artifact,
)
from vfl_cli.artifacts.io import pretty_json, read_regular, replace_atomic, write_new
from vfl_cli.bin_rules import job_rules
from vfl_cli.columns import encode_frame, job_columns
from vfl_cli.crypto.signing import short
from vfl_cli.errors import InvalidArtifact, KeyMismatch, VflError, WorkspaceError
from vfl_cli.names import check_kind, check_name, is_name
from vfl_cli.protocol.base import (
    Expect,
    JobState,
    Outgoing,
    PartyContext,
    Progress,
    Protocol,
    get_protocol,
    no_progress,
    party_list,
    with_legacy,
)
from vfl_cli.workspace import Workspace, secure_folders

PROPOSAL = "vfl/job-proposal"
#: A signed notice that the sender cancelled the job (or rejected its proposal); see cancel_job.
CANCEL = "vfl/job-cancel"
#: How long a command waits for another one (say, a step of 'vfl watch') to release the lock.
LOCK_WAIT_S = 15.0
#: Quarantine: ``inbox/rejected/<file>`` with ``<file>.reason.txt`` beside it.
REJECTED = "rejected"
REASON_SUFFIX = ".reason.txt"
#: How far past the next expected step a file may be and still wait in the inbox for the
#: missing ones; a file further ahead cannot be meant for this job and is rejected.
MAX_AHEAD = 10_000
#: Inbox files above this size are verified when the inbox is scanned and read again when their
#: step runs: a streamed alignment's parts are never all in memory at once.
LAZY_BYTES = 1 << 20


@dataclass
class StepReport:
    """What one command did to one job, for the user and for scripts (``--json``)."""

    job: str
    protocol: str
    phase: str
    done: bool
    sent: list[dict[str, str]] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    waiting_for: list[str] = field(default_factory=list)
    results: dict[str, Any] = field(default_factory=dict)
    #: inbox files of this job moved to inbox/rejected/ by this command: ``{"file", "reason"}``
    rejected: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----- locking and recovery --------------------------------------------------------------------
@contextmanager
def locked(ws: Workspace) -> Iterator[None]:
    """Hold the workspace lock; finish any committed transaction first."""
    with open(ws.path(".lock"), "w") as fh:
        # 'vfl watch' holds the lock only while it steps: a command typed beside it waits a
        # little for the step to end instead of failing at once.
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WorkspaceError(
                        f"another vfl command is working in {ws.root}; wait for it to finish"
                    ) from None
                time.sleep(0.1)
        secure_folders(ws.root)
        ws.ledger.repair()  # a torn last line (power loss) goes to ledger.torn, never blocks
        recover(ws)
        yield


def recover(ws: Workspace) -> None:
    for txn in sorted(ws.path("jobs").glob("*/txn")):
        if (txn / "COMMIT").exists():
            _apply(ws, txn)
        else:
            shutil.rmtree(txn)
    for d in ws.path("jobs").iterdir():
        if d.is_dir() and not (d / "job.json").exists():
            shutil.rmtree(d)  # a start or accept killed before its commit


# ----- state on disk -----------------------------------------------------------------------------
def job_dir(ws: Workspace, job: str) -> Path:
    """``jobs/<job>``, for a job id that is a name: a received id is data, never a path."""
    return ws.path("jobs", check_name(job, "job id"))


def load_info(ws: Workspace, job: str) -> dict[str, Any]:
    f = job_dir(ws, job) / "job.json"
    if not f.exists():
        known = ", ".join(sorted(p.name for p in ws.path("jobs").iterdir())) or "none"
        raise VflError(f"{ws.name} has no job {job!r} (known jobs: {known})")
    return dict(json.loads(f.read_text()))


def load_state(ws: Workspace, job: str) -> tuple[JobState, dict[str, Any]]:
    load_info(ws, job)  # a clear error for an unknown job
    d = job_dir(ws, job)
    raw = json.loads((d / "state.json").read_text())
    arrays: dict[str, np.ndarray] = {}
    if (d / "arrays.npz").exists():
        with np.load(d / "arrays.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    state = JobState(raw["phase"], raw["data"], arrays, raw["done"], raw["results"])
    return state, raw["engine"]


def _state_files(state: JobState, engine: dict[str, Any]) -> dict[str, bytes]:
    raw = {
        "phase": state.phase,
        "data": state.data,
        "done": state.done,
        "results": state.results,
        "engine": engine,
    }
    buf = io.BytesIO()
    np.savez(buf, **state.arrays)  # type: ignore[arg-type]  # numpy's stub: a key could be allow_pickle
    # getbuffer, not getvalue: no second copy of large arrays (a streamed alignment's result)
    return {"state.json": pretty_json(raw), "arrays.npz": buf.getbuffer()}  # type: ignore[dict-item]


def list_jobs(ws: Workspace) -> list[dict[str, Any]]:
    out = []
    for d in sorted(ws.path("jobs").iterdir()):
        # a folder whose name is not a job id was not made by vfl (or by one before names were
        # checked): it is never opened
        if is_name(d.name) and (d / "job.json").exists() and (d / "state.json").exists():
            info = load_info(ws, d.name)
            state, _ = load_state(ws, d.name)
            out.append(
                {
                    "job": d.name,
                    "protocol": info["protocol"],
                    "proposer": info["proposer"],
                    "created": info["created"],
                    "phase": state.phase,
                    "done": state.done,
                }
            )
    return out


# ----- the transaction -----------------------------------------------------------------------------
def _commit(
    ws: Workspace,
    job: str,
    *,
    info: dict[str, Any] | None,
    state: JobState,
    engine: dict[str, Any],
    out: list[tuple[str, bytes, Artifact]],
    consumed: list[tuple[str, Loaded]],
) -> None:
    d = job_dir(ws, job)
    txn = d / "txn"
    if txn.exists():
        shutil.rmtree(txn)
    for folder in (d, txn, txn / "out"):  # job state holds secrets: owner only
        folder.mkdir(mode=0o700, exist_ok=True)
    # The ledger count once this step is logged: a ledger found shorter later was cut.
    engine["ledger_count"] = ws.ledger.head()["count"] + len(out) + len(consumed)
    files = _state_files(state, engine)
    if info is not None:
        files["job.json"] = pretty_json(info)
    for name, data in files.items():
        _write_private(txn / name, data)
    plan: dict[str, list[dict[str, Any]]] = {"sent": [], "received": []}
    for name, data, art in out:
        _write_private(txn / "out" / name, data)
        plan["sent"].append({"file": name, **_ledger_fields(art), "artifact_sha256": _sha(data), "size": len(data)})
    for name, loaded in consumed:
        plan["received"].append(
            {"file": name, **_ledger_fields(loaded.artifact), "artifact_sha256": loaded.sha256,
             "size": loaded.size}
        )
    (txn / "plan.json").write_bytes(pretty_json(plan))
    for f in txn.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    write_new(txn / "COMMIT", b"")
    _apply(ws, txn)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _apply(ws: Workspace, txn: Path) -> None:
    """Apply a sealed transaction. Every part may already be done: each is idempotent."""
    d = txn.parent
    plan = json.loads((txn / "plan.json").read_text())
    for entry in plan["received"]:
        _apply_received(ws, entry)
    for entry in plan["sent"]:
        _apply_sent(ws, txn, entry)
    if plan["sent"] or plan["received"]:  # one signed checkpoint per step, after its entries
        ws.ledger.write_checkpoint(ws.signer, ws.ledger.head())
    for name in ("job.json", "state.json", "arrays.npz"):
        if (txn / name).exists():  # moved into place: atomic, and already fsynced
            os.replace(txn / name, d / name)
    shutil.rmtree(txn)


def _apply_received(ws: Workspace, entry: dict[str, Any]) -> None:
    """One consumed file: moved from the inbox to archive/received/, and its ledger entry."""
    name = entry["file"]
    src = ws.inbox / name
    dst = ws.path("archive", "received", name)
    if src.exists():
        if dst.exists():
            src.unlink()
        else:
            os.replace(src, dst)
            os.chmod(dst, 0o600)  # kept as the courier left it otherwise
    if not ws.ledger.has(entry["artifact_sha256"], "received"):
        ws.ledger.append(ws.signer, "received", checkpoint=False, **entry)


def _apply_sent(ws: Workspace, txn: Path, entry: dict[str, Any]) -> None:
    """One sealed file: archived in archive/sent/, put in the outbox, and its ledger entry."""
    name = entry["file"]
    archived = ws.path("archive", "sent", name)
    if not archived.exists():  # a hard link: the sealed copy is already on disk
        archived.parent.mkdir(parents=True, exist_ok=True)
        os.link(txn / "out" / name, archived)
    target = ws.outbox / name
    if not target.exists() and not ws.ledger.has(entry["artifact_sha256"], "sent"):
        try:
            os.link(archived, target)
        except OSError:
            shutil.copyfile(archived, target)
    if not ws.ledger.has(entry["artifact_sha256"], "sent"):
        ws.ledger.append(ws.signer, "sent", checkpoint=False, **entry)


def _ledger_fields(art: Artifact) -> dict[str, Any]:
    return {
        "job": art.job,
        "kind": art.kind,
        "artifact_seq": art.seq,
        "step": art.step,
        "round": art.round,
        "sender": art.sender,
        "recipient": art.recipient,
        # the sender's signed ledger head when it sent this file (for reconcile and verify)
        "sender_ledger": art.meta.get("ledger_head"),
    }


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ----- contexts ------------------------------------------------------------------------------------
def _context(ws: Workspace, info: dict[str, Any], progress: Progress) -> PartyContext:
    me = next(p for p in info["parties"] if p["name"] == ws.name)
    cache: dict[Path, Any] = {}

    def data_file(job: str | None = None) -> Path:
        """The data file this job (or the named earlier job) was run on."""
        return Path(info.get("data") or ws.config["data"]) if job is None else Path(
            load_info(ws, job).get("data") or ws.config["data"])

    def data(job: str | None = None) -> Any:
        """The data file this job (or the named earlier job) was run on, read once."""
        path = data_file(job)
        if path not in cache:
            cache[path] = encode_frame(ws.read_data(path), info.get("encoders"))  # this job's encoders
        return cache[path]

    def job_arrays(job: str) -> dict[str, np.ndarray]:
        return load_state(ws, job)[0].arrays

    def job_info(job: str) -> dict[str, Any]:
        info = load_info(ws, job)
        state, _ = load_state(ws, job)
        return dict(info, done=state.done, results=state.results, state=state.data)

    def public_key(name: str) -> Any:
        return ws.peer_paillier(name)  # a clear error for a party without a Paillier key

    return PartyContext(
        name=ws.name,
        role=me["role"],
        job=info["job"],
        params=with_legacy(info["params"], get_protocol(info["protocol"]).params_spec),
        parties=[{"name": p["name"], "role": p["role"]} for p in info["parties"]],
        rng=ws.rng(),
        data=data,
        data_file=data_file,
        id_column=ws.config["id_column"],
        label_column=ws.label_column,
        # the columns the job started with (job.json), so a later column choice never changes it
        features=info.get("features", ws.features),
        job_arrays=job_arrays,
        job_info=job_info,
        private_key=lambda: ws.private_key,
        public_key=public_key,
        progress=progress,
        local=info.get("local") or {},
        memory=_memory_bound(ws),
        csv=dict(ws.config.get("csv") or {}),
        scratch=lambda: job_dir(ws, info["job"]) / "scratch",
    )


def _memory_bound(ws: Workspace) -> int:
    """This party's memory bound: ``memory`` of vfl.json (or --memory), else the environment's
    ``VFL_MEMORY``, else 2 GB."""
    from vfl_cli.columns import memory_bound

    return memory_bound(ws.config.get("memory"))


def _to_artifacts(
    ws: Workspace, job: str, engine: dict[str, Any], outgoing: list[Outgoing]
) -> list[tuple[str, bytes, Artifact]]:
    out = []
    # Each artifact carries the sender's ledger head inside its signed manifest, so the
    # recipient can later prove what the sender had logged (vfl audit reconcile).
    head = ws.ledger.head()
    for msg in outgoing:
        seq = engine["next_seq"].get(msg.recipient, 1)
        engine["next_seq"][msg.recipient] = seq + 1
        art = new_artifact(
            kind=msg.kind,
            job=job,
            seq=seq,
            step=msg.step,
            round=msg.round,
            sender=ws.name,
            recipient=msg.recipient,
            meta=dict(msg.meta, ledger_head=head),
            members=msg.members,
        )
        out.append((art.default_name(), encode(art, ws.signer, to=ws.verifier_for(msg.recipient)), art))
    return out


# ----- starting and accepting --------------------------------------------------------------------
def new_job_id(protocol: str) -> str:
    return f"{protocol}-{datetime.now(timezone.utc):%Y%m%d}-{secrets.token_hex(3)}"


def start_job(
    ws: Workspace,
    protocol_name: str,
    params: dict[str, Any],
    *,
    peers: list[str] | None = None,
    job: str | None = None,
    data: Path | None = None,
    features: list[str] | None = None,
    encodings: dict[str, str] | None = None,
    progress: Progress = no_progress,
) -> StepReport:
    """Propose a job to ``peers`` (default: every trusted peer) and take the first step.

    ``data`` names another data file of this party for this job (e.g. new rows to align and
    score); it stays local and is never part of the proposal.
    """
    protocol = get_protocol(protocol_name)
    with locked(ws):
        trusted = ws.peers()
        names = [check_name(n, "party name (--with)") for n in peers] if peers else sorted(trusted)
        if not names:
            raise VflError("no trusted peers yet; import their cards with 'vfl keys import FILE'")
        cards = [ws.peer(n) for n in names]
        parties = [_party_entry(ws.card())] + [_party_entry(c) for c in cards]
        protocol.check_parties(parties)
        params = protocol.check_params(params, parties)
        from vfl_cli.keyring import check_paillier_keys

        check_paillier_keys(protocol_name, params, parties)  # before any step: no job left waiting
        job = job or new_job_id(protocol_name)
        if job_dir(ws, job).exists():
            raise VflError(f"job {job} already exists in {ws.name}; choose another job id")
        info = {
            "job": job,
            "protocol": protocol_name,
            "params": params,
            "parties": parties,
            "proposer": ws.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "data": _data_file(ws, data),
            # local, never in the proposal: this party's columns and encoders for the job
            **job_columns(ws, protocol_name, params, features=features, encode=encodings),
            **job_rules(ws, protocol_name),  # local: this party's own cut points (woe-binning)
        }
        engine: dict[str, Any] = {"next_seq": {}, "expected_seq": {}}
        proposals = [
            Outgoing(n, PROPOSAL, "proposal", meta={k: info[k] for k in ("protocol", "params", "parties", "proposer")})
            for n in names
        ]
        # The proposal and the proposer's first step are one transaction: if the first step
        # fails (bad data, say), nothing is written and no proposal goes out.
        state = JobState()
        outgoing = proposals + _first_step(protocol, _context(ws, info, progress), state)
        out = _to_artifacts(ws, job, engine, outgoing)
        _commit(ws, job, info=info, state=state, engine=engine, out=out, consumed=[])
        report = _run(ws, job, {}, progress)
        report.sent = [{"file": n, "recipient": a.recipient} for n, _, a in out] + report.sent
        return report


def _first_step(protocol: Any, ctx: PartyContext, state: JobState) -> list[Outgoing]:
    """A party's first step if it needs no input, else nothing."""
    return [] if protocol.expects(ctx, state) else protocol.advance(ctx, state, {})


def _data_file(ws: Workspace, data: Path | None) -> str:
    """The data file a job uses: the workspace's, or another one checked like it."""
    if data is None:
        return str(ws.config["data"])
    from vfl_cli.workspace import read_header

    columns = read_header(data, **(ws.config.get("csv") or {}))
    missing = [c for c in [ws.config["id_column"], *ws.features] if c not in columns]
    if missing:
        raise VflError(f"{data} lacks column(s) {', '.join(missing[:5])} that {ws.name}'s data has")
    return str(data.resolve())


def _party_entry(card: Any) -> dict[str, str]:
    return {
        "name": card.name,
        "role": card.role,
        "signing_fingerprint": card.signing_fingerprint,
        "paillier_fingerprint": card.paillier_fingerprint,
    }


def pending_proposals(ws: Workspace) -> list[tuple[str, Loaded]]:
    """Proposals in the inbox that pass every check (the scan quarantines the others)."""
    with locked(ws):
        return [(n, loaded) for n, loaded in _scan_inbox(ws) if loaded.artifact.kind == PROPOSAL]


def accept_job(
    ws: Workspace, job: str | None = None, *, data: Path | None = None, progress: Progress = no_progress,
    rejected: Rejections | None = None,
) -> list[StepReport]:
    """Accept proposals waiting in the inbox (all, or the one for ``job``) and take first steps.

    ``data`` names another data file of this party for the accepted job (local only). A
    proposal that fails a check is quarantined like any inbox file; if none is left to
    accept, the first reason is the error.
    """
    rejected = [] if rejected is None else rejected
    if job is not None:
        check_name(job, "job id")
    with locked(ws):
        scanned = _scan_inbox(ws, rejected)  # read and verified once for every proposal accepted below
        inbox = _by_job(scanned)
        pending = [(n, loaded) for n, loaded in scanned if loaded.artifact.kind == PROPOSAL]
        if job is not None:
            pending = [(n, loaded) for n, loaded in pending if loaded.artifact.job == job]
        reports = []
        for name, loaded in pending:
            report = _accept_one(ws, name, loaded, data, inbox, progress, rejected)
            if report is not None:
                reports.append(report)
        if not reports:
            _no_proposal(ws, job, rejected)
        _attach(reports, rejected)
        return reports


def _accept_one(ws: Workspace, name: str, loaded: Loaded, data: Path | None,
                inbox: dict[str, dict[tuple[str, int], tuple[str, Loaded]]], progress: Progress,
                rejected: Rejections) -> StepReport | None:
    art = loaded.artifact
    try:
        info = _check_proposal(ws, name, art)
    except WorkspaceError:
        raise
    except VflError as exc:  # a crafted or mistaken proposal: quarantined, others proceed
        reason = str(exc) if name in str(exc) else f"{name}: {exc}"
        rejected.append(quarantine(ws, name, reason, job=art.job))
        return None
    info["data"] = _data_file(ws, data)
    info.update(job_columns(ws, info["protocol"], info["params"]))  # local, like the data file
    info.update(job_rules(ws, info["protocol"]))
    engine = {"next_seq": {}, "expected_seq": {art.sender: art.seq + 1}}
    state = JobState()
    first = _first_step(get_protocol(info["protocol"]), _context(ws, info, progress), state)
    out = _to_artifacts(ws, art.job, engine, first)
    _commit(ws, art.job, info=info, state=state, engine=engine, out=out, consumed=[(name, loaded)])
    report = _run(ws, art.job, inbox.get(art.job, {}), progress, rejected)
    report.sent = [{"file": n, "recipient": a.recipient} for n, _, a in out] + report.sent
    return report


def _no_proposal(ws: Workspace, job: str | None, rejected: Rejections) -> None:
    """Nothing was accepted: say why, with the reason a proposal (or any file) was refused."""
    mine = [r for r in rejected if job is None or r["job"] == job] or rejected
    if mine:
        raise InvalidArtifact(
            f"{mine[0]['reason']} (moved to inbox/{REJECTED}/{mine[0]['file']}"
            + (f"; {len(mine) - 1} more file(s) refused)" if len(mine) > 1 else ")")
        )
    raise VflError(
        f"no job proposal{' for ' + job if job else ''} in {ws.inbox}; copy the proposer's "
        "*.job-proposal.* file there first"
    )


def _version() -> str:
    from vfl_cli import __version__

    return f"vfl {__version__}"


def params_drift(protocol: Protocol, params: Any, parties: list[dict[str, Any]]) -> str:
    """How a job's parameters differ from their checked form under this vfl ("" when they do not).

    A proposal is in its checked form when proposer and acceptor run the same protocol
    version; a parameter added since (or one this version no longer knows) shows up here, and
    the job cannot be stepped as its proposer meant it.
    """
    try:
        checked = protocol.check_params(params, parties)
    except VflError as exc:  # an unknown parameter, or a value outside this version's range
        return str(exc)
    if not isinstance(params, dict):
        return "not a table"
    if checked == params:
        return ""
    missing = [k for k in checked if k not in params]
    changed = [k for k in checked if k in params and checked[k] != params[k]]
    parts = ([f"no {', '.join(missing)}"] if missing else []) + ([f"{', '.join(changed)} changed"] if changed else [])
    return "; ".join(parts) or "different"


def _check_proposal(ws: Workspace, name: str, art: Artifact) -> dict[str, Any]:
    meta = art.meta
    if (job_dir(ws, art.job) / "job.json").exists():
        raise InvalidArtifact(f"{name}: job {art.job} was already accepted here (replayed proposal)")
    if art.seq != 1:
        raise InvalidArtifact(f"{name}: a proposal must be the first file of its job")
    if meta.get("proposer") != art.sender:
        raise InvalidArtifact(f"{name}: the proposal names another proposer than its signer {art.sender}")
    parties = party_list(meta.get("parties"), what=name)  # structure first: a crafted list is data
    mine = [p for p in parties if p.get("name") == ws.name]
    if not mine:
        raise InvalidArtifact(f"{name}: the proposal does not name {ws.name} as a party")
    if mine[0]["role"] != ws.role:
        raise InvalidArtifact(f"{name}: the proposal makes {ws.name} {mine[0]['role']}, but it is {ws.role}")
    if art.sender not in {p["name"] for p in parties}:
        raise InvalidArtifact(f"{name}: its proposer {art.sender} is not one of the job's parties")
    for p in parties:
        card = ws.card() if p["name"] == ws.name else ws.peer(p["name"])
        if (card.signing_fingerprint, card.paillier_fingerprint) != (
            p["signing_fingerprint"],
            p["paillier_fingerprint"],
        ):
            raise InvalidArtifact(
                f"{name}: the proposal names {p['name']} with key {short(p['signing_fingerprint'])}, "
                f"but the trusted key is {short(card.signing_fingerprint)}; compare cards out of band"
            )
    protocol = get_protocol(str(meta.get("protocol")))
    protocol.check_parties([{"name": p["name"], "role": p["role"]} for p in parties])
    params = meta.get("params", {})
    drift = params_drift(protocol, params, parties)
    if drift:
        raise InvalidArtifact(f"{name}: the proposal's parameters are not in this vfl's checked form ({drift}); "
                              f"the proposer may run another vfl version or build (this is {_version()}): "
                              "both parties need the same one")
    return {
        "job": art.job,
        "protocol": meta["protocol"],
        "params": params,
        "parties": parties,
        "proposer": art.sender,
        "created": art.created,
    }


# ----- stepping ------------------------------------------------------------------------------------
#: Files moved to inbox/rejected/ by one command: ``{"file", "reason", "job"}`` each.
Rejections = list[dict[str, str]]


def quarantine(ws: Workspace, name: str, reason: str, *, job: str = "") -> dict[str, str]:
    """Move ``inbox/<name>`` into ``inbox/rejected/`` with ``<name>.reason.txt`` beside it.

    Nothing is deleted: a person can read the reason and move the file back. Returns the entry
    for the command's report.
    """
    folder = ws.inbox / REJECTED
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise WorkspaceError(f"{folder} is not a folder; remove it so refused files can be moved there")
    folder.mkdir(mode=0o700, exist_ok=True)
    target, n = name, 1
    while os.path.lexists(folder / target) or os.path.lexists(folder / (target + REASON_SUFFIX)):
        target, n = f"{name}.{n}", n + 1
    try:
        os.replace(ws.inbox / name, folder / target)
    except FileNotFoundError:  # taken away meanwhile (by a courier, say): nothing left to refuse
        return {"file": name, "reason": f"{reason} (gone from the inbox before it was moved)", "job": job}
    replace_atomic(folder / (target + REASON_SUFFIX), (reason + "\n").encode(), mode=0o600)
    return {"file": target, "reason": reason, "job": job}


def rejected_files(ws: Workspace) -> list[dict[str, str]]:
    """Files in ``inbox/rejected/`` with the reason each was refused: ``{"file", "reason"}``."""
    folder = ws.inbox / REJECTED
    if folder.is_symlink() or not folder.is_dir():
        return []
    out = []
    for f in sorted(folder.iterdir()):
        if f.name.endswith(REASON_SUFFIX) or f.name.startswith("."):
            continue
        out.append({"file": f.name, "reason": _read_reason(folder / (f.name + REASON_SUFFIX))})
    return out


def _read_reason(path: Path) -> str:
    """At most 4 KB of a reason file, never following a link or blocking on a pipe."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return "(no reason recorded)"
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "(no reason recorded)"
        return fh.read(4096).decode("utf-8", errors="replace").strip()


def _inbox_files(ws: Workspace) -> list[Path]:
    """``inbox/*.zip`` by name, leaving out hidden files (copies still being written)."""
    return [f for f in sorted(ws.inbox.iterdir()) if f.name.endswith(".zip") and not f.name.startswith(".")]


def _check_file(ws: Workspace, f: Path, *, lazy: bool = False) -> Loaded:
    """A plain file, a well-formed artifact with valid names, for us, signed by a trusted peer.
    With ``lazy``, a file above :data:`LAZY_BYTES` is verified but not yet decrypted: its step
    reads and opens it (:func:`_payload`), so its payload is decrypted once, not twice."""
    if not stat.S_ISREG(os.lstat(f).st_mode):
        raise InvalidArtifact(f"{f.name} is not a plain file (a link, pipe, folder or device)")
    loaded = read_artifact(f, max_bytes=ws.max_file_size, limit=ws.size_limit())
    _check_loaded(ws, f.name, loaded)
    if lazy and loaded.size > LAZY_BYTES:
        return loaded
    return loaded.open(ws.signer, ws.name)  # the payload is sealed to us: decrypt once verified


def _check_loaded(ws: Workspace, what: str, loaded: Loaded) -> None:
    """Valid names, addressed to us, signed by a trusted peer (looked up by exact name)."""
    art = loaded.artifact
    try:
        for value, field_ in ((art.sender, "sender"), (art.recipient, "recipient"), (art.job, "job id")):
            check_name(value, f"{what}: {field_}")
        check_kind(art.kind, f"{what}: kind")
    except VflError as exc:
        raise InvalidArtifact(str(exc)) from None
    if art.recipient != ws.name:
        raise InvalidArtifact(f"{what} is addressed to {art.recipient}, but this workspace is "
                              f"{ws.name}; it was handed to the wrong party")
    if art.sender == ws.name:
        raise InvalidArtifact(f"{what} was sent by {ws.name} itself")
    card = ws.peers().get(art.sender)  # an exact name among trusted cards, never a path
    if card is None:
        raise InvalidArtifact(f"{what} comes from {art.sender}, who is not a trusted peer; import "
                              "its card (vfl keys import), then hand the file over again")
    loaded.verify(card.verifier, what=what)


def _check_place(ws: Workspace, name: str, art: Artifact, proposed: set[str],
                 seen: dict[tuple[str, str, int], str]) -> None:
    """Whether the file can ever be used: for a known job, a party of it, not yet consumed."""
    key = (art.job, art.sender, art.seq)
    if key in seen:
        raise InvalidArtifact(f"{name} is step {art.seq} of {art.sender} in job {art.job}, like "
                              f"{seen[key]}, which is used instead")
    seen[key] = name
    if art.kind == PROPOSAL:
        if (job_dir(ws, art.job) / "job.json").exists():
            raise InvalidArtifact(f"{name}: job {art.job} was already accepted here (replayed proposal)")
        if art.seq != 1:
            raise InvalidArtifact(f"{name}: a proposal must be the first file of its job")
        return
    if not (job_dir(ws, art.job) / "state.json").exists():
        if art.job not in proposed:
            raise InvalidArtifact(f"{name} belongs to job {art.job}, which {ws.name} has not "
                                  "accepted; accept its proposal first, then move it back")
        return
    _check_turn(ws, name, art)


def _check_turn(ws: Workspace, name: str, art: Artifact) -> None:
    """A file of an accepted job: from one of its parties, not replayed, not too far ahead."""
    info = load_info(ws, art.job)
    raw = json.loads((job_dir(ws, art.job) / "state.json").read_text())  # no arrays: they may be large
    done, engine = raw["done"], raw["engine"]
    expected = engine["expected_seq"].get(art.sender, 1)
    if art.sender not in [p["name"] for p in info["parties"]]:
        raise InvalidArtifact(f"{name} comes from {art.sender}, who is not a party of job {art.job}")
    if art.seq < expected:
        raise InvalidArtifact(f"{name} is step {art.seq} from {art.sender} in job {art.job}, which "
                              "was already accepted (replayed)")
    if done:
        raise InvalidArtifact(f"{name}: job {art.job} is finished here; it waits for no more files")
    if art.seq > expected + MAX_AHEAD:
        raise InvalidArtifact(f"{name} is step {art.seq} from {art.sender} in job {art.job}, more "
                              f"than {MAX_AHEAD} past the next one ({expected})")


def _scan_inbox(ws: Workspace, rejected: Rejections | None = None) -> list[tuple[str, Loaded]]:
    """Read and verify every artifact in the inbox.

    A file that fails any check is moved to ``inbox/rejected/`` with its reason (added to
    ``rejected``) and never stops the others. A file ahead of its turn in a known job waits.
    """
    rejected = [] if rejected is None else rejected
    checked = []
    for f in _inbox_files(ws):
        try:
            checked.append((f.name, _light(_check_file(ws, f, lazy=True))))
        except (InvalidArtifact, KeyMismatch) as exc:
            rejected.append(quarantine(ws, f.name, str(exc)))
    proposed = {loaded.artifact.job for _, loaded in checked if loaded.artifact.kind == PROPOSAL}
    seen: dict[tuple[str, str, int], str] = {}
    out = []
    for name, loaded in checked:
        try:
            _check_place(ws, name, loaded.artifact, proposed, seen)
        except InvalidArtifact as exc:
            rejected.append(quarantine(ws, name, str(exc), job=loaded.artifact.job))
            continue
        out.append((name, loaded))
    return out


def _light(loaded: Loaded) -> Loaded:
    """A large file without its payload: checked now, read again when its step runs
    (:func:`_payload`), so that a scan of many parts never holds them all in memory."""
    if loaded.size <= LAZY_BYTES:
        return loaded
    return dataclasses.replace(loaded, artifact=dataclasses.replace(loaded.artifact, members={}))


def _payload(ws: Workspace, name: str, loaded: Loaded) -> Loaded:
    """The file with its payload: the scanned one, or a large file read and checked again (it
    must be the very file scanned)."""
    if loaded.size <= LAZY_BYTES:
        return loaded
    again = _check_file(ws, ws.inbox / name)
    if again.sha256 != loaded.sha256:
        raise InvalidArtifact(f"{name} changed in the inbox after it was checked")
    return again


def _attach(reports: list[StepReport], rejected: Rejections) -> None:
    """Give each job's report the files of that job this command rejected."""
    for r in reports:
        r.rejected = [{"file": x["file"], "reason": x["reason"]} for x in rejected if x["job"] == r.job]


def _inbox_by_job(ws: Workspace) -> dict[str, dict[tuple[str, int], tuple[str, Loaded]]]:
    return _by_job(_scan_inbox(ws))


def _by_job(scanned: list[tuple[str, Loaded]]) -> dict[str, dict[tuple[str, int], tuple[str, Loaded]]]:
    """Scanned inbox files by job, keyed by (sender, seq); proposals left out."""
    by_job: dict[str, dict[tuple[str, int], tuple[str, Loaded]]] = {}
    for name, loaded in scanned:
        art = loaded.artifact
        if art.kind != PROPOSAL:
            by_job.setdefault(art.job, {})[(art.sender, art.seq)] = (name, loaded)
    return by_job


def step(ws: Workspace, job: str | None = None, *, progress: Progress = no_progress,
         rejected: Rejections | None = None) -> list[StepReport]:
    """Advance every job (or ``job``) as far as the inbox allows.

    Files that fail a check are quarantined (listed in each job's report and appended to
    ``rejected``); files that arrived early wait for the ones before them.
    """
    rejected = [] if rejected is None else rejected
    with locked(ws):
        if job:
            load_info(ws, job)
        inbox = _by_job(_scan_inbox(ws, rejected))
        touched = set(inbox) | {r["job"] for r in rejected}  # a done job reports what it refused
        jobs = [job] if job else [j["job"] for j in list_jobs(ws) if not j["done"] or j["job"] in touched]
        reports = [_run(ws, j, inbox.get(j, {}), progress, rejected) for j in jobs]
        _attach(reports, rejected)
        return reports


def _run(
    ws: Workspace,
    job: str,
    available: dict[tuple[str, int], tuple[str, Loaded]],
    progress: Progress,
    rejected: Rejections | None = None,
) -> StepReport:
    rejected = [] if rejected is None else rejected
    info = load_info(ws, job)
    protocol = get_protocol(info["protocol"])
    ctx = _context(ws, info, progress)
    report = StepReport(job, info["protocol"], "", False)
    while True:
        state, engine = load_state(ws, job)
        report.phase, report.done, report.results = state.phase, state.done, state.results
        if state.done:
            for name, _ in available.values():  # can never be used now: out of the way
                reason = f"{name}: job {job} is finished here; it waits for no more files"
                rejected.append(quarantine(ws, name, reason, job=job))
            available.clear()
            return report
        if _take_cancel(ws, job, info, state, engine, available, report):
            continue
        expects = protocol.expects(ctx, state)
        received, consumed, missing = _gather(ws, job, expects, engine, available, rejected)
        if missing:
            report.waiting_for = [m.describe() for m in missing]
            return report
        _check_steppable(protocol, info)
        try:
            outgoing = protocol.advance(ctx, state, received)
        except (InvalidArtifact, KeyMismatch) as exc:  # the content is refused: quarantined, nothing changes
            for name, loaded in consumed:
                available.pop((loaded.artifact.sender, loaded.artifact.seq), None)
                reason = str(exc) if name in str(exc) else f"{name}: {exc}"
                rejected.append(quarantine(ws, name, reason, job=job))
            report.waiting_for = [e.describe() for e in expects]
            return report
        for sender in received:
            engine["expected_seq"][sender] = engine["expected_seq"].get(sender, 1) + 1
        for _, loaded in consumed:
            available.pop((loaded.artifact.sender, loaded.artifact.seq), None)
        out = _to_artifacts(ws, job, engine, outgoing)
        _commit(ws, job, info=None, state=state, engine=engine, out=out, consumed=consumed)
        report.sent += [{"file": n, "recipient": a.recipient} for n, _, a in out]
        report.received += [n for n, _ in consumed]
        report.waiting_for = []
        del state, out  # freed before the next load: never two copies of a large state (a streamed result)


def _check_steppable(protocol: Protocol, info: dict[str, Any]) -> None:
    """Refuse to step a job proposed under another vfl: its parameters, checked by this one,
    differ (a parameter added since, say), so its steps would not be the ones its parties agreed."""
    drift = params_drift(protocol, with_legacy(info["params"], protocol.params_spec), info["parties"])
    if drift:
        job = info["job"]
        raise VflError(f"job {job} was started by another vfl version or build: its parameters differ from what "
                       f"{_version()} checks ({drift}). Finish it with the vfl that started it, or cancel it "
                       f"(vfl job cancel {job}) and start it again")


def _gather(
    ws: Workspace, job: str, expects: list[Expect], engine: dict[str, Any],
    available: dict[tuple[str, int], tuple[str, Loaded]], rejected: Rejections,
) -> tuple[dict[str, Artifact], list[tuple[str, Loaded]], list[Expect]]:
    """The next file from each expected sender: (received, consumed, still missing).

    A file at the expected place of another kind than the step waits for is quarantined.
    """
    received: dict[str, Artifact] = {}
    consumed: list[tuple[str, Loaded]] = []
    missing: list[Expect] = []
    for exp in expects:
        seq = engine["expected_seq"].get(exp.sender, 1)
        hit = available.get((exp.sender, seq))
        if hit is not None and hit[1].artifact.kind != exp.kind:
            available.pop((exp.sender, seq))
            reason = f"{hit[0]} is {hit[1].artifact.kind}, but job {job} waits for {exp.describe()}"
            rejected.append(quarantine(ws, hit[0], reason, job=job))
            hit = None
        if hit is not None:
            try:
                full = _payload(ws, *hit)
            except (InvalidArtifact, KeyMismatch, OSError) as exc:
                available.pop((exp.sender, seq))
                rejected.append(quarantine(ws, hit[0], str(exc), job=job))
                hit = None
        if hit is None:
            missing.append(exp)
            continue
        received[exp.sender] = full.artifact
        consumed.append(hit)
    return received, consumed, missing


def receive_files(ws: Workspace, files: list[Path]) -> list[str]:
    """Copy artifacts into the inbox after checking they parse and are addressed to us."""
    names = []
    for f in files:
        # a plain file, bounded by the workspace's max_file_size, read once
        data = read_regular(f, max_bytes=ws.max_file_size, limit=ws.size_limit())
        loaded = parse_artifact(data, name=str(f), max_bytes=ws.max_file_size)
        _check_loaded(ws, str(f), loaded)
        name = loaded.artifact.default_name()  # made of checked names, never a name it brought
        if not (ws.inbox / name).exists():
            write_new(ws.inbox / name, bytes(data))
        names.append(name)
    return names


# ----- cancelling and rejecting --------------------------------------------------------------------
def _mark_cancelled(state: JobState, by: str, reason: str) -> None:
    """A cancelled job is over: 'done' (so no step lists it again), phase ``cancelled``."""
    state.phase, state.done = "cancelled", True
    state.results = {"cancelled": {"by": by, "reason": reason}}


def _notices(others: list[str], reason: str, step: str) -> list[Outgoing]:
    return [Outgoing(n, CANCEL, step, meta={"reason": reason}) for n in others]


def _take_cancel(ws: Workspace, job: str, info: dict[str, Any], state: JobState, engine: dict[str, Any],
                 available: dict[tuple[str, int], tuple[str, Loaded]], report: StepReport) -> bool:
    """Apply a peer's cancel notice if one waits (at any position: it ends the job)."""
    hit = next((v for v in available.values() if v[1].artifact.kind == CANCEL), None)
    if hit is None:
        return False
    name, loaded = hit
    art = loaded.artifact
    available.pop((art.sender, art.seq))
    engine["expected_seq"][art.sender] = art.seq + 1
    reason = str(art.meta.get("reason", ""))[:500]
    _mark_cancelled(state, art.sender, reason)
    # The proposer passes the notice on, so that every party stops (a reject reaches only it).
    others = [p["name"] for p in info["parties"] if p["name"] not in (ws.name, art.sender)]
    passed = f"{art.sender} cancelled" + (f": {reason}" if reason else "")
    outgoing = _notices(others, passed, "cancel") if info["proposer"] == ws.name else []
    out = _to_artifacts(ws, job, engine, outgoing)
    _commit(ws, job, info=None, state=state, engine=engine, out=out, consumed=[(name, loaded)])
    report.received.append(name)
    report.sent += [{"file": n, "recipient": a.recipient} for n, _, a in out]
    return True


def cancel_job(ws: Workspace, job: str, *, reason: str = "") -> StepReport:
    """Cancel ``job`` here and write a signed notice for every other party; each stops on it."""
    check_name(job, "job id")
    with locked(ws):
        info = load_info(ws, job)
        state, engine = load_state(ws, job)
        if state.done:
            what = "cancelled" if state.phase == "cancelled" else "finished"
            raise VflError(f"job {job} is already {what} here; there is nothing to cancel")
        _mark_cancelled(state, ws.name, reason)
        others = [p["name"] for p in info["parties"] if p["name"] != ws.name]
        out = _to_artifacts(ws, job, engine, _notices(others, reason, "cancel"))
        _commit(ws, job, info=None, state=state, engine=engine, out=out, consumed=[])
        return StepReport(job, info["protocol"], state.phase, True,
                          sent=[{"file": n, "recipient": a.recipient} for n, _, a in out],
                          results=state.results)


def reject_job(ws: Workspace, job: str, *, reason: str = "") -> StepReport:
    """Refuse the proposal for ``job`` waiting in the inbox; its proposer gets a signed notice."""
    check_name(job, "job id")
    with locked(ws):
        pending = [(n, loaded) for n, loaded in _scan_inbox(ws)
                   if loaded.artifact.kind == PROPOSAL and loaded.artifact.job == job]
        if not pending:
            raise VflError(f"no proposal for job {job} waits in {ws.inbox}; 'vfl status' lists what arrived")
        name, loaded = pending[0]
        art = loaded.artifact
        try:
            info = _check_proposal(ws, name, art)
        except WorkspaceError:
            raise
        except VflError as exc:  # not a valid proposal at all: out of the way, nothing to answer
            quarantine(ws, name, str(exc), job=job)
            raise InvalidArtifact(f"{exc} (moved to inbox/{REJECTED}/{name}; no notice sent)") from None
        info["rejected"] = True
        engine: dict[str, Any] = {"next_seq": {}, "expected_seq": {art.sender: art.seq + 1}}
        state = JobState()
        _mark_cancelled(state, ws.name, reason or "proposal rejected")
        out = _to_artifacts(ws, job, engine, _notices([art.sender], reason or "proposal rejected", "reject"))
        _commit(ws, job, info=info, state=state, engine=engine, out=out, consumed=[(name, loaded)])
        return StepReport(job, info["protocol"], state.phase, True,
                          sent=[{"file": n, "recipient": a.recipient} for n, _, a in out],
                          received=[name], results=state.results)
