"""Shared test fixtures: the real-data folder, and writers for tiny image files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# The test machines have few cores shared by several jobs; more threads only add contention.
torch.set_num_threads(2)

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` next to the repository (real data and weights); skips when absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"real data folder {SHARED_DIR} is absent (only on the project's machines)")
    return SHARED_DIR


def save_image(path: Path, pixels: np.ndarray | Image.Image, **save_kwargs) -> Path:
    """Write ``pixels`` (a numpy array as Pillow's ``fromarray`` takes it, or an image) to
    ``path``, the format chosen by the extension; parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    image.save(path, **save_kwargs)
    return path


@pytest.fixture
def write_image(tmp_path: Path) -> Callable[..., Path]:
    """``write_image("images/a.png", array, **save_kwargs) -> Path`` under ``tmp_path``."""

    def write(name: str | Path, pixels: np.ndarray | Image.Image, **save_kwargs) -> Path:
        return save_image(tmp_path / name, pixels, **save_kwargs)

    return write


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A reproducible uint8 (H, W, 3) noise image."""
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def disc_mask(height: int, width: int, value: int = 255) -> np.ndarray:
    """uint8 (H, W) mask: ``value`` inside a centred disc of radius min(H, W) / 4, else 0."""
    rows, cols = np.mgrid[:height, :width]
    radius = min(height, width) / 4
    inside = (rows - (height - 1) / 2) ** 2 + (cols - (width - 1) / 2) ** 2 <= radius**2
    return np.where(inside, value, 0).astype(np.uint8)


@pytest.fixture
def make_seg_folders(tmp_path: Path) -> Callable[..., tuple[Path, Path]]:
    """Factory for a small segmentation data set on disk.

    ``make_seg_folders(stems=("a", "b"), size=(32, 40), mask_suffix="_lesion")`` writes
    ``images/<stem>.jpg`` (noise) and ``masks/<stem><mask_suffix>.png`` (0/255 disc) under
    ``tmp_path`` and returns ``(images_dir, masks_dir)``. ``size`` is (height, width).
    """

    def make(
        stems: tuple[str, ...] = ("case01", "case02", "case03"),
        size: tuple[int, int] = (32, 40),
        mask_suffix: str = "_lesion",
        image_ext: str = ".jpg",
    ) -> tuple[Path, Path]:
        images_dir, masks_dir = tmp_path / "images", tmp_path / "masks"
        for i, stem in enumerate(stems):
            save_image(images_dir / f"{stem}{image_ext}", random_rgb(*size, seed=i))
            save_image(masks_dir / f"{stem}{mask_suffix}.png", disc_mask(*size))
        return images_dir, masks_dir

    return make


def kill_when(arguments: list[str], ready: Callable[[], bool], timeout: float = 120) -> None:
    """Run ``python -m medlite.cli *arguments`` and SIGKILL it as soon as ``ready()`` holds
    (fails when the command ends first), as a power cut or the OOM killer would."""
    import os
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen([sys.executable, "-m", "medlite.cli", *map(str, arguments)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None and not ready():
        time.sleep(0.05)
    assert process.poll() is None, "the command finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


def history_rows(path: Path) -> int:
    """Epochs recorded in a fit's history.csv (0 when it does not exist yet)."""
    import pandas as pd

    try:
        return len(pd.read_csv(path)) if Path(path).is_file() else 0
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return 0


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """One finished run of every task, as small and short as a run can be (for the service,
    whose tests check what is served, not how well it learned): task -> run folder."""
    from medlite.training.runner import train_run

    root = tmp_path_factory.mktemp("tiny-runs")
    runs = {}
    for task, config in tiny_configs(root).items():
        runs[task] = root / task
        train_run(config, runs[task], progress=False)
    return runs


def tiny_configs(root: Path) -> dict:
    """The configs of :func:`tiny_runs`, their data written under ``root``: task -> config."""
    from medlite.data.recordings import write_recordings
    from medlite.datasets.ecg import make_ecg_study
    from medlite.datasets.lesions import write_lesion_dataset
    from medlite.datasets.pasi_trial import write_pasi_trial
    from medlite.datasets.skin import write_skin_dataset
    from medlite.tasks import get_task
    from medlite.tasks.segmentation import SegmentationConfig, SegmentationDataConfig

    configs = {}
    seg = SegmentationConfig(name="segmentation", data=SegmentationDataConfig(
        manifest=write_lesion_dataset(root / "lesions", n_subjects=10, images_per_subject=1,
                                      size=(48, 48), seed=3), image_size=(48, 48)))
    seg.model.kwargs = {"widths": [16, 16, 32, 32]}
    configs["segmentation"] = seg
    cls = get_task("classification").config_class.model_validate({
        "task": "classification", "name": "classification",
        "data": {"manifest": str(write_skin_dataset(root / "skin", n_subjects=12,
                                                    images_per_subject=2, size=32, seed=0)),
                 "class_names": ["normal", "early", "late"], "image_size": 32},
        "model": {"name": "mobilenet_v2", "pretrained": False, "kwargs": {"head_hidden": 8}},
        "stages": [{"name": "train", "epochs": 1, "lr": 1e-3, "trainable": "all"}],
        "split": {"val_fraction": 0.25, "test_fraction": 0.25}})
    configs["classification"] = cls
    photos, scores = write_pasi_trial(root / "trial", n_subjects=16, visits_per_subject=(2, 2),
                                      photo_size=48, seed=1)
    configs["pasi"] = get_task("pasi").config_class.model_validate({
        "task": "pasi", "name": "pasi",
        "data": {"photos": str(photos), "scores": str(scores), "tile_size": 32,
                 "check_images": False},
        "ensemble": {"architectures": ["mobilenet_v3_small"],
                     "heads": ["components"], "folds": 2, "test_fraction": 0.25,
                     "split_trials": 3},
        "model": {"name": "mobilenet_v3_small", "pretrained": False},
        "scheduler": {"name": "cosine", "min_lr": 1e-5}})
    recordings = make_ecg_study(n_subjects=3, minutes_per_condition=(0.5, 0.5, 0.5), fs=100.0,
                                seed=1)
    configs["stress"] = get_task("stress").config_class.model_validate({
        "task": "stress", "name": "stress",
        "data": {"recordings": str(write_recordings(recordings, root / "ecg"))},
        "spectrogram": {"image_size": 32},
        "model": {"name": "sonic", "pretrained": False,
                  "kwargs": {"backbones": ["squeezenet1_1", "shufflenet_v2_x0_5"]}},
        "cv": {"scheme": "subject", "folds": 2, "compare_window_cv": False}})
    for config in configs.values():
        config.seed = 5
        config.trainer.max_epochs = 2
        config.trainer.batch_size = 8
        config.trainer.threads = 2
        config.trainer.early_stopping_patience = None
        config.evaluation.bootstrap_resamples = 20
    return configs
