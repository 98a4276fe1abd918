"""Refining on a Dask cluster: each file a task, results written by the workers (``dask[distributed]``).

``"local"`` or ``"local:N"`` starts a ``LocalCluster`` of N worker processes (default: one per core) with one task at
a time each; any other value is a scheduler address (``tcp://host:8786``). Each worker sets Numba's thread count so
that the crfcore processes on one machine never use more threads than it has cores (several processes are safe:
see :mod:`crfcore._runtime.threads`).
"""

import os

import numba

from .job import refine_one


def _threads_for(workers_on_host):
    return max(1, (os.cpu_count() or 1) // max(1, workers_on_host))


def _task(job, workers_on_host):
    """Runs on a worker: refine one file, or return the error as a value (the run goes on)."""
    numba.set_num_threads(min(numba.config.NUMBA_NUM_THREADS, _threads_for(workers_on_host)))
    options = dict(job.options, workers=workers_on_host)
    try:
        return refine_one(job._replace(options=options))
    except ValueError as exc:
        return exc


def _client(address):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError("--dask needs dask.distributed: pip install 'crfcore[dask]'") from exc
    if address == "local" or address.startswith("local:"):
        n = int(address.split(":", 1)[1]) if ":" in address else (os.cpu_count() or 1)
        if n < 1:
            raise ValueError(f"--dask local:N needs N >= 1, got {n}")
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(cluster), cluster
    try:
        return Client(address, timeout="10s"), None
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(f"cannot reach the Dask scheduler at {address}: {exc}") from None


def workers_per_host(client):
    """How many workers share each host (by address), from the scheduler."""
    hosts = {}
    for addr in client.scheduler_info()["workers"]:
        host = addr.rsplit(":", 1)[0]
        hosts[host] = hosts.get(host, 0) + 1
    return hosts


def run_jobs(jobs, address):
    """Yield ``(job, pixels or exception)`` as the cluster finishes them."""
    from dask.distributed import as_completed

    client, cluster = _client(address)
    try:
        counts = workers_per_host(client)
        per_host = max(counts.values()) if counts else 1
        futures = {client.submit(_task, job, per_host, pure=False): job for job in jobs}
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
