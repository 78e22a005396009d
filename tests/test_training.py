"""The spine end to end on a tiny segmentation run: run layout, learning, metrics schema,
and resume: after a crash and after SIGKILL the run ends with exactly the metrics of an
uninterrupted run."""

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medlite.cli import main
from medlite.data.io import read_mask
from medlite.datasets.lesions import write_lesion_dataset
from medlite.tasks import get_task
from medlite.tasks.segmentation import SegmentationConfig, SegmentationDataConfig
from medlite.training.checkpoint import AtomicCheckpointIO
from medlite.training.runner import train_run
from tests.conftest import history_rows, kill_when


def tiny_config(manifest, epochs=15) -> SegmentationConfig:
    config = SegmentationConfig(
        data=SegmentationDataConfig(manifest=manifest, image_size=(48, 48)), name="tiny")
    config.model.kwargs = {"widths": [16, 32, 32, 64]}
    config.trainer.max_epochs = epochs
    config.trainer.batch_size = 4
    config.trainer.threads = 2
    config.trainer.early_stopping_patience = None
    config.optimizer.lr = 1e-3
    config.split.val_fraction = 0.2
    config.split.test_fraction = 0.2
    config.evaluation.bootstrap_resamples = 50
    return config


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return write_lesion_dataset(root / "data", n_subjects=16, images_per_subject=2,
                                size=(48, 48), seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, manifest):
    run = tmp_path_factory.mktemp("trained") / "run"
    result = train_run(tiny_config(manifest), run, progress=False)
    return run, result


def test_run_directory_holds_everything_a_paper_needs(trained):
    run, result = trained
    for name in [".medlite", "config.yaml", "run.json", "splits.csv", "plan.json", "fits.csv",
                 "history.csv", "metrics.json", "model.pt", "report.html", "per_sample.csv",
                 "fits/main/model.pt", "fits/main/done.json", "fits/main/history.csv",
                 "figures/learning_curves.png", "figures/best_cases.png"]:
        assert (run / name).is_file(), name
    # A finished fit's checkpoints are removed once its done.json exists.
    assert not (run / "fits" / "main" / "checkpoints").exists()
    record = json.loads((run / "run.json").read_text())
    assert record["seed"] == 42 and "torch" in record["versions"] and "finished" in record
    splits = pd.read_csv(run / "splits.csv")
    assert len(splits) == 32 and set(splits["split"]) == {"train", "val", "test"}
    assert (splits.groupby("subject")["split"].nunique() == 1).all()
    assert splits["content_sha256"].str.fullmatch("[0-9a-f]{64}").all()
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(15))
    assert {"train_loss", "val_loss", "val_dice", "lr", "fit"} <= set(history.columns)
    n_test = (splits["split"] == "test").sum()
    assert len(list((run / "predictions").glob("*_mask.png"))) == n_test
    html = (run / "report.html").read_text()
    assert "data:image/png;base64" in html and "dice_lesion" in html and "95% CI" in html


def test_the_model_learns_well_above_a_constant_mask(trained, manifest):
    run, result = trained
    table = pd.read_csv(run / "per_sample.csv")
    # Predicting "lesion" everywhere scores 2|T| / (|T| + N) per image.
    constant = np.mean([2 * (m > 0).sum() / ((m > 0).sum() + m.size)
                        for m in (read_mask(p) for p in table["mask"])])
    dice = result.metrics["per_image"]["dice_lesion"]["value"]
    assert dice > constant + 0.15, (dice, constant)


def test_metrics_json_has_one_schema_with_the_confidence_level(trained):
    run, _ = trained
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["evaluated"] == "test split" and saved["note"] is None
    assert saved["confidence"] == 0.95 and saved["bootstrap_resamples"] == 50
    entry = saved["metrics"]["per_image"]["dice_lesion"]
    assert set(entry) == {"value", "ci_low", "ci_high", "confidence", "resamples",
                          "valid_resamples"}
    assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert entry["resamples"] == 50 and 0 < entry["valid_resamples"] <= 50


def test_no_bootstrap_means_no_intervals_and_a_missing_test_split_is_flagged(manifest,
                                                                               tmp_path):
    config = tiny_config(manifest, epochs=1)
    config.evaluation.bootstrap_resamples = 0
    config.evaluation.confidence = 0.9
    config.split.test_fraction = 0.0
    result = train_run(config, tmp_path / "run", progress=False)
    entry = result.metrics["dataset"]["miou"]
    assert entry["ci_low"] is None and entry["ci_high"] is None and entry["resamples"] == 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["evaluated"] == "validation split" and "no test split" in saved["note"]
    html = (tmp_path / "run" / "report.html").read_text()
    assert "no test split" in html and "no confidence intervals" in html


class CrashAtEpochStart(pl.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def crash_at_epoch(monkeypatch, epoch: int):
    """Make the segmentation recipe's fits crash when epoch ``epoch`` starts; returns the
    function that undoes it."""
    task = get_task("segmentation")
    original = task.training_parts

    def crashing_parts(*args, **kwargs):
        parts = original(*args, **kwargs)
        parts.extra_callbacks.append(CrashAtEpochStart(epoch))
        return parts

    monkeypatch.setattr(task, "training_parts", crashing_parts)
    return lambda: monkeypatch.setattr(task, "training_parts", original)


def test_resume_after_a_crash_gives_the_uninterrupted_metrics(tmp_path, manifest,
                                                              monkeypatch):
    config = tiny_config(manifest, epochs=4)
    reference = train_run(config, tmp_path / "reference", progress=False)
    run = tmp_path / "run"
    undo = crash_at_epoch(monkeypatch, 2)
    with pytest.raises(Exception, match="simulated crash"):
        train_run(config, run, progress=False)
    checkpoint = torch.load(run / "fits/main/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1  # written at the end of every epoch
    undo()
    resumed = train_run(config, run, resume=True, progress=False)
    assert resumed.metrics == reference.metrics
    assert pd.read_csv(run / "history.csv").equals(
        pd.read_csv(tmp_path / "reference" / "history.csv"))


def _deployed(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "fits/main/model.pt", weights_only=True)


def test_ema_deploys_the_moving_average_of_the_weights(tmp_path, manifest):
    """With a decay of nearly 1 the average barely moves from its first value, the weights
    after the first optimizer step: the deployed model is that, not the trained weights."""
    one_step = tiny_config(manifest, epochs=1)
    one_step.trainer.limit_train_batches = 1
    train_run(one_step, tmp_path / "one_step", progress=False)
    plain = tiny_config(manifest, epochs=2)
    train_run(plain, tmp_path / "plain", progress=False)
    averaged = tiny_config(manifest, epochs=2)
    averaged.trainer.ema_decay = 1 - 1e-6
    train_run(averaged, tmp_path / "ema", progress=False)
    first, trained, ema = (_deployed(tmp_path / name) for name in ("one_step", "plain", "ema"))
    weights = [k for k, v in first.items() if v.is_floating_point()]
    assert max((trained[k] - first[k]).abs().max() for k in weights) > 1e-3
    for key in weights:  # BatchNorm statistics are averaged too
        torch.testing.assert_close(ema[key], first[key], atol=1e-5, rtol=0)


def test_ema_resumes_to_the_uninterrupted_run(tmp_path, manifest, monkeypatch):
    config = tiny_config(manifest, epochs=3)
    config.trainer.ema_decay = 0.9
    reference = train_run(config, tmp_path / "reference", progress=False)
    undo = crash_at_epoch(monkeypatch, 1)
    with pytest.raises(Exception, match="simulated crash"):
        train_run(config, tmp_path / "run", progress=False)
    undo()
    resumed = train_run(config, tmp_path / "run", resume=True, progress=False)
    assert resumed.metrics == reference.metrics
    for key, value in _deployed(tmp_path / "reference").items():
        torch.testing.assert_close(_deployed(tmp_path / "run")[key], value, atol=0, rtol=0)


def test_a_fit_whose_checkpoint_vanished_is_not_silently_restarted(tmp_path, manifest,
                                                                    monkeypatch):
    undo = crash_at_epoch(monkeypatch, 1)
    with pytest.raises(Exception, match="simulated crash"):
        train_run(tiny_config(manifest, epochs=3), tmp_path / "run", progress=False)
    undo()
    (tmp_path / "run/fits/main/checkpoints/last.ckpt").unlink()
    with pytest.raises(Exception, match="was checkpointed but"):
        train_run(tiny_config(manifest, epochs=3), tmp_path / "run", resume=True,
                  progress=False)


def config_file(manifest: Path, path: Path, epochs: int) -> Path:
    config = tiny_config(manifest, epochs=epochs).model_dump(mode="json")
    config.pop("name")
    path.write_text(yaml.safe_dump(config))
    return path


def test_sigkill_in_the_middle_of_a_fit_then_resume_matches_an_uninterrupted_run(
        tmp_path, manifest):
    config = config_file(manifest, tmp_path / "tiny.yaml", epochs=6)
    assert main(["train", str(config), "--out", str(tmp_path / "reference"),
                 "--no-progress"]) == 0
    run = tmp_path / "killed"
    history = run / "fits" / "main" / "history.csv"
    kill_when(["train", config, "--out", run, "--no-progress"],
              lambda: history_rows(history) >= 2)
    assert 2 <= history_rows(history) < 6 and not (run / "metrics.json").exists()
    assert main(["train", str(config), "--out", str(run), "--resume", "--no-progress"]) == 0
    killed = json.loads((run / "metrics.json").read_text())["metrics"]
    reference = json.loads((tmp_path / "reference" / "metrics.json").read_text())["metrics"]
    assert killed == reference
    assert (run / "per_sample.csv").read_text() == \
        (tmp_path / "reference" / "per_sample.csv").read_text()


def test_resume_refuses_a_changed_config_naming_the_key(trained, capsys):
    run, _ = trained
    before = (run / "metrics.json").read_text()
    config = run / "config.yaml"
    assert main(["train", str(config), "--out", str(run), "--resume", "--no-progress",
                 "--set", "trainer.max_epochs=3"]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_epochs" in err and "15 -> 3" in err and "Traceback" not in err
    assert (run / "metrics.json").read_text() == before


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, target)

    def failing_save(obj, handle, *args, **kwargs):  # the open temporary file
        handle.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, target)
    monkeypatch.undo()
    restored = io.load_checkpoint(target)
    assert restored["epoch"] == 1 and torch.equal(restored["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".saved", "last.ckpt"]


def test_only_last_ckpt_marks_a_fit_resumable(tmp_path):
    """Lightning writes best.ckpt before last.ckpt at the end of an epoch. Killed between
    the two, the fit has no epoch to resume from and starts again (the same seeded result);
    it must not be refused as a fit whose last.ckpt vanished."""
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 0}, tmp_path / "best.ckpt")
    assert not (tmp_path / ".saved").exists()
    io.save_checkpoint({"epoch": 0}, tmp_path / "last.ckpt")
    assert (tmp_path / ".saved").exists()


def test_a_fit_that_finished_is_not_trained_again(trained, monkeypatch):
    run, result = trained
    task = get_task("segmentation")

    def must_not_train(*args, **kwargs):
        raise AssertionError("a finished fit was trained again")

    monkeypatch.setattr(task, "training_parts", must_not_train)
    from medlite.tasks import load_run_config

    again = train_run(load_run_config(run), run, resume=True, progress=False)
    assert again.metrics == result.metrics


def test_dataloader_workers_change_nothing(tmp_path, manifest):
    """Shuffling and augmentation depend on (seed, epoch, position) only, not on the process
    that loads a sample."""
    config = tiny_config(manifest, epochs=2)
    reference = train_run(config, tmp_path / "in-process", progress=False)
    config.trainer.num_workers = 2
    with_workers = train_run(config, tmp_path / "workers", progress=False)
    assert with_workers.metrics == reference.metrics
