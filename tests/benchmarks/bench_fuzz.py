"""Fuzz campaign against real workspaces (issue 12): thousands of malformed artifacts of every kind.

Real jobs run first between real workspaces (handshake, psi, hetero-lr, split-nn, predict,
secureboost and woe-binning between a bank and a bureau; hfl between a server, three workers and
a predictor), recording every message and the recipient's workspace just before it took it. Then,
for randomly drawn messages:

* ``structural``: the message changed for its step (tests/fuzz_signed.py: members dropped,
  re-typed, re-shaped, cut; meta of the wrong type or size; another kind; round; seq), signed
  with the sender's real key through the engine's own artifact path;
* ``bytes``: the genuine signed file with bytes flipped, cut, inserted, zeroed or appended;
* ``unsigned``: the genuine or a mutated message signed by an impostor key under the sender's
  name, or by a party nobody trusts;
* ``special``: zip bombs (deflated members, a huge declared size), a FIFO, symlinks (to
  /dev/zero, outside the workspace), a character device, a directory, a sparse 3 GiB file, each
  in a child process with a time limit.

Each file replaces the genuine one in a fresh copy of the recipient's workspace and the party's
step runs through the library (``jobs.step`` / ``jobs.accept_job``), and for a sample through
the real ``vfl`` command. Reported: tracebacks (any exception but VflError; for the command, a
traceback or an exit code other than 0/1), files accepted wrongly (a change the step must refuse
that it took), workspaces changed by a refused file (SHA-256 of every file outside inbox/,
before and after), and peak memory (this process; each special file's child).

Usage::

    python tests/benchmarks/bench_fuzz.py --count 5000 --cli 100
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import random
import resource
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
os.environ.setdefault("VFL_N_JOBS", "1")

import pytest  # noqa: E402
from conftest import ROOT, introduce, make_party, run  # noqa: E402
from fuzz_signed import (  # noqa: E402
    MUST_REFUSE,
    OPS,
    Case,
    feed,
    mutate,
    record_job,
    recording,
    restore,
    signed_bytes,
)

from vfl_cli import jobs  # noqa: E402
from vfl_cli.errors import VflError  # noqa: E402
from vfl_cli.workspace import Workspace  # noqa: E402

HFL = ROOT / "sample_data" / "hfl"
SPLIT_MODEL = {"head": "binary", "active": [{"type": "dense", "units": 2}], "passive": [{"type": "dense", "units": 2}],
               "interactive": {"units": 2}, "top": [{"type": "dense", "units": 1}]}


# ----- setting up: real jobs, recorded ----------------------------------------------------------
def record_all(root: Path, skip: tuple[str, ...] = ()) -> tuple[list[Case], dict[str, Path]]:
    bank = make_party(root, "bank", "active", ROOT / "sample_data" / "breast_active.csv", label_column="label")
    bureau = make_party(root, "bureau", "passive", ROOT / "sample_data" / "breast_passive.csv")
    introduce(root, "bank", "bureau")
    hroot = root / "hfl"
    hroot.mkdir()
    server = make_party(hroot, "server", "server", HFL / "server.csv", label_column="label")
    nodes = [make_party(hroot, n, "worker", HFL / f"{n}.csv", label_column="label")
             for n in ("node0", "node1", "node2")]
    predictor = make_party(hroot, "predictor", "predictor", HFL / "predictor.csv")
    introduce(hroot, "server", "node0", "node1", "node2", "predictor")
    store = root / "snapshots"
    store.mkdir()
    plan = [
        ([bank, bureau], "hs", "handshake", {}),
        ([bank, bureau], "al", "psi", {}),
        ([bank, bureau], "tr", "hetero-lr", {"alignment": "al", "epochs": 1, "test_fraction": 0.5}),
        ([bank, bureau], "pr", "predict", {"model": "tr", "alignment": "al"}),
        ([bank, bureau], "sn", "split-nn", {"alignment": "al", "epochs": 1, "model": SPLIT_MODEL}),
        ([bank, bureau], "sb", "secureboost", {"alignment": "al", "trees": 1, "depth": 2, "active_trees": 0,
                                               "max_bins": 8}),
        ([bank, bureau], "wo", "woe-binning", {"alignment": "al", "bins": 4}),
        ([server, *nodes, predictor], "hf", "hfl", {"rounds": 2, "full_every": 1, "secure_aggregation": True}),
    ]
    cases: list[Case] = []
    with pytest.MonkeyPatch.context() as mp, recording(mp) as raw:
        for parties, job, protocol, params in plan:
            if protocol in skip:
                print(f"  {protocol}: skipped (--skip)")
                continue
            t0 = time.perf_counter()
            try:
                jobs.start_job(Workspace(parties[0]), protocol, params, job=job)
                got = record_job(parties, job, raw, store)
            except Exception as exc:  # a protocol that cannot run now is reported, not fuzzed
                print(f"  {protocol}: genuine run failed ({type(exc).__name__}: {exc}); not fuzzed")
                continue
            cases += got
            print(f"  {protocol}: {len(got)} messages recorded in {time.perf_counter() - t0:.1f} s")
    return cases, {"bank": bank, "bureau": bureau, "server": server}


def impostors(root: Path, cases: list[Case]) -> dict[str, Path]:
    """Workspaces with a sender's name but their own keys, trusting every recipient; and mallory."""
    out: dict[str, Path] = {}
    for name, role, data in [("bank", "active", ROOT / "sample_data" / "breast_active.csv"),
                             ("server", "server", HFL / "server.csv"),
                             ("mallory", "active", ROOT / "sample_data" / "breast_active.csv")]:
        home = root / f"impostor-{name}"
        home.mkdir()
        out[name] = make_party(home, name, role, data, label_column="label")
    for case in cases:
        card = case.recipient.parent / f"{case.recipient.name}.card"
        for ws in out.values():
            if ws.name != case.recipient.name:
                run("-w", str(ws), "keys", "import", str(card), ok=False)
    return out


# ----- measuring --------------------------------------------------------------------------------
def tree_hash(ws: Path) -> dict[str, str]:
    """SHA-256 of every file outside inbox/ (where a refused file lands, quarantined or not)."""
    out = {}
    for p in sorted(ws.rglob("*")):
        rel = p.relative_to(ws)
        if rel.parts[0] == "inbox" or p.name == ".lock" or not p.is_file() or p.is_symlink():
            continue
        out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Tally:
    def __init__(self) -> None:
        self.n: collections.Counter[str] = collections.Counter()
        self.tracebacks: list[str] = []
        self.wrongly: list[str] = []
        self.changed: list[str] = []

    def traceback(self, what: str, exc: BaseException) -> None:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        self.tracebacks.append(f"{what}: {type(exc).__name__}: {str(exc)[:80]} at "
                               f"{Path(frame.filename).name}:{frame.lineno}")


def try_file(case: Case, work: Path, name: str, data: bytes, must_refuse: bool, what: str,
             tally: Tally, before: dict[str, str]) -> None:
    tally.n[what.split(":")[0]] += 1
    restore(case, work)
    try:
        outcome = feed(case, work, name, data)
    except Exception as exc:  # noqa: BLE001 (the bug being counted)
        tally.traceback(what, exc)
        return
    if outcome.consumed and must_refuse:
        tally.wrongly.append(what)
    if outcome.refused and before:
        tally.n["checked-for-changes"] += 1
        after = tree_hash(work)
        if after != before:
            diff = sorted(set(after.items()) ^ set(before.items()))
            tally.changed.append(f"{what}: {diff[0][0]}")


def structural(case: Case, rng: random.Random, work: Path, tally: Tally, before: dict[str, str]) -> None:
    op = rng.choice(OPS)
    msg, override, op = mutate(case.message, op, rng.randrange(8), rng.randrange(64))
    try:
        name, data = signed_bytes(case, msg, override)
    except VflError:
        tally.n["structural-unsendable"] += 1  # the container will not write it (negative seq...)
        return
    changed = msg != case.message or bool(override)
    try_file(case, work, name, data, op in MUST_REFUSE and changed, f"structural:{case.message.kind}:{op}", tally,
             before)


def byte_level(case: Case, rng: random.Random, work: Path, tally: Tally, before: dict[str, str]) -> None:  # noqa: C901
    genuine = (case.snapshot / "inbox" / case.file).read_bytes()
    data = bytearray(genuine)
    how = rng.choice(["flip", "flips", "cut", "insert", "zero", "append", "dup", "random", "empty"])
    n = len(data)
    if how == "flip":
        data[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif how == "flips":
        for _ in range(rng.randint(2, 16)):
            data[rng.randrange(n)] = rng.randrange(256)
    elif how == "cut":
        data = data[: rng.randrange(n)]
    elif how == "insert":
        at = rng.randrange(n)
        data[at:at] = rng.randbytes(rng.randint(1, 64))
    elif how == "zero":
        at = rng.randrange(n)
        data[at:at + rng.randint(1, 256)] = bytes(min(256, n - at))
    elif how == "append":
        data += rng.randbytes(rng.randint(1, 4096))
    elif how == "dup":
        at = rng.randrange(n)
        data[at:at] = data[at:at + rng.randint(1, 512)]
    elif how == "random":
        data = bytearray(rng.randbytes(n))
    else:
        data = bytearray()
    if bytes(data) == genuine:
        return
    try_file(case, work, case.file, bytes(data), True, f"bytes:{case.message.kind}:{how}", tally, before)


def unsigned(case: Case, rng: random.Random, work: Path, tally: Tally, before: dict[str, str],
             fakes: dict[str, Path]) -> None:
    sender = case.sender.name
    who = fakes["mallory"] if rng.random() < 0.3 or sender not in fakes else fakes[sender]
    msg, override, _ = mutate(case.message, rng.choice(OPS), rng.randrange(8), rng.randrange(64)) \
        if rng.random() < 0.5 else (case.message, {}, "")
    try:
        engine = {"next_seq": {msg.recipient: override.get("seq", case.seq)}}
        ((name, data, _),) = jobs._to_artifacts(Workspace(who), case.job, engine, [msg])
    except VflError:
        tally.n["unsigned-unsendable"] += 1
        return
    try_file(case, work, name, data, True, f"unsigned:{case.message.kind}:{who.name}", tally, before)


# ----- special files, in a child process ---------------------------------------------------------
CHILD = """
import json, os, resource, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
os.environ["VFL_N_JOBS"] = "1"
from fuzz_signed import act
from vfl_cli.errors import VflError
try:
    act(Path({work!r}), {job!r}); result = "ok"
except VflError as exc:
    result = "vfl-error: " + str(exc)[:100]
except BaseException as exc:
    result = "TRACEBACK " + type(exc).__name__ + ": " + str(exc)[:100]
print(json.dumps({{"result": result, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def _bomb(path: Path, gib: int, name: str) -> None:
    """A zip whose one deflated member inflates to ``gib`` GiB of zeros (a few MB on disk)."""
    chunk = bytes(1 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("manifest.json", b"{}")
        with zf.open(name, "w", force_zip64=True) as fh:
            for _ in range(gib * 1024):
                fh.write(chunk)


def _declared_huge(path: Path, genuine: bytes) -> None:
    """The genuine file with its first member's declared uncompressed size set to 4 GiB - 1."""
    data = bytearray(genuine)
    at = data.find(b"PK\x03\x04")
    data[at + 22:at + 26] = (0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))


def specials(case: Case, root: Path) -> list[tuple[str, Any]]:
    genuine = case.snapshot / "inbox" / case.file
    def fifo(p: Path) -> None: os.mkfifo(p)
    def zero(p: Path) -> None: os.symlink("/dev/zero", p)
    def outside(p: Path) -> None: os.symlink(genuine, p)
    def device(p: Path) -> None: os.mknod(p, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
    def directory(p: Path) -> None: p.mkdir()
    def sparse(p: Path) -> None:
        with open(p, "wb") as fh:
            fh.truncate(3 << 30)
    def bomb_member(p: Path) -> None: _bomb(p, 4, "payload/u.npy")
    def bomb_manifest(p: Path) -> None: _bomb(p, 1, "manifest.sig")
    def declared(p: Path) -> None: _declared_huge(p, genuine.read_bytes())
    return [("fifo", fifo), ("symlink-dev-zero", zero), ("symlink-outside", outside), ("char-device", device),
            ("directory", directory), ("sparse-3GiB", sparse), ("zip-bomb-4GiB", bomb_member),
            ("zip-bomb-1GiB-sig", bomb_manifest), ("declared-4GiB", declared)]


def run_special(case: Case, what: str, make: Any, root: Path, cli: bool) -> dict[str, Any]:
    work = restore(case, root / "special-work")
    (work / "inbox" / case.file).unlink()
    target = work / "inbox" / case.file
    try:
        make(target)
    except (PermissionError, OSError) as exc:
        return {"what": what, "result": f"not made here ({exc.strerror})"}
    before = tree_hash(work)
    t0 = time.perf_counter()
    if cli:
        cmd = ["/usr/bin/time", "-f", "%M", "vfl", "-w", str(work), "step"]
    else:
        cmd = [sys.executable, "-c", CHILD.format(tests=str(TESTS), work=str(work), job=case.job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        return {"what": what, "result": "TIMEOUT (hangs)", "seconds": 120}
    out: dict[str, Any] = {"what": what, "seconds": round(time.perf_counter() - t0, 2)}
    if cli:
        lines = proc.stderr.strip().splitlines()
        out["peak_mib"] = round(int(lines[-1]) / 1024, 1) if lines and lines[-1].isdigit() else None
        out["result"] = (f"exit {proc.returncode}" + (" TRACEBACK" if "Traceback" in proc.stderr else "")
                         + (": " + next((line for line in lines if line.startswith("Error:")), "")[:100]))
    else:
        last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
        out.update(json.loads(last) if last.startswith("{") else {"result": "child died: " + proc.stderr[-200:]})
        out["peak_mib"] = round(out.get("peak_mib", 0), 1)
    out["changed"] = tree_hash(work) != before
    reasons = sorted((work / "inbox" / "rejected").glob(f"{case.file}*reason*")) \
        if (work / "inbox" / "rejected").is_dir() else []
    out["quarantined"] = reasons[0].read_text().strip().splitlines()[-1][:100] if reasons else None
    if target.is_symlink() or target.exists():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    return out


# ----- the real command, on a sample -----------------------------------------------------------
def cli_sample(cases: list[Case], rng: random.Random, root: Path, count: int, tally: Tally) -> None:
    for _ in range(count):
        case = rng.choice(cases)
        msg, override, op = mutate(case.message, rng.choice(OPS), rng.randrange(8), rng.randrange(64))
        try:
            name, data = signed_bytes(case, msg, override)
        except VflError:
            continue
        work = restore(case, root / "cli-work")
        (work / "inbox" / case.file).unlink()
        (work / "inbox" / name).write_bytes(data)
        verb = ["step"] if (work / "jobs" / case.job / "job.json").exists() else ["job", "accept", case.job]
        proc = subprocess.run(["vfl", "-w", str(work), *verb], capture_output=True, text=True, timeout=300, check=False)
        tally.n["cli"] += 1
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
        if "Traceback" in proc.stderr or proc.returncode not in (0, 1) or (proc.returncode == 1 and len(errors) != 1):
            tally.tracebacks.append(f"cli:{case.message.kind}:{op}: exit {proc.returncode} {proc.stderr[-200:]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=5000, help="malformed files through the library step")
    ap.add_argument("--cli", type=int, default=100, help="of which also through the real vfl command")
    ap.add_argument("--seed", type=int, default=None, help="campaign seed (default: random, printed)")
    ap.add_argument("--no-specials", action="store_true")
    ap.add_argument("--skip", action="append", default=[], metavar="PROTOCOL",
                    help="record and fuzz no messages of this protocol (repeat), e.g. a slow genuine run")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    root = Path(tempfile.mkdtemp(prefix="vfl-fuzz-"))
    print(f"seed {seed}; workspaces in {root}", flush=True)
    t0 = time.perf_counter()
    cases, _ = record_all(root, tuple(args.skip))
    fakes = impostors(root, cases)
    # A file that arrives with its job's proposal (hello) is checked with the proposal accepted
    # by the same step, so the workspace changes anyway: only the others are hashed.
    befores = {c.snapshot: tree_hash(c.snapshot) if (c.snapshot / "jobs" / c.job / "job.json").exists()
               or c.message.kind == jobs.PROPOSAL else {} for c in cases}
    kinds = len({c.message.kind for c in cases})
    print(f"{len(cases)} messages of {kinds} kinds recorded in {time.perf_counter() - t0:.0f} s")
    tally = Tally()
    work = root / "work"
    # The command sample and the special files first, so that a run cut short still has them.
    t1 = time.perf_counter()
    cli_sample(cases, rng, root, args.cli, tally)
    print(f"  {args.cli} files through the vfl command in {time.perf_counter() - t1:.0f} s, "
          f"tracebacks {len(tally.tracebacks)}")
    special_rows = []
    if not args.no_specials:
        for case in [c for c in cases if c.message.kind in ("handshake/reply", "psi/response")][:2]:
            for what, make in specials(case, root):
                for cli in (False, True):
                    row = {**run_special(case, what, make, root, cli), "via": "vfl" if cli else "library",
                           "step": case.message.kind}
                    print("  special", json.dumps(row))
                    special_rows.append(row)
    t1 = time.perf_counter()
    for i in range(args.count):
        case = rng.choice(cases)
        kind = rng.choices(["structural", "bytes", "unsigned"], weights=[6, 3, 1])[0]
        if kind == "structural":
            structural(case, rng, work, tally, befores[case.snapshot])
        elif kind == "bytes":
            byte_level(case, rng, work, tally, befores[case.snapshot])
        else:
            unsigned(case, rng, work, tally, befores[case.snapshot], fakes)
        if (i + 1) % 250 == 0:
            print(f"  {i + 1} files, {time.perf_counter() - t1:.0f} s, tracebacks {len(tally.tracebacks)}, "
                  f"accepted wrongly {len(tally.wrongly)}, changed {len(tally.changed)}, {dict(tally.n)}", flush=True)
    library_s = time.perf_counter() - t1
    report = {
        "seed": seed, "messages": len(cases), "kinds": sorted({c.message.kind for c in cases}),
        "files": dict(tally.n), "library_seconds": round(library_s, 1),
        "tracebacks": len(tally.tracebacks), "accepted_wrongly": len(tally.wrongly),
        "changed_by_refused": len(tally.changed),
        "peak_mib_this_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "traceback_examples": sorted(collections.Counter(tally.tracebacks))[:20],
        "accepted_wrongly_examples": sorted(collections.Counter(tally.wrongly))[:20],
        "changed_examples": sorted(collections.Counter(tally.changed))[:20],
        "specials": special_rows,
    }
    print(json.dumps(report, indent=1))
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
