"""Folders medlite writes, and the rules that keep a user's files safe.

Every folder medlite creates (a run, an evaluation, a folder of predictions, a demo) holds a
marker file, ``.medlite``, with a random id, the folder's kind and when it was made.
medlite deletes a folder only when it carries that marker, so ``--overwrite`` can never
remove a folder the user made (a thesis folder given as ``--out`` by mistake). Every file is
written atomically (a temporary file renamed into place), so a crash or a full disk never
leaves a half-written file where a good one was.

A run's layout::

    run/
      .medlite           marker: {"id", "kind": "run", "created", "medlite"}
      config.yaml        the resolved config, every default written out
      run.json           seed, library versions, command line, times, machine
      splits.csv         one row per sample: sample, subject, split (+ fold, content_sha256)
      plan.json          the fits the task planned (key, samples, start, trainable, depends)
      fits.csv           status of every fit (pending / done / failed)
      fits/<key>/        one folder per fit: history.csv, checkpoints/, model.pt, done.json
      model.pt           the deployed weights as a plain state_dict
      history.csv        the deployed model's learning curves
      metrics.json       test (or out-of-fold) metrics with bootstrap confidence intervals
      per_sample.csv     one row per evaluated sample
      predictions/       per-sample predictions (masks...), figures/, report.html
      evaluations/<name> later evaluations (``medlite evaluate``); nothing else is written
                         into a finished run
      .lock              while a medlite process writes the run: its pid, host and command

A write that fails because the disk is full or the folder is read-only raises
:class:`~medlite.errors.WriteError` naming the folder and the file (see :func:`writing`).
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from medlite.errors import ConfigError, DataError, RunDirError, WriteError

MARKER_FILE = ".medlite"
LOCK_FILE = ".lock"
RUN_RECORD = "run.json"
CONFIG_FILE = "config.yaml"
TRACKED_PACKAGES = (
    "medlite", "torch", "torchvision", "lightning", "torchmetrics", "numpy", "scipy",
    "scikit-learn", "pandas", "pillow", "pydantic", "onnx", "onnxruntime",
)  # fmt: skip
#: Config sections that may change after training: how a trained model is applied and
#: scored, and where fits run (results do not depend on the executor).
MUTABLE_AFTER_TRAINING = ("inference", "evaluation", "executor")
#: Single keys that change where or how fast a run trains, never its numbers.
MUTABLE_KEYS = ("trainer.num_workers", "trainer.keep_checkpoints")
#: Keys that name a run rather than change it.
NAMING_KEYS = ("name", "output_dir")


# -- markers and output folders ----------------------------------------------------------------

def read_marker(path: Path) -> dict | None:
    """The marker of folder ``path`` (``{"id", "kind", ...}``), or None when it has none."""
    marker = Path(path) / MARKER_FILE
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "id" in record else None


def write_marker(path: Path, kind: str) -> dict:
    """Mark folder ``path`` as made by medlite; returns the marker record."""
    from medlite import __version__

    record = {"id": uuid.uuid4().hex, "kind": kind,
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "medlite": __version__}
    write_json(Path(path) / MARKER_FILE, record)
    return record


def _is_empty_dir(path: Path) -> bool:
    """Empty, or holding only a run lock (the caller's: see :func:`run_lock`)."""
    return path.is_dir() and all(child.name == LOCK_FILE for child in path.iterdir())


def _clear_dir(path: Path) -> None:
    """Delete everything in ``path`` but its lock (which the caller holds)."""
    for child in path.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def remove_medlite_dir(path: Path) -> None:
    """Delete folder ``path`` and everything in it, only when medlite made it."""
    path = Path(path)
    if read_marker(path) is None:
        raise RunDirError(f"{path}: not a folder medlite created (no {MARKER_FILE} marker); "
                          "refusing to delete it")
    shutil.rmtree(path)


def make_output_dir(path: Path, kind: str, *, overwrite: bool = False) -> Path:
    """Create folder ``path`` for medlite's outputs and mark it as medlite's.

    A missing or empty folder is used (and marked). An existing non-empty folder is refused
    unless ``overwrite``, and then only when medlite made it (it carries the marker): it is
    deleted and made again (but for the caller's lock), except while another live process
    holds its lock or that of a run in it. A file in the way is an error.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: exists and is not a folder")
    if path.is_dir() and not _is_empty_dir(path):
        if not overwrite:
            raise RunDirError(f"{path}: exists and is not empty; pass --overwrite to replace it "
                              "(only a folder medlite made is ever deleted) or choose another")
        if read_marker(path) is None:
            raise RunDirError(f"{path}: not a folder medlite created (no {MARKER_FILE} "
                              "marker); refusing to overwrite it: choose another folder")
        for lock in (path / LOCK_FILE, *path.glob(f"*/{LOCK_FILE}")):
            _refuse_if_held(lock)
        with writing(path, "deleting the contents of", kept_nothing=False):
            _clear_dir(path)
    with writing(path, "creating folder"):
        path.mkdir(parents=True, exist_ok=True)
    write_marker(path, kind)
    return path


def prepare_run_dir(path: Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Create ``path`` for a new run, or check it for ``resume`` (it must be a run)."""
    path = Path(path)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite cannot be used together")
    if resume:
        if not (path / RUN_RECORD).is_file():
            raise RunDirError(f"{path}: nothing to resume (no {RUN_RECORD} there)")
        return path
    if path.is_dir() and not _is_empty_dir(path) and not overwrite:
        raise RunDirError(f"{path}: run directory exists; pass --resume to continue it or "
                          "--overwrite to replace it")
    return make_output_dir(path, "run", overwrite=overwrite)


def find_run(path: Path) -> Path:
    """Check that ``path`` is a medlite run directory (finished or resumable)."""
    path = Path(path)
    if not (path / RUN_RECORD).is_file() or not (path / CONFIG_FILE).is_file():
        raise RunDirError(f"{path}: not a medlite run directory (no {RUN_RECORD} and "
                          f"{CONFIG_FILE})")
    return path


# -- comparing configs on --resume -------------------------------------------------------------

def flatten(mapping: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and other values are leaves."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def config_differences(saved: Mapping, given: Mapping, *,
                       derived: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two config dumps, except those that may
    change after training (:data:`MUTABLE_AFTER_TRAINING`), the run's name and output folder,
    and ``derived`` keys that training fills in when the given config leaves them empty."""
    before, after = flatten(saved), flatten(given)
    changed = []
    for key in sorted(set(before) | set(after)):
        if key.split(".")[0] in (*MUTABLE_AFTER_TRAINING, *NAMING_KEYS) or key in MUTABLE_KEYS:
            continue
        if key in derived and after.get(key) is None:
            continue
        if before.get(key) != after.get(key):
            changed.append(key)
    return changed


def check_resume_config(saved: Mapping, given: Mapping, source: str, *,
                        derived: tuple[str, ...] = ()) -> None:
    """Refuse to resume a run with a config that would change what it trains."""
    changed = config_differences(saved, given, derived=derived)
    if changed:
        before, after = flatten(saved), flatten(given)
        shown = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in changed[:5])
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise ConfigError(
            f"{source}: --resume with a config that differs from the run's in "
            f"{', '.join(changed)}: {shown}{more}; only "
            f"{', '.join([*(k + '.*' for k in MUTABLE_AFTER_TRAINING), *MUTABLE_KEYS])} may "
            "change. Resume without "
            "the changes, or train a new run", problems=changed)


# -- run records -------------------------------------------------------------------------------

def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def environment_record(seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What ``run.json`` records: seed, versions, command, machine, time (UTC)."""
    import torch

    return {
        "seed": seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": sys.argv,
        "versions": library_versions(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **(extra or {}),
    }


# -- atomic writes -----------------------------------------------------------------------------

@contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds the file is fsynced
    and renamed onto ``path`` (atomic on POSIX and Windows), else removed. A crash or a full
    disk never leaves a half-written file where the old one was. The file gets the usual
    permissions (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            yield tmp
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


#: errno of a failed write -> (what happened, what to do about it).
_WRITE_FAULTS = {
    errno.ENOSPC: ("disk full", "free some space and run the command again (medlite train "
                   "--resume continues a run)"),
    errno.EDQUOT: ("disk quota exceeded", "free some space and run the command again "
                   "(medlite train --resume continues a run)"),
    errno.EFBIG: ("file too large for the file system", "write to another disk"),
    errno.EROFS: ("read-only file system", "choose an output folder on a writable disk"),
    errno.EACCES: ("permission denied", "make the folder writable or choose another one"),
    errno.EPERM: ("permission denied", "make the folder writable or choose another one"),
}


@contextmanager
def writing(path: Path, action: str = "writing", *,
            kept_nothing: bool = True) -> Iterator[None]:
    """Turn an ``OSError`` of the block that says the disk is full or the folder cannot be
    written into a one-line :class:`~medlite.errors.WriteError` naming ``path``'s folder and
    ``path``; other errors pass unchanged.
    ``kept_nothing``: the block leaves no half-written file (an atomic write)."""
    try:
        yield
    except OSError as exc:
        error = write_error(exc, path, action, kept_nothing=kept_nothing)
        if error is None:
            raise
        raise error from exc


def write_error(exc: OSError, path: Path | str | None = None, action: str = "writing", *,
                kept_nothing: bool = False) -> WriteError | None:
    """The :class:`~medlite.errors.WriteError` ``exc`` stands for (None: not a write fault),
    naming ``path`` (default: the file ``exc`` names). ``kept_nothing``: the write was
    atomic, so nothing half-written is left."""
    if exc.errno not in _WRITE_FAULTS:
        return None
    what, hint = _WRITE_FAULTS[exc.errno]
    if path is None and exc.filename is None:
        return WriteError(f"{what} while {action} a file ({exc}): {hint}")
    path = Path(path if path is not None else exc.filename)
    kept = "; nothing half-written was kept" if kept_nothing else ""
    return WriteError(f"{path.parent}: {what} while {action} {path.name}{kept}: {hint}")


def write_text_atomic(path: Path, text: str) -> Path:
    with atomic_target(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    return str(value)


def write_csv_atomic(table, path: Path) -> Path:
    """Write a DataFrame as CSV (no index, ``\n`` line ends) through :func:`atomic_target`."""
    path = Path(path)
    with atomic_target(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        table.to_csv(handle, index=False, lineterminator="\n")
    return path


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_torch_atomic(obj: Any, path: Path) -> Path:
    """``torch.save`` through :func:`atomic_target` (into a Python file, so that a full
    disk raises ``OSError(ENOSPC)`` rather than torch's RuntimeError)."""
    import torch

    with atomic_target(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def load_torch_file(path: Path, map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``: tensors, containers and numbers only. A file naming
    any other global (a custom class, ``os.system``), not made by ``torch.save``, or cut short
    is refused with a one-line :class:`~medlite.errors.DataError` naming it; nothing in it
    runs."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise DataError(f"{path}: not readable with torch.load(weights_only=True) "
                        f"({unpickling_reason(exc)})") from None


def unpickling_reason(exc: BaseException) -> str:
    """One line of why ``torch.load(weights_only=True)`` refused a file."""
    text = str(exc)
    refused = re.search(r"GLOBAL ([\w.]+)", text)
    if refused:
        return (f"it names the global {refused.group(1)}, which could run code; only "
                "tensors, numbers and containers are loaded")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    boilerplate = ("Weights only load failed", "(1)", "(2)", "Check the documentation",
                   "Please file an issue")
    useful = [line for line in lines if not line.startswith(boilerplate)]
    detail = (useful or lines or [type(exc).__name__])[0]
    return detail.replace("WeightsUnpickler error: ", "")


def load_state_dict(path: Path) -> dict:
    """Load a state_dict safely (:func:`load_torch_file`) on the CPU."""
    state = load_torch_file(path)
    if not isinstance(state, Mapping):
        raise DataError(f"{path}: holds a {type(state).__name__}, not a state_dict")
    return state


# -- the run lock ------------------------------------------------------------------------------

#: The locks this process holds (resolved paths).
_HELD: set[Path] = set()


@contextmanager
def run_lock(run_dir: Path) -> Iterator[Path]:
    """Hold ``run_dir/.lock`` for the block, so that two medlite processes never write one
    run (``train`` with or without ``--resume``/``--overwrite``, an evaluation or
    predictions written inside it).

    The lock is a file created with ``O_EXCL`` holding this process's pid, host, start time
    and command. Another process's live lock is an error naming it and its holder; the lock
    of a dead process on this host (a crash, ``kill -9``) is taken over with a warning; a
    lock from another host is never guessed about. The lock is removed when the block ends,
    also on an error; a nested call in the process holding it just runs the block.
    ``run_dir`` is created when missing (and removed again when the block leaves it empty).
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: exists and is not a folder")
    lock = run_dir / LOCK_FILE
    if lock.resolve() in _HELD:
        yield lock
        return
    created = not run_dir.exists()
    with writing(run_dir, "creating folder"):
        run_dir.mkdir(parents=True, exist_ok=True)
    key = lock.resolve()
    try:
        _take_lock(lock)
        _HELD.add(key)
        yield lock
    finally:
        if key in _HELD:
            _HELD.discard(key)
            if (lock_holder(lock) or {}).get("pid") == os.getpid():
                lock.unlink(missing_ok=True)
        if created:
            with suppress(OSError):
                run_dir.rmdir()  # only when the block left it empty


@contextmanager
def lock_if_inside(run_dir: Path, out: Path | None) -> Iterator[None]:
    """Hold run ``run_dir``'s lock while writing ``out`` when ``out`` is inside it (None: the
    run's default folder for it)."""
    run_dir = Path(run_dir)
    inside = run_dir.is_dir() and (out is None or Path(out).resolve().is_relative_to(
        run_dir.resolve()))
    if not inside:
        yield
        return
    with run_lock(run_dir):
        yield


def lock_holder(lock: Path) -> dict | None:
    """The record in lock file ``lock`` (``{}`` when unreadable), or None without one."""
    try:
        record = json.loads(Path(lock).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _take_lock(lock: Path) -> None:
    record = {"pid": os.getpid(), "host": platform.node(),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join(sys.argv)}
    for _ in range(3):
        try:
            with writing(lock):
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            stale = _refuse_if_held(lock)
            if stale is not None:
                warnings.warn(f"{lock}: taking over the lock of pid {stale.get('pid')} on "
                              f"{stale.get('host')}, which is no longer running",
                              stacklevel=1)
                lock.unlink(missing_ok=True)
            continue
        try:
            with writing(lock), os.fdopen(fd, "w") as handle:
                json.dump(record, handle)
        except BaseException:
            lock.unlink(missing_ok=True)
            raise
        return
    raise RunDirError(f"{lock}: could not take the lock (other processes keep taking it)")


def _refuse_if_held(lock: Path) -> dict | None:
    """Raise when ``lock`` is held by another live process; returns the record of a stale
    lock (its process is gone), None when there is none or this process holds it."""
    holder = lock_holder(lock)
    if holder is None or Path(lock).resolve() in _HELD:
        return None
    pid = holder.get("pid")
    if holder.get("host") == platform.node() and (pid == os.getpid() or not _alive(pid)):
        return holder  # its process is gone (and its pid maybe reused by this one)
    who = (f"pid {holder.get('pid')} on {holder.get('host')} (since {holder.get('started')}: "
           f"{holder.get('command')})" if holder else "an unknown process (unreadable lock)")
    raise RunDirError(f"{lock}: the run is in use by {who}; wait for it to finish, or delete "
                      "the lock file if that process is no longer running")


def _alive(pid: object) -> bool:
    """Whether process ``pid`` of this host runs (True when that cannot be told)."""
    if not isinstance(pid, int) or pid <= 0 or os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True
