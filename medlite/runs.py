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
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from medlite.errors import ConfigError, RunDirError

MARKER_FILE = ".medlite"
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
    return path.is_dir() and not any(path.iterdir())


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
    deleted and made again. A file in the way is an error.
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
        shutil.rmtree(path)
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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    """``torch.save`` through :func:`atomic_target`."""
    import torch

    with atomic_target(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_state_dict(path: Path) -> dict:
    """Load a state_dict safely (``weights_only=True``) on the CPU."""
    import torch

    return torch.load(Path(path), map_location="cpu", weights_only=True)
