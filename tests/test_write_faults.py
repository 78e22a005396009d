"""Faults while medlite writes: a full disk, a read-only folder, two processes on one run.

Each is one line on stderr with exit code 2, names the folder and the file (or the lock and
its holder), leaves no half-written file and no ``done.json`` / ``metrics.json`` for work
that did not finish; a full disk's run finishes with ``--resume`` once there is room.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from medlite.cli import main
from medlite.datasets.lesions import write_lesion_dataset
from medlite.errors import RunDirError
from medlite.runs import LOCK_FILE, lock_holder, run_lock

CONFIG = """task: segmentation
data: {manifest: data/manifest.csv, image_size: [32, 32]}
model: {name: tinyunet, kwargs: {widths: [16, 16, 16, 16]}}
trainer: {max_epochs: 1, batch_size: 4, threads: 1, early_stopping_patience: null}
split: {val_fraction: 0.2, test_fraction: 0.2}
evaluation: {bootstrap_resamples: 0}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    write_lesion_dataset(root / "data", n_subjects=6, images_per_subject=1, size=(32, 32),
                         seed=3)
    (root / "tiny.yaml").write_text(CONFIG)
    return root / "tiny.yaml"


@pytest.fixture(scope="module")
def trained(config) -> Path:
    run = config.parent / "trained"
    assert main(["train", str(config), "--out", str(run), "--no-progress"]) == 0
    return run


def train(config: Path, run: Path, *flags: str) -> int:
    return main(["train", str(config), "--out", str(run), "--no-progress", *flags])


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("medlite: error: "), lines
    return lines[0]


class WriteFault:
    """Makes the atomic writers' final rename of files whose path ends with ``suffix`` fail
    with ``OSError(code)``, as a full disk or a read-only mount would."""

    def __init__(self, monkeypatch):
        self.suffix: str | None = None
        self.code = errno.ENOSPC
        self.hits = 0
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            if self.suffix is not None and str(dst).endswith(self.suffix):
                self.hits += 1
                raise OSError(self.code, os.strerror(self.code), str(src))
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)

    def fail(self, suffix: str, code: int = errno.ENOSPC) -> None:
        self.suffix, self.code = suffix, code

    def clear(self) -> None:
        self.suffix = None


@pytest.fixture
def fault(monkeypatch) -> WriteFault:
    return WriteFault(monkeypatch)


def leftovers(folder: Path) -> list[str]:
    """Temporary files of the atomic writers and run locks left in ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.endswith(".tmp") or p.relative_to(folder).as_posix() == LOCK_FILE)


# -- a full disk -------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["fits/main/checkpoints/last.ckpt", "fits/main/done.json",
                                    "metrics.json"])
def test_a_full_disk_during_training_is_one_line_and_resume_finishes(config, tmp_path, fault,
                                                                     capsys, target):
    run = tmp_path / "run"
    fault.fail(target)
    assert train(config, run) == 2
    line = one_error_line(capsys)
    name = Path(target).name
    assert f"{(run / target).parent}: disk full while writing {name}" in line
    assert "--resume" in line and fault.hits == 1
    assert not (run / "metrics.json").exists()
    if target != "metrics.json":
        assert not (run / "fits" / "main" / "done.json").exists()
    assert leftovers(run) == []

    fault.clear()
    assert train(config, run, "--resume") == 0
    assert (run / "fits" / "main" / "done.json").is_file()
    assert "finished" in json.loads((run / "run.json").read_text())
    assert json.loads((run / "metrics.json").read_text())["metrics"]
    assert leftovers(run) == []


def test_a_full_disk_during_evaluation_keeps_no_metrics(trained, tmp_path, fault, capsys):
    out = tmp_path / "evaluation"
    fault.fail("evaluation/metrics.json")
    assert main(["evaluate", str(trained), "--out", str(out)]) == 2
    assert f"{out}: disk full while writing metrics.json" in one_error_line(capsys)
    assert (out / "per_sample.csv").is_file() and not (out / "metrics.json").exists()
    assert leftovers(out) == []
    fault.clear()
    assert main(["evaluate", str(trained), "--out", str(out), "--overwrite"]) == 0
    assert (out / "metrics.json").is_file()


def test_a_full_disk_outside_the_atomic_writers_is_one_line_too(trained, tmp_path,
                                                              monkeypatch, capsys):
    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fp))

    monkeypatch.setattr(Image.Image, "save", full)  # the predicted masks
    out = tmp_path / "evaluation"
    assert main(["evaluate", str(trained), "--out", str(out)]) == 2
    line = one_error_line(capsys)
    assert "disk full while writing" in line and str(out / "predictions") in line
    assert not (out / "metrics.json").exists()


# -- a read-only folder ------------------------------------------------------------------------

def read_only_folder(path: Path) -> Path:
    """``path`` (made when missing) with mode 0o555; skips the test where that does not stop
    writes (root, as in CI)."""
    path.mkdir(exist_ok=True)
    path.chmod(0o555)
    try:
        (path / "probe").touch()
    except PermissionError:
        return path
    (path / "probe").unlink()
    path.chmod(0o755)
    pytest.skip("chmod 0o555 does not stop this user's writes (root)")


def test_a_read_only_output_folder_is_named(config, tmp_path, capsys):
    parent = read_only_folder(tmp_path / "read-only")
    try:
        assert train(config, parent / "run") == 2
    finally:
        parent.chmod(0o755)
    line = one_error_line(capsys)
    assert str(parent) in line and "permission denied" in line
    assert list(parent.iterdir()) == []


def test_evaluating_a_read_only_run_names_it(trained, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    read_only_folder(run)
    try:
        assert main(["evaluate", str(run)]) == 2
        line = one_error_line(capsys)
        assert f"{run}: permission denied while writing {LOCK_FILE}" in line
        # Written elsewhere, the evaluation needs nothing from the run but reading it.
        assert main(["evaluate", str(run), "--out", str(tmp_path / "elsewhere")]) == 0
    finally:
        run.chmod(0o755)


@pytest.mark.parametrize(("code", "said"), [(errno.EROFS, "read-only file system"),
                                            (errno.EACCES, "permission denied")])
def test_a_folder_that_cannot_be_written_is_named(config, tmp_path, fault, capsys, code, said):
    run = tmp_path / "run"
    fault.fail("run.json", code)
    assert train(config, run) == 2
    line = one_error_line(capsys)
    assert f"{run}: {said} while writing run.json" in line
    assert not (run / "run.json").exists() and leftovers(run) == []


def test_an_evaluation_inside_a_read_only_run_is_named(trained, fault, capsys):
    fault.fail("per_sample.csv", errno.EROFS)
    assert main(["evaluate", str(trained), "--split", "val"]) == 2
    line = one_error_line(capsys)
    assert f"{trained / 'evaluations' / 'val'}: read-only file system while writing" in line
    assert not (trained / "evaluations" / "val" / "metrics.json").exists()
    assert leftovers(trained) == []


# -- two processes on one run ------------------------------------------------------------------

@contextmanager
def lock_held_elsewhere(run: Path):
    """Another process holding ``run``'s lock until the block ends (then it releases it and
    exits); yields its pid."""
    script = ("import sys\nfrom medlite.runs import run_lock\n"
              "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    sys.stdin.read()\n")
    process = subprocess.Popen([sys.executable, "-c", script, str(run)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process.pid
    finally:
        process.stdin.close()
        if process.wait(timeout=60) != 0:
            process.kill()


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and folder under ``folder`` (itself included): modification time, bytes."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns,
                                         p.read_bytes() if p.is_file() else b"")
            for p in [folder, *sorted(folder.rglob("*"))]}


def test_a_run_another_process_writes_is_refused_and_left_alone(config, trained, tmp_path,
                                                                capsys):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    with lock_held_elsewhere(run) as pid:
        before = snapshot(run)
        commands = [["train", str(config), "--out", str(run), "--no-progress"],
                    ["train", str(config), "--out", str(run), "--no-progress", "--resume"],
                    ["train", str(config), "--out", str(run), "--no-progress", "--overwrite"],
                    ["evaluate", str(run)],
                    ["predict", str(run), str(config.parent / "data"), "--out",
                     str(run / "masks")]]
        for command in commands:
            assert main(command) == 2, command
            line = one_error_line(capsys)
            assert f"{run / LOCK_FILE}: the run is in use by pid {pid} on " \
                   f"{platform.node()}" in line, command
            assert snapshot(run) == before, command
    assert not (run / LOCK_FILE).exists()  # its holder released it
    # Predictions written outside the run do not need its lock.
    with lock_held_elsewhere(run):
        images = sorted((config.parent / "data").rglob("*.jpg"))[:1]
        assert main(["predict", str(run), str(images[0]), "--out", str(tmp_path / "masks")]) == 0


def test_the_lock_of_a_dead_process_is_taken_over(config, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    stale = {"pid": ended.pid, "host": platform.node(), "started": "earlier", "command": "x"}
    (run / LOCK_FILE).write_text(json.dumps(stale))
    with pytest.warns(UserWarning, match=f"taking over the lock of pid {ended.pid}"):
        assert train(config, run) == 0
    assert (run / "metrics.json").is_file() and not (run / LOCK_FILE).exists()


def test_run_lock_records_its_holder_and_refuses_unknown_ones(tmp_path):
    run = tmp_path / "run"
    with run_lock(run) as lock:
        holder = lock_holder(lock)
        assert holder["pid"] == os.getpid() and holder["host"] == platform.node()
        with run_lock(run):  # a nested call in the same process
            pass
        assert lock.is_file()
    assert not run.exists()  # made for the lock, left empty: removed again
    run.mkdir()
    # Another host's lock (its pid cannot be checked), or one that cannot be read.
    for content in (json.dumps({"pid": 1, "host": "elsewhere", "started": "s", "command": "c"}),
                    ""):
        (run / LOCK_FILE).write_text(content)
        with pytest.raises(RunDirError, match="in use by") as caught, run_lock(run):
            pass
        assert "\n" not in str(caught.value) and (run / LOCK_FILE).read_text() == content
    (run / LOCK_FILE).unlink()


def test_the_lock_is_released_when_training_fails(config, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace("data/manifest.csv", str(tmp_path / "missing.csv")))
    assert train(bad, tmp_path / "run") == 2
    assert "missing.csv" in one_error_line(capsys)
    assert not (tmp_path / "run" / LOCK_FILE).exists()
