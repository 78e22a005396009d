"""A resumable list of independent jobs (e.g. 29 architectures x 5 folds) run by an executor.

Each :class:`Job` has a unique, filesystem-safe ``key`` and JSON-serialisable ``params``. Its
outputs live in ``jobs_dir / job.key /``::

    jobs_dir/
      jobs.csv              key, status (pending/done/failed), seconds, attempts, error
      resnet18-fold2/
        done.json           written when the job function returned: key, params, result,
                            seconds, attempts, finished (UTC)
        attempts.json       {"attempts": n}: how many times the job was started
        error.log           traceback of the last failed attempt (removed on success)
        ...                 anything the job function writes (checkpoints, predictions)

The names ``done.json``, ``attempts.json`` and ``error.log`` belong to the runner; the job
function owns everything else in its folder.

Contract for the job function ``job_fn(job, job_dir) -> dict``:

* it is called with the job and its (existing) folder, writes its outputs there and returns
  a small JSON-serialisable dict (metrics, paths relative to ``job_dir``);
* a job is finished when ``job_dir/done.json`` exists. :func:`run_jobs` skips finished jobs
  and returns their stored result; an unfinished job (never started, crashed, killed, or
  failed) is called again, and **the job function itself resumes**: when it finds its own
  checkpoint in ``job_dir`` it must continue from it rather than start over (for Lightning:
  pass ``job_dir / "checkpoints" / "last.ckpt"`` as ``ckpt_path`` when that file exists);
* it must not depend on state of the calling process: executors may run it in another
  process or on another machine that sees the same ``jobs_dir``.

Executors. An :class:`Executor` has one method, ``submit_all(fn, jobs_with_dirs)``, that calls
``fn(job, job_dir)`` for every pair and yields ``(job, result)`` or ``(job, exception)`` in
completion order; it never raises for a failing job. Bookkeeping (``done.json``, attempts,
error logs) happens inside ``fn`` (the runner wraps ``job_fn``), where the job runs, so an
engine only has to ship a picklable callable with ``(job, Path)`` arguments and hand back its
return value or exception. A Ray engine would ``ray.remote(fn)`` each pair and yield from
``ray.wait``; Dask would ``client.submit`` and iterate ``as_completed``; a SLURM array would
pickle ``fn`` and the pairs to the shared file system, launch one array task per pair, and
poll each ``done.json``/``error.log``. Two engines are built in:
:class:`SequentialExecutor` (in this process) and :class:`ProcessExecutor` (local worker
processes started with "spawn", because torch is not fork-safe).
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
import time
import traceback
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from medlite.data.manifest import write_csv_atomic
from medlite.errors import MedliteError, RunDirError
from medlite.runs import read_json, write_json, write_text_atomic

DONE_FILE = "done.json"
ATTEMPTS_FILE = "attempts.json"
ERROR_FILE = "error.log"
JOBS_CSV = "jobs.csv"
JOBS_CSV_COLUMNS = ("key", "status", "seconds", "attempts", "error")

# Letters, digits, '.', '_', '-'; not starting with '.' so a key is never hidden or '..'.
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")

JobFn = Callable[["Job", Path], dict]


class JobsFailed(MedliteError):
    """Some jobs raised; the others finished. ``problems`` holds one ``"key: error"`` line per
    failed job and ``results`` the results of the jobs that are done (by key)."""

    def __init__(self, message: str, problems: list[str], results: dict[str, dict]):
        super().__init__(message, problems=problems)
        self.results = results


@dataclass(frozen=True)
class Job:
    """One unit of work.

    Attributes:
        key: unique, filesystem-safe name (letters, digits, '.', '_', '-'), e.g.
            ``"resnet18-fold2"``; it names the job's folder.
        params: JSON-serialisable arguments for the job function (stored in ``done.json``).
    """

    key: str
    params: dict = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY_PATTERN.fullmatch(self.key):
            raise ValueError(
                f"job key {self.key!r} is not filesystem-safe: use letters, digits, '.', '_' "
                "and '-', not starting with '.'"
            )
        try:
            json.dumps(self.params)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"job {self.key!r}: params are not JSON-serialisable: {exc}") from exc


class Executor(ABC):
    """Runs ``fn(job, job_dir)`` for many jobs; see the module docstring for the contract."""

    @abstractmethod
    def submit_all(
        self, fn: Callable[[Job, Path], Any], jobs_with_dirs: Sequence[tuple[Job, Path]]
    ) -> Iterator[tuple[Job, Any]]:
        """Yield ``(job, fn(job, job_dir))``, or ``(job, exception)`` when ``fn`` raised an
        ``Exception``, once per pair, in completion order."""


class SequentialExecutor(Executor):
    """Runs the jobs one after the other in this process (debugging, a single CPU)."""

    def submit_all(
        self, fn: Callable[[Job, Path], Any], jobs_with_dirs: Sequence[tuple[Job, Path]]
    ) -> Iterator[tuple[Job, Any]]:
        for job, job_dir in jobs_with_dirs:
            try:
                outcome = fn(job, job_dir)
            except Exception as exc:  # a failing job must not stop the others
                outcome = exc
            yield job, outcome


def _init_worker(threads: int) -> None:
    """Worker start-up: n workers x all cores each would oversubscribe the CPU."""
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor(Executor):
    """Runs jobs in ``n_workers`` local processes started with "spawn" (torch is not
    fork-safe).

    Each worker sets ``torch.set_num_threads(threads_per_worker)``, by default
    ``max(1, os.cpu_count() // n_workers)``. The function and the jobs are pickled, so the
    job function must be defined at module level in an importable module (not a lambda or a
    nested function; a ``functools.partial`` of a module-level function is fine), and a
    script that calls :func:`run_jobs` must guard its entry point with
    ``if __name__ == "__main__":`` because spawned workers import it.
    """

    def __init__(self, n_workers: int, threads_per_worker: int | None = None):
        if n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {n_workers}")
        if threads_per_worker is not None and threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker or max(1, (os.cpu_count() or 1) // n_workers)

    def submit_all(
        self, fn: Callable[[Job, Path], Any], jobs_with_dirs: Sequence[tuple[Job, Path]]
    ) -> Iterator[tuple[Job, Any]]:
        jobs_with_dirs = list(jobs_with_dirs)
        if not jobs_with_dirs:
            return
        _check_picklable(fn, jobs_with_dirs)
        pool = ProcessPoolExecutor(
            max_workers=min(self.n_workers, len(jobs_with_dirs)),
            mp_context=get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.threads_per_worker,),
        )
        try:
            futures: dict[Future, Job] = {
                pool.submit(fn, job, job_dir): job for job, job_dir in jobs_with_dirs
            }
            for future in as_completed(futures):
                exc = future.exception()
                yield futures[future], (exc if exc is not None else future.result())
        finally:
            # On an interrupt or an abandoned iterator, drop the queued jobs; running ones end.
            pool.shutdown(wait=True, cancel_futures=True)


def _check_picklable(fn: Callable, jobs_with_dirs: list[tuple[Job, Path]]) -> None:
    """Fail before starting any worker, with a hint, when ``fn`` cannot reach a worker."""
    try:
        pickle.dumps((fn, jobs_with_dirs))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise TypeError(
            f"ProcessExecutor cannot send the job function to its worker processes ({exc}). "
            "Use a function defined at module level in an importable module (not a lambda, "
            "a nested function or a closure), or run with a single worker"
        ) from exc


def make_executor(n_workers: int) -> Executor:
    """:class:`SequentialExecutor` for one worker, :class:`ProcessExecutor` for more."""
    if n_workers < 1:
        raise ValueError(f"n_workers must be at least 1, got {n_workers}")
    return SequentialExecutor() if n_workers == 1 else ProcessExecutor(n_workers)


def _to_builtin(value: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays become Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _read_attempts(job_dir: Path) -> int:
    path = job_dir / ATTEMPTS_FILE
    return int(read_json(path)["attempts"]) if path.is_file() else 0


def _run_attempt(job_fn: JobFn, job: Job, job_dir: Path) -> dict:
    """One attempt of ``job``, where it runs: count it, time it, and on success write
    ``done.json`` (the record returned); on failure keep the traceback in ``error.log``."""
    attempts = _read_attempts(job_dir) + 1
    write_json(job_dir / ATTEMPTS_FILE, {"attempts": attempts})
    start = time.perf_counter()
    try:
        result = job_fn(job, job_dir)
        if not isinstance(result, dict):
            raise TypeError(
                f"job function returned {type(result).__name__}, expected a JSON-serialisable dict"
            )
        # Round trip so a fresh run returns exactly what a resumed run reads back.
        result = json.loads(json.dumps(result, default=_to_builtin))
    except Exception:
        write_text_atomic(job_dir / ERROR_FILE, traceback.format_exc())
        raise
    record = {
        "key": job.key,
        "params": job.params,
        "result": result,
        "seconds": round(time.perf_counter() - start, 3),
        "attempts": attempts,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(job_dir / DONE_FILE, record)
    (job_dir / ERROR_FILE).unlink(missing_ok=True)
    return record


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def _read_done(job: Job, job_dir: Path) -> dict | None:
    """The stored record of a finished job, or None; refuses one made with other params."""
    path = job_dir / DONE_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    if record.get("params") != json.loads(json.dumps(job.params)):
        raise RunDirError(
            f"{path}: job {job.key!r} finished with params {record.get('params')}, but now has "
            f"{job.params}; use a new output folder, or delete {job_dir} to run it again"
        )
    return record


def run_jobs(
    jobs: Sequence[Job],
    job_fn: JobFn,
    jobs_dir: Path,
    executor: Executor | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Run every unfinished job with ``executor`` and return each job's result by key.

    Finished jobs (``jobs_dir/key/done.json`` exists) are not run again; their stored result
    is returned. ``jobs_dir/jobs.csv`` is rewritten atomically after every job. A failing job
    does not stop the others.

    Args:
        jobs: the jobs, keys unique.
        job_fn: ``job_fn(job, job_dir) -> dict``, see the module docstring; picklable when the
            executor runs it in other processes.
        jobs_dir: parent of the job folders (created when missing).
        executor: default :class:`SequentialExecutor`.
        progress: show a tqdm bar of jobs done / total.

    Returns:
        ``{key: result}`` in the order of ``jobs``.

    Raises:
        ValueError: duplicate keys.
        RunDirError: a finished job's stored params differ from the job's params.
        JobsFailed: after all jobs ran, when some raised; lists each failed key and error.
    """
    jobs = list(jobs)
    keys = [job.key for job in jobs]
    duplicates = sorted(key for key, count in Counter(keys).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate job keys: {', '.join(duplicates)}")
    executor = executor or SequentialExecutor()
    jobs_dir = Path(jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)

    rows: dict[str, dict[str, Any]] = {}
    results: dict[str, dict] = {}
    pending: list[tuple[Job, Path]] = []
    for job in jobs:
        job_dir = jobs_dir / job.key
        record = _read_done(job, job_dir)
        if record is None:
            job_dir.mkdir(exist_ok=True)
            pending.append((job, job_dir))
            rows[job.key] = _row(job.key, "pending", None, _read_attempts(job_dir), "")
        else:
            results[job.key] = record["result"]
            rows[job.key] = _row(job.key, "done", record["seconds"], record["attempts"], "")
    csv_path = jobs_dir / JOBS_CSV
    _write_jobs_csv(rows, csv_path)

    failures: dict[str, str] = {}
    bar = tqdm(total=len(jobs), initial=len(results), desc="jobs", unit="job", disable=not progress)
    try:
        fn = functools.partial(_run_attempt, job_fn)
        for job, outcome in executor.submit_all(fn, pending):
            job_dir = jobs_dir / job.key
            if isinstance(outcome, BaseException):
                failures[job.key] = _one_line(outcome)
                rows[job.key] = _row(
                    job.key, "failed", None, _read_attempts(job_dir), failures[job.key]
                )
                bar.set_postfix(failed=len(failures))
            else:
                results[job.key] = outcome["result"]
                rows[job.key] = _row(job.key, "done", outcome["seconds"], outcome["attempts"], "")
                bar.update(1)
            _write_jobs_csv(rows, csv_path)
    finally:
        bar.close()

    if failures:
        problems = [f"{key}: {error}" for key, error in failures.items()]
        raise JobsFailed(
            f"{len(failures)} of {len(jobs)} jobs failed (tracebacks in each job's {ERROR_FILE}, "
            f"status in {csv_path}); the first: {problems[0]}",
            problems=problems,
            results={key: results[key] for key in keys if key in results},
        )
    return {key: results[key] for key in keys}


def _row(key: str, status: str, seconds: float | None, attempts: int, error: str) -> dict:
    return {"key": key, "status": status, "seconds": seconds, "attempts": attempts, "error": error}


def _write_jobs_csv(rows: dict[str, dict[str, Any]], path: Path) -> None:
    write_csv_atomic(pd.DataFrame(list(rows.values()), columns=list(JOBS_CSV_COLUMNS)), path)
