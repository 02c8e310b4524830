"""PSI hashing and blinding on a Dask cluster of separate worker processes (vfl --dask-scheduler)."""

from __future__ import annotations

import os

import pytest

from vfl_cli.crypto import ecdh, parallel
from vfl_cli.protocol import psi


def test_alignment_on_a_local_dask_cluster_of_worker_processes() -> None:
    distributed = pytest.importorskip("distributed")
    active = [f"cust-{i:05d}" for i in range(3000)]  # above the 2,048 items a chunk is worth
    passive = [f"cust-{i:05d}" for i in range(2000, 5200)]
    with (
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                 dashboard_address=None) as cluster,
        parallel.use_dask(cluster.scheduler_address) as client,
        distributed.get_task_stream(client) as tasks,
    ):
        state, start = psi.start(active, job_id="j", salt=b"s" * 16, party="a")
        pstate, response = psi.respond(passive, start, job_id="j", salt=b"s" * 16, party="p", active="a")
        mine, messages = psi.finish(state, active, {"p": response})
        theirs = psi.conclude(pstate, passive, messages["p"])
        pids = set(client.run(os.getpid).values())
        workers = set(client.nthreads())
        remote = ecdh.hash_to_points(active[:2100], psi.make_domain("j", b"s" * 16))
    assert mine.ids == theirs.ids and set(mine.ids) == set(active) & set(passive)
    # Every batch (A's ids, P's ids, each re-blinding) ran as chunks on the two worker processes.
    ran = [t for t in tasks.data if str(t["key"]).startswith("_work_task")]
    assert len(ran) >= 4 and {t["worker"] for t in ran} <= workers
    assert len(pids) == 2 and os.getpid() not in pids
    # The same points as the local path: the cluster changes where, not what.
    local = ecdh.hash_to_points(active[:2100], psi.make_domain("j", b"s" * 16), n_jobs=1)
    assert (local == remote).all()
