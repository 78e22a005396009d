"""The classification task (Akay et al. 2021 SSc recipe): a two-stage run end to end, what each
stage may change, resume, predict, export, pretrained MobileNetV2 weights, splits, configs and
bad input reported on one line with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medlite.cli import main
from medlite.config import validate_config
from medlite.datasets.skin import write_skin_dataset
from medlite.errors import ConfigError
from medlite.inference.types import ImageInput
from medlite.models import create_model
from medlite.runs import load_state_dict
from medlite.tasks import get_task
from medlite.tasks.classification import (
    ClassificationConfig,
    ClassificationDataConfig,
    ClassificationTask,
    StageConfig,
)
from tests.conftest import history_rows, kill_when, random_rgb, save_image

CLASSES = ["normal", "early", "late"]
HEAD = "classifier.1"  # mobilenet_v2's new head (head_hidden): classifier.1.1 ... classifier.1.3
FROZEN_IN_FINE_TUNE = tuple(f"features.{i}." for i in range(10))

TWO_STAGE_CONFIG = """task: classification
data:
  manifest: data/manifest.csv
  class_names: [normal, early, late]
  image_size: 32
model:
  name: mobilenet_v2
  pretrained: false
  weights_path: initial.pt
  kwargs: {head_hidden: 8}
stages:
  - {name: head, epochs: 1, lr: 1.0e-3, trainable: head}
  - {name: fine_tune, epochs: 1, lr: 1.0e-3, trainable: all_but_first_n,
     freeze_first_n_layers: 10}
trainer: {batch_size: 8, threads: 2}
split: {val_fraction: 0.2, test_fraction: 0.25}
evaluation: {bootstrap_resamples: 20}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished two-stage run of MobileNetV2 (random start weights from ``initial.pt``)
    on 12 synthetic subjects x 2 images of 32 px."""
    root = tmp_path_factory.mktemp("classification")
    write_skin_dataset(root / "data", n_subjects=12, images_per_subject=2, size=32,
                       seed=0)
    torch.manual_seed(0)
    initial = create_model("mobilenet_v2", task="classification", num_classes=3, head_hidden=8)
    torch.save(initial.state_dict(), root / "initial.pt")
    config = root / "two_stage.yaml"
    config.write_text(TWO_STAGE_CONFIG)
    run = root / "run"
    assert main(["train", str(config), "--out", str(run), "--no-progress"]) == 0
    return root, config, run


def _state(path: Path) -> dict[str, torch.Tensor]:
    return load_state_dict(path)


def _differs(a: dict, b: dict, keys) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in keys)


def test_two_stage_run_layout(trained):
    _, _, run = trained
    for name in ["config.yaml", "splits.csv", "model.pt", "metrics.json", "per_sample.csv",
                 "report.html", "plan.json", "history.csv", "fits/1-head/model.pt",
                 "fits/2-fine_tune/model.pt", "figures/learning_curves.png",
                 "figures/confusion_matrix.png", "figures/confusion_matrix_normalized.png",
                 "figures/reliability.png", "figures/roc_curves.png",
                 "figures/misclassified.png"]:
        assert (run / name).is_file(), name

    history = pd.read_csv(run / "history.csv")
    assert history["fit"].tolist() == ["1-head", "2-fine_tune"]
    assert history["epoch"].tolist() == [0, 1]  # global epochs across the stages
    assert {"train_loss", "val_loss", "val_accuracy", "val_macro_f1"} <= set(history)

    plan = json.loads((run / "plan.json").read_text())
    assert [(f["key"], f["start"], f["trainable"]) for f in plan] == [
        ("1-head", "config", "head"), ("2-fine_tune", "fit:1-head", "all_but_first_n")]
    saved = json.loads((run / "metrics.json").read_text())
    stages = saved["stages"]
    assert [s["stage"] for s in stages] == ["head", "fine_tune"]
    assert all(s["epochs"] == 1 for s in stages)
    model = create_model("mobilenet_v2", task="classification", num_classes=3, head_hidden=8)
    head_parameters = sum(p.numel() for p in model.classifier.parameters())
    assert stages[0]["trainable_parameters"] == head_parameters
    assert stages[0]["frozen_modules"] == ["features.0..features.18"]
    assert stages[1]["frozen_modules"] == ["features.0..features.9"]

    assert saved["class_names"] == CLASSES and saved["classes_absent"] == []
    metrics = saved["metrics"]["classification"]
    for name in ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece",
                 "sensitivity_early", "specificity_late"]:
        assert {"value", "ci_low", "ci_high", "confidence", "valid_resamples"} <= set(
            metrics[name])
    accuracy = metrics["accuracy"]
    assert accuracy["ci_low"] <= accuracy["value"] <= accuracy["ci_high"]
    assert np.sum(saved["confusion_matrix"]) == saved["n_samples"]

    predictions = pd.read_csv(run / "per_sample.csv")
    splits = pd.read_csv(run / "splits.csv")
    assert sorted(predictions["sample"]) == sorted(splits.loc[splits["split"] == "test",
                                                              "sample"])
    assert {"subject", "label", "predicted", "p_normal", "p_early", "p_late"} <= set(predictions)
    np.testing.assert_allclose(predictions[["p_normal", "p_early", "p_late"]].sum(axis=1), 1,
                               atol=1e-6)
    assert (predictions["correct"] == (predictions["label"] == predictions["predicted"])).all()

    report = (run / "report.html").read_text()
    assert "Training stages" in report and "Confusion matrix" in report


def test_splits_keep_subjects_together_and_every_class_in_training(trained):
    _, _, run = trained
    splits = pd.read_csv(run / "splits.csv")
    assert splits.groupby("subject")["split"].nunique().max() == 1
    manifest = pd.read_csv(run.parent / "data" / "manifest.csv")
    labels = dict(zip(manifest["subject"], manifest["label"], strict=False))
    train_labels = {labels[s] for s in splits.loc[splits["split"] == "train", "subject"]}
    assert train_labels == set(CLASSES)


def test_stage_one_trains_only_the_head(trained):
    root, _, run = trained
    initial, after = _state(root / "initial.pt"), _state(run / "fits/1-head/model.pt")
    backbone = [k for k in after if not k.startswith(HEAD)]
    head = [k for k in after if k.startswith(HEAD)]
    # Weights and BatchNorm running statistics of the frozen backbone are untouched...
    assert not _differs(initial, after, backbone)
    assert any(k.endswith("running_mean") for k in backbone)
    # ...and the head did learn.
    assert _differs(initial, after, head)


def test_stage_two_leaves_the_first_ten_layers_alone(trained):
    _, _, run = trained
    first, second = _state(run / "fits/1-head/model.pt"), _state(
        run / "fits/2-fine_tune/model.pt")
    frozen = [k for k in second if k.startswith(FROZEN_IN_FINE_TUNE)]
    later = [k for k in second if k.startswith("features.1") and k not in frozen]
    assert frozen and later
    assert not _differs(first, second, frozen)
    assert _differs(first, second, later)
    final = _state(run / "model.pt")
    assert not _differs(final, second, second)


def test_resume_trains_only_the_unfinished_stage(trained, tmp_path):
    _, config, run = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "fits/2-fine_tune")
    first_stage = copy / "fits/1-head/model.pt"
    first_mtime = first_stage.stat().st_mtime_ns
    assert main(["train", str(config), "--out", str(copy), "--resume", "--no-progress"]) == 0
    assert first_stage.stat().st_mtime_ns == first_mtime  # finished stage skipped
    resumed = _state(copy / "fits/2-fine_tune/model.pt")
    original = _state(run / "fits/2-fine_tune/model.pt")
    assert not _differs(resumed, original, original)  # seeded by its key: the same weights
    assert pd.read_csv(copy / "history.csv")["fit"].tolist() == ["1-head", "2-fine_tune"]
    assert json.loads((copy / "metrics.json").read_text())["metrics"] == json.loads(
        (run / "metrics.json").read_text())["metrics"]


def test_sigkill_during_the_second_stage_then_resume_matches(trained, tmp_path):
    root, config, run = trained
    killed = tmp_path / "killed"
    text = config.read_text().replace("name: mobilenet_v2", "name: plain_cnn").replace(
        "weights_path: initial.pt", "").replace("kwargs: {head_hidden: 8}",
                                                "kwargs: {widths: [8, 16], hidden: 16}")
    text = text.replace("epochs: 1, lr: 1.0e-3, trainable: head",
                        "epochs: 2, lr: 1.0e-3, trainable: all").replace(
        "epochs: 1, lr: 1.0e-3, trainable: all_but", "epochs: 5, lr: 1.0e-3, trainable: all_but")
    text = text.replace("freeze_first_n_layers: 10", "freeze_first_n_layers: 1")
    longer = root / "longer.yaml"
    longer.write_text(text)
    assert main(["train", str(longer), "--out", str(tmp_path / "reference"),
                 "--no-progress"]) == 0
    history = killed / "fits" / "2-fine_tune" / "history.csv"
    kill_when(["train", longer, "--out", killed, "--no-progress"],
              lambda: history_rows(history) >= 1)
    assert (killed / "fits/1-head/done.json").is_file()
    assert not (killed / "fits/2-fine_tune/done.json").exists()
    assert main(["train", str(longer), "--out", str(killed), "--resume", "--no-progress"]) == 0
    assert json.loads((killed / "metrics.json").read_text())["metrics"] == json.loads(
        (tmp_path / "reference" / "metrics.json").read_text())["metrics"]


def test_predict_writes_probabilities_and_refuses_to_overwrite(trained, tmp_path, capsys):
    root, _, run = trained
    images = sorted((root / "data" / "images").glob("*.png"))[:3]
    out = tmp_path / "pred"
    assert main(["predict", str(run), *map(str, images), "--out", str(out)]) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert table["input"].tolist() == [str(p) for p in images]
    assert set(table["predicted"]) <= set(CLASSES)
    np.testing.assert_allclose(table[["p_normal", "p_early", "p_late"]].sum(axis=1), 1,
                               atol=1e-6)
    np.testing.assert_allclose(table["confidence"],
                               table[["p_normal", "p_early", "p_late"]].max(axis=1))
    # The same probabilities as the predictor of medlite.load_run, image by image.
    import medlite
    from medlite.inference import ImageInput

    predictor = medlite.load_run(run)
    first = predictor.predict_one(ImageInput(images[0]))
    np.testing.assert_allclose(first.probabilities, table.loc[0, ["p_normal", "p_early",
                                                                 "p_late"]].to_numpy(float))
    assert main(["predict", str(run), str(images[0]), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert len(pd.read_csv(out / "predictions.csv")) == 3  # untouched
    assert main(["predict", str(run), str(root / "data" / "images"), "--out", str(out),
                 "--overwrite"]) == 0
    assert len(pd.read_csv(out / "predictions.csv")) == len(list(
        (root / "data" / "images").glob("*.png")))


def test_external_data_with_some_of_the_classes_is_scored_on_those(trained, tmp_path):
    root, _, run = trained
    manifest = write_skin_dataset(tmp_path / "other", classes=("normal", "late"),
                                  n_subjects=4, images_per_subject=1, size=32, seed=5)
    manifest.write_text(manifest.read_text().replace(",SKIN", ",OTHER"))
    assert main(["evaluate", str(run), "--data", str(manifest), "--out",
                 str(tmp_path / "ev")]) == 0
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["classes_absent"] == ["early"]
    metrics = saved["metrics"]["classification"]
    assert metrics["sensitivity_early"]["value"] is None or np.isnan(
        metrics["sensitivity_early"]["value"])
    table = pd.read_csv(tmp_path / "ev" / "per_sample.csv")
    truth = table["label_index"].to_numpy()
    predicted = table[["p_normal", "p_early", "p_late"]].to_numpy().argmax(axis=1)
    sensitivities = [np.mean(predicted[truth == k] == k) for k in (0, 2)]
    assert metrics["balanced_accuracy"]["value"] == pytest.approx(np.mean(sensitivities))
    assert "absent: early" in (tmp_path / "ev" / "report.html").read_text()


def test_a_small_cnn_learns_the_synthetic_skin_classes(tmp_path):
    from medlite.tasks.classification import ClassificationAugmentConfig
    from medlite.training.runner import train_run

    manifest = write_skin_dataset(tmp_path / "data", n_subjects=36, images_per_subject=2,
                                  size=48, seed=0)
    config = ClassificationConfig(
        name="learns", data=ClassificationDataConfig(
            manifest=manifest, class_names=CLASSES, image_size=48,
            augment=ClassificationAugmentConfig(scale=(0.9, 1.0), hue=0.0, saturation=0.0)),
        stages=[StageConfig(name="train", epochs=20, lr=2e-3),
                StageConfig(name="fine_tune", epochs=3, lr=3e-4, trainable="all_but_first_n",
                            freeze_first_n_layers=2)])
    config.model.name, config.model.pretrained = "plain_cnn", False
    config.model.kwargs = {"widths": [16, 32, 64], "hidden": 32, "dropout": 0.2}
    config.trainer.batch_size, config.trainer.threads = 16, 2
    config.split.val_fraction, config.split.test_fraction = 0.2, 0.25
    config.evaluation.bootstrap_resamples = 50
    result = train_run(config, tmp_path / "run", progress=False)
    accuracy = result.metrics["classification"]["accuracy"]["value"]
    assert accuracy >= 0.55, accuracy  # chance: 1/3


def test_export_to_onnx_matches_pytorch(trained, capsys):
    _, _, run = trained
    assert main(["export", str(run)]) == 0
    assert (run / "export" / "model.onnx").is_file()
    assert "max abs difference" in capsys.readouterr().out


def test_pretrained_mobilenet_v2_from_a_local_file(shared_dir, tmp_path):
    from medlite.training.runner import train_run

    weights = shared_dir / "weights" / "mobilenet_v2_imagenet_features.pth"
    if not weights.is_file():
        pytest.skip(f"{weights} is absent")
    manifest = write_skin_dataset(tmp_path / "data", classes=("normal", "late"),
                                  n_subjects=8, images_per_subject=1, size=32)
    config = ClassificationConfig(
        name="pretrained", data=ClassificationDataConfig(manifest=manifest, image_size=32),
        stages=[StageConfig(name="head", epochs=1, trainable="head")])
    config.model.weights_path = weights
    config.trainer.batch_size = 4
    config.trainer.limit_train_batches = 1
    config.trainer.threads = 2
    config.split.val_fraction = config.split.test_fraction = 0.25
    config.evaluation.bootstrap_resamples = 0
    train_run(config, tmp_path / "run", progress=False)
    imagenet = load_state_dict(weights)
    trained_state = _state(tmp_path / "run" / "fits" / "head" / "model.pt")
    assert set(imagenet) <= set(trained_state)
    assert not _differs(imagenet, trained_state, imagenet)  # frozen, statistics included


# -- configuration and data -----------------------------------------------------------------

def test_defaults_reproduce_the_paper():
    config = ClassificationConfig()
    assert config.model.name == "mobilenet_v2" and config.model.pretrained
    assert config.data.image_size == (128, 128)
    assert config.optimizer.name == "adam"
    assert [(s.name, s.trainable, s.freeze_first_n_layers) for s in config.stages] == [
        ("head", "head", None), ("fine_tune", "all_but_first_n", 10)]
    assert config.data.class_balance == "weights"
    assert get_task("classification").config_class is ClassificationConfig


@pytest.mark.parametrize("raw, key", [
    ({"stages": [{"name": "a", "trainable": "all", "freeze_first_n_layers": 3}]},
     "stages.0"),
    ({"stages": [{"name": "a", "trainable": "all_but_first_n"}]}, "stages.0"),
    ({"stages": [{"name": "a"}, {"name": "a"}]}, "stages"),
    ({"stages": [{"name": "a b"}]}, "stages.0.name"),
    ({"data": {"manifest": "m.csv", "image_folder": "images"}}, "data"),
    ({"data": {"image_size": 8}}, "data.image_size"),
])
def test_bad_configs_name_the_key(raw, key):
    with pytest.raises(ConfigError) as info:
        validate_config({"task": "classification", **raw}, ClassificationConfig, "c.yaml")
    assert str(info.value).startswith(f"c.yaml: {key}")


def test_split_is_stratified_grouped_and_keeps_given_splits():
    task = ClassificationTask()
    subjects = [f"S{i:02d}" for i in range(30) for _ in range(2)]
    labels = [CLASSES[i % 3] for i in range(30) for _ in range(2)]
    samples = pd.DataFrame({"sample": [f"{s}_{k}" for s, k in zip(subjects, [1, 2] * 30,
                                                                    strict=True)],
                            "subject": subjects, "label": labels,
                            "label_index": [CLASSES.index(x) for x in labels],
                            "split": ["test", "test"] + [""] * 58})
    config = ClassificationConfig()
    config.data.class_names = CLASSES
    config.split.val_fraction, config.split.test_fraction = 0.2, 0.2
    split = task.split(samples, config)
    assert split.groupby("subject")["split"].nunique().max() == 1
    assert (split.loc[split["subject"] == "S00", "split"] == "test").all()
    for name in ("train", "val", "test"):
        assert set(split.loc[split["split"] == name, "label"]) == set(CLASSES), name

    config.split.folds, config.split.fold = 3, 1
    with pytest.raises(ConfigError, match="split.folds"):
        task.split(samples, config)  # a fixed split column and k-fold do not mix
    folded = task.split(samples.drop(columns="split"), config)
    assert (folded.loc[folded["split"] == "test", "fold"] == 1).all()
    assert folded.groupby("subject")["fold"].nunique().max() == 1


def test_class_balance_options(tmp_path):
    manifest = write_skin_dataset(tmp_path / "data", n_subjects=9,
                                  images_per_subject=1, size=16)
    task = ClassificationTask()
    config = ClassificationConfig(data=ClassificationDataConfig(
        manifest=manifest, class_names=CLASSES, image_size=16))
    config.model.name, config.model.pretrained, config.model.kwargs = "plain_cnn", False, {}
    samples = task.load_samples(config)
    samples["label_index"] = [0, 0, 0, 0, 1, 1, 2, 0, 1]  # 4:2:1 in training
    train, val = samples.iloc[:7], samples.iloc[7:]
    model = task.build_model(config)
    weighted = task.training_parts(config, train, val, model, None)
    expected = np.array([1 / 4, 1 / 2, 1]) / np.mean([1 / 4, 1 / 2, 1])
    np.testing.assert_allclose(weighted.loss_fn.weight.numpy(), expected, rtol=1e-6)
    assert weighted.sample_weights is None
    config.data.class_balance = "sampler"
    sampled = task.training_parts(config, train, val, model, None)
    assert sampled.loss_fn.weight is None
    # Each class's draws sum to the same weight: classes come up equally often.
    weights = sampled.sample_weights
    np.testing.assert_allclose([weights[train["label_index"].to_numpy() == k].sum()
                                for k in range(3)], 1.0)



def test_a_stage_can_rebalance_the_classes_of_its_own_fit(tmp_path):
    """Classifier re-balancing: fine-tune on the natural frequencies, then a head stage with
    a class-balanced sampler; each fit sees its stage's data.class_balance."""
    from medlite.tasks.base import chain
    from medlite.training.plan import fit_config

    config = ClassificationConfig(
        data=ClassificationDataConfig(manifest=tmp_path / "m.csv", class_names=CLASSES,
                                      class_balance="none"),
        stages=[StageConfig(name="fine_tune", epochs=3),
                StageConfig(name="rebalance", epochs=1, lr=1e-4, trainable="head",
                            class_balance="sampler", monitor="val_macro_f1")])
    fits = chain(ClassificationTask().stages(config), "", ["a"], ["b"])
    balance = [fit_config(config, fit).data.class_balance for fit in fits]
    assert balance == ["none", "sampler"]
    assert fit_config(config, fits[1]).optimizer.lr == 1e-4
    assert [fit_config(config, fit).monitor for fit in fits] == ["val_loss", "val_macro_f1"]
    assert fit_config(config, fits[0]).data == config.data

def test_image_folder_is_a_data_source(tmp_path):
    for label in ("normal", "ssc"):
        for k in range(2):
            save_image(tmp_path / "photos" / label / f"{k}.png", random_rgb(20, 24, seed=k))
    config = ClassificationConfig(data=ClassificationDataConfig(image_folder=tmp_path /
                                                                "photos"))
    samples = ClassificationTask().load_samples(config)
    assert samples.attrs["class_names"] == ["normal", "ssc"]
    # Same file names in two class folders are different subjects and samples.
    assert samples["subject"].nunique() == 4 and samples["sample"].nunique() == 4
    assert samples.groupby("label")["label_index"].first().to_dict() == {"normal": 0, "ssc": 1}


def test_dermamnist_official_split(shared_dir):
    root = shared_dir / "data" / "dermamnist"
    if not (root / "dermamnist_28_from_jpg.npz").is_file():
        pytest.skip(f"{root} has no DermaMNIST npz")
    task = ClassificationTask()
    config = ClassificationConfig(data=ClassificationDataConfig(dermamnist=root,
                                                                image_size=32))
    samples = task.load_samples(config)
    assert samples["split"].value_counts().to_dict() == {"train": 7007, "test": 2005,
                                                         "val": 1003}
    config.data.class_names = samples.attrs["class_names"]
    split = task.split(samples, config)
    assert (split["split"] == samples["split"]).all()
    item = task.dataset(config, samples.iloc[:2], train=False)[1]
    assert item["input"].shape == (3, 32, 32) and int(item["target"]) == samples[
        "label_index"].iloc[1]


# -- bad input: one line, exit code 2 --------------------------------------------------------

def _write_case(root: Path, rows: list[tuple], class_names=None, extra=None) -> Path:
    """A manifest of 16 px images (image, label, subject[, split]) and a config reading it."""
    columns = ["image", "label", "subject", "split"][:len(rows[0])]
    for k, row in enumerate(rows):
        save_image(root / row[0], random_rgb(16, 16, seed=k))
    pd.DataFrame(rows, columns=columns).to_csv(root / "manifest.csv", index=False)
    data = {"manifest": "manifest.csv", "image_size": 16, **(extra or {})}
    if class_names:
        data["class_names"] = class_names
    config = {"task": "classification", "data": data,
              "model": {"name": "plain_cnn", "pretrained": False},
              "stages": [{"name": "train", "epochs": 1}]}
    path = root / "config.yaml"
    path.write_text(json.dumps(config))
    return path


def _rows(labels, splits=None):
    rows = [(f"img/{i}.png", label, f"S{i}") for i, label in enumerate(labels)]
    if splits:
        rows = [(*r, s) for r, s in zip(rows, splits, strict=True)]
    return rows


@pytest.mark.parametrize("case, expected", [
    ("unknown_label", "label 'sclerosis' is not a known class"),
    ("class_without_images", "class 'early' has no images"),
    ("single_class", "only one class ('normal')"),
    ("unreadable_image", "img/1.png"),
    ("subject_in_two_splits", "subject 'S0' appears in several splits"),
    ("empty_class_folder", "class folder has no images"),
])
def test_bad_input_is_one_line_and_exit_code_2(case, expected, tmp_path, capsys):
    if case == "unknown_label":
        config = _write_case(tmp_path, _rows(["normal", "sclerosis", "late"]), CLASSES)
    elif case == "class_without_images":
        config = _write_case(tmp_path, _rows(["normal", "late", "late"]), CLASSES)
    elif case == "single_class":
        config = _write_case(tmp_path, _rows(["normal"] * 3))
    elif case == "unreadable_image":
        config = _write_case(tmp_path, _rows(["normal", "late", "late"]))
        (tmp_path / "img" / "1.png").write_bytes(b"not a png")
    elif case == "subject_in_two_splits":
        rows = _rows(["normal", "late", "late"], ["train", "val", "test"])
        rows.append(("img/3.png", "normal", "S0", "test"))
        config = _write_case(tmp_path, rows)
    else:
        (tmp_path / "photos" / "early").mkdir(parents=True)
        for label in ("normal", "late"):
            save_image(tmp_path / "photos" / label / "a.png", random_rgb(16, 16))
        config = _write_case(tmp_path, _rows(["normal", "late"]),
                             extra={"manifest": None, "image_folder": "photos"})
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    first = err.splitlines()[0]
    assert first.startswith("medlite: error: ") and expected in err
    assert "Traceback" not in err


def test_evaluation_without_intervals_and_at_another_confidence_level(trained, tmp_path):
    _, _, run = trained
    assert main(["evaluate", str(run), "--out", str(tmp_path / "none"), "--set",
                 "evaluation.bootstrap_resamples=0"]) == 0
    entry = json.loads((tmp_path / "none" / "metrics.json").read_text())["metrics"][
        "classification"]["accuracy"]
    assert entry["ci_low"] is None and entry["ci_high"] is None and entry["resamples"] == 0
    assert main(["evaluate", str(run), "--out", str(tmp_path / "ninety"), "--set",
                 "evaluation.confidence=0.9"]) == 0
    saved = json.loads((tmp_path / "ninety" / "metrics.json").read_text())
    assert saved["confidence"] == 0.9
    assert saved["metrics"]["classification"]["accuracy"]["confidence"] == 0.9
    report = (tmp_path / "ninety" / "report.html").read_text()
    assert "90% CI" in report and "95% CI" not in report


def test_label_smoothing_is_the_smoothed_cross_entropy(tmp_path):
    manifest = write_skin_dataset(tmp_path / "data", n_subjects=9,
                                  images_per_subject=1, size=16)
    task = ClassificationTask()
    config = ClassificationConfig(data=ClassificationDataConfig(
        manifest=manifest, class_names=CLASSES, image_size=16, class_balance="none"))
    config.model.name, config.model.pretrained, config.model.kwargs = "plain_cnn", False, {}
    config.loss.label_smoothing = 0.2
    samples = task.load_samples(config)
    parts = task.training_parts(config, samples.iloc[:7], samples.iloc[7:],
                                task.build_model(config), None)
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 1, 0])
    log_p = logits.log_softmax(dim=1)
    # (1 - e) * CE + e * the mean over classes of -log p, by hand
    expected = (0.8 * -log_p[torch.arange(5), target] + 0.2 * -log_p.mean(dim=1)).mean()
    assert float(parts.loss_fn(logits, target)) == pytest.approx(float(expected), rel=1e-6)


class _CornerReader(nn.Module):
    """Logits from the top-left quarter's mean against the whole image's: not
    flip-invariant, so each flip gives other probabilities."""

    def forward(self, x):
        corner = x[..., : x.shape[-2] // 2, : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        whole = x.mean(dim=(1, 2, 3))
        return torch.stack([4 * corner, 4 * whole, torch.zeros_like(whole)], dim=1)


def test_flip_tta_averages_the_softmax_of_the_four_flips(trained, tmp_path):
    from medlite.inference.predictor import Predictor

    task = ClassificationTask()
    config = ClassificationConfig(data=ClassificationDataConfig(class_names=CLASSES,
                                                                image_size=16))
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    image[:8, :8] = 255  # a bright top-left corner, which the flips move away
    tensor = next(iter(task.prepare(ImageInput(image), config).items))[None]
    views = [tensor.flip(dims) if dims else tensor for dims in ((), (3,), (2,), (2, 3))]
    by_hand = np.mean([_CornerReader()(v).softmax(dim=1).numpy()[0] for v in views], axis=0)
    single = _CornerReader()(tensor).softmax(dim=1).numpy()[0]
    assert Predictor(task, config, _CornerReader()).predict_one(
        ImageInput(image)).probabilities == pytest.approx(single, abs=1e-6)
    config.inference.flip_tta = True
    tta = Predictor(task, config, _CornerReader()).predict_one(ImageInput(image)).probabilities
    assert tta == pytest.approx(by_hand, abs=1e-6)
    assert np.abs(tta - single).max() > 0.1
    # evaluate --set inference.flip_tta=true on a trained run records what it evaluated with
    _, _, run = trained
    assert main(["evaluate", str(run), "--out", str(tmp_path / "tta"), "--set",
                 "inference.flip_tta=true"]) == 0
    saved = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert saved["inference"] == {"flip_tta": True}
    assert "averaged over 4 flips" in saved["aggregation"]
