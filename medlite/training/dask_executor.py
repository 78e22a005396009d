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

from medlite.config import FitResourcesConfig
from medlite.errors import ConfigError
from medlite.training.jobs import Executor, set_torch_threads

LOOPBACK = "127.0.0.1"
DEFAULT_RESOURCES = FitResourcesConfig().model_dump()


def slurm_cluster(cluster, *, threads: int, host: str | None = None):
    """A dask-jobqueue ``SLURMCluster`` for an ``executor.cluster`` config: one Dask worker
    per batch job, running one fit at a time and declaring the job's cores and GPUs as
    resources (no job is submitted until it is scaled)."""
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
        worker_extra_args=["--resources", f"cpus={cluster.cores},gpus={cluster.gpus}"],
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
        resources: what each fit needs, ``{"cpus": n, "gpus": m}``; fits go only to workers
            that declare as much, and a cluster where no worker does is an error at start
            (not a plan that waits forever). The default (1 CPU, no GPU) fits any worker.
    """

    def __init__(self, *, address: str | None = None, workers: int = 1,
                 threads_per_worker: int | None = None, retries: int = 0, cluster=None,
                 shared_path: Path | None = None, resources: dict[str, int] | None = None):
        self.address = address
        self.resources = {**DEFAULT_RESOURCES, **(resources or {})}
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
                    silence_logs=logging.ERROR, resources=self._local_resources())
            self._client = Client(self._cluster)
        self._client.run(set_torch_threads, self.threads)
        if self.shared_path is not None:
            seen = self._client.run(os.path.isdir, str(self.shared_path))
            blind = sorted(worker for worker, ok in seen.items() if not ok)
            if blind:
                raise ConfigError(f"{self.shared_path}: not visible from Dask worker(s) "
                                  f"{', '.join(blind)}; the run folder must be on storage "
                                  "every worker sees at the same path")
        self._check_resources()

    def _local_resources(self) -> dict[str, int]:
        """What each local worker declares: its torch threads, and its share of the GPUs."""
        import torch

        gpus = torch.cuda.device_count() // self.workers if torch.cuda.is_available() else 0
        return {"cpus": self.threads, "gpus": gpus}

    @property
    def _needs_resources(self) -> bool:
        return self.resources != DEFAULT_RESOURCES

    def _check_resources(self) -> None:
        if not self._needs_resources:
            return
        if self.cluster_config is not None:  # its workers may not have started yet
            declared = {"each SLURM job": {"cpus": self.cluster_config.cores,
                                           "gpus": self.cluster_config.gpus}}
        else:
            workers = self._client.scheduler_info()["workers"]
            declared = {address: info.get("resources") or {}
                        for address, info in workers.items()}
        if any(all(have.get(name, 0) >= need for name, need in self.resources.items())
               for have in declared.values()):
            return
        wanted = ",".join(f"{name}={need}" for name, need in self.resources.items())
        seen = "; ".join(f"{address}: " + (",".join(f"{k}={v:g}" for k, v in have.items())
                                           or "none declared")
                         for address, have in sorted(declared.items())) or "no workers"
        raise ConfigError(f"executor.resources_per_fit: no Dask worker has {wanted} ({seen}); "
                          "lower it, or start workers with dask worker ADDRESS --resources "
                          f'"{wanted}"')

    def submit(self, fn: Callable, *args: Any):
        # Without a stated need nothing is asked for, so workers started by hand without
        # --resources take fits too; and never a need of 0, which Dask cannot match on
        # workers that do not declare that resource.
        resources = ({name: need for name, need in self.resources.items() if need > 0}
                     if self._needs_resources else None)
        return self.client.submit(fn, *args, pure=False, retries=self.retries,
                                  resources=resources)

    def wait(self, futures: Iterable[Any], timeout: float | None = None) -> set:
        from distributed import wait

        try:
            return set(wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED").done)
        except TimeoutError:
            return set()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
