"""Fits on Dask distributed: a cluster on this machine, a running scheduler, or workers
submitted to a SLURM queue (dask-jobqueue). Dask binds where it is told, so the local
cluster listens on 127.0.0.1 only.

The runner (:func:`medlite.training.jobs.run_jobs`) needs only ``submit`` and ``wait``; a
fit is a plain function call on a worker that sees the run folder (checked at start), so the
results are the sequential executor's whatever the worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from medlite.errors import ConfigError
from medlite.training.jobs import Executor, set_torch_threads

LOOPBACK = "127.0.0.1"


def slurm_cluster(cluster, *, threads: int, host: str | None = None):
    """A dask-jobqueue ``SLURMCluster`` for an ``executor.cluster`` config: one Dask worker
    per batch job, running one fit at a time (no job is submitted until it is scaled)."""
    from dask_jobqueue import SLURMCluster

    extra = list(cluster.job_extra)
    if cluster.gpus:
        extra.append(f"--gres=gpu:{cluster.gpus}")
    prologue = [*cluster.prologue, f"export OMP_NUM_THREADS={threads}"]
    return SLURMCluster(
        queue=cluster.queue, account=cluster.account, cores=1, job_cpu=cluster.cores,
        processes=1,
        memory=cluster.memory, walltime=cluster.walltime, interface=cluster.interface,
        job_extra_directives=extra, job_script_prologue=prologue, job_name="medlite",
        scheduler_options={"host": host} if host else {})


def slurm_script(cluster) -> str:
    """The sbatch script ``executor.cluster`` would submit for each worker."""
    made = slurm_cluster(cluster, threads=cluster.cores, host=LOOPBACK)
    try:
        return made.job_script()
    finally:
        made.close()


class DaskExecutor(Executor):
    """Runs each fit as one Dask task.

    Args:
        address: a running scheduler (``tcp://host:8786``); None starts a cluster.
        workers: local workers, or batch jobs when ``cluster`` is given.
        threads_per_worker: torch threads per worker (each worker runs one fit at a time);
            default cores / workers.
        retries: times a fit whose worker died is run again on another worker.
        cluster: an ``executor.cluster`` config (SLURM) instead of local workers.
        shared_path: a folder every worker must see (the run folder); checked at start.
    """

    def __init__(self, *, address: str | None = None, workers: int = 1,
                 threads_per_worker: int | None = None, retries: int = 0, cluster=None,
                 shared_path: Path | None = None):
        self.address = address
        self.workers = workers
        default = cluster.cores if cluster is not None else max(1, (os.cpu_count() or 1)
                                                                   // workers)
        self.threads = threads_per_worker or default
        self.retries = retries
        self.cluster_config = cluster
        self.shared_path = shared_path
        self._client = None
        self._cluster = None

    @property
    def client(self):
        if self._client is None:
            self._connect()
        return self._client

    def _connect(self) -> None:
        from distributed import Client, LocalCluster

        if self.address:
            try:
                self._client = Client(self.address, timeout="30s")
            except OSError as exc:
                raise ConfigError(f"executor.address: cannot reach the Dask scheduler at "
                                  f"{self.address} ({exc})") from exc
        else:
            if self.cluster_config is not None:
                self._cluster = slurm_cluster(self.cluster_config, threads=self.threads)
                self._cluster.scale(jobs=self.cluster_config.jobs)
            else:
                self._cluster = LocalCluster(
                    host=LOOPBACK, n_workers=self.workers, threads_per_worker=1,
                    processes=True, dashboard_address=None, protocol="tcp",
                    silence_logs=logging.ERROR)
            self._client = Client(self._cluster)
        self._client.run(set_torch_threads, self.threads)
        if self.shared_path is not None:
            seen = self._client.run(os.path.isdir, str(self.shared_path))
            blind = sorted(worker for worker, ok in seen.items() if not ok)
            if blind:
                raise ConfigError(f"{self.shared_path}: not visible from Dask worker(s) "
                                  f"{', '.join(blind)}; the run folder must be on storage "
                                  "every worker sees at the same path")

    def submit(self, fn: Callable, *args: Any):
        return self.client.submit(fn, *args, pure=False, retries=self.retries)

    def wait(self, futures: Iterable[Any]) -> set:
        from distributed import wait

        return set(wait(list(futures), return_when="FIRST_COMPLETED").done)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
