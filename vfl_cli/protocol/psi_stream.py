"""Streaming PSI with bounded memory: the steps of :mod:`vfl_cli.protocol.psi`, chunk by chunk.

The same ECDH protocol (same hashing to the curve, same blinding, same joint order, same
fingerprint) for sets too large to hold in memory. Every large list lives in files of the
party's private scratch folder (0700, files 0600) and is read a bounded piece at a time:

* ids are read from the CSV in chunks of :attr:`Budget.chunk` ids, hashed and blinded by the
  workers, and written to bucket files by the first bytes of their blinded point;
* each bucket is sorted in memory, so the concatenation of the buckets is the list of blinded
  points **sorted by value**. That sorted order is what is sent: it is a function of the set
  alone (the points are pseudorandom under DDH), so, like the in-memory path's random shuffle,
  it says nothing about where an id sat in the file. It also lets the receiver check, part by
  part with constant memory, that no point repeats (each part strictly ascending, and above
  the last point of the part before);
* every message is sent as numbered parts of at most :attr:`Budget.part` points, each a normal
  signed, sealed artifact carrying ``part`` (1-based) and ``parts`` in its meta; the receiver
  refuses a part out of turn, out of range or of another size than announced;
* the active party re-blinds the passive party's points part by part as they arrive, then
  buckets both double-blinded lists by their first bytes and intersects bucket by bucket
  (equal points always fall in the same bucket);
* the common ids are ordered by the keyed BLAKE2b of :func:`vfl_cli.protocol.psi.final_order`
  through buckets of their MACs, and the fingerprint is computed on the way, so the result is
  identical (same ids, same order, same fingerprint) to the in-memory path's with the same
  seeds.

Held in memory at once: one chunk of ids, one part, two buckets; at the end, the result itself
(the aligned ids and rows, which the job state stores as arrays). The passive party keeps its
scalar between the start parts it answers (in its private job state, dropped after the last).

Two parties only (one passive): with more, :func:`choose` keeps the in-memory path.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any

import numpy as np

from vfl_cli.crypto import channel, ecdh
from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.protocol import psi

__all__ = [
    "DEFAULT_MEMORY",
    "Budget",
    "Chunks",
    "Part",
    "StreamAlignment",
    "choose",
    "csv_chunks",
    "format_memory",
    "in_memory_estimate",
    "list_chunks",
    "parse_memory",
]

#: The default bound on one party process's memory: 2 GB.
DEFAULT_MEMORY = 2 * 1000**3
#: What a vfl process holds before any data (Python, numpy, pandas, libsodium): measured 78 MiB.
BASELINE = 96 * 2**20
#: Peak memory of the in-memory path per id (measured through the command: 503 MiB at 1M x 1M,
#: 861 MiB at 2M x 2M, docs/benchmarks.md), used to choose between the two paths.
IN_MEMORY_PER_ID = 376
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
          "gb": 1000**3, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_MAX_BUCKETS = 256
_RECORD = np.dtype([("p", "u1", (32,)), ("i", "<i8")])  # a point and its position or row
_IDS_PERSON = b"vfl/psi/v1/ids-stream"

#: A party's ids as ``(first row, ids)`` chunks in file order (row 0 is the first data row):
#: a function returning a fresh iterator each time (the ids are read twice).
Chunks = Callable[[], Iterator[tuple[int, list[str]]]]


def parse_memory(value: object) -> int:
    """``"2GB"``, ``"256MB"``, ``"512MiB"``, ``"1.5G"`` or a number of bytes, as bytes.

    A bound under about 100 MB cannot hold (a vfl process alone takes about 80 MB): it only
    makes the pieces the smallest (256 ids), which tests use.

    Raises:
        VflError: not a size, or under 1 MB.
    """
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise VflError(f"memory bound {value!r} is not a size; write it like 2GB, 256MB or 512MiB")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1000**2:
        raise VflError(f"memory bound {value!r} is below 1MB; a vfl process alone takes about 80 MB")
    return size


def format_memory(size: int) -> str:
    """Bytes as the shortest exact of GB/MB/kB, else MiB with one decimal."""
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("kB", 1000)):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size / 2**20:.1f}MiB"


def in_memory_estimate(n: int) -> int:
    """Peak memory of one process of the in-memory path for a party of ``n`` ids (measured)."""
    return BASELINE + IN_MEMORY_PER_ID * n


def choose(n: int, memory: int, passives: int) -> bool:
    """Whether to stream: when the in-memory path would pass ``memory`` (two parties only)."""
    return passives == 1 and in_memory_estimate(n) > memory


@dataclass(frozen=True)
class Budget:
    """Sizes of the pieces held in memory, from a bound on the whole process.

    ``memory`` is the bound; what the process holds before any data is taken off first.
    """

    memory: int

    @property
    def usable(self) -> int:
        return max(self.memory - BASELINE, self.memory // 4)

    @property
    def chunk(self) -> int:
        """Ids read, hashed and blinded at once (about 3 kB each in flight, two chunks)."""
        return max(256, self.usable // 6000)

    @property
    def part(self) -> int:
        """Points per part of a message (about 200 bytes each while a part is read and used)."""
        return max(256, self.usable // 1600)

    @property
    def bucket(self) -> int:
        """Records per bucket (two buckets of 40-byte records sorted at once)."""
        return max(256, self.usable // 1000)

    def buckets(self, n: int) -> int:
        """A power of two of buckets for ``n`` records, at most 256."""
        want = max(1, math.ceil(n / self.bucket))
        return min(_MAX_BUCKETS, 1 << (want - 1).bit_length())


@dataclass(frozen=True)
class Part:
    """One numbered part of a message: its kind, meta and arrays (``points`` members are
    ``(n, 32)`` uint8 curve points, the others plain arrays)."""

    kind: str
    meta: Mapping[str, Any]
    arrays: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamAlignment:
    """Like :class:`vfl_cli.protocol.psi.Alignment`, the ids as a numpy text array."""

    ids: np.ndarray
    rows: np.ndarray
    fingerprint: bytes
    digest_key: bytes


# --------------------------------------------------------------------------- reading ids


def list_chunks(ids: list[str], size: int) -> Chunks:
    """Chunks of an id list already in memory (tests, small files)."""
    return lambda: ((a, ids[a:a + size]) for a in range(0, len(ids), size))


def csv_chunks(path: Path, id_column: str, size: int, csv: Mapping[str, Any] | None = None) -> Chunks:
    """The normalised ids of a CSV's id column, ``size`` rows at a time (never the whole file).

    Read as :func:`vfl_cli.tables.read_table` reads it (ids as text, the file's format) and
    normalised chunk by chunk by :func:`vfl_cli.protocol.psi.normalise_ids` (error messages give
    file rows); ids repeated across chunks are refused when the blinded points are sorted.
    """
    import pandas as pd

    from vfl_cli import tables

    fmt = tables.detect_format(path, **dict(csv or {}))
    names = tables.read_header(path, sep=fmt.sep, decimal=fmt.decimal, encoding=fmt.encoding)
    if id_column not in names:
        raise DataError(f"{path} has no id column {id_column!r}")

    def read() -> Iterator[tuple[int, list[str]]]:
        reader = pd.read_csv(path, sep=fmt.sep, decimal=fmt.decimal, thousands=fmt.thousands,
                             encoding=fmt.encoding, header=0, names=names, usecols=[id_column],
                             index_col=False, dtype={id_column: str}, keep_default_na=False,
                             na_values=[""], skipinitialspace=True, engine="c", chunksize=size)
        first = 0
        with reader:
            for frame in reader:
                cells = frame[id_column].fillna("").astype(str).tolist()
                yield first, psi.normalise_ids(cells, column=id_column, first_row=first + 1)
                first += len(cells)

    return read


def _ids_digest(chunks: Chunks) -> tuple[bytes, int, int]:
    """A digest of the id list independent of chunk sizes, the number of ids, and the longest
    id in UTF-8 bytes."""
    h = hashlib.sha256(_IDS_PERSON)
    n = width = 0
    for _, ids in chunks():
        encoded = [s.encode("utf-8") for s in ids]
        h.update(b"".join(len(b).to_bytes(4, "big") + b for b in encoded))
        n += len(ids)
        width = max(width, max((len(b) for b in encoded), default=0))
    return h.digest(), n, width


# --------------------------------------------------------------------------- files


class Scratch:
    """A private folder of raw arrays (0700; files 0600), removed when the alignment ends."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(root, 0o700)

    def path(self, name: str) -> Path:
        return self.root / name

    def write(self, name: str, array: np.ndarray, *, append: bool = False) -> None:
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(np.ascontiguousarray(array).tobytes())

    def write_at(self, name: str, array: np.ndarray, item: int) -> None:
        """Write ``array`` from item ``item`` of the file on: a step run again after a crash
        writes the same bytes to the same place."""
        data = np.ascontiguousarray(array)
        fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, data.tobytes(), item * data.itemsize * (data.size // max(1, len(data))))
        finally:
            os.close(fd)

    def read(self, name: str, dtype: Any, *, offset: int = 0, count: int = -1) -> np.ndarray:
        """``count`` items of ``dtype`` from item ``offset`` (all to the end if -1)."""
        path = self.path(name)
        if not path.exists():
            return np.empty(0, dtype=dtype)
        return np.fromfile(path, dtype=dtype, count=count, offset=offset * np.dtype(dtype).itemsize)

    def size(self, name: str, dtype: Any) -> int:
        path = self.path(name)
        return path.stat().st_size // np.dtype(dtype).itemsize if path.exists() else 0

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _bucket_of(points: np.ndarray, buckets: int) -> np.ndarray:
    """The bucket of each point by its first two bytes: ascending buckets, ascending points."""
    top = points[:, 0].astype(np.uint32) << 8 | points[:, 1]
    bucket: np.ndarray = (top * buckets >> 16).astype(np.int64)
    return bucket


def _spill(scratch: Scratch, prefix: str, records: np.ndarray, keys: np.ndarray, buckets: int) -> None:
    """Append records to ``<prefix>.<bucket>`` files, the bucket of each from its 32-byte key."""
    which = _bucket_of(keys, buckets)
    order = np.argsort(which, kind="stable")
    edges = np.searchsorted(which[order], np.arange(buckets + 1))
    for b in range(buckets):
        if edges[b + 1] > edges[b]:
            scratch.write(f"{prefix}.{b}", records[order[edges[b]:edges[b + 1]]], append=True)


def _clear(scratch: Scratch, prefix: str) -> None:
    for f in scratch.root.glob(f"{prefix}.*"):
        f.unlink()


def _sorted(records: np.ndarray) -> np.ndarray:
    """Records sorted by their point (as 32 bytes)."""
    words = np.ascontiguousarray(records["p"]).view(">u8").reshape(len(records), 4)
    ordered: np.ndarray = records[psi._byte_order(words)]
    return ordered


def _repeats(points: np.ndarray) -> np.ndarray:
    """Positions (in sorted ``points``) equal to the point before."""
    if len(points) < 2:
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.all(points[1:] == points[:-1], axis=1)) + 1


def _bucket_load(scratch: Scratch, name: str, share: int, what: str) -> np.ndarray:
    """A bucket's records, refused when far more than its ``share`` (blinded points are spread
    evenly: only made-up points crowd into one bucket, to blow the memory bound)."""
    records = scratch.read(name, _RECORD)
    if len(records) > 4 * share + 1024:
        raise InvalidArtifact(f"{what}: far more points share their first bytes than random points "
                              "would; they are not blinded points")
    return records


# --------------------------------------------------------------------------- own points


def blind_own(chunks: Chunks, domain: bytes, scalar: bytes, scratch: Scratch, budget: Budget, *,
              n_upper: int, workers: ecdh.Workers, progress: psi.Progress | None = None) -> int:
    """Hash and blind every id, then write ``sent.pts`` (the points sorted) and ``sent.rows``.

    Returns:
        The number of ids.

    Raises:
        DataError: an id appears twice (rows named).
    """
    buckets = budget.buckets(n_upper)
    _clear(scratch, "own")
    advance = psi._bar(progress, "hashing and blinding ids", n_upper)
    n, pending = 0, None
    for first, ids in chunks():  # the next chunk is read while the workers blind this one
        job = workers.submit(ecdh.Work(ids, domain=domain, scalar=scalar))
        if pending is not None:
            _spill_own(scratch, *pending, buckets)
        pending = (job, first, len(ids))
        n += len(ids)
        if advance is not None:
            advance(len(ids))
    if pending is not None:
        _spill_own(scratch, *pending, buckets)
    for name in ("sent.pts", "sent.rows"):
        scratch.write(name, np.empty(0, np.uint8))
    for b in range(buckets):
        records = _sorted(scratch.read(f"own.{b}", _RECORD))
        twice = _repeats(records["p"])
        if twice.size:
            rows = sorted({int(r) + 1 for t in twice[:5] for r in records["i"][[t - 1, t]]})
            raise DataError(f"the id column holds repeated ids (rows {', '.join(map(str, rows))}); "
                            "ids must be unique: remove the duplicates")
        scratch.write("sent.pts", records["p"], append=True)
        scratch.write("sent.rows", records["i"], append=True)
    _clear(scratch, "own")
    return n


def _spill_own(scratch: Scratch, job: Callable[[], np.ndarray], first: int, count: int, buckets: int) -> None:
    points = job()
    records = np.empty(count, dtype=_RECORD)
    records["p"] = points
    records["i"] = np.arange(first, first + count)
    _spill(scratch, "own", records, points, buckets)


def sent_digest(scratch: Scratch, job_id: str, budget: Budget) -> bytes:
    """:func:`vfl_cli.protocol.psi.points_digest` of ``sent.pts``, read a part at a time."""
    job = job_id.encode("utf-8")
    h = hashlib.sha256(b"vfl/psi/v1/points" + len(job).to_bytes(4, "big") + job)
    with scratch.path("sent.pts").open("rb") as fh:
        while block := fh.read(32 * budget.part):
            h.update(block)
    return h.digest()


def part_digest(points: np.ndarray, job_id: str, part: int) -> bytes:
    """What a response part echoes of the start part it answers."""
    return psi.points_digest(points, f"{job_id}/part-{part}")


def sent_part(scratch: Scratch, n: int, size: int, part: int) -> np.ndarray:
    """Part ``part`` (1-based) of ``sent.pts``: ``(k, 32)`` points."""
    a = (part - 1) * size
    return scratch.read("sent.pts", np.uint8, offset=32 * a, count=32 * min(size, n - a)).reshape(-1, 32)


def parts_of(n: int, size: int) -> int:
    return max(1, math.ceil(n / size))


def check_part(points: object, previous: str | None, *, what: str) -> np.ndarray:
    """A received part of sorted points: canonical, strictly ascending, above ``previous`` (hex
    of the last point of the part before), so no point repeats in the whole message."""
    array = psi.check_peer_points(points, what=what)
    words = array.view(">u8").reshape(len(array), 4)
    ascending = np.array_equal(psi._byte_order(words), np.arange(len(array))) and not _repeats(array).size
    if not ascending or (previous is not None and len(array) and array[0].tobytes().hex() <= previous):
        raise InvalidArtifact(f"{what}: the points are not in strictly ascending order (a streamed "
                              "message is sent sorted; a repeated or reordered point is refused)")
    return array


# --------------------------------------------------------------------------- intersecting


def intersect(scratch: Scratch, n_own: int, n_peer: int, budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    """Match ``own.dbl`` (double-blinded own points, in sent order) with ``peer.dbl`` (the peer's
    points blinded again, in the peer's order), bucket by bucket.

    Returns:
        ``(own positions, peer positions)`` of the common points, ascending in own positions.

    Raises:
        InvalidArtifact: a list repeats a point, or its points crowd into one bucket.
    """
    buckets = budget.buckets(max(n_own, n_peer))
    for prefix, name, n in (("A", "own.dbl", n_own), ("B", "peer.dbl", n_peer)):
        _clear(scratch, prefix)
        for a in range(0, n, budget.part):
            points = scratch.read(name, np.uint8, offset=32 * a, count=32 * min(budget.part, n - a)).reshape(-1, 32)
            records = np.empty(len(points), dtype=_RECORD)
            records["p"], records["i"] = points, np.arange(a, a + len(points))
            _spill(scratch, prefix, records, points, buckets)
    own_pos, peer_pos = [], []
    for b in range(buckets):
        own = _sorted(_bucket_load(scratch, f"A.{b}", math.ceil(n_own / buckets), "the re-blinded start points"))
        peer = _sorted(_bucket_load(scratch, f"B.{b}", math.ceil(n_peer / buckets), "the peer's points"))
        for records, what in ((own, "the re-blinded start points"), (peer, "the peer's points")):
            if _repeats(records["p"]).size:
                raise InvalidArtifact(f"{what} repeat a point; an honest party never sends one twice")
        ia, ib = psi.intersect(np.ascontiguousarray(own["p"]), np.ascontiguousarray(peer["p"]))
        own_pos.append(own["i"][ia])
        peer_pos.append(peer["i"][ib])
        for prefix in ("A", "B"):
            scratch.path(f"{prefix}.{b}").unlink(missing_ok=True)
    own_all, peer_all = np.concatenate(own_pos), np.concatenate(peer_pos)
    by_own = np.argsort(own_all, kind="stable")
    return own_all[by_own].astype(np.int64), peer_all[by_own].astype(np.int64)


# --------------------------------------------------------------------------- the joint order


def ordered(chunks: Chunks, rows: np.ndarray, key: bytes, job_id: str, width: int,
            scratch: Scratch, budget: Budget) -> StreamAlignment:
    """The ids at ``rows`` of this party's list, in the joint order, with the fingerprint.

    Identical to :func:`vfl_cli.protocol.psi.final_order` and
    :func:`~vfl_cli.protocol.psi.alignment_fingerprint` of the same ids, through buckets of
    their order MACs.
    """
    m = len(rows)
    record = np.dtype([("p", "u1", (32,)), ("i", "<i8"), ("s", f"S{max(1, width)}")])
    wanted = np.sort(rows)
    buckets = budget.buckets(m * max(1, record.itemsize // 40))
    _clear(scratch, "M")
    for first, ids in chunks():
        lo, hi = np.searchsorted(wanted, [first, first + len(ids)])
        if hi == lo:
            continue
        chosen_rows = wanted[lo:hi]
        chosen = [ids[r - first] for r in chosen_rows.tolist()]
        records = np.empty(len(chosen), dtype=record)
        records["p"] = np.frombuffer(psi._order_macs(chosen, key), np.uint8).reshape(-1, 32)
        records["i"] = chosen_rows
        records["s"] = [s.encode("utf-8") for s in chosen]
        _spill(scratch, "M", records, records["p"], buckets)
    out_rows = np.empty(m, dtype=np.int64)
    out_ids = np.empty(m, dtype=f"U{max(1, width)}")  # filled bucket by bucket, never copied
    digest_key = psi.digest_key(key)
    fp = hashlib.blake2b(digest_size=32, key=digest_key, person=psi._FINGERPRINT_PERSON)
    fp.update(b"[" + json.dumps(job_id, ensure_ascii=True).encode("ascii"))
    done = 0
    for b in range(buckets):
        records = scratch.read(f"M.{b}", record)
        records = records[psi._byte_order(np.ascontiguousarray(records["p"]).view(">u8").reshape(-1, 4))]
        out_rows[done:done + len(records)] = records["i"]
        text = np.char.decode(records["s"], "utf-8")
        out_ids[done:done + len(records)] = text
        if len(text):
            fp.update(b"," + ",".join(json.dumps(s, ensure_ascii=True) for s in text.tolist()).encode("ascii"))
        done += len(records)
        scratch.path(f"M.{b}").unlink(missing_ok=True)
    fp.update(b"]")
    return StreamAlignment(ids=out_ids, rows=out_rows, fingerprint=fp.digest(), digest_key=digest_key)


# --------------------------------------------------------------------------- the parties

START, RESPONSE, FINISH = "psi/start", "psi/response", "psi/finish"


def _same_ids(state: Mapping[str, Any], chunks: Chunks) -> None:
    digest, _, _ = _ids_digest(chunks)
    if not hmac.compare_digest(digest.hex(), state["ids_digest"]):
        raise DataError("the id column changed since this party's previous alignment step; "
                        "run the alignment again from the start")


def _own(chunks: Chunks, domain: bytes, scalar: bytes, scratch: Scratch, budget: Budget,
         workers: ecdh.Workers, progress: psi.Progress | None) -> dict[str, Any]:
    digest, n, width = _ids_digest(chunks)
    if n == 0:
        raise DataError("the id column has no rows: there is nothing to align")
    blind_own(chunks, domain, scalar, scratch, budget, n_upper=n, workers=workers, progress=progress)
    return {"n": n, "width": width, "ids_digest": digest.hex()}


def active_begin(chunks: Chunks, *, job_id: str, salt: bytes, party: str, scratch: Scratch,
                 budget: Budget, n_jobs: int | None = None, rng: Random | None = None,
                 seed: bytes | None = None, progress: psi.Progress | None = None) -> dict[str, Any]:
    """Active party: draw alpha, the seed and the exchange key; blind and sort its ids.

    Returns:
        The private state (JSON), for :func:`active_next_start` and the later steps.
    """
    scalar = ecdh.new_scalar(rng)
    seed = psi.new_seed(rng) if seed is None else seed
    exchange_secret, exchange_public = channel.new_exchange(rng)
    with ecdh.Workers(n_jobs) as workers:
        own = _own(chunks, psi.make_domain(job_id, salt), scalar, scratch, budget, workers, progress)
    n = own["n"]
    return {**own, "job": job_id, "party": party, "scalar": scalar.hex(), "seed": seed.hex(),
            "exchange_secret": exchange_secret.hex(), "exchange_public": exchange_public.hex(),
            "part_size": budget.part, "start_parts": parts_of(n, budget.part), "sent": 0,
            "start_digest": sent_digest(scratch, job_id, budget).hex(),
            "commitment": psi.commit_seed(seed, job_id).hex(), "received": 0}


def active_next_start(state: dict[str, Any], scratch: Scratch) -> Part | None:
    """The next start part, or ``None`` when all are sent."""
    k = state["sent"] + 1
    if k > state["start_parts"]:
        return None
    state["sent"] = k
    meta = {"stream": 1, "part": k, "parts": state["start_parts"], "part_size": state["part_size"],
            "count": state["n"], "seed_commitment": state["commitment"],
            "exchange_public": state["exchange_public"]}
    return Part(START, meta, {"points": sent_part(scratch, state["n"], state["part_size"], k)})


def _meta_int(meta: Mapping[str, Any], key: str, what: str, low: int = 1, high: int = 1 << 40) -> int:
    value = meta.get(key)
    if type(value) is not int or not low <= value <= high:
        raise InvalidArtifact(f"{what}: {key} must be a whole number in {low}..{high}, got {value!r}")
    return value


def _check_turn(part: Part, expected: int, parts: int | None, what: str) -> int:
    k = _meta_int(part.meta, "part", what)
    total = _meta_int(part.meta, "parts", what)
    if k != expected or k > total or (parts is not None and total != parts):
        raise InvalidArtifact(f"{what}: part {k} of {total}, but the next part must be {expected}"
                              + (f" of {parts}" if parts is not None else "")
                              + " (a part is missing, repeated or out of range)")
    return total


def active_take(state: dict[str, Any], part: Part, scratch: Scratch, *, peer: str,
                n_jobs: int | None = None, progress: psi.Progress | None = None) -> bool:
    """Active party: take the next response part (re-blinded start points, or the peer's own
    points, which are blinded again here). Returns whether every part is in."""
    k = state["received"] + 1
    what = f"the response from {peer} (part {k})"
    if k == 1:
        _first_response(state, part, peer, what)
    _check_turn(part, k, state["response_parts"], what)
    if k <= state["start_parts"]:
        size = min(state["part_size"], state["n"] - (k - 1) * state["part_size"])
        try:
            echoed = bytes.fromhex(str(part.meta.get("start_part_digest")))
        except ValueError:
            echoed = b""
        points = sent_part(scratch, state["n"], state["part_size"], k)
        if not hmac.compare_digest(echoed, part_digest(points, state["job"], k)):
            raise InvalidArtifact(f"{what} answers another start message (stale or replayed)")
        double = psi.check_peer_points(part.arrays.get("double_blinded"), expected=size,
                                       what=f"{what}: the re-blinded start points")
        scratch.write_at("own.dbl", double, (k - 1) * state["part_size"])
    else:
        peer_points = check_part(part.arrays.get("points"), state.get("peer_last"), what=f"{what}: its own points")
        if len(peer_points):
            state["peer_last"] = peer_points[-1].tobytes().hex()
        again = psi.double_blind(peer_points, bytes.fromhex(state["scalar"]), what=f"{what}: its own points",
                                 n_jobs=n_jobs, progress=progress)
        at = (k - 1 - state["start_parts"]) * state["part_size"]
        scratch.write_at("peer.pts", peer_points, at)
        scratch.write_at("peer.dbl", again, at)
    state["received"] = k
    return bool(k == state["response_parts"])


def _first_response(state: dict[str, Any], part: Part, peer: str, what: str) -> None:
    meta = part.meta
    try:
        seed = bytes.fromhex(str(meta.get("seed")))
        public = bytes.fromhex(str(meta.get("exchange_public")))
    except ValueError as exc:
        raise InvalidArtifact(f"{what}: the seed or exchange key is not hex") from exc
    if len(seed) != psi.SEED_BYTES:
        raise InvalidArtifact(f"{what}: the seed is not {psi.SEED_BYTES} bytes")
    peer_n = _meta_int(meta, "count", what)
    peer_parts = _meta_int(meta, "points_parts", what)
    if peer_parts != parts_of(peer_n, state["part_size"]):
        raise InvalidArtifact(f"{what}: {peer_parts} parts cannot carry {peer_n} points")
    key = channel.channel_key(bytes.fromhex(state["exchange_secret"]), public,
                              psi._channel_context(state["job"], state["party"], peer), what=what)
    state.update(peer=peer, peer_n=peer_n, peer_seed=seed.hex(), channel_key=key.hex(),
                 response_parts=state["start_parts"] + peer_parts)


def active_conclude(state: dict[str, Any], chunks: Chunks, scratch: Scratch, budget: Budget) -> StreamAlignment:
    """Active party, all parts in: intersect, order, and keep the positions to send."""
    _same_ids(state, chunks)
    if scratch.size("own.dbl", _RECORD["p"]) != state["n"]:
        raise InvalidArtifact(f"the response from {state['peer']}: expected {state['n']} re-blinded points")
    own_pos, peer_pos = intersect(scratch, state["n"], state["peer_n"], budget)
    rows = np.empty(len(own_pos), dtype=np.int64)
    for a in range(0, len(own_pos), budget.part):  # sent.rows read where needed, never whole
        sent_rows = np.memmap(scratch.path("sent.rows"), dtype="<i8", mode="r")
        rows[a:a + budget.part] = sent_rows[own_pos[a:a + budget.part]]
    scratch.write("positions", np.sort(peer_pos))
    seeds = {state["party"]: bytes.fromhex(state["seed"]), state["peer"]: bytes.fromhex(state["peer_seed"])}
    key = psi.order_key(seeds, state["job"])
    job = state["job"].encode("utf-8")
    h = hashlib.sha256(b"vfl/psi/v1/points" + len(job).to_bytes(4, "big") + job)
    with scratch.path("peer.pts").open("rb") as fh:
        while block := fh.read(32 * budget.part):
            h.update(block)
    m = len(peer_pos)
    del own_pos, peer_pos
    sealed = psi.seal_seeds(bytes.fromhex(state["channel_key"]), seeds)
    state.update(m=m, finish_parts=parts_of(m, state["part_size"]), finish_sent=0,
                 response_digest=h.hexdigest(), sealed_seeds=sealed.hex())
    for secret in ("scalar", "exchange_secret", "channel_key"):
        state.pop(secret, None)
    return ordered(chunks, rows, key, state["job"], state["width"], scratch, budget)


def active_next_finish(state: dict[str, Any], scratch: Scratch) -> Part | None:
    """The next finish part (positions in the peer's list), or ``None`` when all are sent."""
    k = state["finish_sent"] + 1
    if k > state["finish_parts"]:
        return None
    state["finish_sent"] = k
    size = state["part_size"]
    positions = scratch.read("positions", "<i8", offset=(k - 1) * size, count=min(size, state["m"] - (k - 1) * size))
    meta = {"stream": 1, "part": k, "parts": state["finish_parts"], "count": state["m"],
            "response_digest": state["response_digest"], "sealed_seeds": state["sealed_seeds"]}
    return Part(FINISH, meta, {"positions": positions.astype(np.int64)})


def passive_take_start(state: dict[str, Any] | None, part: Part, chunks: Chunks, *, job_id: str,
                       salt: bytes, party: str, active: str, scratch: Scratch, budget: Budget,
                       n_jobs: int | None = None, rng: Random | None = None, seed: bytes | None = None,
                       progress: psi.Progress | None = None) -> tuple[dict[str, Any], Part]:
    """Passive party: answer one start part (the first also blinds and sorts this party's ids).

    Returns:
        The state and the response part re-blinding that start part.
    """
    k = 1 if state is None else state["start_taken"] + 1
    what = f"the start message (part {k})"
    if part.meta.get("stream") != 1:
        raise InvalidArtifact(f"{what} is not a streamed start message")
    if state is None:
        state = _passive_begin(part, chunks, job_id, salt, party, active, scratch, budget, n_jobs, rng, seed, progress)
    _check_turn(part, k, state["start_parts"], what)
    size = min(state["start_size"], state["start_n"] - (k - 1) * state["start_size"])
    points = check_part(part.arrays.get("points"), state.get("start_last"), what=f"{what}: the points of {active}")
    if len(points) != size:
        raise InvalidArtifact(f"{what}: expected {size} points, got {len(points)}")
    state["start_last"] = points[-1].tobytes().hex()
    double = psi.double_blind(points, bytes.fromhex(state["scalar"]), what=f"{what}: the points of {active}",
                              n_jobs=n_jobs, progress=progress)
    state["start_taken"] = k
    meta: dict[str, Any] = {"stream": 1, "part": k, "parts": state["start_parts"] + state["points_parts"],
                            "start_part_digest": part_digest(points, job_id, k).hex()}
    if k == 1:
        meta.update(count=state["n"], points_parts=state["points_parts"], seed=state["seed"],
                    exchange_public=state["exchange_public"])
    if k == state["start_parts"]:
        state.pop("scalar")  # beta is no longer needed
    return state, Part(RESPONSE, meta, {"double_blinded": double})


def _passive_begin(part: Part, chunks: Chunks, job_id: str, salt: bytes, party: str, active: str,
                   scratch: Scratch, budget: Budget, n_jobs: int | None, rng: Random | None,
                   seed: bytes | None, progress: psi.Progress | None) -> dict[str, Any]:
    what = "the start message"
    meta = part.meta
    start_n = _meta_int(meta, "count", what)
    start_size = _meta_int(meta, "part_size", what, 256)
    if _meta_int(meta, "parts", what) != parts_of(start_n, start_size):
        raise InvalidArtifact(f"{what}: {meta.get('parts')} parts of {start_size} cannot carry {start_n} points")
    try:
        commitment = bytes.fromhex(str(meta.get("seed_commitment")))
        public = bytes.fromhex(str(meta.get("exchange_public")))
    except ValueError as exc:
        raise InvalidArtifact(f"{what}: the seed commitment or exchange key is not hex") from exc
    if len(commitment) != 32:
        raise InvalidArtifact(f"{what}: the seed commitment is not 32 bytes")
    beta = ecdh.new_scalar(rng)
    exchange_secret, exchange_public = channel.new_exchange(rng)
    key = channel.channel_key(exchange_secret, public, psi._channel_context(job_id, active, party), what=what)
    seed = psi.new_seed(rng) if seed is None else seed
    with ecdh.Workers(n_jobs) as workers:
        own = _own(chunks, psi.make_domain(job_id, salt), beta, scratch, budget, workers, progress)
    return {**own, "job": job_id, "party": party, "active": active, "scalar": beta.hex(),
            "seed": seed.hex(), "exchange_public": exchange_public.hex(), "channel_key": key.hex(),
            "commitment": commitment.hex(), "start_n": start_n, "start_size": start_size,
            "start_parts": parts_of(start_n, start_size), "start_taken": 0, "part_size": start_size,
            "points_parts": parts_of(own["n"], start_size), "points_sent": 0,
            "response_digest": sent_digest(scratch, job_id, budget).hex(), "finish_taken": 0}


def passive_next_points(state: dict[str, Any], scratch: Scratch) -> Part | None:
    """After the last start part: the next part of this party's own sorted points."""
    if state["start_taken"] < state["start_parts"] or state["points_sent"] >= state["points_parts"]:
        return None
    state["points_sent"] += 1
    k = state["points_sent"]
    meta = {"stream": 1, "part": state["start_parts"] + k, "parts": state["start_parts"] + state["points_parts"]}
    return Part(RESPONSE, meta, {"points": sent_part(scratch, state["n"], state["part_size"], k)})


def passive_take_finish(state: dict[str, Any], part: Part, chunks: Chunks, scratch: Scratch,
                        budget: Budget) -> StreamAlignment | None:
    """Passive party: take the next finish part; after the last, the alignment."""
    k = state["finish_taken"] + 1
    what = f"the finish message (part {k})"
    if k == 1:
        _check_finish_head(state, part, what)
    _check_turn(part, k, state["finish_parts"], what)
    positions = np.asarray(part.arrays.get("positions"))
    size = min(state["part_size"], state["m"] - (k - 1) * state["part_size"])
    checked = psi._checked_positions(positions, state["n"], what)
    if len(checked) != size or (len(checked) and checked[0] <= state.get("last_position", -1)):
        raise InvalidArtifact(f"{what}: positions must be {size} ascending numbers, above the part before")
    if len(checked):
        state["last_position"] = int(checked[-1])
    scratch.write_at("positions", checked, (k - 1) * state["part_size"])
    state["finish_taken"] = k
    if k < state["finish_parts"]:
        return None
    _same_ids(state, chunks)
    received = scratch.read("positions", "<i8")
    rows = np.empty(len(received), dtype=np.int64)
    sent_rows = np.memmap(scratch.path("sent.rows"), dtype="<i8", mode="r")
    for a in range(0, len(received), budget.part):
        rows[a:a + budget.part] = sent_rows[received[a:a + budget.part]]
    del sent_rows
    key = psi.order_key(state["seeds"], state["job"])
    return ordered(chunks, rows, key, state["job"], state["width"], scratch, budget)


def _check_finish_head(state: dict[str, Any], part: Part, what: str) -> None:
    meta = part.meta
    if str(meta.get("response_digest")) != state["response_digest"]:
        raise InvalidArtifact(f"{what} answers another response (stale or replayed)")
    try:
        sealed = bytes.fromhex(str(meta.get("sealed_seeds")))
    except ValueError as exc:
        raise InvalidArtifact(f"{what}: the sealed seeds are not hex") from exc
    seeds = psi.open_seeds(bytes.fromhex(state["channel_key"]), sealed, what=what)
    if state["active"] not in seeds or state["party"] not in seeds:
        raise InvalidArtifact(f"{what} lacks the seed of {state['active']} or of {state['party']}")
    psi.verify_seed(seeds[state["active"]], bytes.fromhex(state["commitment"]), state["job"])
    if not hmac.compare_digest(seeds[state["party"]], bytes.fromhex(state["seed"])):
        raise InvalidArtifact(f"{what} carries another seed for {state['party']} than it sent")
    m = _meta_int(meta, "count", what, 0, state["n"])
    state.update(m=m, finish_parts=parts_of(m, state["part_size"]),
                 seeds={k: v for k, v in seeds.items()})
    state.pop("channel_key")


def state_json(state: dict[str, Any]) -> dict[str, Any]:
    """The state with the seeds as hex (JSON-safe)."""
    out = dict(state)
    if "seeds" in out:
        out["seeds"] = {k: (v.hex() if isinstance(v, bytes) else v) for k, v in out["seeds"].items()}
    return out


def state_loaded(state: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(state)
    if "seeds" in out:
        out["seeds"] = {k: bytes.fromhex(v) for k, v in out["seeds"].items()}
    return out
