"""Run directories: one folder per run, never overwritten by surprise.

Layout::

    run/
      config.yaml        resolved config, every default written out
      run.json           seed, library versions, command line, times, device
      splits.csv         one row per sample: sample, subject, split (+ fold)
      history.csv        per-epoch losses and validation metrics
      checkpoints/       last.ckpt (resume) and best.ckpt (Lightning, written atomically)
      model.pt           the best weights as a plain state_dict
      metrics.json       test metrics with bootstrap confidence intervals
      predictions/       per-sample predictions
      figures/           PNG figures
      report.html        a self-contained report
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from medlite.errors import RunDirError

RUN_MARKER = "run.json"
TRACKED_PACKAGES = (
    "medlite", "torch", "torchvision", "lightning", "torchmetrics", "numpy", "scipy",
    "scikit-learn", "pandas", "pillow", "pydantic", "onnx", "onnxruntime",
)  # fmt: skip


def prepare_run_dir(path: Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Create ``path`` for a new run, or check it for ``resume``.

    An existing non-empty folder is refused unless ``resume`` (it must be a medlite run) or
    ``overwrite`` (it must be a medlite run too: we never delete a folder we did not make).
    """
    path = Path(path)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite cannot be used together")
    exists = path.exists() and any(path.iterdir()) if path.is_dir() else path.exists()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: exists and is not a directory")
    is_run = (path / RUN_MARKER).is_file()
    if resume:
        if not is_run:
            raise RunDirError(f"{path}: nothing to resume (no {RUN_MARKER} there)")
        return path
    if exists:
        if not overwrite:
            raise RunDirError(
                f"{path}: run directory exists; pass --resume to continue it or --overwrite "
                "to replace it"
            )
        if not is_run:
            raise RunDirError(f"{path}: not a medlite run directory; refusing to overwrite it")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_run(path: Path) -> Path:
    """Check that ``path`` is a finished or resumable medlite run directory."""
    path = Path(path)
    if not (path / RUN_MARKER).is_file():
        raise RunDirError(f"{path}: not a medlite run directory (no {RUN_MARKER})")
    return path


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def environment_record(seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `run.json` records: seed, versions, command, machine, time (UTC)."""
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


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_target(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_torch_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`atomic_target`."""
    with atomic_target(path) as tmp:
        torch.save(obj, tmp)


def load_state_dict(path: Path) -> dict:
    """Load a state_dict safely (``weights_only=True``) on the CPU."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def unique_child(parent: Path, name: str, overwrite: bool = False) -> Path:
    """``parent/name`` for outputs such as an evaluation; refuses to replace an existing one
    unless ``overwrite``."""
    target = Path(parent) / name
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise RunDirError(f"{target}: exists; pass --overwrite to replace it")
        shutil.rmtree(target)
    target.mkdir(parents=True, exist_ok=True)
    return target
