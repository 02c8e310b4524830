"""PSI alignment through the real command: two parties of N ids each, both on this machine.

Writes two CSVs (id + one feature column, rows shuffled, ``--overlap`` of the ids shared), then
runs an ``align`` recipe: every step is a separate ``vfl`` process that reads its CSV and writes
its artifacts, exactly as an operator would. Reports the alignment stage's wall time (from
report.json), the bytes exchanged and the peak memory of any one ``vfl`` process (with its
workers).

Before each run it times 200,000 X25519 multiplications on both cores (and 20,000 on one): the
alignment is bound by 4n of them, and what a multiplication costs on a shared virtual machine
drifts by 10 % or more within an hour, so the figure says how fast the machine was at the time.

    python tests/benchmarks/bench_align_cli.py --n 1000000 --overlap 0.5 --runs 3
    python tests/benchmarks/bench_align_cli.py --n 2000000 --memory 256MB   # streamed in parts

Every ``vfl`` process of the run records the time it spent sealing and opening artifact payloads
(``VFL_SEAL_TIMING``, :data:`vfl_cli.artifacts.container.SEAL_METER`); after each run a line
gives the sum: "sealing cost: X s of the align stage's Y s, N bytes sealed".

``--memory`` sets every party's memory bound (``VFL_MEMORY``): an alignment whose in-memory peak
would pass it streams in parts (vfl_cli.protocol.psi_stream).

``--dask-workers N`` starts a ``distributed.LocalCluster`` of N worker processes (one thread each)
and gives its address to every ``vfl`` process (``VFL_DASK_SCHEDULER``, the ``vfl --dask-scheduler``
path): the parties' hashing and blinding batches then run on those workers. The workers are not
children of the ``vfl`` processes, so their CPU seconds and peak RSS are read from the workers
themselves (``client.run`` of ``getrusage``) before and after each run and reported beside the
party processes'.

    python tests/benchmarks/bench_align_cli.py --n 10000000 --dask-workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def write_parties(folder: Path, n: int, overlap: float, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    shared = int(n * overlap)
    universe = rng.permutation(2 * n - shared)
    a_ids, b_ids = universe[:n], universe[n - shared:]
    paths = []
    for name, ids, label in (("active", a_ids, True), ("passive", b_ids, False)):
        ids = rng.permutation(ids)
        path = folder / f"{name}.csv"
        with path.open("w") as fh:
            fh.write("id,x,label\n" if label else "id,x\n")
            x = rng.normal(size=len(ids))
            if label:
                fh.writelines(f"c{i:09d},{v:.4f},{int(v > 0)}\n" for i, v in zip(ids, x, strict=True))
            else:
                fh.writelines(f"c{i:09d},{v:.4f}\n" for i, v in zip(ids, x, strict=True))
        paths.append(path)
    return paths[0], paths[1]


def x25519_speed() -> tuple[float, float]:
    """Microseconds per X25519 multiplication: wall time on every core, and on one core."""
    from vfl_cli.crypto import ecdh

    points = ecdh.hash_to_points([f"c{i}" for i in range(20_000)], b"calibration", n_jobs=1)
    scalar = ecdh.new_scalar()
    one = float("inf")
    for _ in range(2):  # the first round also wakes the core up
        t = time.perf_counter()
        ecdh.blind(points, scalar, n_jobs=1)
        one = min(one, (time.perf_counter() - t) / len(points) * 1e6)
    many = np.concatenate([points] * 10)
    t = time.perf_counter()
    ecdh.blind(many, scalar)
    return (time.perf_counter() - t) / len(many) * 1e6, one


def sealing_cost(meter: Path, stage_s: float) -> str:
    """The sealing figures every vfl process of a run appended to ``meter``, summed."""
    lines = [json.loads(line) for line in meter.read_text().splitlines()] if meter.exists() else []
    seal = sum(x["seal_s"] for x in lines)
    opened = sum(x["open_s"] for x in lines)
    cpu = sum(x["process_s"] for x in lines)
    return (f"sealing cost: {seal + opened:.2f} s (seal {seal:.2f} s, open {opened:.2f} s) of the align stage's "
            f"{stage_s:.1f} s wall ({100 * (seal + opened) / stage_s:.1f} %; {cpu:.1f} s CPU in the {len(lines)} "
            f"vfl processes, not counting their workers); {sum(x['sealed_bytes'] for x in lines):,} bytes sealed in "
            f"{sum(x['artifacts_sealed'] for x in lines)} artifacts, {sum(x['opened_bytes'] for x in lines):,} opened")


_RECORDER = """
import atexit, json, os, resource, sys, time

def _vfl_peak():
    if "vfl_cli" not in " ".join(sys.argv[:1] + sys.orig_argv[:3]):
        return
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = {"argv": sys.argv[1:6], "peak_mib": own.ru_maxrss / 1024, "workers_peak_mib": kids.ru_maxrss / 1024,
            "cpu_s": own.ru_utime + own.ru_stime, "workers_cpu_s": kids.ru_utime + kids.ru_stime}
    with open(os.environ["VFL_BENCH_PEAKS"], "a") as fh:
        fh.write(json.dumps(line) + "\\n")

atexit.register(_vfl_peak)
"""


def peak_recorder(folder: Path) -> dict[str, str]:
    """Environment making every Python process below record, at exit, its own peak RSS
    (``RUSAGE_SELF``: the party process alone, not its workers) and CPU seconds, one JSON line each
    in ``folder/peaks.jsonl`` (a ``sitecustomize`` on ``PYTHONPATH``; exact, unlike sampling)."""
    site = folder / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_RECORDER)
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH", "")]))
    return {"PYTHONPATH": path, "VFL_BENCH_PEAKS": str(folder / "peaks.jsonl")}


def print_peaks(folder: Path) -> float:
    """The job steps' exit records, one line each (the recipe's setup commands left out).

    Returns the CPU seconds of those job steps, their own (local) workers included."""
    peaks = folder / "peaks.jsonl"
    if not peaks.exists():
        return 0.0
    total = 0.0
    for line in peaks.read_text().splitlines():
        x = json.loads(line)
        if any(w in x["argv"] for w in ("step", "start", "accept")):
            total += x["cpu_s"] + x["workers_cpu_s"]
            print(f"  {' '.join(x['argv'])}: peak RSS {x['peak_mib']:.0f} MiB "
                  f"(workers {x['workers_peak_mib']:.0f} MiB), CPU {x['cpu_s']:.1f} s "
                  f"+ workers {x['workers_cpu_s']:.1f} s", flush=True)
    peaks.unlink()
    return total


def aligned_digest(job: Path) -> str:
    """SHA-256 of the job's aligned ids, sorted (one per line): equal between two runs of the same
    files exactly when they found the same intersection (the order follows the run's random
    scalars, and the fingerprint is a MAC under a per-run key, so neither compares across runs)."""
    import hashlib

    with np.load(job / "arrays.npz", allow_pickle=False) as z:
        ids = z["aligned_ids"]
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()[:16] + f" ({len(ids):,} ids)"


def _worker_usage() -> tuple[float, float]:
    """CPU seconds and peak RSS (MiB) of the Dask worker process this runs on."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime, own.ru_maxrss / 1024


class DaskWorkers:
    """A local Dask cluster of ``n`` worker processes, one thread each, and their CPU use.

    The workers are not children of the ``vfl`` processes: :meth:`usage` asks each worker for its
    own ``getrusage`` (CPU seconds so far, peak RSS)."""

    def __init__(self, n: int) -> None:
        import distributed

        self.cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                dashboard_address=None)
        self.client = distributed.Client(self.cluster, set_as_default=False)  # the calibration stays local
        self.client.wait_for_workers(n)
        self.address = self.cluster.scheduler_address

    def usage(self) -> dict[str, tuple[float, float]]:
        """Per worker process (by address): CPU seconds so far, peak RSS in MiB."""
        return dict(self.client.run(_worker_usage))

    def overhead(self) -> tuple[float, float]:
        """CPU seconds so far of the cluster's other parts, all in this process: this process
        (the scheduler, the nannies that start and watch the workers, and the /proc sampler of
        :class:`StepPeaks`), and the scheduler's event-loop thread alone (``time.thread_time``)."""
        return _worker_usage()[0], float(self.client.run_on_scheduler(time.thread_time))

    def close(self) -> None:
        self.client.close()
        self.cluster.close()


class StepPeaks:
    """Peak RSS (VmHWM) of every ``vfl`` process below this one whose command is a job step
    (``job start/accept``, ``step``), workers included, read from /proc every 0.5 s (Linux).

    ``RUSAGE_CHILDREN`` also counts the recipe's setup (``vfl init`` reads and checks the whole
    data file with pandas), which is not the alignment: this tells the two apart.
    """

    def __init__(self) -> None:
        self.steps = 0
        self.setup = 0
        self.per_process: dict[int, tuple[str, float]] = {}  # pid -> (command, peak MiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> StepPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _parents() -> dict[int, int]:
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        return parents

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.5):
            parents = self._parents()
            for pid in parents:
                chain, p = [], pid
                while p in parents and p != me and len(chain) < 10:
                    chain.append(p)
                    p = parents[p]
                if p != me:
                    continue
                commands = []
                for q in chain:
                    with contextlib.suppress(OSError):
                        commands.append(Path(f"/proc/{q}/cmdline").read_bytes().split(b"\0"))
                step = any(b"step" in c or (b"job" in c and (b"start" in c or b"accept" in c)) for c in commands)
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                    hwm = int(status.split("VmHWM:")[1].split()[0]) / 1024
                except (OSError, IndexError, ValueError):
                    continue
                if step:
                    self.steps = max(self.steps, hwm)
                    own = b" ".join(commands[0][2:6]).decode(errors="replace") if commands else "?"
                    self.per_process[pid] = (own, max(hwm, self.per_process.get(pid, ("", 0.0))[1]))
                elif not any(b"recipe" in c for c in commands[:1]):
                    self.setup = max(self.setup, hwm)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--overlap", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=1, help="align the same files this many times")
    ap.add_argument("--memory", help="every party's memory bound (VFL_MEMORY), e.g. 256MB")
    ap.add_argument("--dask-workers", type=int, default=0, metavar="N",
                    help="run the parties' batches on a local Dask cluster of N worker processes")
    args = ap.parse_args()
    env = dict(os.environ, **({"VFL_MEMORY": args.memory} if args.memory else {}))
    dask = DaskWorkers(args.dask_workers) if args.dask_workers else None
    if dask is not None:
        env["VFL_DASK_SCHEDULER"] = dask.address
        print(f"Dask: LocalCluster at {dask.address}, {args.dask_workers} worker processes x 1 thread", flush=True)
    try:
        run_all(args, env, dask)
    finally:
        if dask is not None:
            dask.close()


def run_all(args: argparse.Namespace, env: dict[str, str], dask: DaskWorkers | None) -> None:
    folder = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    active, passive = write_parties(folder, args.n, args.overlap)
    print(f"wrote 2 x {args.n:,} ids in {time.perf_counter() - t:.1f} s")
    recipe = folder / "align.toml"
    recipe.write_text(f"""[recipe]
name = "bench"
protocol = "align"
key_bits = 1024
[[party]]
name = "a"
role = "active"
data = "{active}"
id_column = "id"
label_column = "label"
[[party]]
name = "p"
role = "passive"
data = "{passive}"
id_column = "id"
""")
    print("| run | X25519 µs/op (both cores wall, one core) | load before → after | align stage (wall) "
          "| intersection | bytes exchanged | bytes/id | peak RSS of one vfl process | path | files |")
    for run in range(1, args.runs + 1):
        both, one = x25519_speed()
        load = os.getloadavg()[0]
        work = folder / f"w{run}"
        meter = folder / f"seal-{run}.jsonl"
        before = dask.usage() if dask is not None else {}
        overhead = dask.overhead() if dask is not None else (0.0, 0.0)
        with StepPeaks() as peaks:
            done = subprocess.run([sys.executable, "-m", "vfl_cli", "recipe", "run", str(recipe), "--workdir",
                                   str(work)], capture_output=True, text=True, check=False,
                                  env=dict(env, VFL_SEAL_TIMING=str(meter), **peak_recorder(folder)))
        if done.returncode:
            sys.exit(done.stderr)
        report = json.loads((work / "report.json").read_text())
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        results = json.loads((work / "a" / "jobs" / "bench-align" / "state.json").read_text())["results"]
        streamed = results.get("streamed_in_parts", False)
        print(f"| {run} | {both:.1f}, {one:.1f} | {load:.1f} → {os.getloadavg()[0]:.1f} | "
              f"{report['timings_s']['align']:.1f} s | {report['alignment']['intersection_size']:,} | "
              f"{report['bytes_exchanged']:,} | {report['bytes_exchanged'] / (2 * args.n):.1f} | {peak:.0f} MiB "
              f"(job steps {peaks.steps:.0f} MiB, setup {peaks.setup:.0f} MiB) |"
              f" {'streamed, bound ' + (args.memory or 'default') if streamed else 'in memory'} |"
              f" {report['exchanges']} files |",
              flush=True)
        print(f"aligned ids (active party, sorted): sha256 {aligned_digest(work / 'a' / 'jobs' / 'bench-align')}",
              flush=True)
        print(sealing_cost(meter, report["timings_s"]["align"]), flush=True)
        steps_cpu = print_peaks(folder)
        total = steps_cpu
        if dask is not None:
            after = dask.usage()
            spent = {w: after[w][0] - before.get(w, (0.0, 0.0))[0] for w in after}
            total += sum(spent.values())
            for w in sorted(after):
                print(f"  Dask worker {w}: CPU {spent[w]:.1f} s this run, peak RSS {after[w][1]:.0f} MiB "
                      f"(since the cluster started)", flush=True)
            here, scheduler = (b - a for a, b in zip(overhead, dask.overhead(), strict=True))
            print(f"CPU: job steps {steps_cpu:.1f} s + Dask workers {sum(spent.values()):.1f} s "
                  f"= {total:.1f} s; besides: this bench process {here:.1f} s (scheduler, nannies, /proc "
                  f"sampler; the scheduler's thread alone {scheduler:.1f} s)", flush=True)
        if total:
            print(f"{2 * args.n:,} ids in {total:.1f} CPU s (job steps with their workers): "
                  f"{2 * args.n / total:,.0f} ids per CPU-second; align stage wall "
                  f"{report['timings_s']['align']:.1f} s", flush=True)
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
