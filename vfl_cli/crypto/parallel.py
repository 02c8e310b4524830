"""Where the Paillier engine's chunks run: in-process, on all local cores, or on a Dask cluster.

Every vectorised operation of :mod:`vfl_cli.crypto.paillier` cuts its input into a few coarse
chunks (ciphertexts shipped as fixed-width bytes) and hands them to :class:`joblib.Parallel`.
Which backend runs them is joblib's choice of the moment:

* default: joblib's ``loky`` process pool over all cores (``n_jobs=-1``);
* ``configure(n_jobs=1)`` or ``n_jobs=1`` on a call: in-process, no worker is started;
* :func:`use_dask`: the same chunks go to a Dask cluster through joblib's ``dask`` backend
  (install the optional extra ``vfl_cli[dask]``; the workers need ``vfl_cli`` installed).

Small inputs (fewer than :data:`MIN_PARALLEL_ITEMS` work items) always run in-process: starting
or feeding workers would cost more than the work.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from vfl_cli.errors import CryptoError

T = TypeVar("T")

MIN_PARALLEL_ITEMS = 2048
"""Below this many work items an operation runs in-process.

Each ``vfl`` command is a fresh process, so the first parallel call pays for starting the
worker pool (about half a second here); below a few thousand cheap items (about 0.3 s of work
at 2048 bits) that costs more than it saves.
"""

_default_n_jobs: int = int(os.environ.get("VFL_N_JOBS", "-1"))

__all__ = [
    "MIN_PARALLEL_ITEMS",
    "configure",
    "effective_n_jobs",
    "run",
    "split",
    "use_dask",
]


def configure(n_jobs: int = -1) -> None:
    """Set the default number of jobs of every engine operation (``-1``: all cores).

    The environment variable ``VFL_N_JOBS`` sets the same default at import time.
    """
    global _default_n_jobs
    if n_jobs == 0:
        raise CryptoError("n_jobs must be a positive number of jobs or negative (all cores)")
    _default_n_jobs = n_jobs


def effective_n_jobs(n_jobs: int | None = None) -> int:
    """How many workers a call with ``n_jobs`` uses under the active joblib backend."""
    wanted = _default_n_jobs if n_jobs is None else n_jobs
    if wanted == 1:
        return 1
    import joblib  # here, not at module level: every short vfl process would pay ~60 ms for it

    return max(1, int(joblib.effective_n_jobs(wanted)))


def split(
    count: int,
    n_jobs: int | None,
    *,
    min_chunk: int,
    per_worker: int = 1,
    min_items: int = MIN_PARALLEL_ITEMS,
) -> list[slice]:
    """Cut ``range(count)`` into coarse contiguous slices, about ``per_worker`` per worker.

    Returns a single slice (run in-process) when ``count`` is below ``min_items`` (default
    :data:`MIN_PARALLEL_ITEMS`; lower for expensive items such as decryptions) or the work is
    too small for more than one chunk of ``min_chunk`` items.
    """
    if count <= 0:
        return []
    workers = effective_n_jobs(n_jobs) if count >= min_items else 1
    chunks = max(1, min(workers * per_worker, count // max(1, min_chunk)))
    if workers == 1:
        chunks = 1
    size, extra = divmod(count, chunks)
    out, start = [], 0
    for i in range(chunks):
        stop = start + size + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


def run(func: Callable[..., T], tasks: Sequence[tuple[Any, ...]], n_jobs: int | None) -> list[T]:
    """Run ``func(*task)`` for every task, in order; in-process when there is only one task."""
    if len(tasks) <= 1 or effective_n_jobs(n_jobs) == 1:
        return [func(*task) for task in tasks]
    import joblib

    wanted = _default_n_jobs if n_jobs is None else n_jobs
    parallel = joblib.Parallel(n_jobs=wanted)
    return list(parallel(joblib.delayed(func)(*task) for task in tasks))


@contextlib.contextmanager
def use_dask(scheduler: Any = None, **client_kwargs: Any) -> Iterator[Any]:
    """Send the engine's chunks to a Dask cluster for the duration of a ``with`` block.

    Args:
        scheduler: address of a running scheduler (``"tcp://10.0.0.5:8786"``), a
            ``distributed.LocalCluster``/``Client``-compatible cluster object, or ``None`` for a
            new local cluster.
        **client_kwargs: passed to ``distributed.Client``.

    Yields:
        The ``distributed.Client`` in use.

    Raises:
        CryptoError: Dask is not installed (``pip install "vfl_cli[dask]"``).

    Example::

        with use_dask("tcp://scheduler:8786"):
            g = plain_matmul(X.T, d)      # same call, chunks run on the cluster
    """
    try:
        from distributed import Client
    except ImportError as exc:  # pragma: no cover - depends on the optional extra
        raise CryptoError(
            'Dask is not installed; install the optional extra: pip install "vfl_cli[dask]"'
        ) from exc
    import joblib

    client = Client(scheduler, **client_kwargs)
    try:
        with joblib.parallel_config(backend="dask", n_jobs=-1):
            yield client
    finally:
        client.close()
