"""Resumable job lists: skipping finished jobs, failures, job-level resume, executors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medlite.errors import MedliteError, RunDirError
from medlite.training.jobs import (
    Executor,
    Job,
    JobsFailed,
    ProcessExecutor,
    SequentialExecutor,
    make_executor,
    run_jobs,
)


def square_job(job: Job, job_dir: Path) -> dict:
    """Counts its calls in a file of its own folder, so a test sees which jobs ran."""
    with open(job_dir / "calls.txt", "a") as handle:
        handle.write("call\n")
    return {"square": job.params["x"] ** 2}


def calls(job_dir: Path) -> int:
    path = job_dir / "calls.txt"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def fails_once_job(job: Job, job_dir: Path) -> dict:
    """Raises on its first call when params ask for it (a marker file remembers the call)."""
    marker = job_dir / "failed-before"
    if job.params.get("fail_once") and not marker.exists():
        marker.touch()
        raise ValueError(f"bad fold {job.params['x']}\nsecond line of detail")
    return square_job(job, job_dir)


def counting_job(job: Job, job_dir: Path) -> dict:
    """Counts to ``steps``, saving its state after each step; "crashes" once at ``crash_at``.

    Like a training loop with checkpoints: on a new attempt it continues from its state file.
    """
    state_path = job_dir / "state.json"
    step = json.loads(state_path.read_text())["step"] if state_path.exists() else 0
    crashed = job_dir / "crashed"
    while step < job.params["steps"]:
        if step == job.params["crash_at"] and not crashed.exists():
            crashed.touch()
            raise RuntimeError(f"killed at step {step}")
        with open(job_dir / "executed.txt", "a") as handle:
            handle.write(f"{step}\n")
        step += 1
        state_path.write_text(json.dumps({"step": step}))
    return {"final_step": step}


def worker_info_job(job: Job, job_dir: Path) -> dict:
    return {"pid": os.getpid(), "threads": torch.get_num_threads(), "double": 2 * job.params["x"]}


def jobs_of(*values: int, **extra) -> list[Job]:
    return [Job(f"job-{value}", {"x": value, **extra}) for value in values]


def test_sequential_run_returns_results_and_writes_done_records(tmp_path):
    results = run_jobs(jobs_of(2, 3), square_job, tmp_path, progress=False)

    assert results == {"job-2": {"square": 4}, "job-3": {"square": 9}}
    record = json.loads((tmp_path / "job-3" / "done.json").read_text())
    assert record["result"] == {"square": 9}
    assert record["params"] == {"x": 3}
    assert record["attempts"] == 1
    assert record["seconds"] >= 0
    table = pd.read_csv(tmp_path / "jobs.csv", keep_default_na=False)
    assert list(table.columns) == ["key", "status", "seconds", "attempts", "error"]
    assert table["key"].tolist() == ["job-2", "job-3"]
    assert table["status"].tolist() == ["done", "done"]
    assert table["attempts"].tolist() == [1, 1]
    assert table["error"].tolist() == ["", ""]


def test_resume_skips_finished_jobs_and_returns_stored_results(tmp_path):
    first = run_jobs(jobs_of(1, 2), square_job, tmp_path, progress=False)
    # The second run adds a job: only the new one runs.
    second = run_jobs(jobs_of(1, 2, 5), square_job, tmp_path, progress=False)

    assert [calls(tmp_path / f"job-{x}") for x in (1, 2, 5)] == [1, 1, 1]
    assert second == {**first, "job-5": {"square": 25}}


def test_failed_job_is_reported_others_finish_and_a_rerun_retries_it(tmp_path):
    jobs = [*jobs_of(1, 3), Job("job-2", {"x": 2, "fail_once": True})]

    with pytest.raises(JobsFailed) as caught:
        run_jobs(jobs, fails_once_job, tmp_path, progress=False)

    error = caught.value
    assert isinstance(error, MedliteError)
    assert error.problems == ["job-2: ValueError: bad fold 2"]
    assert "1 of 3 jobs failed" in str(error)
    assert error.results == {"job-1": {"square": 1}, "job-3": {"square": 9}}
    assert (tmp_path / "job-1" / "done.json").is_file()
    assert (tmp_path / "job-3" / "done.json").is_file()
    assert not (tmp_path / "job-2" / "done.json").exists()
    assert "second line of detail" in (tmp_path / "job-2" / "error.log").read_text()
    table = pd.read_csv(tmp_path / "jobs.csv", keep_default_na=False).set_index("key")
    assert table.loc["job-2", "status"] == "failed"
    assert table.loc["job-2", "error"] == "ValueError: bad fold 2"
    assert table.loc["job-2", "seconds"] == ""
    assert table.loc["job-1", "status"] == "done"

    results = run_jobs(jobs, fails_once_job, tmp_path, progress=False)

    assert results["job-2"] == {"square": 4}
    assert [calls(tmp_path / f"job-{x}") for x in (1, 2, 3)] == [1, 1, 1]
    assert json.loads((tmp_path / "job-2" / "done.json").read_text())["attempts"] == 2
    assert not (tmp_path / "job-2" / "error.log").exists()
    table = pd.read_csv(tmp_path / "jobs.csv", keep_default_na=False)
    assert table["status"].tolist() == ["done", "done", "done"]
    assert table["attempts"].tolist() == [1, 1, 2]


def test_job_function_resumes_from_its_own_state_file(tmp_path):
    job = Job("counter", {"steps": 5, "crash_at": 3})

    with pytest.raises(JobsFailed, match="RuntimeError: killed at step 3"):
        run_jobs([job], counting_job, tmp_path, progress=False)
    results = run_jobs([job], counting_job, tmp_path, progress=False)

    assert results == {"counter": {"final_step": 5}}
    # Steps 0-2 ran before the crash and were not repeated.
    executed = (tmp_path / "counter" / "executed.txt").read_text().split()
    assert executed == ["0", "1", "2", "3", "4"]


def test_numpy_results_are_stored_as_json_numbers_and_non_dicts_fail(tmp_path):
    results = run_jobs([Job("numpy")], _returns_numpy, tmp_path, progress=False)["numpy"]
    stored = json.loads((tmp_path / "numpy" / "done.json").read_text())["result"]
    assert results == stored == {"mae": 0.5, "per_sample": [1.0, 2.0]}
    assert type(results["mae"]) is float

    with pytest.raises(JobsFailed, match="returned int, expected"):
        run_jobs([Job("int")], _returns_int, tmp_path, progress=False)
    with pytest.raises(JobsFailed, match="set is not JSON-serialisable"):
        run_jobs([Job("set")], _returns_set, tmp_path, progress=False)


def _returns_numpy(job: Job, job_dir: Path) -> dict:
    return {"mae": np.float32(0.5), "per_sample": np.array([1.0, 2.0])}


def _returns_int(job: Job, job_dir: Path) -> int:
    return 3


def _returns_set(job: Job, job_dir: Path) -> dict:
    return {"ids": {1, 2}}


def test_duplicate_keys_are_refused_before_anything_runs(tmp_path):
    jobs = [*jobs_of(1, 2), Job("job-1", {"x": 7})]
    with pytest.raises(ValueError, match="duplicate job keys: job-1"):
        run_jobs(jobs, square_job, tmp_path, progress=False)
    assert not (tmp_path / "job-2").exists()


@pytest.mark.parametrize("key", ["a/b", "..", ".hidden", "", "a b"])
def test_unsafe_keys_are_refused(key):
    with pytest.raises(ValueError, match="not filesystem-safe"):
        Job(key, {})


def test_params_must_be_json_serialisable():
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        Job("a", {"path": Path("x")})


def test_finished_job_with_other_params_is_refused_on_resume(tmp_path):
    run_jobs(jobs_of(1), square_job, tmp_path, progress=False)
    with pytest.raises(RunDirError, match="finished with params"):
        run_jobs([Job("job-1", {"x": 9})], square_job, tmp_path, progress=False)


def test_make_executor_picks_by_name_and_worker_count():
    assert isinstance(make_executor("sequential", 4), SequentialExecutor)
    assert isinstance(make_executor("processes", 1), SequentialExecutor)
    executor = make_executor("processes", 2)
    assert isinstance(executor, ProcessExecutor)
    assert executor.threads_per_worker == max(1, (os.cpu_count() or 1) // 2)
    with pytest.raises(ValueError, match="at least 1"):
        make_executor("processes", 0)
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("ray", 2)


def order_job(job: Job, job_dir: Path) -> dict:
    """Records when it ran, and which of its dependencies were done by then."""
    done = [d for d in job.depends_on if (job_dir.parent / d / "done.json").is_file()]
    return {"done_before": done, "x": job.params.get("x", 0)}


def test_jobs_wait_for_their_dependencies(tmp_path):
    jobs = [Job("stack", {}, depends_on=("fold-0", "fold-1")),
            Job("fold-0", {"x": 0}), Job("fold-1", {"x": 1}),
            Job("refit", {}, depends_on=("stack",))]
    results = run_jobs(jobs, order_job, tmp_path, progress=False)
    assert results["stack"]["done_before"] == ["fold-0", "fold-1"]
    assert results["refit"]["done_before"] == ["stack"]
    assert list(results) == ["stack", "fold-0", "fold-1", "refit"]  # in the order given


def test_a_failed_dependency_blocks_only_its_dependents(tmp_path):
    jobs = [Job("job-2", {"x": 2, "fail_once": True}),
            Job("after", {"x": 5}, depends_on=("job-2",)), *jobs_of(3)]
    with pytest.raises(JobsFailed) as caught:
        run_jobs(jobs, fails_once_job, tmp_path, progress=False)
    assert "1 of 3 jobs failed, 1 more could not start" in str(caught.value)
    assert caught.value.problems[1] == "after: not run: job-2 failed"
    assert sorted(caught.value.results) == ["job-3"]
    table = pd.read_csv(tmp_path / "jobs.csv", keep_default_na=False).set_index("key")
    assert table.loc["after", "status"] == "blocked"
    results = run_jobs(jobs, fails_once_job, tmp_path, progress=False)
    assert sorted(results) == ["after", "job-2", "job-3"]


@pytest.mark.parametrize("jobs, message", [
    ([Job("a", depends_on=("b",))], "unknown job 'b'"),
    ([Job("a", depends_on=("b",)), Job("b", depends_on=("a",))], "cycle"),
])
def test_unknown_dependencies_and_cycles_are_refused(tmp_path, jobs, message):
    with pytest.raises(ValueError, match=message):
        run_jobs(jobs, square_job, tmp_path, progress=False)


def test_process_executor_explains_an_unpicklable_job_function(tmp_path):
    def local_job(job: Job, job_dir: Path) -> dict:
        return {}

    with pytest.raises(TypeError, match="module level"):
        run_jobs(jobs_of(1), local_job, tmp_path, ProcessExecutor(2), progress=False)


def test_process_executor_runs_jobs_in_spawned_workers(tmp_path):
    jobs = [*jobs_of(1, 2, 3), Job("job-4", {"x": 4, "fail_once": True})]
    with pytest.raises(JobsFailed) as caught:
        executor = ProcessExecutor(2, threads_per_worker=1)
        run_jobs(jobs, _worker_job, tmp_path, executor, progress=False)

    assert caught.value.problems == ["job-4: ValueError: bad fold 4"]
    results = caught.value.results
    assert sorted(results) == ["job-1", "job-2", "job-3"]
    assert [results[f"job-{x}"]["double"] for x in (1, 2, 3)] == [2, 4, 6]
    assert all(result["threads"] == 1 for result in results.values())
    assert os.getpid() not in {result["pid"] for result in results.values()}
    assert (tmp_path / "job-4" / "error.log").is_file()


def _worker_job(job: Job, job_dir: Path) -> dict:
    if job.params.get("fail_once"):
        fails_once_job(job, job_dir)
    return worker_info_job(job, job_dir)


def status_job(job: Job, job_dir: Path) -> dict:
    """Returns the status table as this job sees it while it runs."""
    table = pd.read_csv(job_dir.parent / "jobs.csv", keep_default_na=False)
    return dict(zip(table["key"], table["status"], strict=True))


def test_status_is_written_as_each_job_starts_and_ends(tmp_path):
    results = run_jobs(jobs_of(1, 2, 3), status_job, tmp_path, progress=False)
    assert results["job-2"] == {"job-1": "done", "job-2": "running", "job-3": "pending"}
    assert results["job-3"]["job-2"] == "done"


def test_an_overlapping_attempt_waits_for_the_first_and_does_not_run_again(tmp_path):
    """The driver killed and resumed while a worker still runs the first attempt: the
    second attempt waits on the job's lock and returns what the first wrote."""
    import threading
    import time

    from medlite.training.jobs import _attempt, _run_attempt, job_lock

    job = Job("fold0", {"x": 3})
    job_dir = tmp_path / "fold0"
    job_dir.mkdir()
    outcome = {}
    with job_lock(job_dir):  # the first attempt, still running
        second = threading.Thread(
            target=lambda: outcome.update(record=_run_attempt(square_job, job, job_dir)))
        second.start()
        time.sleep(0.5)
        assert second.is_alive() and calls(job_dir) == 0
        first = _attempt(square_job, job, job_dir)
    second.join(timeout=10)
    assert outcome["record"] == first and outcome["record"]["result"] == {"square": 9}
    assert calls(job_dir) == 1


def slow_job(job: Job, job_dir: Path) -> dict:
    import time

    time.sleep(job.params["seconds"])
    return {}


class OneThreadExecutor(Executor):
    """One worker (a thread): the second job waits for the first, as on a busy cluster."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=1)

    def submit(self, fn, *args):
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def test_jobs_waiting_for_a_free_worker_show_as_queued(tmp_path, monkeypatch):
    """One worker, two jobs: while the first runs the second is queued, not running."""
    import threading
    import time

    import medlite.training.jobs as jobs_module

    monkeypatch.setattr(jobs_module, "STATUS_POLL_SECONDS", 0.1)
    seen = set()
    status = tmp_path / "jobs.csv"

    def watch():
        while not stop.is_set():
            if status.is_file():
                try:
                    table = pd.read_csv(status)
                except (pd.errors.EmptyDataError, pd.errors.ParserError):
                    continue
                seen.add(tuple(table["status"]))
            time.sleep(0.05)

    stop = threading.Event()
    watcher = threading.Thread(target=watch)
    watcher.start()
    with OneThreadExecutor() as executor:
        run_jobs([Job(f"job-{i}", {"seconds": 1.5}) for i in range(2)], slow_job, tmp_path,
                 executor=executor, progress=False, status_file=status)
    stop.set()
    watcher.join()
    assert ("running", "queued") in seen
    assert ("done", "running") in seen
    assert pd.read_csv(status)["status"].tolist() == ["done", "done"]


def warning_job(job: Job, job_dir: Path) -> dict:
    import logging
    import warnings

    warnings.warn("few samples in this fold", UserWarning, stacklevel=1)
    logging.getLogger("lightning.pytorch").warning("lightning says hello")
    if job.params.get("fail"):
        raise ValueError("broken fold")
    return {}


def test_each_job_keeps_a_log_of_its_attempts(tmp_path):
    with pytest.raises(JobsFailed):
        run_jobs([Job("ok", {}), Job("bad", {"fail": True})], warning_job, tmp_path,
                 progress=False)
    good = (tmp_path / "ok" / "fit.log").read_text()
    assert "attempt 1 of ok on" in good and "done in" in good
    assert "few samples in this fold" in good and "lightning says hello" in good
    bad = (tmp_path / "bad" / "fit.log").read_text()
    assert "attempt 1 failed" in bad and "ValueError: broken fold" in bad
    run_jobs([Job("ok", {})], warning_job, tmp_path, progress=False)  # done: not run again
    assert (tmp_path / "ok" / "fit.log").read_text() == good
