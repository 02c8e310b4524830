"""Model updates from the parameter server to prediction workers (seed 003).

Prediction workers serve predictions from their own copy of the master model and never train.
The server keeps them current with two kinds of update, numbered by one version counter
(1, 2, 3, ...) shared by both kinds:

* a **real-time update** (:class:`SparseUpdate`, frequent): the weights that changed most since
  what the workers already hold. The server compares the master model with ``last_sent`` (its
  exact copy of what every worker holds after all published updates), keeps the top
  ``k_fraction`` of parameters by ``|master - last_sent|`` (or those above a threshold), and
  sends their indices (uint32) and changes (float32). A worker adds the changes. What was not
  sent, and the float32 rounding of what was, stays in ``master - last_sent`` and goes out in a
  later update. At ``k_fraction = 0.1`` it is about 10% of a full update's bytes.
* a **full update** (:class:`FullUpdate`, rare): every parameter as float64, exactly the
  server's master model, so after it a worker holds the master bit for bit, whatever
  real-time updates came before.

Ordering rules (:class:`PredictionReplica`): a worker applies update ``v`` only when it holds
version ``v - 1``. A replayed update (``v`` at or below the version held) and a gap (``v``
above the next one) are refused with an error naming the expected version, and nothing
changes. The first update must be a full one, since a real-time update only carries changes.
A worker that missed updates catches up with the next full update by applying it with
``resync=True``, the only way to skip versions.

What an update reveals: the master model (or changes to it) to whoever serves predictions; no
node's delta, row or statistic. Everything is pure: ``to_bytes``/``from_bytes`` give the
compact encoding used for the size checks; writing files is the protocol's job.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from vfl_cli.checks import np_whole, whole
from vfl_cli.errors import InvalidArtifact, VflError
from vfl_cli.hfl.model import model_predict
from vfl_cli.models.nn import Head, build_sequential

__all__ = [
    "FullUpdate",
    "PredictionReplica",
    "SparseUpdate",
    "UpdatePublisher",
    "full_update",
    "realtime_update",
    "update_from_bytes",
]

_MAGIC = b"VFLU"
_FORMAT = 1
_KIND_REALTIME = 1
_KIND_FULL = 2
# magic, format, kind, reserved, version, n_params, count (little-endian).
_HEADER = struct.Struct("<4sBBHQQQ")
_MAX_PARAMS = 2**32 - 1  # indices travel as uint32


def _version(value: Any) -> int:
    if not np_whole(value, 1):
        raise VflError(f"update version must be a whole number >= 1, got {value!r}")
    return int(value)


def _vector(value: Any, name: str) -> np.ndarray:
    vec = np.asarray(value, dtype=np.float64)
    if vec.ndim != 1 or vec.size == 0:
        raise VflError(f"{name} must be a non-empty vector, got shape {vec.shape}")
    if vec.size > _MAX_PARAMS:
        raise VflError(f"{name} has {vec.size} parameters; updates support at most {_MAX_PARAMS}")
    if not np.all(np.isfinite(vec)):
        raise VflError(f"{name} contains NaN or infinite values")
    return vec


@dataclass(frozen=True)
class SparseUpdate:
    """A real-time update: changes to some parameters.

    Attributes:
        version: Update number (the worker must hold ``version - 1``).
        n_params: Length of the model vector it applies to.
        indices: Changed positions, uint32, strictly increasing.
        values: Changes to add at those positions, float32.
    """

    kind: ClassVar[str] = "realtime"
    label: ClassVar[str] = "real-time"
    version: int
    n_params: int
    indices: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        _version(self.version)
        if self.n_params < 1 or self.n_params > _MAX_PARAMS:
            raise VflError(f"n_params must be in 1 .. {_MAX_PARAMS}, got {self.n_params}")
        idx = np.asarray(self.indices)
        vals = np.asarray(self.values)
        if idx.dtype != np.uint32 or vals.dtype != np.float32:
            raise VflError(
                f"a real-time update holds uint32 indices and float32 values, "
                f"got {idx.dtype} and {vals.dtype}"
            )
        if idx.ndim != 1 or idx.shape != vals.shape:
            raise VflError(f"{idx.size} indices but {vals.size} values in a real-time update")
        if idx.size and (np.any(np.diff(idx.astype(np.int64)) <= 0) or idx[-1] >= self.n_params):
            raise VflError(f"real-time update indices must be increasing and below {self.n_params}")
        if not np.all(np.isfinite(vals)):
            raise VflError("real-time update values contain NaN or infinite values")

    def apply_to(self, params: Any) -> np.ndarray:
        """``params`` with the changes added (a new float64 array).

        Raises:
            VflError: If ``params`` has another length.
        """
        vec = np.array(params, dtype=np.float64)
        if vec.shape != (self.n_params,):
            raise VflError(
                f"update {self.version} is for a model of {self.n_params} parameters, "
                f"got {vec.size}"
            )
        vec[self.indices] += self.values.astype(np.float64)
        return vec

    def to_bytes(self) -> bytes:
        """Compact encoding: 32-byte header, then indices (uint32) and values (float32), LE."""
        header = _HEADER.pack(
            _MAGIC, _FORMAT, _KIND_REALTIME, 0, self.version, self.n_params, self.indices.size
        )
        return header + self.indices.astype("<u4").tobytes() + self.values.astype("<f4").tobytes()

    @property
    def nbytes(self) -> int:
        """Length of :meth:`to_bytes`."""
        return _HEADER.size + 8 * int(self.indices.size)


@dataclass(frozen=True)
class FullUpdate:
    """A full update: the whole master model, float64, exact.

    Attributes:
        version: Update number.
        values: The master model vector.
    """

    kind: ClassVar[str] = "full"
    label: ClassVar[str] = "full"
    version: int
    values: np.ndarray

    def __post_init__(self) -> None:
        _version(self.version)
        vals = np.asarray(self.values)
        if vals.dtype != np.float64:
            raise VflError(f"a full update holds float64 values, got {vals.dtype}")
        _vector(vals, "full update")

    @property
    def n_params(self) -> int:
        """Length of the model vector."""
        return int(self.values.size)

    def apply_to(self, params: Any) -> np.ndarray:
        """The master model (a copy); ``params`` is only checked for its length.

        Raises:
            VflError: If ``params`` is given and has another length.
        """
        if params is not None:
            size = np.asarray(params).size
            if size != self.n_params:
                raise VflError(
                    f"update {self.version} is for a model of {self.n_params} parameters, "
                    f"got {size}"
                )
        return self.values.copy()

    def to_bytes(self) -> bytes:
        """Compact encoding: 32-byte header, then the values (float64, LE)."""
        header = _HEADER.pack(
            _MAGIC, _FORMAT, _KIND_FULL, 0, self.version, self.n_params, self.n_params
        )
        return header + self.values.astype("<f8").tobytes()

    @property
    def nbytes(self) -> int:
        """Length of :meth:`to_bytes`."""
        return _HEADER.size + 8 * self.n_params


def update_from_bytes(data: bytes) -> SparseUpdate | FullUpdate:
    """Decode :meth:`SparseUpdate.to_bytes` or :meth:`FullUpdate.to_bytes`.

    Raises:
        InvalidArtifact: If the bytes are not a complete, valid update.
    """
    if len(data) < _HEADER.size:
        raise InvalidArtifact(f"model update is {len(data)} bytes, shorter than its header")
    magic, fmt, kind, _, version, n_params, count = _HEADER.unpack_from(data)
    if magic != _MAGIC or fmt != _FORMAT:
        raise InvalidArtifact(f"not a model update of format {_FORMAT} (magic {magic!r}, {fmt})")
    body = memoryview(data)[_HEADER.size :]
    try:
        if kind == _KIND_REALTIME:
            if len(body) != 8 * count:
                raise InvalidArtifact(
                    f"real-time update {version} announces {count} entries but holds "
                    f"{len(body)} bytes, expected {8 * count}"
                )
            indices = np.frombuffer(body[: 4 * count], dtype="<u4").astype(np.uint32)
            values = np.frombuffer(body[4 * count :], dtype="<f4").astype(np.float32)
            return SparseUpdate(version, n_params, indices, values)
        if kind == _KIND_FULL:
            if count != n_params or len(body) != 8 * n_params:
                raise InvalidArtifact(
                    f"full update {version} announces {n_params} parameters but holds "
                    f"{len(body)} bytes, expected {8 * n_params}"
                )
            return FullUpdate(version, np.frombuffer(body, dtype="<f8").astype(np.float64))
    except InvalidArtifact:
        raise
    except VflError as exc:
        raise InvalidArtifact(f"model update {version}: {exc}") from exc
    raise InvalidArtifact(f"unknown model update kind {kind}")


def realtime_update(
    master: Any,
    last_sent: Any,
    *,
    version: int,
    k_fraction: float | None = None,
    threshold: float | None = None,
) -> SparseUpdate:
    """The changes of ``master`` since ``last_sent`` that matter most.

    Give exactly one of ``k_fraction`` (send the ``ceil(k_fraction * n)`` largest changes) or
    ``threshold`` (send every change with ``|change| >= threshold``). Only non-zero changes are
    sent; ties are broken towards the lower index, so the result is deterministic.

    Args:
        master: The server's master model.
        last_sent: What the workers hold now (the server's copy, see :class:`UpdatePublisher`).
        version: Number of this update.
        k_fraction: Fraction of parameters to send, in ``(0, 1]``.
        threshold: Smallest absolute change to send, > 0.

    Returns:
        The :class:`SparseUpdate` (float32 changes).

    Raises:
        VflError: If the vectors differ in length or are not finite, or the selection
            arguments are invalid.
    """
    m = _vector(master, "master model")
    last = _vector(last_sent, "last sent model")
    if m.shape != last.shape:
        raise VflError(f"master model has {m.size} parameters, last sent model has {last.size}")
    if (k_fraction is None) == (threshold is None):
        raise VflError("give exactly one of k_fraction or threshold")
    diff = m - last
    size = np.abs(diff)
    if k_fraction is not None:
        if isinstance(k_fraction, bool) or not _in_unit(k_fraction):
            raise VflError(f"k_fraction must be in (0, 1], got {k_fraction!r}")
        k = min(math.ceil(float(k_fraction) * m.size), int(np.count_nonzero(size)))
        chosen = np.argsort(-size, kind="stable")[:k]
    else:
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, (int, float))
            or not math.isfinite(threshold)
            or threshold <= 0
        ):
            raise VflError(f"threshold must be a number > 0, got {threshold!r}")
        chosen = np.flatnonzero(size >= threshold)
    indices = np.sort(chosen).astype(np.uint32)
    values = diff[indices].astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise VflError("a change does not fit in float32; send a full update instead")
    return SparseUpdate(_version(version), int(m.size), indices, values)


def _in_unit(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and 0.0 < float(value) <= 1.0


def full_update(master: Any, version: int) -> FullUpdate:
    """A full update carrying ``master`` exactly (float64).

    Raises:
        VflError: If the model is not a finite vector or the version is invalid.
    """
    return FullUpdate(_version(version), _vector(master, "master model").copy())


class UpdatePublisher:
    """The server's side of the update stream: numbers updates and tracks ``last_sent``.

    ``last_sent`` is computed exactly as a worker computes its copy (same float32 changes added
    in float64), so it equals every in-order worker's parameters bit for bit.
    """

    def __init__(self) -> None:
        self.version = 0
        self.last_sent: np.ndarray | None = None

    def full(self, master: Any) -> FullUpdate:
        """Publish a full update of ``master``."""
        update = full_update(master, self.version + 1)
        self.version, self.last_sent = update.version, update.values.copy()
        return update

    def realtime(
        self, master: Any, *, k_fraction: float | None = None, threshold: float | None = None
    ) -> SparseUpdate:
        """Publish a real-time update of ``master`` against what the workers hold.

        Raises:
            VflError: If no full update was published yet (workers have nothing to change).
        """
        if self.last_sent is None:
            raise VflError("publish a full update first: real-time updates only carry changes")
        update = realtime_update(
            master,
            self.last_sent,
            version=self.version + 1,
            k_fraction=k_fraction,
            threshold=threshold,
        )
        self.last_sent = update.apply_to(self.last_sent)
        self.version = update.version
        return update

    def state_dict(self) -> dict[str, Any]:
        """The version and ``last_sent`` (a copy), to persist between rounds."""
        last = None if self.last_sent is None else self.last_sent.copy()
        return {"version": self.version, "last_sent": last}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        Raises:
            VflError: If the state is malformed.
        """
        version = state.get("version")
        if not whole(version, 0):
            raise VflError(
                f"publisher state 'version' must be a whole number >= 0, got {version!r}"
            )
        last = state.get("last_sent")
        last_arr = None if last is None else _vector(last, "publisher state 'last_sent'")
        if (last_arr is None) != (version == 0):
            raise VflError("publisher state must hold 'last_sent' exactly when version > 0")
        self.version, self.last_sent = version, last_arr


class PredictionReplica:
    """A prediction worker's copy of the model, kept current by updates applied in order.

    Args:
        spec: Model architecture.
        in_dim: Number of feature columns.
        head: Prediction head or its name.
    """

    def __init__(
        self, spec: Sequence[Mapping[str, Any]], in_dim: int, head: Head | str = "binary"
    ) -> None:
        self.spec = [dict(layer) for layer in spec]
        self.in_dim = in_dim
        self.head = head
        self.n_params = build_sequential(self.spec, in_dim).n_params
        self.version = 0
        self.params: np.ndarray | None = None

    def apply(self, update: SparseUpdate | FullUpdate, *, resync: bool = False) -> None:
        """Apply the next update.

        Args:
            update: The update; its version must be ``self.version + 1``.
            resync: Accept a *full* update with a later version (catching up after missed
                updates). Never accepted for a real-time update.

        Raises:
            VflError: If the update is a replay, leaves a gap, is for another model size, or
                is a real-time update before any full update. Nothing changes then.
        """
        expected = self.version + 1
        if update.version <= self.version:
            raise VflError(
                f"{update.label} update version {update.version} was already applied (this "
                f"replica is at version {self.version}); expected version {expected}"
            )
        if update.version != expected and not (resync and isinstance(update, FullUpdate)):
            hint = "apply the missing updates first, or catch up with a full update (resync=True)"
            raise VflError(
                f"{update.label} update version {update.version} leaves a gap: expected version "
                f"{expected}; {hint}"
            )
        if update.n_params != self.n_params:
            raise VflError(
                f"update {update.version} is for a model of {update.n_params} parameters, this "
                f"replica's model has {self.n_params}"
            )
        if isinstance(update, SparseUpdate):
            if self.params is None:
                raise VflError(
                    f"real-time update {update.version} only carries changes; this replica needs "
                    "a full update first"
                )
            new = update.apply_to(self.params)
        else:
            new = update.apply_to(None)
        self.params, self.version = new, update.version

    def predict(self, X: Any) -> np.ndarray:
        """Predictions of the current copy (see :func:`~vfl_cli.hfl.model.model_predict`).

        Raises:
            VflError: If no full update has been applied yet.
        """
        if self.params is None:
            raise VflError("this replica has no model yet; apply a full update first")
        return model_predict(self.spec, self.params, X, self.head)
