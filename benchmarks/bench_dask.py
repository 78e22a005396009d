"""What Dask costs per fit, and what the PASI ensemble would take on more workers.

* **Overhead**: ``--jobs`` empty fits (a job function that only returns) through
  :func:`medlite.training.jobs.run_jobs` on the sequential executor and on a Dask
  LocalCluster (127.0.0.1) of ``--workers`` workers, in this process; the difference per
  fit is what the cluster adds (submission, scheduling, done.json and status writes are in
  both).
* **Projection**: from a finished PASI run's measured fit times (``RUN/fits.csv``), the
  wall time of the full 29 architectures x 5 folds = 145-fit ensemble on 1, 8, 29 and 145
  workers, scheduling the longest fits first (a lower bound: perfect packing, no data
  movement).

    python benchmarks/bench_dask.py --jobs 60 --workers 2 --pasi-run runs/bench-pasi/ensemble
"""

from __future__ import annotations

import argparse
import heapq
import json
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd

from medlite.training.dask_executor import DaskExecutor
from medlite.training.jobs import Job, SequentialExecutor, run_jobs

FULL_ENSEMBLE = 29 * 5


def empty_fit(job: Job, job_dir: Path) -> dict:
    return {"key": job.key}


def seconds_for(executor_factory, jobs: int) -> float:
    with tempfile.TemporaryDirectory() as folder:
        plan = [Job(f"fit{i:03d}", {}) for i in range(jobs)]
        executor = executor_factory()
        start = time.perf_counter()
        run_jobs(plan, empty_fit, Path(folder), executor=executor, progress=False)
        return time.perf_counter() - start


def makespan(durations: list[float], workers: int) -> float:
    """Longest-first list scheduling of ``durations`` on ``workers``."""
    finish = [0.0] * workers
    for duration in sorted(durations, reverse=True):
        heapq.heapreplace(finish, finish[0] + duration)
    return max(finish)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pasi-run", type=Path, help="a finished PASI run (its fits.csv)")
    args = parser.parse_args()

    sequential, dask = [], []
    for _ in range(args.rounds):
        sequential.append(seconds_for(SequentialExecutor, args.jobs))
        start = time.perf_counter()
        executor = DaskExecutor(workers=args.workers, threads_per_worker=1)
        executor.client  # noqa: B018 (start the cluster outside the timed part)
        startup = time.perf_counter() - start
        dask.append(seconds_for(lambda executor=executor: executor, args.jobs))
    result = {
        "jobs": args.jobs, "workers": args.workers, "rounds": args.rounds,
        "sequential_s": statistics.median(sequential), "dask_s": statistics.median(dask),
        "dask_overhead_ms_per_fit": 1000 * (statistics.median(dask)
                                            - statistics.median(sequential)) / args.jobs,
        "cluster_startup_s": startup,
    }
    if args.pasi_run is not None:
        fits = pd.read_csv(args.pasi_run / "fits.csv")
        base = fits[fits["key"] != "stacking"]["seconds"].to_numpy(float)
        per_fit = float(statistics.median(base))
        # The full ensemble: every measured fit time, repeated to 145 fits.
        durations = [float(base[i % len(base)]) for i in range(FULL_ENSEMBLE)]
        result["projection"] = {
            "measured_fits": len(base), "median_fit_s": per_fit,
            "hours_on": {str(w): makespan(durations, w) / 3600 for w in (1, 8, 29, 145)}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
