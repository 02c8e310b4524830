"""Private set intersection (ECDH over X25519) with a jointly shuffled result: pure steps.

Parties: one *active* party A and passive parties P1..Pk, each holding a list of unique ids
(:func:`normalise_ids`). At the end every party holds the ids that **all** parties hold, in the
same order, an order that no single party chose. Three hand-offs, whatever k is::

    A  --start-->  every Pi        A's ids, hashed and blinded with alpha, shuffled;
                                   commitment to A's seed
    Pi --response--> A             A's points blinded again with beta_i (A's order kept);
                                   Pi's ids blinded with beta_i, shuffled; Pi's seed
    A  --finish-->  every Pi       positions, in Pi's own list, of the ids all parties hold;
                                   every party's seed (A's opens its commitment), sealed to Pi

Each party then orders the common ids by ``BLAKE2b-256(key=order key, id)`` where the order key hashes
the job id and every party's seed (:func:`order_key`): A committed to its seed before seeing the
others, and each Pi chose its seed without seeing A's, so no single party picks the order, and a
row's position says nothing about where the id sat in anyone's file.

A's seed never travels in the clear: the start and response messages carry ephemeral X25519
public keys, and the finish message seals the seeds to each Pi under the key they agree
(:mod:`vfl_cli.crypto.channel`). So the order key, and the digest key derived from it
(:func:`digest_key`), are known to the aligned parties only. The alignment's fingerprint is a
MAC under that key (:func:`alignment_fingerprint`), never a plain hash of ids: someone who holds
the artifacts and the fingerprint (a courier, a reader of a report) cannot confirm a guessed
intersection with it.

Threat model: semi-honest parties (they follow the steps, then try to learn more from what they
saw), no collusion, no trusted third party. Artifacts are signed and bound to the job by the
artifact layer; these steps also refuse a message for another job, a response to another start,
a finish for another response, seeds that do not open the commitment, wrong point counts,
non-canonical, small-order or repeated points. Hardness assumption: decisional Diffie-Hellman in
the prime-order subgroup of Curve25519, with the id hash modelled as a random oracle
(:func:`vfl_cli.crypto.ecdh.hash_to_points` maps onto the curve itself, never its twist).

Who holds what:

* A keeps alpha, its shuffle and its seed (:class:`ActiveState`); alpha never leaves A.
* Pi uses beta_i only inside :func:`respond` and forgets it; it keeps its shuffle and its seed
  (:class:`PassiveState`).

What each message reveals (beyond what is listed, the points are pseudorandom under DDH):

* start (A to every Pi): the number of A's ids. Nothing about which ids.
* response (Pi to A): the number of Pi's ids. From it A computes, and so learns, the ids it shares
  with Pi (the pairwise intersection, which can be larger than the final one when k > 1).
* finish (A to Pi): the ids all parties hold and their number. Pi learns nothing about A's other
  ids, nor which of its ids A holds but another passive party does not. Someone carrying it
  learns the number only (the seeds are sealed to Pi).
* Nobody learns any id outside what is listed; nobody learns anyone's original row order.

See docs/protocols/psi.md for the full description.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from random import Random

import numpy as np

from vfl_cli.crypto import channel, ecdh
from vfl_cli.errors import CryptoError, DataError, InvalidArtifact
from vfl_cli.protocol.base import Progress  # the one progress type: (description, total) -> advance(n)

__all__ = [
    "PROTOCOL",
    "SEED_BYTES",
    "ActiveState",
    "Alignment",
    "BlindedSet",
    "FinishMessage",
    "IdScan",
    "Ids",
    "PassiveState",
    "Progress",
    "ResponseMessage",
    "StartMessage",
    "alignment_fingerprint",
    "blind_ids",
    "check_peer_points",
    "commit_seed",
    "conclude",
    "decode_ids",
    "digest_key",
    "double_blind",
    "encode_ids",
    "final_order",
    "finish",
    "ids_digest",
    "intersect",
    "make_domain",
    "new_seed",
    "normalise_ids",
    "open_seeds",
    "order_key",
    "points_digest",
    "respond",
    "seal_seeds",
    "start",
    "verify_seed",
]

PROTOCOL = "vfl/psi-ecdh-x25519/v1"
SEED_BYTES = 32

# A party's ids, or a function returning them, called while the workers blind a peer's points (so
# that reading a large file costs no wall time).
Ids = Sequence[str] | Callable[[], Sequence[str]]
_SHOWN = 5  # how many offending ids or rows an error message lists
_ORDER_PERSON = b"vfl-psi-order"  # BLAKE2b personalisation of the joint order
_DIGEST_PERSON = b"vfl-psi-digest"  # of the digest key, derived from the order key
FINGERPRINT_PERSON = b"vfl-psi-fp"  # of the alignment fingerprint (a MAC of the ordered ids)


# --------------------------------------------------------------------------- messages and state


@dataclass(frozen=True)
class BlindedSet:
    """A party's ids, hashed, blinded and shuffled.

    Attributes:
        points: ``(n, 32)`` uint8, the blinded ids in the order they are sent.
        order: ``(n,)`` int64, private: ``order[j]`` is the row (in the party's id list) of the
            id whose point is ``points[j]``. Never sent.
    """

    points: np.ndarray
    order: np.ndarray


@dataclass(frozen=True)
class StartMessage:
    """Hand-off 1, A to every passive party (the same message for all)."""

    job_id: str
    points: np.ndarray  # A's ids blinded with alpha, shuffled
    seed_commitment: bytes  # commit_seed(A's seed, job_id)
    exchange_public: bytes  # A's ephemeral X25519 public key (vfl_cli.crypto.channel)


@dataclass(frozen=True)
class ResponseMessage:
    """Hand-off 2, passive party Pi to A."""

    job_id: str
    start_digest: bytes  # points_digest of the start points answered
    double_blinded: np.ndarray  # A's points blinded again with beta_i, in A's order
    points: np.ndarray  # Pi's ids blinded with beta_i, shuffled
    seed: bytes  # Pi's seed, in the clear (A is already committed to its own)
    exchange_public: bytes  # Pi's ephemeral X25519 public key


@dataclass(frozen=True)
class FinishMessage:
    """Hand-off 3, A to passive party Pi."""

    job_id: str
    response_digest: bytes  # points_digest of Pi's points this answers
    positions: np.ndarray  # int64, ascending: rows of Pi's sent points that all parties hold
    sealed_seeds: bytes  # seal_seeds(channel key, every party's seed by name, A's included)


@dataclass(frozen=True)
class ActiveState:
    """What A keeps between :func:`start` and :func:`finish`. Secret: holds alpha."""

    job_id: str
    party: str
    scalar: bytes  # alpha
    seed: bytes
    exchange_secret: bytes  # A's ephemeral X25519 secret, for the channel to each Pi
    order: np.ndarray  # the private shuffle of A's sent points
    start_digest: bytes
    ids_digest: bytes  # refuses finishing with another id list


@dataclass(frozen=True)
class PassiveState:
    """What Pi keeps between :func:`respond` and :func:`conclude` (no scalar: beta is gone)."""

    job_id: str
    party: str
    active: str
    seed: bytes
    seed_commitment: bytes  # A's, from the start message
    order: np.ndarray  # the private shuffle of Pi's sent points
    response_digest: bytes
    ids_digest: bytes
    channel_key: bytes  # agreed with A in respond; opens the finish message's seeds


@dataclass(frozen=True)
class Alignment:
    """The result, identical in ``ids`` for every party.

    Attributes:
        ids: the ids all parties hold, in the joint shuffled order.
        rows: ``(m,)`` int64, this party's row (in its normalised id list, i.e. its file order)
            for each of ``ids``; take the party's data rows in this order.
        fingerprint: :func:`alignment_fingerprint` of the ordered ids, a MAC under the digest
            key: equal for all parties, so it can be compared (or carried in later artifacts) to
            prove everyone uses one alignment, and useless to anyone without the key.
        digest_key: :func:`digest_key` of the order key. Secret to the aligned parties.
    """

    ids: list[str]
    rows: np.ndarray
    fingerprint: bytes
    digest_key: bytes


# --------------------------------------------------------------------------- inputs


def normalise_ids(values: Iterable[object], *, column: str = "id", first_row: int = 1) -> list[str]:
    """Turn an id column into the list of ids a party aligns, refusing anything ambiguous.

    Rules: an id is the cell's text with leading and trailing whitespace removed (Python's
    ``str.strip()``: Unicode White_Space, including tabs, newlines and no-break spaces). Nothing
    else is changed: ids are case-sensitive, inner whitespace is kept, and no Unicode normalisation
    is applied (a composed and a decomposed "é" are different ids). ``bytes`` cells must be UTF-8.
    Refused, with the first few offenders listed: a column with no rows, empty ids (including
    missing cells), text that is not valid Unicode, ids containing a NUL character, non-text cells
    (read the column as strings so that "007" stays "007"), and repeated ids (after trimming).

    Args:
        values: the cells of the id column, in file order.
        column: the column's name, for error messages.
        first_row: the file row of the first value, for error messages (a chunk of a file).

    Returns:
        The ids in file order; position i is data row i + 1 (the header is not counted).

    Raises:
        DataError: one of the rules is broken.
    """
    values = values if isinstance(values, list) else list(values)
    fast = _normalise_text(values)
    if fast is not None:
        _refuse_repeats(fast, column, first_row)
        return fast
    return _normalise_cells(values, column, first_row)


def _normalise_text(values: list[object]) -> list[str] | None:
    """The common case in one pass of C loops: every cell non-empty, valid text; else ``None``."""
    if not values or not all(type(v) is str for v in values):
        return None
    ids: list[str] = [v.strip() for v in values]  # type: ignore[attr-defined]
    if not all(ids):
        return None
    joined = "".join(ids)
    if "\x00" in joined:
        return None
    try:
        joined.encode("utf-8")  # a lone surrogate anywhere fails here
    except UnicodeEncodeError:
        return None
    return ids


def _cell_text(value: object, column: str, row: int) -> str | None:
    """One id cell as stripped text ("" for an empty cell), or None if it is not valid UTF-8."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        value = ""
    elif not isinstance(value, str):
        raise DataError(
            f"id column {column!r}: row {row} holds a {type(value).__name__}, not text; "
            "read the column as strings so that ids such as '007' keep their form"
        )
    assert isinstance(value, str)
    text = value.strip()
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return text


def _classify_cells(values: list[object], column: str, first_row: int = 1
                    ) -> tuple[list[str], list[int], list[int], list[int]]:
    """The ids of the good cells, and the rows of the cells not valid UTF-8, empty, or with a NUL."""
    ids: list[str] = []
    empty: list[int] = []
    invalid: list[int] = []
    nul: list[int] = []
    for row, value in enumerate(values, start=first_row):
        text = _cell_text(value, column, row)
        if text is None:
            invalid.append(row)
        elif not text:
            empty.append(row)
        elif "\x00" in text:
            nul.append(row)
        else:
            ids.append(text)
    return ids, invalid, empty, nul


def _normalise_cells(values: list[object], column: str, first_row: int = 1) -> list[str]:
    """Cell by cell, naming the rows that break a rule (see :func:`normalise_ids`)."""
    ids, invalid, empty, nul = _classify_cells(values, column, first_row)
    _refuse_bad_cells(column, (len(invalid), invalid), (len(empty), empty), (len(nul), nul), len(ids))
    _refuse_repeats(ids, column, first_row)
    return ids


class IdScan:
    """:func:`normalise_ids` over a file read a chunk at a time, in memory bounded by the chunk:
    the same rules and the same errors, ids repeated in different chunks included.

    Held between chunks: 8 bytes per id (a 64-bit SipHash of each id, pandas' ``hash_array``,
    sorted in place at the end) and the first few offending rows. When two hashes meet, the ids are
    read again in :meth:`finish` and those with a meeting hash held, to tell a repeat from a hash
    collision and to name the repeats.

    Example::

        scan = IdScan("id")
        for first, cells in chunks():           # first: the data row number of cells[0]
            scan.add(cells, first)
        scan.finish(chunks)                      # raises what normalise_ids(all cells) raises
    """

    def __init__(self, column: str = "id") -> None:
        self.column = column
        self.rows = 0
        self._bad: list[tuple[int, list[int]]] = [(0, []), (0, []), (0, [])]  # invalid, empty, NUL
        self._hashes: list[np.ndarray] = []

    def add(self, cells: list[object], first_row: int) -> None:
        """Check one chunk of cells, data rows ``first_row``, ``first_row + 1``, ..."""
        ids = _normalise_text(cells)
        if ids is None:
            ids, *bad = _classify_cells(cells, self.column, first_row)
            self._bad = [(n + len(new), rows + new[:_SHOWN + 1 - len(rows)])
                         for (n, rows), new in zip(self._bad, bad, strict=True)]
        self.rows += len(cells)
        if ids and not any(n for n, _ in self._bad):  # after a bad cell only the bad cells are named
            self._hashes.append(_hash_ids(ids))

    def finish(self, again: Callable[[], Iterable[tuple[int, list[object]]]]) -> int:
        """Raise what :func:`normalise_ids` raises for the whole column, else return its length.

        ``again`` gives the same chunks again (read only when two hashes meet).
        """
        invalid, empty, nul = self._bad
        _refuse_bad_cells(self.column, invalid, empty, nul, self.rows - invalid[0] - empty[0] - nul[0])
        hashes = np.concatenate(self._hashes) if self._hashes else np.empty(0, np.uint64)
        self._hashes = []
        hashes.sort()  # in place: 8 bytes per id in all
        same = hashes[1:] == hashes[:-1]
        if same.any():
            meet = np.unique(hashes[1:][same])
            del hashes, same
            self._name_repeats(meet, again)
        return self.rows

    def _name_repeats(self, meet: np.ndarray, again: Callable[[], Iterable[tuple[int, list[object]]]]) -> None:
        """Read the ids again; those whose hash is in ``meet`` are held, with their rows."""
        seen: dict[str, tuple[int, list[int]]] = {}  # id -> (rows holding it, the first four)
        for first, cells in again():
            ids = _normalise_text(cells) or _classify_cells(cells, self.column, first)[0]  # no bad cell here
            for i in np.flatnonzero(np.isin(_hash_ids(ids), meet)).tolist():
                n, kept = seen.get(ids[i], (0, []))
                seen[ids[i]] = (n + 1, kept if len(kept) > 3 else [*kept, first + i])
        repeated = [(v, kept) for v, (n, kept) in seen.items() if n > 1]  # in the order they first appear
        if repeated:
            raise _repeats_error(self.column, repeated, len(repeated))


def _hash_ids(ids: list[str]) -> np.ndarray:
    import pandas as pd

    return np.asarray(pd.util.hash_array(np.asarray(ids, dtype=object), categorize=False), dtype=np.uint64)


_Rows = tuple[int, Sequence[int]]  # how many rows, and the first of them (at least _SHOWN + 1 of them)


def _refuse_bad_cells(column: str, invalid: _Rows, empty: _Rows, nul: _Rows, good: int) -> None:
    if invalid[0]:
        raise DataError(
            f"id column {column!r}: {invalid[0]} id(s) are not valid UTF-8 text (rows "
            f"{_listed(invalid[1])}); save the file as UTF-8"
        )
    if empty[0]:
        raise DataError(
            f"id column {column!r}: {empty[0]} row(s) have an empty id (rows "
            f"{_listed(empty[1])}); every row needs an id"
        )
    if nul[0]:
        raise DataError(
            f"id column {column!r}: {nul[0]} id(s) contain a NUL character (rows "
            f"{_listed(nul[1])}); the file is damaged or not a text CSV"
        )
    if not good:
        raise DataError(f"id column {column!r} has no rows: there is nothing to align")


def _refuse_repeats(ids: Sequence[str], column: str, first_row: int = 1) -> None:
    if len(set(ids)) == len(ids):
        return
    rows: dict[str, list[int]] = {}
    for row, value in enumerate(ids, start=first_row):
        rows.setdefault(value, []).append(row)
    repeated = [(v, r) for v, r in rows.items() if len(r) > 1]
    raise _repeats_error(column, repeated, len(repeated))


def _repeats_error(column: str, first: Sequence[tuple[str, Sequence[int]]], count: int) -> DataError:
    """``count`` ids repeated; ``first``: the first few (in the order they first appear) with their
    rows (at least the first four)."""
    shown = "; ".join(f"{v!r} (rows {_listed(r, 3)})" for v, r in first[:_SHOWN])
    more = f"; and {count - _SHOWN} more" if count > _SHOWN else ""
    return DataError(
        f"id column {column!r}: {count} id(s) appear more than once: {shown}{more}. "
        "Ids must be unique (rows sharing an id cannot be aligned one to one): remove the "
        "duplicates or choose a column with unique ids"
    )


def ids_digest(ids: Sequence[str]) -> bytes:
    """SHA-256 of a normalised id list, to check that a later step sees the same list."""
    return hashlib.sha256(b"vfl/psi/v1/ids\x00" + _encode_list(ids)).digest()


def encode_ids(ids: Sequence[str]) -> bytes:
    """An id list as bytes (a JSON array, ASCII): :func:`decode_ids` gives it back exactly."""
    return _encode_list(ids)


def decode_ids(data: bytes) -> list[str]:
    """The id list :func:`encode_ids` encoded."""
    ids = json.loads(data)
    if not isinstance(ids, list):
        raise DataError("the kept id list is damaged; run the alignment again from the start")
    return ids


def _encode_list(values: Sequence[str]) -> bytes:
    # A JSON array with every non-ASCII character escaped: unambiguous, and fast in C.
    return json.dumps(list(values), ensure_ascii=True, separators=(",", ":")).encode("ascii")


# --------------------------------------------------------------------------- building blocks


def make_domain(job_id: str, salt: bytes) -> bytes:
    """The hashing domain of one job: ids hashed in different domains never match.

    Args:
        job_id: the job's id, as all parties know it.
        salt: random bytes agreed in the job (so that a new job over the same data gives
            unrelated points, even with the same job name).
    """
    job = job_id.encode("utf-8")
    return (
        b"vfl/psi/v1/domain"
        + len(job).to_bytes(4, "big")
        + job
        + len(salt).to_bytes(4, "big")
        + salt
    )


def new_seed(rng: Random | None = None) -> bytes:
    """A party's fresh 32-byte contribution to the joint order (OS CSPRNG unless ``rng``)."""
    return rng.randbytes(SEED_BYTES) if rng is not None else secrets.token_bytes(SEED_BYTES)


def commit_seed(seed: bytes, job_id: str) -> bytes:
    """SHA-256 commitment to a seed, bound to the job (the seed itself is 32 random bytes)."""
    job = job_id.encode("utf-8")
    return hashlib.sha256(
        b"vfl/psi/v1/seed-commitment" + len(job).to_bytes(4, "big") + job + seed
    ).digest()


def verify_seed(seed: bytes, commitment: bytes, job_id: str) -> None:
    """Check that ``seed`` opens ``commitment``.

    Raises:
        InvalidArtifact: it does not (the active party changed its seed, or another job's).
    """
    if len(seed) != SEED_BYTES or not hmac.compare_digest(commit_seed(seed, job_id), commitment):
        raise InvalidArtifact(
            "the active party's seed does not match the commitment it sent in the start message "
            "(another job's finish message, or the seed was changed)"
        )


def order_key(seeds: Mapping[str, bytes], job_id: str) -> bytes:
    """The key that orders the result: SHA-256 over the job id and every party's seed.

    Args:
        seeds: party name to seed, for every party of the job (sorted by name here, so the
            mapping's order does not matter).
        job_id: the job's id.
    """
    h = hashlib.sha256(b"vfl/psi/v1/order-key")
    for value in (job_id, *sorted(seeds)):
        data = value.encode("utf-8")
        h.update(len(data).to_bytes(4, "big") + data)
    for name in sorted(seeds):
        seed = seeds[name]
        if len(seed) != SEED_BYTES:
            raise InvalidArtifact(f"the seed of {name} is {len(seed)} bytes, expected {SEED_BYTES}")
        h.update(seed)
    return h.digest()


def final_order(ids: Iterable[str], key: bytes) -> list[str]:
    """Order ids by keyed BLAKE2b: a shuffle fixed by the key, not by any file.

    The sort key of an id is ``BLAKE2b-256(key=key, person="vfl-psi-order", UTF-8(id))``, compared
    as bytes. BLAKE2b's keyed mode is a PRF, like HMAC-SHA256, at a third of the cost per id.

    Args:
        ids: the ids to order (any order in, the same order out for equal sets).
        key: from :func:`order_key`.
    """
    values = list(ids)
    return [values[i] for i in _order_permutation(values, key).tolist()]


def _order_permutation(values: Sequence[str], key: bytes) -> np.ndarray:
    macs = order_macs(values, key)
    return byte_order(np.frombuffer(macs, dtype=">u8").reshape(len(values), 4))


def order_macs(values: Sequence[str], key: bytes) -> bytes:
    """The 32-byte sort keys of :func:`final_order`, concatenated."""
    keyed = hashlib.blake2b(digest_size=32, key=key, person=_ORDER_PERSON)

    def mac(value: str) -> bytes:
        state = keyed.copy()  # cheaper than a keyed constructor per id
        state.update(value.encode("utf-8"))
        return state.digest()

    return b"".join([mac(value) for value in values])


def digest_key(order: bytes) -> bytes:
    """The key of the alignment's digests: ``BLAKE2b-256(key=order key, person="vfl-psi-digest")``
    of the empty string. Only the aligned parties hold the order key (A's seed travels sealed)."""
    return hashlib.blake2b(b"", digest_size=32, key=order, person=_DIGEST_PERSON).digest()


def alignment_fingerprint(ordered: Sequence[str], key: bytes, job_id: str) -> bytes:
    """The alignment's fingerprint: a MAC of the job id and the ordered ids.

    ``BLAKE2b-256(key=digest key, person="vfl-psi-fp", JSON([job id, *ids]))``, the JSON array
    ASCII-only with no spaces. Never a plain hash: with a plain hash, anyone holding it could
    confirm a guessed intersection.

    Args:
        ordered: the ids in the joint order.
        key: the digest key (:func:`digest_key` of the order key).
        job_id: the alignment job's id.
    """
    return hashlib.blake2b(
        _encode_list([job_id, *ordered]), digest_size=32, key=key, person=FINGERPRINT_PERSON
    ).digest()


def seal_seeds(key: bytes, seeds: Mapping[str, bytes], rng: Random | None = None) -> bytes:
    """Every party's seed, sealed under the channel key A and one Pi agreed."""
    plain = json.dumps({k: v.hex() for k, v in seeds.items()}, sort_keys=True).encode("ascii")
    return channel.seal(key, plain, rng)


def open_seeds(key: bytes, sealed: bytes, *, what: str) -> dict[str, bytes]:
    """The seeds :func:`seal_seeds` sealed, checked to be names mapped to 32-byte seeds.

    Raises:
        InvalidArtifact: the box does not open under ``key`` or holds anything else.
    """
    plain = channel.open_sealed(key, sealed, what=f"{what}: the sealed seeds")
    try:
        raw = json.loads(plain)
        seeds = {str(k): bytes.fromhex(v) for k, v in raw.items() if isinstance(v, str)}
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise InvalidArtifact(f"{what}: the sealed seeds are not a map of hex seeds") from exc
    if len(seeds) != len(raw):
        raise InvalidArtifact(f"{what}: the sealed seeds are not a map of hex seeds")
    return seeds


def channel_context(job_id: str, active: str, passive: str) -> bytes:
    return b"vfl/psi/v1/channel\x00" + _encode_list([job_id, active, passive])


def byte_order(words: np.ndarray) -> np.ndarray:
    """The sorting permutation of 32-byte strings given as four big-endian 64-bit words each."""
    # The first word alone decides unless two strings share it (probability about n^2 / 2^65
    # for MACs); then all four words are compared.
    first = words[:, 0].astype(np.uint64)
    order = np.argsort(first, kind="stable")
    ranked = first[order]
    if np.any(ranked[1:] == ranked[:-1]):
        order = np.lexsort((words[:, 3], words[:, 2], words[:, 1], words[:, 0]))
    return order.astype(np.int64)


def points_digest(points: np.ndarray, job_id: str) -> bytes:
    """SHA-256 binding a list of points to the job; later messages echo it."""
    job = job_id.encode("utf-8")
    array = np.ascontiguousarray(points, dtype=np.uint8)
    return hashlib.sha256(
        b"vfl/psi/v1/points" + len(job).to_bytes(4, "big") + job + array.tobytes()
    ).digest()


def blind_ids(
    ids: Sequence[str],
    domain: bytes,
    scalar: bytes,
    *,
    rng: Random | None = None,
    n_jobs: int | None = None,
    progress: Progress | None = None,
) -> BlindedSet:
    """Hash ids to curve points, blind them with ``scalar`` and shuffle them.

    The shuffle is uniformly random (OS CSPRNG unless ``rng``) so that a point's position in the
    sent list says nothing about the row the id came from.

    Args:
        ids: normalised ids (:func:`normalise_ids`).
        domain: from :func:`make_domain`.
        scalar: this party's secret scalar (:func:`vfl_cli.crypto.ecdh.new_scalar`).
        rng: randomness for tests.
        n_jobs: worker count; ``None`` uses every core.
        progress: progress reporting (hashing, then blinding).
    """
    with ecdh.Workers(n_jobs) as workers:
        pending = _submit_own(workers, ids, domain, scalar, progress)
        order = _shuffle(len(ids), rng)
        return BlindedSet(points=pending()[order], order=order)


def double_blind(
    points: np.ndarray,
    scalar: bytes,
    *,
    expected: int | None = None,
    what: str = "the peer's points",
    n_jobs: int | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Check a peer's blinded points, then blind them again with ``scalar``, keeping their order.

    Args:
        points: the peer's points, as received.
        scalar: this party's secret scalar.
        expected: the number of points the protocol says must arrive, if known.
        what: how to name the points in error messages.
        n_jobs: worker count; ``None`` uses every core.
        progress: progress reporting.

    Returns:
        ``(n, 32)`` uint8, the points blinded again, in the order received.

    Raises:
        InvalidArtifact: wrong count, non-canonical, small-order or repeated points.
    """
    checked = check_peer_points(points, expected=expected, what=what)
    with ecdh.Workers(n_jobs) as workers:
        return submit_peer(workers, checked, scalar, what, progress)()


def check_peer_points(points: object, *, expected: int | None = None, what: str) -> np.ndarray:
    """:func:`vfl_cli.crypto.ecdh.check_points`, refusals as :class:`InvalidArtifact`."""
    try:
        return ecdh.check_points(points, expected=expected, what=what)
    except CryptoError as exc:
        raise InvalidArtifact(f"{what}: {_strip_what(exc, what)}") from exc


def submit_peer(
    workers: ecdh.Workers, points: np.ndarray, scalar: bytes, what: str, progress: Progress | None
) -> Callable[[], np.ndarray]:
    """Queue checked peer points to be blinded again; the result refuses small-order points."""
    pending = workers.submit(
        ecdh.Work(points, scalar=scalar, progress=progress_bar(progress, f"blinding again {what}", len(points)))
    )

    def result() -> np.ndarray:
        try:
            return pending()
        except ecdh.SmallOrderPoints as exc:
            raise InvalidArtifact(f"{what}: {exc}") from exc

    return result


def _submit_own(
    workers: ecdh.Workers, ids: Sequence[str], domain: bytes, scalar: bytes, progress: Progress | None
) -> Callable[[], np.ndarray]:
    """Queue this party's ids to be hashed and blinded (in file order)."""
    advance = progress_bar(progress, "hashing and blinding ids", len(ids))
    return workers.submit(ecdh.Work(ids, domain=domain, scalar=scalar, progress=advance))


def intersect(own_double: np.ndarray, peer_double: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Match two lists of double-blinded points.

    Args:
        own_double: ``(n, 32)`` points, each list free of repeats (checked on receipt).
        peer_double: ``(m, 32)`` points.

    Returns:
        ``(own_positions, peer_positions)``: int64 arrays, ``own_double[own_positions[i]] ==
        peer_double[peer_positions[i]]``, ascending in ``own_positions``.
    """
    return _PointIndex(own_double).match(peer_double)


class _PointIndex:
    """One list of points sorted by their first 8 bytes, to look another list up in it (the
    sorting can run while the other list is still being computed)."""

    def __init__(self, points: np.ndarray) -> None:
        self.points = np.ascontiguousarray(points, dtype=np.uint8)
        keys = _prefix(self.points)
        self.order = np.argsort(keys, kind="stable")
        self.ranked = keys[self.order]
        # The 64-bit prefixes are unique (they collide with probability about n^2 / 2^65; then
        # the exact path runs), so each lookup finds the only candidate, confirmed on 32 bytes.
        self.unique = not bool(np.any(self.ranked[1:] == self.ranked[:-1]))

    def match(self, peer_double: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        own = self.points
        peer = np.ascontiguousarray(peer_double, dtype=np.uint8)
        if not len(own) or not len(peer):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        if self.unique:
            keys = _prefix(peer)
            at = np.searchsorted(self.ranked, keys)
            at[at == len(self.ranked)] = 0
            found = self.ranked[at] == keys
            ib = np.flatnonzero(found)
            ia = self.order[at[found]]
            same = np.all(own[ia] == peer[ib], axis=1)
            ia, ib = ia[same], ib[same]
        else:
            rows_own = own.view(f"V{ecdh.POINT_BYTES}").ravel()
            rows_peer = peer.view(f"V{ecdh.POINT_BYTES}").ravel()
            _, ia, ib = np.intersect1d(rows_own, rows_peer, assume_unique=True, return_indices=True)
        by_own = np.argsort(ia, kind="stable")
        return ia[by_own].astype(np.int64), ib[by_own].astype(np.int64)


# --------------------------------------------------------------------------- the steps


def start(
    ids: Sequence[str],
    *,
    job_id: str,
    salt: bytes,
    party: str,
    rng: Random | None = None,
    n_jobs: int | None = None,
    progress: Progress | None = None,
) -> tuple[ActiveState, StartMessage]:
    """Active party, hand-off 1: blind and shuffle A's ids, commit to A's seed.

    Args:
        ids: A's normalised ids.
        job_id: the job's id.
        salt: the salt agreed in the job (:func:`make_domain`).
        party: A's name.
        rng: randomness for tests (scalar, seed, shuffle); default the OS CSPRNG.
        n_jobs: worker count; ``None`` uses every core.
        progress: progress reporting for the long phases (hashing, blinding).

    Returns:
        A's private state, and the message for every passive party.
    """
    scalar = ecdh.new_scalar(rng)
    seed = new_seed(rng)
    exchange_secret, exchange_public = channel.new_exchange(rng)
    domain = make_domain(job_id, salt)
    with ecdh.Workers(n_jobs) as workers:
        pending = _submit_own(workers, ids, domain, scalar, progress)
        # While the workers compute: the shuffle and the digest of the id list.
        order = _shuffle(len(ids), rng)
        own_digest = ids_digest(ids)
        blinded = BlindedSet(points=pending()[order], order=order)
    digest = points_digest(blinded.points, job_id)
    state = ActiveState(
        job_id=job_id,
        party=party,
        scalar=scalar,
        seed=seed,
        exchange_secret=exchange_secret,
        order=blinded.order,
        start_digest=digest,
        ids_digest=own_digest,
    )
    message = StartMessage(
        job_id=job_id,
        points=blinded.points,
        seed_commitment=commit_seed(seed, job_id),
        exchange_public=exchange_public,
    )
    return state, message


def respond(
    ids: Ids,
    message: StartMessage,
    *,
    job_id: str,
    salt: bytes,
    party: str,
    active: str,
    rng: Random | None = None,
    n_jobs: int | None = None,
    progress: Progress | None = None,
) -> tuple[PassiveState, ResponseMessage]:
    """Passive party, hand-off 2: blind A's points again, blind and shuffle Pi's own ids.

    Args:
        ids: Pi's normalised ids, or a function returning them (called while A's points are
            blinded).
        message: A's start message.
        job_id: the job's id, as Pi knows it.
        salt: the salt agreed in the job.
        party: Pi's name.
        active: A's name.
        rng: randomness for tests; default the OS CSPRNG.
        n_jobs: worker count; ``None`` uses every core.
        progress: progress reporting for the long phases (blinding, hashing).

    Raises:
        InvalidArtifact: the start message is for another job or its points are invalid.
    """
    _check_start(message, job_id)
    beta = ecdh.new_scalar(rng)
    exchange_secret, exchange_public = channel.new_exchange(rng)
    key = channel.channel_key(
        exchange_secret, message.exchange_public, channel_context(job_id, active, party),
        what="the start message",
    )
    what = f"the points of {active} (start message)"
    checked = check_peer_points(message.points, what=what)
    with ecdh.Workers(n_jobs) as workers:
        pending_double = submit_peer(workers, checked, beta, what, progress)
        # While A's points are blinded: Pi's own ids (read now if they are to be read), queued
        # behind them on the same workers, then the digests.
        ids = _resolve(ids)
        order = _shuffle(len(ids), rng)
        pending_own = _submit_own(workers, ids, make_domain(job_id, salt), beta, progress)
        own_digest = ids_digest(ids)
        start_digest = points_digest(message.points, job_id)
        double = pending_double()
        own = BlindedSet(points=pending_own()[order], order=order)
    seed = new_seed(rng)
    state = PassiveState(
        job_id=job_id, party=party, active=active, seed=seed, seed_commitment=message.seed_commitment,
        order=own.order, response_digest=points_digest(own.points, job_id), ids_digest=own_digest,
        channel_key=key,
    )
    response = ResponseMessage(
        job_id=job_id, start_digest=start_digest, double_blinded=double, points=own.points, seed=seed,
        exchange_public=exchange_public,
    )
    return state, response


def _check_start(message: StartMessage, job_id: str) -> None:
    """Refuse a start message for another job, without a 32-byte seed commitment, or empty."""
    check_same_job(message.job_id, job_id, "the start message")
    if not isinstance(message.seed_commitment, bytes) or len(message.seed_commitment) != 32:
        raise InvalidArtifact("the start message: the seed commitment is not 32 bytes")
    if len(message.points) == 0:
        raise InvalidArtifact("the start message holds no points (the active party has no ids)")


def finish(
    state: ActiveState,
    ids: Ids,
    responses: Mapping[str, ResponseMessage],
    *,
    n_jobs: int | None = None,
    progress: Progress | None = None,
) -> tuple[Alignment, dict[str, FinishMessage]]:
    """Active party, hand-off 3: intersect with every passive party, keep what all hold.

    Args:
        state: from :func:`start`.
        ids: A's normalised ids, the same list as at start, or a function returning them (called
            while the passive parties' points are blinded).
        responses: passive party name to its response (one per passive party of the job).
        n_jobs: worker count; ``None`` uses every core.
        progress: progress reporting for the long phases (blinding each party's points).

    Returns:
        A's alignment, and the finish message for each passive party.

    Raises:
        DataError: ``ids`` is not the list A started with.
        InvalidArtifact: a response is for another job or start, or holds invalid points.
    """
    if not responses:
        raise InvalidArtifact("no responses: alignment needs at least one passive party")
    n = len(state.order)
    names = sorted(responses)
    peer_points, channels = _check_responses(state, responses)
    with ecdh.Workers(n_jobs) as workers:
        # Every passive party's points on one pool; meanwhile the checks that need no result.
        pending = [submit_peer(workers, p, state.scalar, w, progress) for p, w in peer_points]
        ids = _resolve(ids)
        check_same_ids(ids, state.ids_digest)
        own_doubles = [_own_double_index(responses[name], name, n) for name in names]
        digests = {name: points_digest(responses[name].points, state.job_id) for name in names}
        peer_doubles = [result() for result in pending]
    matches = {
        name: own_double.match(peer_double)
        for name, own_double, peer_double in zip(names, own_doubles, peer_doubles, strict=True)
    }
    common = _held_by_all(matches.values(), n)
    seeds = {state.party: state.seed, **{name: responses[name].seed for name in responses}}
    key = order_key(seeds, state.job_id)
    messages = {
        name: FinishMessage(
            job_id=state.job_id,
            response_digest=digests[name],
            positions=_peer_positions(own_pos, peer_pos, common, n),
            # Sealed to Pi: A's seed in the clear would give anyone carrying the files the order
            # key, and with it the order and fingerprint of any guessed intersection.
            sealed_seeds=seal_seeds(channels[name], seeds),
        )
        for name, (own_pos, peer_pos) in matches.items()
    }
    rows = state.order[common]
    return _alignment(ids, rows, key, state.job_id), messages


def _own_double_index(response: ResponseMessage, name: str, n: int) -> _PointIndex:
    """A's ``n`` points as Pi blinded them again, checked and indexed for matching."""
    what = f"the response from {name}: the re-blinded start points"
    try:
        return _PointIndex(ecdh.check_points(response.double_blinded, expected=n, what=what))
    except CryptoError as exc:
        raise InvalidArtifact(str(exc)) from exc


def _held_by_all(matches: Iterable[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """The positions, in A's ``n`` points, that every passive party matched (ascending)."""
    held_by_all = np.ones(n, dtype=bool)
    for own_pos, _ in matches:
        mask = np.zeros(n, dtype=bool)
        mask[own_pos] = True
        held_by_all &= mask
    return np.flatnonzero(held_by_all)


def _peer_positions(own_pos: np.ndarray, peer_pos: np.ndarray, common: np.ndarray, n: int) -> np.ndarray:
    """The positions, in Pi's sent list, of the ids at A's ``common`` positions."""
    peer_of = np.full(n, -1, dtype=np.int64)
    peer_of[own_pos] = peer_pos
    # Ascending positions: their order carries nothing about A's list.
    return np.sort(peer_of[common])


def _check_responses(
    state: ActiveState, responses: Mapping[str, ResponseMessage]
) -> tuple[list[tuple[np.ndarray, str]], dict[str, bytes]]:
    """Check each response's job, echo, seed and points; agree a channel key with each party.

    Returns:
        The checked points with their description, by sorted party name, and the channel keys.
    """
    peer_points = []
    channels: dict[str, bytes] = {}
    for name in sorted(responses):
        response = responses[name]
        where = f"the response from {name}"
        check_same_job(response.job_id, state.job_id, where)
        if not hmac.compare_digest(response.start_digest, state.start_digest):
            raise InvalidArtifact(f"{where} answers another start message (stale or replayed)")
        if not isinstance(response.seed, bytes) or len(response.seed) != SEED_BYTES:
            raise InvalidArtifact(f"{where}: the seed is not {SEED_BYTES} bytes")
        if len(response.points) == 0:
            raise InvalidArtifact(f"{where} holds no points of its own (the party has no ids)")
        channels[name] = channel.channel_key(
            state.exchange_secret, response.exchange_public,
            channel_context(state.job_id, state.party, name), what=where,
        )
        what = f"{where}: its own points"
        peer_points.append((check_peer_points(response.points, what=what), what))
    return peer_points, channels


def conclude(state: PassiveState, ids: Sequence[str], message: FinishMessage) -> Alignment:
    """Passive party, after hand-off 3: turn positions into ids and order them jointly.

    Args:
        state: from :func:`respond`.
        ids: Pi's normalised ids, the same list as at respond.
        message: A's finish message for Pi.

    Raises:
        DataError: ``ids`` is not the list Pi responded with.
        InvalidArtifact: the message is for another job or response, the positions are out of
            range or repeated, or the seeds do not match (A's commitment, Pi's own seed).
    """
    check_same_ids(ids, state.ids_digest)
    where = "the finish message"
    check_same_job(message.job_id, state.job_id, where)
    if not hmac.compare_digest(message.response_digest, state.response_digest):
        raise InvalidArtifact(f"{where} answers another response (stale or replayed)")
    seeds = open_seeds(state.channel_key, message.sealed_seeds, what=where)
    if state.active not in seeds or state.party not in seeds:
        raise InvalidArtifact(f"{where} lacks the seed of {state.active} or of {state.party}")
    verify_seed(seeds[state.active], state.seed_commitment, state.job_id)
    if not hmac.compare_digest(seeds[state.party], state.seed):
        raise InvalidArtifact(f"{where} carries another seed for {state.party} than it sent")
    positions = checked_positions(message.positions, len(state.order), where)
    rows = state.order[positions]
    return _alignment(ids, rows, order_key(seeds, state.job_id), state.job_id)


def checked_positions(received: object, n: int, where: str) -> np.ndarray:
    """Positions in a list of ``n`` points: integers in range, ascending, never repeated."""
    positions = np.asarray(received)
    if positions.ndim != 1 or (positions.size and positions.dtype.kind not in "iu"):
        raise InvalidArtifact(f"{where}: positions must be a list of integers")
    positions = positions.astype(np.int64)
    if positions.size and (positions.min() < 0 or positions.max() >= n):
        raise InvalidArtifact(f"{where}: positions must lie in 0..{n - 1}")
    if positions.size > 1 and not bool(np.all(positions[1:] > positions[:-1])):
        raise InvalidArtifact(f"{where}: positions must be ascending and never repeat")
    return positions


# --------------------------------------------------------------------------- helpers


def _alignment(ids: Sequence[str], rows: np.ndarray, key: bytes, job_id: str) -> Alignment:
    return ordered_alignment(take_rows(ids, rows), rows, key, job_id)


def ordered_alignment(chosen: list[str], rows: np.ndarray, key: bytes, job_id: str) -> Alignment:
    """The alignment of the common ids ``chosen`` (this party's ``rows``) in the joint order."""
    macs = order_macs(chosen, key)
    permutation = byte_order(np.frombuffer(macs, dtype=">u8").reshape(len(chosen), 4))
    ordered = take_rows(chosen, permutation)
    return Alignment(
        ids=ordered,
        rows=rows[permutation].astype(np.int64),
        fingerprint=alignment_fingerprint(ordered, digest_key(key), job_id),
        digest_key=digest_key(key),
    )


def take_rows(values: Sequence[str], rows: np.ndarray) -> list[str]:
    """``[values[r] for r in rows]``, through a numpy array of the same objects (faster)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array[rows].tolist()  # type: ignore[no-any-return]


def _resolve(ids: Ids) -> Sequence[str]:
    return ids() if callable(ids) else ids


def progress_bar(progress: Progress | None, description: str, total: int) -> Callable[[int], None] | None:
    return None if progress is None else progress(description, total)


def _shuffle(n: int, rng: Random | None) -> np.ndarray:
    # A uniformly random permutation from 128 random bits per element (ties: probability
    # n^2 / 2^129), drawn from the OS CSPRNG: a seeded PRNG could be predicted by a peer that
    # learns a few positions at the end.
    raw = rng.randbytes(16 * n) if rng is not None else secrets.token_bytes(16 * n)
    keys = np.frombuffer(raw, dtype=np.uint64).reshape(n, 2)
    return np.lexsort((keys[:, 1], keys[:, 0])).astype(np.int64)


def _prefix(points: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(points[:, :8]).view("<u8").ravel()


def check_same_job(got: str, expected: str, where: str) -> None:
    if got != expected:
        raise InvalidArtifact(f"{where} belongs to job {got!r}, not to this job {expected!r}")


def check_same_ids(ids: Sequence[str], digest: bytes) -> None:
    if not hmac.compare_digest(ids_digest(ids), digest):
        raise DataError(
            "the id column changed since this party's previous alignment step; "
            "run the alignment again from the start"
        )


def _listed(rows: Sequence[int], k: int = _SHOWN) -> str:
    text = ", ".join(str(r) for r in rows[:k])
    return text + (", ..." if len(rows) > k else "")


def _strip_what(exc: Exception, what: str) -> str:
    return str(exc).removeprefix(f"{what}: ")
