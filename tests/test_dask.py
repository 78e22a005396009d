"""Fit plans on Dask distributed, on loopback only: a LocalCluster medlite starts, and a
scheduler and workers started as separate commands, as a user would on a real cluster."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from medlite.cli import main
from medlite.errors import ConfigError
from medlite.training.dask_executor import DaskExecutor

FOLDS = ["subject-fold0", "subject-fold1"]
# The fits each task's test trains again, and the files that must come out the same.
RETRAINED = {
    "stress": (FOLDS, [f"fits/{fold}/predictions.csv" for fold in FOLDS]),
    "pasi": (["mobilenet_v3_small-components-fold0", "mobilenet_v3_small-components-fold1",
              "stacking"],
             ["fits/mobilenet_v3_small-components-fold0/predictions.csv",
              "fits/mobilenet_v3_small-components-fold1/predictions.csv",
              "fits/stacking/out_of_fold.csv", "fits/stacking/ensemble.json"]),
}


def retrain_folds(trained: Path, run: Path, *settings: str, task: str = "stress") -> None:
    """Copy a finished sequential run, delete its out-of-fold fits and train them again with
    another executor (``--resume`` keeps every other fit)."""
    shutil.copytree(trained, run)
    for key in RETRAINED[task][0]:
        shutil.rmtree(run / "fits" / key)
    assert main(["train", str(run / "config.yaml"), "--out", str(run), "--resume",
                 "--no-progress", *settings]) == 0


def assert_same_fits(run: Path, trained: Path, task: str = "stress") -> None:
    for name in RETRAINED[task][1]:
        assert (run / name).read_bytes() == (trained / name).read_bytes(), name
    assert (run / "per_sample.csv").read_bytes() == (trained / "per_sample.csv").read_bytes()


def inet_addresses(processes: list[psutil.Process]) -> set[str]:
    addresses = set()
    for process in processes:
        try:
            for connection in process.net_connections(kind="inet"):
                addresses.add(connection.laddr.ip)
                if connection.raddr:
                    addresses.add(connection.raddr.ip)
        except psutil.Error:
            continue
    return addresses


def test_local_cluster_listens_on_loopback_only(tmp_path):
    with DaskExecutor(workers=2, threads_per_worker=1, shared_path=tmp_path) as executor:
        pids = {executor.submit(os.getpid).result() for _ in range(6)}
        assert executor.client.scheduler_info()["address"].startswith("tcp://127.0.0.1:")
        tree = [psutil.Process(), *psutil.Process().children(recursive=True)]
        assert pids <= {p.pid for p in tree}
        addresses = inet_addresses(tree)
    assert addresses and addresses <= {"127.0.0.1"}, addresses


@pytest.mark.parametrize("needs", [{"cpus": 2}, {"gpus": 1}])
def test_fits_no_worker_can_take_are_refused_at_start(tmp_path, needs):
    with pytest.raises(ConfigError, match="resources_per_fit: no Dask worker has") as info, \
            DaskExecutor(workers=1, threads_per_worker=1, shared_path=tmp_path,
                         resources=needs) as executor:
        executor.client  # noqa: B018 (connecting runs the check)
    assert "cpus=1" in str(info.value)  # what the workers have


def test_a_run_folder_the_workers_cannot_see_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not visible from Dask worker"), \
            DaskExecutor(workers=1, shared_path=tmp_path / "elsewhere") as executor:
        executor.client  # noqa: B018 (connecting runs the check)


def test_dask_local_cluster_gives_the_sequential_pasi_ensemble(tiny_runs, tmp_path):
    """A PASI plan: base fits on two workers, then the stacking fit that needs them all.
    (The stress CV plan on a LocalCluster is the driver-killed test below.)"""
    task = "pasi"
    trained = tiny_runs[task]
    run = tmp_path / "run"
    retrain_folds(trained, run, "--set", "executor.name=dask", "--set", "executor.workers=2",
                  task=task)
    assert yaml.safe_load((run / "config.yaml").read_text())["executor"]["name"] == "dask"
    keys = RETRAINED[task][0]
    assert (pd.read_csv(run / "fits.csv").set_index("key")["attempts"][keys] == 1).all()
    assert_same_fits(run, trained, task)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_scheduler_and_workers_started_apart_train_the_plan(tiny_runs, tmp_path):
    """Two "nodes", one of which declares 2 cores: fits that need 2 cores all go there."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    common = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": tmp_path}
    scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                                  "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], **common)
    workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address,
                                 "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                                 "--name", f"node{i}", "--resources", f"cpus={i + 1}"],
                                **common) for i in range(2)]
    try:
        from distributed import Client

        deadline = time.monotonic() + 120
        while True:
            try:
                with Client(address, timeout="5s") as client:
                    if len(client.scheduler_info()["workers"]) == 2:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the workers did not join the scheduler"
            time.sleep(1)
        trained = tiny_runs["stress"]
        run = tmp_path / "run"
        retrain_folds(trained, run, "--set", "executor.name=dask",
                      "--set", f"executor.address={address}",
                      "--set", "executor.resources_per_fit.cpus=2")
        assert_same_fits(run, trained)
        two_cores = {p.pid for p in psutil.Process(workers[1].pid).children(recursive=True)}
        two_cores.add(workers[1].pid)
        for fold in FOLDS:
            assert json.loads((run / "fits" / fold / "done.json").read_text())["pid"] \
                in two_cores, fold
    finally:
        for process in (*workers, scheduler):
            process.terminate()
        for process in (*workers, scheduler):
            process.wait(timeout=30)


def test_slurm_script_from_the_config(tmp_path, capsys):
    config = tmp_path / "pasi.yaml"
    config.write_text(yaml.safe_dump({
        "task": "pasi", "data": {"photos": "photos.csv", "scores": "scores.csv"},
        "executor": {"name": "dask", "cluster": {
            "queue": "gpu", "account": "derm-lab", "cores": 4, "memory": "16GB",
            "walltime": "02:00:00", "jobs": 10, "gpus": 1, "job_extra": ["--qos=short"],
            "prologue": ["source /home/me/medlite/.venv/bin/activate"]}}}))
    assert main(["cluster", "script", str(config)]) == 0
    script = capsys.readouterr().out
    for line in ("#SBATCH -J medlite", "#SBATCH -p gpu", "#SBATCH -A derm-lab",
                 "#SBATCH --cpus-per-task=4", "#SBATCH -t 02:00:00", "#SBATCH --gres=gpu:1",
                 "#SBATCH --qos=short", "source /home/me/medlite/.venv/bin/activate",
                 "export OMP_NUM_THREADS=4"):
        assert line in script.splitlines(), line
    assert "--nthreads 1" in script  # one fit at a time per worker
    assert "--resources cpus=4,gpus=1" in script
    config.write_text(yaml.safe_dump({"task": "pasi", "data": {"photos": "p.csv",
                                                               "scores": "s.csv"}}))
    assert main(["cluster", "script", str(config)]) == 2


def test_a_worker_killed_mid_fit_is_replaced_and_the_fit_resumes(tiny_runs, tmp_path):
    """SIGKILL every worker process once the first out-of-fold fit has checkpointed an
    epoch: Dask's nannies start new workers, the scheduler hands the fits to them, each
    resumes from its last.ckpt, and the results are the uninterrupted run's."""
    import signal
    import threading

    trained = tiny_runs["stress"]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for fold in FOLDS:
        shutil.rmtree(run / "fits" / fold)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    outcome = {}

    def train():
        outcome["code"] = main(["train", str(run / "config.yaml"), "--out", str(run),
                                "--resume", "--no-progress", "--set", "executor.name=dask",
                                "--set", "executor.workers=2"])

    thread = threading.Thread(target=train)
    thread.start()
    checkpoint = run / "fits" / FOLDS[0] / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and thread.is_alive():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    killed = 0
    for process in psutil.Process().children(recursive=True):
        if process.pid not in before and "spawn_main" in " ".join(process.cmdline()):
            process.send_signal(signal.SIGKILL)
            killed += 1
    thread.join(timeout=600)
    assert killed >= 1 and outcome["code"] == 0
    attempts = pd.read_csv(run / "fits.csv").set_index("key")["attempts"]
    assert attempts[FOLDS[0]] >= 2  # it was started again after the kill
    assert_same_fits(run, trained)


def test_the_driver_killed_mid_plan_leaves_no_worker_and_resume_finishes_it(tiny_runs,
                                                                           tmp_path):
    """SIGKILL of ``medlite train`` while its LocalCluster trains: the worker processes
    exit with it (nothing trains on unseen), and ``--resume`` on a new cluster trains only
    the unfinished fits, to the uninterrupted results."""
    import signal

    trained = tiny_runs["stress"]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    for fold in FOLDS:
        shutil.rmtree(run / "fits" / fold)
    settings = ["--set", "executor.name=dask", "--set", "executor.workers=2"]
    driver = subprocess.Popen([sys.executable, "-m", "medlite.cli", "train",
                               str(run / "config.yaml"), "--out", str(run), "--resume",
                               "--no-progress", *settings],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = run / "fits" / FOLDS[0] / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and driver.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert driver.poll() is None, "the run finished before it could be killed"
    workers = psutil.Process(driver.pid).children(recursive=True)
    assert workers
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"{len(alive)} worker processes outlived the driver"
    assert not (run / "fits" / FOLDS[0] / "done.json").exists()
    assert main(["train", str(run / "config.yaml"), "--out", str(run), "--resume",
                 "--no-progress", *settings]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["executor"]["name"] == "dask"
    attempts = pd.read_csv(run / "fits.csv").set_index("key")["attempts"]
    assert attempts[FOLDS[0]] == 2 and attempts["final"] == 1
    assert_same_fits(run, trained)
