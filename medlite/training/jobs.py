"""A resumable set of jobs with dependencies (e.g. 29 architectures x 5 folds, then a
stacking step), run by an executor.

Each :class:`Job` has a unique, filesystem-safe ``key``, JSON-serialisable ``params`` and the
keys it ``depends_on``. Its outputs live in ``jobs_dir / job.key /``::

    jobs_dir/
      <status csv>          key, status, seconds, attempts, error; status is pending
                            (waiting for its dependencies), queued (submitted), running,
                            done, failed or blocked (a dependency failed)
      resnet18-fold2/
        done.json           written when the job function returned: key, params, result,
                            seconds, attempts, finished (UTC), host and pid that ran it
        attempts.json       {"attempts": n}: how many times the job was started
        error.log           traceback of the last failed attempt (removed on success)
        fit.log             what every attempt logged: start (host, pid), warnings, end
        ...                 anything the job function writes (checkpoints, predictions)

The names ``done.json``, ``attempts.json``, ``error.log``, ``fit.log`` and ``.lock``
belong to the runner; the job function owns everything else in its folder.

Contract for the job function ``job_fn(job, job_dir) -> dict``:

* it is called with the job and its (existing) folder once every job it depends on is done,
  writes its outputs there and returns a small JSON-serialisable dict;
* a job is finished when ``job_dir/done.json`` exists. :func:`run_jobs` skips finished jobs
  and returns their stored result; an unfinished job (never started, crashed, killed, or
  failed) is called again, and **the job function itself resumes** from what it left in
  ``job_dir`` (for Lightning: its ``last.ckpt``);
* it must not depend on state of the calling process: executors may run it in another
  process or on another machine that sees the same ``jobs_dir``.

Executors hand back futures. :class:`Executor` has ``submit(fn, *args)`` returning an object
with ``result()``, ``exception()`` and ``done()`` (a :class:`concurrent.futures.Future`, or a
Dask future), and ``wait(futures)`` returning the finished ones. The runner submits every job
whose dependencies are done and waits for the next to finish, so a cluster engine only has
to implement these two methods. Two engines are built in: :class:`SequentialExecutor` (in
this process) and :class:`ProcessExecutor` (local worker processes started with "spawn",
because torch is not fork-safe).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import pickle
import platform
import re
import time
import traceback
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from medlite.errors import MedliteError, RunDirError, WriteError
from medlite.runs import atomic_target, read_json, write_json, write_text_atomic, writing

DONE_FILE = "done.json"
ATTEMPTS_FILE = "attempts.json"
ERROR_FILE = "error.log"
LOCK_FILE = ".lock"
LOG_FILE = "fit.log"
STATUS_COLUMNS = ("key", "status", "seconds", "attempts", "error")
STATUS_POLL_SECONDS = 2.0  # how often queued jobs are checked for having started

# Letters, digits, '.', '_', '-'; not starting with '.' so a key is never hidden or '..'.
_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")

JobFn = Callable[["Job", Path], dict]


class JobsFailed(MedliteError):
    """Some jobs raised (and the jobs depending on them did not run); the others finished.
    ``problems`` holds one ``"key: error"`` line per failed or blocked job and ``results`` the
    results of the jobs that are done (by key)."""

    def __init__(self, message: str, problems: list[str], results: dict[str, dict]):
        super().__init__(message, problems=problems)
        self.results = results


@dataclass(frozen=True)
class Job:
    """One unit of work.

    Attributes:
        key: unique, filesystem-safe name (letters, digits, '.', '_', '-'), e.g.
            ``"resnet18-fold2"``; it names the job's folder.
        params: JSON-serialisable arguments for the job function (stored in ``done.json``;
            a finished job whose stored params differ is an error, not a silent reuse).
        depends_on: keys of the jobs that must be done before this one starts.
    """

    key: str
    params: dict = field(default_factory=dict, hash=False)
    depends_on: tuple[str, ...] = ()

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
    """Runs ``fn(*args)`` somewhere and hands back a future; see the module docstring."""

    #: Whether ``submit`` starts the work at once (so a submitted job is running, not
    #: queued behind busy workers).
    starts_at_submit = False

    @abstractmethod
    def submit(self, fn: Callable, *args: Any) -> Any:
        """Start ``fn(*args)``; return a future (``result()``, ``exception()``, ``done()``)."""

    def wait(self, futures: Iterable[Any], timeout: float | None = None) -> set:
        """Block until at least one of ``futures`` is done, or ``timeout`` seconds passed;
        return the done ones (none after a timeout)."""
        done, _ = wait_futures(list(futures), timeout=timeout, return_when=FIRST_COMPLETED)
        return set(done)

    def close(self) -> None:  # noqa: B027 (optional: executors without workers keep it)
        """Release workers; queued work that has not started is dropped."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class SequentialExecutor(Executor):
    """Runs each job at submission, in this process (debugging, a single CPU)."""

    starts_at_submit = True

    def submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # a failing job must not stop the others
            future.set_exception(exc)
        return future


def set_torch_threads(threads: int) -> None:
    """Worker start-up: n workers x all cores each would oversubscribe the CPU."""
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor(Executor):
    """Runs jobs in ``n_workers`` local processes started with "spawn" (torch is not
    fork-safe).

    Each worker sets ``torch.set_num_threads(threads_per_worker)``, by default
    ``max(1, os.cpu_count() // n_workers)``. The function and its arguments are pickled, so
    the job function must be defined at module level in an importable module (a
    ``functools.partial`` of one is fine), and a script that calls :func:`run_jobs` must
    guard its entry point with ``if __name__ == "__main__":`` because spawned workers import
    it.
    """

    def __init__(self, n_workers: int, threads_per_worker: int | None = None):
        if n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {n_workers}")
        if threads_per_worker is not None and threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
        self.n_workers = n_workers
        self.threads_per_worker = threads_per_worker or max(1, (os.cpu_count() or 1) // n_workers)
        self._pool: ProcessPoolExecutor | None = None

    def submit(self, fn: Callable, *args: Any) -> Future:
        _check_picklable(fn, args)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.n_workers, mp_context=get_context("spawn"),
                initializer=set_torch_threads, initargs=(self.threads_per_worker,))
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            # On an interrupt, drop the queued jobs; running ones end.
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def _check_picklable(fn: Callable, args: tuple) -> None:
    """Fail before starting any worker, with a hint, when ``fn`` cannot reach a worker."""
    try:
        pickle.dumps((fn, args))
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise TypeError(
            f"ProcessExecutor cannot send the job function to its worker processes ({exc}). "
            "Use a function defined at module level in an importable module (not a lambda, "
            "a nested function or a closure), or run with a single worker"
        ) from exc


def make_executor(name: str = "sequential", workers: int = 1,
                  threads_per_worker: int | None = None, *, address: str | None = None,
                  cluster=None, retries: int = 0, shared_path: Path | None = None,
                  resources: dict[str, int] | None = None) -> Executor:
    """The executor an ``executor:`` config section names: ``sequential`` runs in this
    process; ``processes`` in ``workers`` local processes; ``dask`` on a Dask cluster
    (:class:`~medlite.training.dask_executor.DaskExecutor`: local on 127.0.0.1, the
    scheduler at ``address``, or a SLURM ``cluster``), whose workers must see
    ``shared_path`` and have ``resources`` (``{"cpus": n, "gpus": m}`` per fit)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if name == "dask":
        from medlite.training.dask_executor import DaskExecutor

        return DaskExecutor(address=address, workers=workers,
                            threads_per_worker=threads_per_worker, retries=retries,
                            cluster=cluster, shared_path=shared_path, resources=resources)
    if name == "sequential" or (name == "processes" and workers == 1
                                and threads_per_worker is None):
        return SequentialExecutor()
    if name == "processes":
        return ProcessExecutor(workers, threads_per_worker)
    raise ValueError(f"unknown executor {name!r} (sequential, processes or dask)")


def _read_attempts(job_dir: Path) -> int:
    path = job_dir / ATTEMPTS_FILE
    return int(read_json(path)["attempts"]) if path.is_file() else 0


@contextmanager
def job_lock(job_dir: Path):
    """Hold the job's lock (``job_dir/.lock``, an exclusive ``flock``) for the block.

    Two attempts of one job can overlap: the driver killed and resumed while a remote Dask
    worker still trains the first attempt (Dask cannot stop a running task). The second
    waits here for the first instead of writing the same files; NFS emulates ``flock``
    with POSIX locks, so this holds across the nodes of a cluster too. Without ``fcntl``
    (Windows) there is no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    lock = Path(job_dir) / LOCK_FILE
    with writing(lock):
        handle = open(lock, "a")  # noqa: SIM115 (closed below)
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_attempt(job_fn: JobFn, job: Job, job_dir: Path) -> dict:
    """One attempt of ``job``, where it runs, under the job's lock: count it, time it, and on
    success write ``done.json`` (the record returned); on failure keep the traceback in
    ``error.log``. A job an overlapping attempt finished meanwhile is not run again."""
    with job_lock(job_dir):
        record = read_done(job, job_dir)
        return record if record is not None else _attempt(job_fn, job, job_dir)


def _attempt(job_fn: JobFn, job: Job, job_dir: Path) -> dict:
    attempts = _read_attempts(job_dir) + 1
    write_json(job_dir / ATTEMPTS_FILE, {"attempts": attempts})
    start = time.perf_counter()
    with job_log(job_dir / LOG_FILE) as log:
        log.info("attempt %d of %s on %s (pid %d)", attempts, job.key, platform.node(),
                 os.getpid())
        try:
            result = job_fn(job, job_dir)
            if not isinstance(result, dict):
                raise TypeError(f"job function returned {type(result).__name__}, expected a "
                                "JSON-serialisable dict")
            # Round trip so a fresh run returns exactly what a resumed run reads back.
            result = json.loads(json.dumps(result, default=_to_builtin))
        except Exception:
            with suppress(WriteError):  # a full disk: the error itself says more
                write_text_atomic(job_dir / ERROR_FILE, traceback.format_exc())
            log.exception("attempt %d failed after %.1f s", attempts,
                          time.perf_counter() - start)
            raise
        seconds = round(time.perf_counter() - start, 3)
        log.info("attempt %d done in %.1f s", attempts, seconds)
    record = {
        "key": job.key,
        "params": job.params,
        "result": result,
        "seconds": seconds,
        "attempts": attempts,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "pid": os.getpid(),
    }
    write_json(job_dir / DONE_FILE, record)
    (job_dir / ERROR_FILE).unlink(missing_ok=True)
    return record


@contextmanager
def job_log(path: Path):
    """Append what is logged while a job runs in this process (its start and end, Python
    warnings, Lightning's and medlite's messages, a failure's traceback) to the job's
    ``path``; yields the job's logger. The console shows what it showed before."""
    with writing(path):
        handler = _QuietFileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Lightning's loggers do not propagate to the root logger.
    loggers = [logging.getLogger(name) for name in ("", "lightning.pytorch", "lightning.fabric")]
    for logger in loggers:
        logger.addHandler(handler)
    job_logger = logging.getLogger("medlite.jobs")
    level = job_logger.level
    job_logger.setLevel(logging.INFO)
    show_warning = warnings.showwarning

    def log_and_show(message, category, filename, lineno, file=None, line=None):
        job_logger.warning("%s", warnings.formatwarning(message, category, filename, lineno,
                                                        line).rstrip())
        show_warning(message, category, filename, lineno, file, line)

    warnings.showwarning = log_and_show
    try:
        yield job_logger
    finally:
        warnings.showwarning = show_warning
        job_logger.setLevel(level)
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()


class _QuietFileHandler(logging.FileHandler):
    """A fit's log is kept as well as the disk allows: a failed write (a full disk) is
    dropped instead of printing logging's traceback; the error that stops the fit says
    what happened."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        pass


def _to_builtin(value: Any) -> Any:
    """``json.dumps`` fallback: numpy scalars and arrays become Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def read_done(job: Job, job_dir: Path) -> dict | None:
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


def _check_graph(jobs: list[Job]) -> None:
    keys = [job.key for job in jobs]
    duplicates = sorted(key for key, count in Counter(keys).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate job keys: {', '.join(duplicates)}")
    known = set(keys)
    for job in jobs:
        unknown = [d for d in job.depends_on if d not in known]
        if unknown:
            raise ValueError(f"job {job.key!r} depends on unknown job {unknown[0]!r}")
    # Kahn's algorithm: every job must become ready eventually.
    remaining = {job.key: set(job.depends_on) for job in jobs}
    while remaining:
        ready = [k for k, deps in remaining.items() if not deps]
        if not ready:
            raise ValueError(f"jobs depend on each other in a cycle: {', '.join(remaining)}")
        for key in ready:
            del remaining[key]
        for deps in remaining.values():
            deps.difference_update(ready)


def run_jobs(
    jobs: Sequence[Job],
    job_fn: JobFn,
    jobs_dir: Path,
    executor: Executor | None = None,
    progress: bool = True,
    status_file: Path | None = None,
    after_done: Callable[[Job, Path], None] | None = None,
) -> dict[str, dict]:
    """Run every unfinished job once its dependencies are done; return results by key.

    Finished jobs (``jobs_dir/key/done.json`` exists) are not run again; their stored result
    is returned. A failing job does not stop the jobs that do not depend on it; the ones
    that do are ``blocked``. The status table (``status_file``, default
    ``jobs_dir/jobs.csv``) is rewritten atomically after every job.

    Args:
        jobs: the jobs, keys unique, dependencies acyclic.
        job_fn: ``job_fn(job, job_dir) -> dict``, see the module docstring; picklable when the
            executor runs it in other processes.
        jobs_dir: parent of the job folders (created when missing).
        executor: default :class:`SequentialExecutor`.
        progress: show a tqdm bar of jobs done / total.
        after_done: called in this process with each job that finished in this call, after
            its ``done.json`` exists (e.g. to remove its checkpoints).

    Returns:
        ``{key: result}`` in the order of ``jobs``.

    Raises:
        ValueError: duplicate keys, unknown dependencies or a cycle.
        RunDirError: a finished job's stored params differ from the job's params.
        WriteError: a job could not write its folder (disk full, read-only): raised as
            soon as it is known, without starting the jobs still waiting.
        JobsFailed: after all runnable jobs ran, when some raised; lists each failed key.
    """
    jobs = list(jobs)
    _check_graph(jobs)
    executor = executor or SequentialExecutor()
    jobs_dir = Path(jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    status_file = Path(status_file) if status_file is not None else jobs_dir / "jobs.csv"

    rows: dict[str, dict[str, Any]] = {}
    results: dict[str, dict] = {}
    pending: dict[str, Job] = {}
    for job in jobs:
        job_dir = jobs_dir / job.key
        record = read_done(job, job_dir)
        if record is None:
            pending[job.key] = job
            rows[job.key] = _row(job.key, "pending", None, _read_attempts(job_dir), "")
        else:
            results[job.key] = record["result"]
            rows[job.key] = _row(job.key, "done", record["seconds"], record["attempts"], "")
    _write_status(rows, status_file)

    failures: dict[str, str] = {}
    fatal: list[WriteError] = []  # a full disk or a read-only folder: stop submitting
    running: dict[Any, Job] = {}  # submitted and not finished: queued or running
    started: dict[str, int] = {}  # attempts a submitted job had when it was submitted
    bar = tqdm(total=len(jobs), initial=len(results), desc="fits", unit="fit",
               disable=not progress)
    fn = functools.partial(_run_attempt, job_fn)

    def finish(future) -> None:
        job = running.pop(future)
        job_dir = jobs_dir / job.key
        error = future.exception()
        if error is not None:
            if isinstance(error, WriteError):
                fatal.append(error)
            failures[job.key] = _one_line(error)
            rows[job.key] = _row(job.key, "failed", None, _read_attempts(job_dir),
                                 failures[job.key])
        else:
            outcome = future.result()
            results[job.key] = outcome["result"]
            rows[job.key] = _row(job.key, "done", outcome["seconds"], outcome["attempts"], "")
            if after_done is not None:
                after_done(job, job_dir)
            bar.update(1)
        show_state()
        _write_status(rows, status_file)

    def show_state() -> None:
        active = sum(rows[job.key]["status"] == "running" for job in running.values())
        bar.set_postfix(running=active, queued=len(running) - active, failed=len(failures),
                        refresh=True)

    def notice_starts() -> bool:
        """A submitted job has started when its attempt count went up (the worker counts
        it first): queued -> running. Returns whether any did."""
        changed = False
        for job in running.values():
            row = rows[job.key]
            if row["status"] == "queued":
                attempts = _read_attempts(jobs_dir / job.key)
                if attempts > started[job.key]:
                    rows[job.key] = _row(job.key, "running", None, attempts, "")
                    changed = True
        return changed

    try:
        while (pending or running) and not fatal:
            for key in [k for k, job in pending.items()
                        if any(d in failures for d in job.depends_on)]:
                failed = next(d for d in pending[key].depends_on if d in failures)
                failures[key] = f"not run: {failed} failed"
                rows[key] = _row(key, "blocked", None, 0, failures[key])
                del pending[key]
            ready = [job for job in pending.values()
                     if all(d in results for d in job.depends_on)]
            for job in ready:
                if fatal:
                    break
                del pending[job.key]
                job_dir = jobs_dir / job.key
                job_dir.mkdir(exist_ok=True)
                started[job.key] = _read_attempts(job_dir)
                rows[job.key] = _row(job.key, "running" if executor.starts_at_submit
                                     else "queued", None, started[job.key], "")
                _write_status(rows, status_file)
                running[executor.submit(fn, job, job_dir)] = job
                show_state()
                for future in [f for f in running if f.done()]:  # an in-process executor
                    finish(future)
            _write_status(rows, status_file)
            if not running:
                if ready:  # they finished where they were submitted: look again
                    continue
                break
            finished = executor.wait(running, timeout=STATUS_POLL_SECONDS)
            for future in finished:
                finish(future)
            if not finished and notice_starts():
                show_state()
                _write_status(rows, status_file)
    finally:
        bar.close()
        executor.close()

    if fatal:
        raise fatal[0]
    if failures:
        problems = [f"{key}: {error}" for key, error in failures.items()]
        blocked = sum(error.startswith("not run:") for error in failures.values())
        waiting = f", {blocked} more could not start" if blocked else ""
        raise JobsFailed(
            f"{len(failures) - blocked} of {len(jobs)} jobs failed{waiting} (tracebacks in "
            f"each job's {ERROR_FILE}, status in {status_file}); the first: {problems[0]}",
            problems=problems,
            results={job.key: results[job.key] for job in jobs if job.key in results},
        )
    return {job.key: results[job.key] for job in jobs}


def _row(key: str, status: str, seconds: float | None, attempts: int, error: str) -> dict:
    return {"key": key, "status": status, "seconds": seconds, "attempts": attempts, "error": error}


def _write_status(rows: dict[str, dict[str, Any]], path: Path) -> None:
    table = pd.DataFrame(list(rows.values()), columns=list(STATUS_COLUMNS))
    with atomic_target(path) as tmp:
        table.to_csv(tmp, index=False)
