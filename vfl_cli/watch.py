"""``vfl watch``: one party's unattended loop over its drop folders, inbox and jobs.

Each pass, in this order:

1. pick up files addressed to this party from its pickup folder into the inbox;
2. step every unfinished job as far as the inbox allows;
3. accept the proposals waiting in the inbox that the party's policy file allows (the others
   wait for a person: ``vfl job accept`` or ``vfl job reject``), each taking its first steps; one
   naming a job still running here (its alignment or model) waits until that job is done;
4. deliver every outbox file to its recipient's drop folder.

Every event is one line given to ``log``. A user error (a bad file, a refused step) is logged and
the pass goes on with the next job; the next pass tries again. The loop never holds the
workspace lock between steps, so a person may run any ``vfl`` command beside it. ``stop()``
(called from a signal handler) ends the loop after the current step.

The policy file (TOML) says which proposals are accepted without a person::

    peers = ["hospital"]                        # who may propose (required)
    protocols = ["psi", "hetero-lr", "predict"]  # what they may propose (required)

    [params]                                    # optional bounds on the proposal's parameters
    epochs = { max = 50 }
    learning_rate = { min = 0.0001, max = 1.0 }
    optimizer = { one_of = ["adam", "sgd"] }
    batch_size = 0                              # a plain value: exactly this

A parameter the policy does not name may take any value the protocol itself accepts; a
parameter it names must be in range (a proposal without it passes: the protocol's checked
default is then used, and proposals are always in checked form).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from vfl_cli import drops
from vfl_cli import jobs as engine
from vfl_cli.errors import VflError
from vfl_cli.protocol.base import Progress, no_progress
from vfl_cli.workspace import Workspace

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

RULE_KEYS = {"min", "max", "one_of"}
#: Every this many seconds a pass steps every job even if the inbox did not change.
FULL_PASS_S = 30.0


@dataclass(frozen=True)
class Policy:
    """Which proposals a party accepts without a person."""

    peers: frozenset[str]
    protocols: frozenset[str]
    params: dict[str, Any] = field(default_factory=dict)

    def refusal(self, proposer: str, protocol: str, params: dict[str, Any]) -> str | None:
        """Why a proposal is not allowed, or None if it is."""
        if proposer not in self.peers:
            return f"the policy does not allow proposals from {proposer}"
        if protocol not in self.protocols:
            return f"the policy does not allow protocol {protocol}"
        for key, rule in self.params.items():
            if key in params:
                reason = _rule_refusal(key, rule, params[key])
                if reason:
                    return reason
        return None


def _rule_refusal(key: str, rule: Any, value: Any) -> str | None:
    if not isinstance(rule, dict):
        return None if value == rule else f"{key} is {value!r}; the policy allows only {rule!r}"
    if "one_of" in rule and value not in rule["one_of"]:
        return f"{key} is {value!r}; the policy allows {rule['one_of']!r}"
    for bound, ok in (("min", operator.ge), ("max", operator.le)):
        if bound in rule:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"{key} is {value!r}, not a number; the policy sets a {bound}imum"
            if not ok(value, rule[bound]):
                return f"{key} is {value!r}; the policy's {bound}imum is {rule[bound]!r}"
    return None


def load_policy(path: Path) -> Policy:
    """Read and check a policy file (format in this module's docstring)."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise VflError(f"cannot read policy {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise VflError(f"{path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - {"peers", "protocols", "params"})
    if unknown:
        raise VflError(f"{path}: unknown key(s) {unknown}; a policy has peers, protocols and [params]")
    lists = {}
    for key in ("peers", "protocols"):
        value = raw.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise VflError(f'{path}: {key} must be a list of names, e.g. {key} = ["..."]')
        lists[key] = frozenset(value)
    params = raw.get("params", {})
    if not isinstance(params, dict):
        raise VflError(f"{path}: params must be a table ([params])")
    for key, rule in params.items():
        if isinstance(rule, dict) and (not rule or set(rule) - RULE_KEYS):
            raise VflError(f"{path}: params.{key} may hold only min, max and one_of")
        if isinstance(rule, dict) and "one_of" in rule and not isinstance(rule["one_of"], list):
            raise VflError(f"{path}: params.{key}.one_of must be a list")
    return Policy(lists["peers"], lists["protocols"], dict(params))


@dataclass
class Watcher:
    """One party's loop; ``log`` receives one line per event."""

    ws: Workspace
    policy: Policy | None = None
    log: Callable[[str], None] = lambda line: None
    progress: Progress = no_progress
    _stop: bool = False
    _said: dict[str, str] = field(default_factory=dict)
    _inbox_seen: tuple[tuple[str, int], ...] | None = None
    _last_full: float = 0.0
    _rejected_seen: set[str] | None = None

    def stop(self) -> None:
        """Finish the current step, then end the loop (safe from a signal handler)."""
        self._stop = True

    def _once(self, topic: str, line: str) -> None:
        """Log ``line`` unless the same line was the last one said about ``topic``."""
        if self._said.get(topic) != line:
            self._said[topic] = line
            self.log(line)

    def _guard(self, topic: str, action: Callable[[], None]) -> None:
        try:
            action()
            self._said.pop(topic, None)
        except VflError as exc:
            self._once(topic, f"error: {exc}")
        except Exception as exc:  # noqa: BLE001  a bug, perhaps hit by a crafted file: one job must not stop all
            self._once(topic, f"internal error (a bug, please report it): {type(exc).__name__}: {exc}")

    def run_pass(self) -> None:
        """One pass: pick up, step, accept, deliver."""
        if self._rejected_seen is None:  # files refused before this watch started are old news
            self._rejected_seen = {r["file"] for r in engine.rejected_files(self.ws)}
        self._guard("pickup", self._pick_up)
        if self._stop:
            return
        # Proposals and steps take the workspace lock: only when the inbox changed (or now and
        # then), so that commands typed beside the loop rarely wait for it.
        inbox = _inbox_listing(self.ws)
        if inbox != self._inbox_seen or time.monotonic() - self._last_full > FULL_PASS_S:
            # Jobs first: a proposal may build on a job whose last file came with it (training
            # on an alignment this pass finishes); accepting it first would refuse it.
            self._step_all()
            self._guard("proposals", self._accept)
            # the listing from before the step: a file that arrived during it gets its own pass
            self._inbox_seen = inbox
            self._last_full = time.monotonic()
        self._guard("deliver", self._deliver)
        self._guard("rejected", self._log_rejected)

    def _log_rejected(self) -> None:
        """One line per file newly moved to inbox/rejected/ (by any command), with its reason."""
        now = {r["file"]: r.get("reason", "") for r in engine.rejected_files(self.ws)}
        for name in sorted(set(now) - (self._rejected_seen or set())):
            self.log(f"rejected {name}: {now[name]}")
        self._rejected_seen = set(now)

    def _pick_up(self) -> None:
        for m in drops.pick_up(self.ws):
            self.log(f"picked up {m.file} from {m.folder}")

    def _deliver(self) -> None:
        for m in drops.deliver(self.ws):
            self.log(f"delivered {m.file} to {m.peer} ({m.folder})")

    def _accept(self) -> None:
        for name, loaded in engine.pending_proposals(self.ws):
            if self._stop:
                return
            art = loaded.artifact
            reason = ("no policy file is given (vfl watch --policy FILE)" if self.policy is None
                      else self.policy.refusal(art.sender, str(art.meta.get("protocol")),
                                               dict(art.meta.get("params") or {})))
            if reason:
                self._once(f"proposal:{name}", f"[{art.job}] proposal from {art.sender} waits for a "
                           f"person: {reason}; run 'vfl job accept {art.job}' or 'vfl job reject {art.job}'")
                continue
            unfinished = _unfinished_dependency(self.ws, dict(art.meta.get("params") or {}))
            if unfinished:  # its files may arrive after the proposal: accept once it is done here
                self._once(f"proposal:{name}", f"[{art.job}] proposal waits for job {unfinished} to finish here")
                continue
            self._guard(f"job:{art.job}", partial(self._accept_one, art.job))

    def _step_all(self) -> None:
        for j in engine.list_jobs(self.ws):
            if self._stop:
                return
            if j["done"] or j["phase"] == "cancelled":
                continue
            job = j["job"]
            self._guard(f"job:{job}", partial(self._step_one, job))

    def _accept_one(self, job: str) -> None:
        self._log_reports(engine.accept_job(self.ws, job, progress=self.progress), accepted=True)

    def _step_one(self, job: str) -> None:
        self._log_reports(engine.step(self.ws, job, progress=self.progress))

    def _log_reports(self, reports: Iterable[engine.StepReport], *, accepted: bool = False) -> None:
        from vfl_cli.status import job_progress

        for r in reports:
            if accepted:
                self.log(f"[{r.job}] accepted the {r.protocol} proposal (the policy allows it)")
            for name in r.received:
                self.log(f"[{r.job}] used {name}")
            for s in r.sent:
                self.log(f"[{r.job}] wrote {s['file']} for {s['recipient']}")
            if r.sent or r.received or accepted:
                p = job_progress(self.ws, r.job)
                extra = "".join(f", {label} {p[k]}" for k, label in
                                (("epochs_done", "epochs done"), ("round", "round"), ("loss", "loss"))
                                if p.get(k) is not None)
                state = "cancelled" if r.phase == "cancelled" else "done" if r.done else "phase " + r.phase
                self.log(f"[{r.job}] {state}{extra}")

    def run(self, *, interval: float = 2.0, once: bool = False, until: list[str] | None = None,
            timeout: float | None = None) -> None:
        """Pass after pass until stopped (or once, or until the ``until`` jobs are done here)."""
        if timeout is not None and not until:
            raise VflError("a timeout needs the jobs to wait for: give --until JOB as well")
        started = time.monotonic()
        while not self._stop:
            self.run_pass()
            if once or (until and self._finished(until)):
                return
            if timeout is not None and time.monotonic() - started > timeout:
                raise VflError(f"jobs {', '.join(until or [])} not done after {timeout:g} s; "
                               "run 'vfl status' to see what each waits for")
            end = time.monotonic() + interval
            while not self._stop and time.monotonic() < end:
                time.sleep(min(0.2, interval))

    def _finished(self, until: list[str]) -> bool:
        states = {j["job"]: j for j in engine.list_jobs(self.ws)}
        for job in until:
            j = states.get(job)
            if j is not None and j["phase"] == "cancelled":
                raise VflError(f"job {job} was cancelled; 'vfl job show {job}' says by whom")
        return all(job in states and states[job]["done"] for job in until)


def _unfinished_dependency(ws: Workspace, params: dict[str, Any]) -> str | None:
    """A job named by a proposal (its alignment, its model) that is still running here."""
    running = {j["job"] for j in engine.list_jobs(ws) if not j["done"]}
    for key in ("alignment", "model"):
        value = params.get(key)
        if isinstance(value, str) and value in running:
            return value
    return None


def _inbox_listing(ws: Workspace) -> tuple[tuple[str, int], ...]:
    out = []
    for f in sorted(ws.inbox.glob("*.zip")):
        try:
            out.append((f.name, f.stat().st_mtime_ns))
        except FileNotFoundError:
            continue
    return tuple(out)
