"""The shared loop end to end on a tiny synthetic run: run layout, splits, resume, atomic
checkpoints."""

import json

import lightning.pytorch as pl
import pandas as pd
import pytest
import torch

from medlite.datasets.lesions import write_lesion_dataset
from medlite.tasks import get_task
from medlite.tasks.base import train_run
from medlite.tasks.segmentation import SegmentationConfig, SegmentationDataConfig
from medlite.training.checkpoint import AtomicCheckpointIO


def tiny_config(manifest, epochs=2):
    config = SegmentationConfig(
        data=SegmentationDataConfig(manifest=manifest, image_size=(32, 32)), name="tiny")
    config.model.kwargs = {"widths": [16, 32, 32, 64]}
    config.trainer.max_epochs = epochs
    config.trainer.batch_size = 4
    config.trainer.threads = 2
    config.optimizer.lr = 3e-3
    config.split.val_fraction = 0.25
    config.split.test_fraction = 0.25
    config.evaluation.bootstrap_resamples = 50
    return config


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return write_lesion_dataset(root / "data", n_subjects=8, images_per_subject=2,
                                size=(48, 40), seed=3)


def test_run_directory_holds_everything_a_paper_needs(tmp_path, manifest):
    run = tmp_path / "run"
    metrics = train_run(tiny_config(manifest), run, progress=False)
    for name in ["config.yaml", "run.json", "splits.csv", "history.csv", "metrics.json",
                 "model.pt", "report.html", "checkpoints/last.ckpt", "checkpoints/best.ckpt",
                 "per_image_metrics.csv", "figures/learning_curves.png",
                 "figures/best_cases.png"]:
        assert (run / name).is_file(), name
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 42 and "torch" in record["versions"]
    splits = pd.read_csv(run / "splits.csv")
    assert len(splits) == 16 and set(splits["split"]) == {"train", "val", "test"}
    assert (splits.groupby("subject")["split"].nunique() == 1).all()
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    assert {"train_loss", "val_loss", "val_dice"} <= set(history.columns)
    saved = json.loads((run / "metrics.json").read_text())
    dice = saved["metrics"]["per_image"]["dice_lesion"]
    assert dice["ci_low"] <= dice["value"] <= dice["ci_high"]
    assert metrics["dataset"]["miou"]["value"] == saved["metrics"]["dataset"]["miou"]["value"]
    n_test = (splits["split"] == "test").sum()
    assert len(list((run / "predictions").glob("*_mask.png"))) == n_test
    html = (run / "report.html").read_text()
    assert "data:image/png;base64" in html and "dice_lesion" in html


class CrashAfterEpoch(pl.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resume_continues_from_last_checkpoint(tmp_path, manifest, monkeypatch):
    task = get_task("segmentation")
    original = task.training_parts

    def crashing_parts(config, samples):
        parts = original(config, samples)
        parts.extra_callbacks.append(CrashAfterEpoch(1))
        return parts

    run = tmp_path / "run"
    monkeypatch.setattr(task, "training_parts", crashing_parts)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(tiny_config(manifest, epochs=3), run, progress=False)
    checkpoint = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 0  # the crash hit before epoch 1's checkpoint
    splits_before = (run / "splits.csv").read_text()
    first_epoch = pd.read_csv(run / "history.csv").iloc[0]
    monkeypatch.setattr(task, "training_parts", original)
    train_run(tiny_config(manifest, epochs=3), run, resume=True, progress=False)
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == [0, 1, 2]
    assert (run / "splits.csv").read_text() == splits_before
    # epoch 0 was not trained again: its logged numbers are the ones from before the crash
    assert history.iloc[0]["train_loss"] == first_epoch["train_loss"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)

    def failing_save(obj, path, *args, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    restored = io.load_checkpoint(target)
    assert restored["epoch"] == 1 and torch.equal(restored["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
