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

Between steps each party's state is a typed frozen dataclass (:class:`ActiveStream`,
:class:`PassiveStream`) kept under the job state's ``stream`` entry; every step takes a state
and returns a new one (secrets set to None once used), and :mod:`vfl_cli.protocol.align_stream`
writes it into the job only after the step returned.

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
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from vfl_cli.crypto import channel, ecdh
from vfl_cli.errors import DataError, InvalidArtifact, VflError
from vfl_cli.protocol import psi
from vfl_cli.protocol.base import JobState
from vfl_cli.protocol.kit import PartyState

if TYPE_CHECKING:
    from vfl_cli.tables import CsvFormat

__all__ = [
    "DEFAULT_MEMORY",
    "ActiveStream",
    "Budget",
    "Chunks",
    "Part",
    "PassiveStream",
    "StreamAlignment",
    "choose",
    "csv_chunks",
    "csv_layout",
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

    fmt, names = csv_layout(path, csv)
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


_LAYOUTS: dict[tuple[Any, ...], tuple[CsvFormat, list[str]]] = {}  # file identity -> (CsvFormat, names)


def csv_layout(path: Path, csv: Mapping[str, Any] | None = None) -> tuple[CsvFormat, list[str]]:
    """The format and column names of a CSV (:func:`vfl_cli.tables.detect_format`, ``read_header``),
    detected once per process for an unchanged file.

    A streamed alignment advances one part at a time and opens the id column again for every
    part; detecting the format (the first 64 KiB parsed with every separator) cost more CPU than
    reading the part's ids. The file is known unchanged by its device, inode, size and mtime in
    nanoseconds; any change detects again.
    """
    from vfl_cli import tables

    options = dict(csv or {})
    try:
        st = os.stat(path)
        key: tuple[Any, ...] | None = (str(Path(path).resolve()), st.st_dev, st.st_ino, st.st_size,
                                       st.st_mtime_ns, tuple(sorted(options.items())))
    except OSError:
        key = None  # detect_format says what is wrong with the path
    if key is not None and key in _LAYOUTS:
        fmt, names = _LAYOUTS[key]
        return fmt, list(names)
    fmt = tables.detect_format(path, **options)
    names = tables.read_header(path, sep=fmt.sep, decimal=fmt.decimal, encoding=fmt.encoding)
    if key is not None:
        if len(_LAYOUTS) >= 8:
            _LAYOUTS.clear()
        _LAYOUTS[key] = (fmt, list(names))
    return fmt, names


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
    ordered: np.ndarray = records[psi.byte_order(words)]
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
    advance = psi.progress_bar(progress, "hashing and blinding ids", n_upper)
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
    return bytes.fromhex(_points_digest_of(scratch, "sent.pts", job_id, budget))


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
    ascending = np.array_equal(psi.byte_order(words), np.arange(len(array))) and not _repeats(array).size
    if not ascending or (previous is not None and len(array) and array[0].tobytes().hex() <= previous):
        raise InvalidArtifact(f"{what}: the points are not in strictly ascending order (a streamed "
                              "message is sent sorted; a repeated or reordered point is refused)")
    return array


# --------------------------------------------------------------------------- intersecting


def intersect(scratch: Scratch, n_own: int, n_peer: int, budget: Budget) -> tuple[np.ndarray, np.ndarray]:
    """Match ``own.dbl`` (double-blinded own points, in sent order) with ``peer.dbl`` (the peer's
    points blinded again, in the peer's order), bucket by bucket.

    Returns:
        ``(own positions, peer positions)`` of the common points, pair by pair, in bucket order.

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
    # in bucket order: the callers need no pairing (rows are sorted when ordered, positions sent sorted)
    return np.concatenate(own_pos).astype(np.int64, copy=False), np.concatenate(peer_pos).astype(np.int64, copy=False)


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
        records["p"] = np.frombuffer(psi.order_macs(chosen, key), np.uint8).reshape(-1, 32)
        records["i"] = chosen_rows
        records["s"] = [s.encode("utf-8") for s in chosen]
        _spill(scratch, "M", records, records["p"], buckets)
    out_rows = np.empty(m, dtype=np.int64)
    out_ids = np.empty(m, dtype=f"U{max(1, width)}")  # filled bucket by bucket, never copied
    digest_key = psi.digest_key(key)
    fp = hashlib.blake2b(digest_size=32, key=digest_key, person=psi.FINGERPRINT_PERSON)
    fp.update(b"[" + json.dumps(job_id, ensure_ascii=True).encode("ascii"))
    done = 0
    for b in range(buckets):
        records = scratch.read(f"M.{b}", record)
        records = records[psi.byte_order(np.ascontiguousarray(records["p"]).view(">u8").reshape(-1, 4))]
        out_rows[done:done + len(records)] = records["i"]
        text = np.char.decode(records["s"], "utf-8")
        out_ids[done:done + len(records)] = text
        for a in range(0, len(text), 8192):  # a few thousand ids' JSON at a time, not a bucket's
            fp.update(b"," + ",".join(json.dumps(s, ensure_ascii=True) for s in text[a:a + 8192].tolist()).encode())
        done += len(records)
        scratch.path(f"M.{b}").unlink(missing_ok=True)
    fp.update(b"]")
    return StreamAlignment(ids=out_ids, rows=out_rows, fingerprint=fp.digest(), digest_key=digest_key)


def save_result(scratch: Scratch, result: StreamAlignment) -> None:
    """Keep the aligned ids and rows in scratch until the step that finishes the job (the
    steps sending the other finish parts then neither load nor save them)."""
    scratch.write("result.ids", result.ids)
    scratch.write("result.rows", np.asarray(result.rows, dtype="<i8"))


def saved_result(scratch: Scratch, width: int) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`save_result` kept: ``(ids, rows)``."""
    return scratch.read("result.ids", f"<U{max(1, width)}"), scratch.read("result.rows", "<i8")


# --------------------------------------------------------------------------- the parties' states

START, RESPONSE, FINISH = "psi/start", "psi/response", "psi/finish"


@dataclass(frozen=True)
class _Slot(PartyState):
    """The one job-state entry a streamed state lives in (absent: the job does not stream)."""

    stream: dict[str, Any] | None = None

    def store(self, job: JobState) -> None:
        if self.stream is None:
            job.data.pop("stream", None)
        else:
            super().store(job)


@dataclass(frozen=True)
class _StreamState(PartyState):
    """A party's streamed state, kept under ``JobState.data["stream"]`` (whether that key holds
    a state is how the ``psi`` job knows it streams): the kit's load/store on that one entry."""

    @classmethod
    def load(cls: type[_S], job: JobState) -> _S:
        inner = JobState(job.phase, dict(_Slot.load(job).stream or {}))
        return super().load(inner)

    def store(self, job: JobState) -> None:
        inner = JobState(job.phase)
        super().store(inner)
        _Slot(inner.data).store(job)

    @staticmethod
    def present(job: JobState) -> bool:
        """Whether ``job`` holds a streamed state (the alignment streams and is not done)."""
        return _Slot.load(job).stream is not None

    @staticmethod
    def drop(job: JobState) -> None:
        """The alignment is complete: the streamed state (and what secrets are left) goes."""
        _Slot().store(job)


_S = TypeVar("_S", bound=_StreamState)


@dataclass(frozen=True)
class ActiveStream(_StreamState):
    """The active party's state between its streamed steps (secrets set to None once used)."""

    job: str = ""
    party: str = ""
    n: int = 0
    width: int = 0
    ids_digest: str = ""
    scalar: bytes | None = None
    seed: bytes = b""
    exchange_secret: bytes | None = None
    exchange_public: bytes = b""
    commitment: bytes = b""
    part_size: int = 0
    start_parts: int = 0
    sent: int = 0
    received: int = 0
    response_parts: int = 0
    peer: str = ""
    peer_n: int = 0
    peer_seed: bytes = b""
    peer_last: str | None = None
    channel_key: bytes | None = None
    m: int = 0
    finish_parts: int = 0
    finish_sent: int = 0
    response_digest: str = ""
    sealed_seeds: bytes = b""

    @property
    def responses_in(self) -> bool:
        return self.response_parts > 0 and self.received == self.response_parts


@dataclass(frozen=True)
class PassiveStream(_StreamState):
    """The passive party's state between its streamed steps (its scalar set to None after the
    last start part, the channel key after the first finish part)."""

    job: str = ""
    party: str = ""
    active: str = ""
    n: int = 0
    width: int = 0
    ids_digest: str = ""
    scalar: bytes | None = None
    seed: bytes = b""
    exchange_public: bytes = b""
    channel_key: bytes | None = None
    commitment: bytes = b""
    start_n: int = 0
    start_size: int = 0
    start_parts: int = 0
    start_taken: int = 0
    start_last: str | None = None
    part_size: int = 0
    points_parts: int = 0
    points_sent: int = 0
    response_digest: str = ""
    finish_taken: int = 0
    finish_parts: int = 0
    last_position: int = -1
    m: int = 0
    seeds: dict[str, str] = field(default_factory=dict)  # hex, once the finish message opened them


@dataclass(frozen=True)
class _Own:
    """What a party knows of its own ids once it has blinded and sorted them."""

    n: int
    width: int
    ids_digest: str


# --------------------------------------------------------------------------- shared steps


def _same_ids(ids_digest: str, chunks: Chunks) -> None:
    digest, _, _ = _ids_digest(chunks)
    if not hmac.compare_digest(digest.hex(), ids_digest):
        raise DataError("the id column changed since this party's previous alignment step; "
                        "run the alignment again from the start")


def _own(chunks: Chunks, domain: bytes, scalar: bytes, scratch: Scratch, budget: Budget,
         n_jobs: int | None, progress: psi.Progress | None) -> _Own:
    digest, n, width = _ids_digest(chunks)
    if n == 0:
        raise DataError("the id column has no rows: there is nothing to align")
    with ecdh.Workers(n_jobs) as workers:
        blind_own(chunks, domain, scalar, scratch, budget, n_upper=n, workers=workers, progress=progress)
    return _Own(n, width, digest.hex())


def _meta_int(meta: Mapping[str, Any], key: str, what: str, low: int = 1, high: int = 1 << 40) -> int:
    value = meta.get(key)
    if type(value) is not int or not low <= value <= high:
        raise InvalidArtifact(f"{what}: {key} must be a whole number in {low}..{high}, got {value!r}")
    return value


def _meta_hex(meta: Mapping[str, Any], key: str, what: str) -> bytes:
    try:
        return bytes.fromhex(str(meta.get(key)))
    except ValueError as exc:
        raise InvalidArtifact(f"{what}: {key} is not hex") from exc


def _check_turn(part: Part, expected: int, parts: int | None, what: str) -> int:
    k = _meta_int(part.meta, "part", what)
    total = _meta_int(part.meta, "parts", what)
    if k != expected or k > total or (parts is not None and total != parts):
        raise InvalidArtifact(f"{what}: part {k} of {total}, but the next part must be {expected}"
                              + (f" of {parts}" if parts is not None else "")
                              + " (a part is missing, repeated or out of range)")
    return total


def _part_size(n: int, size: int, k: int) -> int:
    """Points in part ``k`` (1-based) of ``n`` points in parts of ``size``."""
    return min(size, n - (k - 1) * size)


def _rows_at(scratch: Scratch, positions: np.ndarray, budget: Budget) -> np.ndarray:
    """This party's file rows at ``positions`` of its sent list (``sent.rows`` read where needed,
    never whole)."""
    rows = np.empty(len(positions), dtype=np.int64)
    sent_rows = np.memmap(scratch.path("sent.rows"), dtype="<i8", mode="r")  # never empty: n > 0
    for a in range(0, len(positions), budget.part):
        rows[a:a + budget.part] = sent_rows[positions[a:a + budget.part]]
    del sent_rows
    return rows


def _points_digest_of(scratch: Scratch, name: str, job_id: str, budget: Budget) -> str:
    """:func:`vfl_cli.protocol.psi.points_digest` of a file of points, a part at a time."""
    job = job_id.encode("utf-8")
    h = hashlib.sha256(b"vfl/psi/v1/points" + len(job).to_bytes(4, "big") + job)
    with scratch.path(name).open("rb") as fh:
        while block := fh.read(32 * budget.part):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- the active party


def active_begin(chunks: Chunks, *, job_id: str, salt: bytes, party: str, scratch: Scratch,
                 budget: Budget, n_jobs: int | None = None, rng: Random | None = None,
                 seed: bytes | None = None, progress: psi.Progress | None = None) -> ActiveStream:
    """Active party: draw alpha, the seed and the exchange key; blind and sort its ids."""
    scalar = ecdh.new_scalar(rng)
    seed = psi.new_seed(rng) if seed is None else seed
    exchange_secret, exchange_public = channel.new_exchange(rng)
    own = _own(chunks, psi.make_domain(job_id, salt), scalar, scratch, budget, n_jobs, progress)
    return ActiveStream(job=job_id, party=party, n=own.n, width=own.width, ids_digest=own.ids_digest,
                        scalar=scalar, seed=seed, exchange_secret=exchange_secret, exchange_public=exchange_public,
                        commitment=psi.commit_seed(seed, job_id), part_size=budget.part,
                        start_parts=parts_of(own.n, budget.part))


def active_next_start(state: ActiveStream, scratch: Scratch) -> tuple[ActiveStream, Part | None]:
    """The next start part (``None`` when all are sent)."""
    k = state.sent + 1
    if k > state.start_parts:
        return state, None
    meta = {"stream": 1, "part": k, "parts": state.start_parts, "part_size": state.part_size,
            "count": state.n, "seed_commitment": state.commitment.hex(),
            "exchange_public": state.exchange_public.hex()}
    return state.but(sent=k), Part(START, meta, {"points": sent_part(scratch, state.n, state.part_size, k)})


def active_take(state: ActiveStream, part: Part, scratch: Scratch, *, peer: str, n_jobs: int | None = None,
                progress: psi.Progress | None = None) -> ActiveStream:
    """Active party: take the next response part (re-blinded start points, or the peer's own
    points, which are blinded again here). ``responses_in`` says whether every part is in."""
    k = state.received + 1
    what = f"the response from {peer} (part {k})"
    if k == 1:
        state = _first_response(state, part, peer, what)
    _check_turn(part, k, state.response_parts, what)
    if k <= state.start_parts:
        _take_echo(state, part, scratch, k, what)
    else:
        state = _take_peer_points(state, part, scratch, k, what, n_jobs, progress)
    return state.but(received=k)


def _take_echo(state: ActiveStream, part: Part, scratch: Scratch, k: int, what: str) -> None:
    """A response part re-blinding start part ``k``: checked against what was sent, then stored."""
    try:  # anything but the digest of that part is the answer to another message
        echoed = bytes.fromhex(str(part.meta.get("start_part_digest")))
    except ValueError:
        echoed = b""
    points = sent_part(scratch, state.n, state.part_size, k)
    if not hmac.compare_digest(echoed, part_digest(points, state.job, k)):
        raise InvalidArtifact(f"{what} answers another start message (stale or replayed)")
    double = psi.check_peer_points(part.arrays.get("double_blinded"), expected=_part_size(state.n, state.part_size, k),
                                   what=f"{what}: the re-blinded start points")
    scratch.write_at("own.dbl", double, (k - 1) * state.part_size)


def _take_peer_points(state: ActiveStream, part: Part, scratch: Scratch, k: int, what: str,
                      n_jobs: int | None, progress: psi.Progress | None) -> ActiveStream:
    """A part of the peer's own sorted points: checked, stored, and blinded with alpha."""
    assert state.scalar is not None
    peer_points = check_part(part.arrays.get("points"), state.peer_last, what=f"{what}: its own points")
    again = psi.double_blind(peer_points, state.scalar, what=f"{what}: its own points", n_jobs=n_jobs,
                             progress=progress)
    at = (k - 1 - state.start_parts) * state.part_size
    scratch.write_at("peer.pts", peer_points, at)
    scratch.write_at("peer.dbl", again, at)
    return state.but(peer_last=peer_points[-1].tobytes().hex()) if len(peer_points) else state


def _first_response(state: ActiveStream, part: Part, peer: str, what: str) -> ActiveStream:
    meta = part.meta
    seed = _meta_hex(meta, "seed", what)
    public = _meta_hex(meta, "exchange_public", what)
    if len(seed) != psi.SEED_BYTES:
        raise InvalidArtifact(f"{what}: the seed is not {psi.SEED_BYTES} bytes")
    peer_n = _meta_int(meta, "count", what)
    peer_parts = _meta_int(meta, "points_parts", what)
    if peer_parts != parts_of(peer_n, state.part_size):
        raise InvalidArtifact(f"{what}: {peer_parts} parts cannot carry {peer_n} points")
    assert state.exchange_secret is not None
    key = channel.channel_key(state.exchange_secret, public, psi.channel_context(state.job, state.party, peer),
                              what=what)
    return state.but(peer=peer, peer_n=peer_n, peer_seed=seed, channel_key=key,
                     response_parts=state.start_parts + peer_parts)


def active_conclude(state: ActiveStream, chunks: Chunks, scratch: Scratch,
                    budget: Budget) -> tuple[ActiveStream, StreamAlignment]:
    """Active party, all parts in: intersect, order, and keep the positions to send."""
    _same_ids(state.ids_digest, chunks)
    if scratch.size("own.dbl", _RECORD["p"]) != state.n:
        raise InvalidArtifact(f"the response from {state.peer}: expected {state.n} re-blinded points")
    own_pos, peer_pos = intersect(scratch, state.n, state.peer_n, budget)
    rows = _rows_at(scratch, own_pos, budget)
    scratch.write("positions", np.sort(peer_pos))
    m = len(peer_pos)
    del own_pos, peer_pos
    seeds = {state.party: state.seed, state.peer: state.peer_seed}
    assert state.channel_key is not None
    sealed = psi.seal_seeds(state.channel_key, seeds)
    done = state.but(m=m, finish_parts=parts_of(m, state.part_size), finish_sent=0, sealed_seeds=sealed,
                     response_digest=_points_digest_of(scratch, "peer.pts", state.job, budget),
                     scalar=None, exchange_secret=None, channel_key=None)
    key = psi.order_key(seeds, state.job)
    return done, ordered(chunks, rows, key, state.job, state.width, scratch, budget)


def active_next_finish(state: ActiveStream, scratch: Scratch) -> tuple[ActiveStream, Part | None]:
    """The next finish part (positions in the peer's list), ``None`` when all are sent."""
    k = state.finish_sent + 1
    if k > state.finish_parts:
        return state, None
    size = state.part_size
    positions = scratch.read("positions", "<i8", offset=(k - 1) * size, count=_part_size(state.m, size, k))
    meta = {"stream": 1, "part": k, "parts": state.finish_parts, "count": state.m,
            "response_digest": state.response_digest, "sealed_seeds": state.sealed_seeds.hex()}
    return state.but(finish_sent=k), Part(FINISH, meta, {"positions": positions.astype(np.int64)})


# --------------------------------------------------------------------------- the passive party


def passive_take_start(state: PassiveStream | None, part: Part, chunks: Chunks, *, job_id: str,
                       salt: bytes, party: str, active: str, scratch: Scratch, budget: Budget,
                       n_jobs: int | None = None, rng: Random | None = None, seed: bytes | None = None,
                       progress: psi.Progress | None = None) -> tuple[PassiveStream, Part]:
    """Passive party: answer one start part (the first also blinds and sorts this party's ids).

    Returns:
        The state and the response part re-blinding that start part.
    """
    k = 1 if state is None else state.start_taken + 1
    what = f"the start message (part {k})"
    if part.meta.get("stream") != 1:
        raise InvalidArtifact(f"{what} is not a streamed start message")
    if state is None:
        state = _passive_begin(part, chunks, job_id, salt, party, active, scratch, budget, n_jobs, rng, seed,
                               progress)
    _check_turn(part, k, state.start_parts, what)
    points = check_part(part.arrays.get("points"), state.start_last, what=f"{what}: the points of {active}")
    size = _part_size(state.start_n, state.start_size, k)
    if len(points) != size:
        raise InvalidArtifact(f"{what}: expected {size} points, got {len(points)}")
    assert state.scalar is not None
    double = psi.double_blind(points, state.scalar, what=f"{what}: the points of {active}", n_jobs=n_jobs,
                              progress=progress)
    meta: dict[str, Any] = {"stream": 1, "part": k, "parts": state.start_parts + state.points_parts,
                            "start_part_digest": part_digest(points, job_id, k).hex()}
    if k == 1:
        meta.update(count=state.n, points_parts=state.points_parts, seed=state.seed.hex(),
                    exchange_public=state.exchange_public.hex())
    last = k == state.start_parts  # beta is no longer needed after the last start part
    new = state.but(start_taken=k, start_last=points[-1].tobytes().hex(), scalar=None if last else state.scalar)
    return new, Part(RESPONSE, meta, {"double_blinded": double})


def _start_head(meta: Mapping[str, Any], what: str) -> tuple[int, int, bytes, bytes]:
    """The first start part's count, part size, seed commitment and exchange key, checked."""
    start_n = _meta_int(meta, "count", what)
    start_size = _meta_int(meta, "part_size", what, 256)
    if _meta_int(meta, "parts", what) != parts_of(start_n, start_size):
        raise InvalidArtifact(f"{what}: {meta.get('parts')} parts of {start_size} cannot carry {start_n} points")
    commitment = _meta_hex(meta, "seed_commitment", what)
    public = _meta_hex(meta, "exchange_public", what)
    if len(commitment) != 32:
        raise InvalidArtifact(f"{what}: the seed commitment is not 32 bytes")
    return start_n, start_size, commitment, public


def _passive_begin(part: Part, chunks: Chunks, job_id: str, salt: bytes, party: str, active: str,
                   scratch: Scratch, budget: Budget, n_jobs: int | None, rng: Random | None,
                   seed: bytes | None, progress: psi.Progress | None) -> PassiveStream:
    what = "the start message"
    start_n, start_size, commitment, public = _start_head(part.meta, what)
    beta = ecdh.new_scalar(rng)
    exchange_secret, exchange_public = channel.new_exchange(rng)
    key = channel.channel_key(exchange_secret, public, psi.channel_context(job_id, active, party), what=what)
    seed = psi.new_seed(rng) if seed is None else seed
    own = _own(chunks, psi.make_domain(job_id, salt), beta, scratch, budget, n_jobs, progress)
    return PassiveStream(job=job_id, party=party, active=active, n=own.n, width=own.width,
                         ids_digest=own.ids_digest, scalar=beta, seed=seed, exchange_public=exchange_public,
                         channel_key=key, commitment=commitment, start_n=start_n, start_size=start_size,
                         start_parts=parts_of(start_n, start_size), part_size=start_size,
                         points_parts=parts_of(own.n, start_size),
                         response_digest=sent_digest(scratch, job_id, budget).hex())


def passive_next_points(state: PassiveStream, scratch: Scratch) -> tuple[PassiveStream, Part | None]:
    """After the last start part: the next part of this party's own sorted points."""
    if state.start_taken < state.start_parts or state.points_sent >= state.points_parts:
        return state, None
    k = state.points_sent + 1
    meta = {"stream": 1, "part": state.start_parts + k, "parts": state.start_parts + state.points_parts}
    return state.but(points_sent=k), Part(RESPONSE, meta, {"points": sent_part(scratch, state.n, state.part_size, k)})


def passive_take_finish(state: PassiveStream, part: Part, chunks: Chunks, scratch: Scratch,
                        budget: Budget) -> tuple[PassiveStream, StreamAlignment | None]:
    """Passive party: take the next finish part; after the last, the alignment."""
    k = state.finish_taken + 1
    what = f"the finish message (part {k})"
    if k == 1:
        state = _check_finish_head(state, part, what)
    _check_turn(part, k, state.finish_parts, what)
    size = _part_size(state.m, state.part_size, k)
    checked = psi.checked_positions(np.asarray(part.arrays.get("positions")), state.n, what)
    if len(checked) != size or (len(checked) and checked[0] <= state.last_position):
        raise InvalidArtifact(f"{what}: positions must be {size} ascending numbers, above the part before")
    scratch.write_at("positions", checked, (k - 1) * state.part_size)
    state = state.but(finish_taken=k, last_position=int(checked[-1]) if len(checked) else state.last_position)
    if k < state.finish_parts:
        return state, None
    _same_ids(state.ids_digest, chunks)
    rows = _rows_at(scratch, scratch.read("positions", "<i8"), budget)
    key = psi.order_key({p: bytes.fromhex(s) for p, s in state.seeds.items()}, state.job)
    return state, ordered(chunks, rows, key, state.job, state.width, scratch, budget)


def _check_finish_head(state: PassiveStream, part: Part, what: str) -> PassiveStream:
    meta = part.meta
    if str(meta.get("response_digest")) != state.response_digest:
        raise InvalidArtifact(f"{what} answers another response (stale or replayed)")
    sealed = _meta_hex(meta, "sealed_seeds", what)
    assert state.channel_key is not None
    seeds = psi.open_seeds(state.channel_key, sealed, what=what)
    if state.active not in seeds or state.party not in seeds:
        raise InvalidArtifact(f"{what} lacks the seed of {state.active} or of {state.party}")
    psi.verify_seed(seeds[state.active], state.commitment, state.job)
    if not hmac.compare_digest(seeds[state.party], state.seed):
        raise InvalidArtifact(f"{what} carries another seed for {state.party} than it sent")
    m = _meta_int(meta, "count", what, 0, state.n)
    return state.but(m=m, finish_parts=parts_of(m, state.part_size), channel_key=None,
                     seeds={p: s.hex() for p, s in seeds.items()})
