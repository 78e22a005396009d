"""Skin image classification (Akay et al., IEEE OJEMB 2021: systemic sclerosis skin with
MobileNetV2) as a task recipe.

The paper: photographs resized to 128x128 and augmented (flips, crops, zoom); MobileNetV2
pretrained on ImageNet with a new head (global pooling, dense layers, softmax) for 2 classes
(normal vs SSc) or 3 (normal, early, late); trained in two stages, first the head alone on the
frozen backbone (100 epochs for 2 classes, 200 for 3), then everything but the first 10 layers
(fine-tuning); a plain CNN as the baseline; accuracy, sensitivity, specificity, confusion
matrices and learning curves reported.

Here a run trains the config's ``stages`` in order, each one call of the shared
:func:`~medlite.training.loop.fit` in ``run_dir/stages/<k>-<name>/`` starting from the previous
stage's best weights, with the stage's layers frozen and their BatchNorm statistics fixed.
Splits are subject-grouped and label-stratified. The test split is evaluated with
subject-bootstrap CIs (accuracy, balanced accuracy, sensitivity and specificity per class,
macro F1, ROC AUC, ECE), per-image predictions, a confusion matrix, a reliability diagram,
ROC curves, the most confident mistakes and the learning curves with the stage boundaries.

Choices where the paper is silent or framework-bound:

- Pixel scaling follows the pretrained weights: ImageNet mean/std by default, because
  torchvision's MobileNetV2 weights (and ``../shared/weights``) were trained on such inputs;
  the paper's [-1, 1] is what Keras' MobileNetV2 weights expect (``data.scaling:
  minus_one_one`` gives it).
- Learning rates: Adam 1e-3 for the head, 1e-5 for fine-tuning; stage 2 runs 100 epochs.
- The best weights of each stage are chosen by validation loss (``monitor``): on the small
  validation sets of clinical studies macro F1 moves in steps of one image and ties for many
  epochs, while the (class-weighted) cross-entropy is continuous and also penalises confident
  mistakes, which the reported calibration error measures.
- Class imbalance: inverse-frequency class weights in the cross-entropy by default.
"""

from __future__ import annotations

import html
import os
import warnings
from pathlib import Path
from typing import Literal

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from medlite.config import (
    BaseTaskConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    StrictModel,
    TrainerConfig,
)
from medlite.data.classification import (
    DERMAMNIST_CLASSES,
    ClassificationAugmentConfig,
    ClassificationDataset,
    balanced_sampler,
    class_weights,
    index_image_folder,
    load_dermamnist,
    read_classification_manifest,
    stratified_group_folds,
    stratified_group_split,
    write_classification_manifest,
)
from medlite.data.io import decoded_image_size
from medlite.data.manifest import raise_if_problems, write_csv_atomic
from medlite.data.splits import check_subject_disjoint, write_splits
from medlite.errors import ConfigError, DataError
from medlite.metrics import (
    classification_metrics,
    confusion,
    expected_calibration_error,
    metrics_with_ci,
    reliability_curve,
)
from medlite.models import create_model, profile_model
from medlite.models.freezing import (
    freeze_backbone,
    freeze_first_layers,
    set_frozen_batchnorm_eval,
    trainable_summary,
    unfreeze_all,
)
from medlite.reports.classification_figures import (
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    save_misclassified_grid,
)
from medlite.reports.html import write_standard_report
from medlite.runs import load_state_dict, read_json, save_torch_atomic, write_json
from medlite.tasks.base import (
    SPLITS_FILE,
    Evaluation,
    Task,
    evaluate_test_split,
    resolve_relative,
    save_config,
    with_saved_splits,
)
from medlite.tasks.segmentation import expand_image_inputs
from medlite.training.loop import HISTORY_FILE, MODEL_FILE, TrainingParts, fit, read_history

STAGES_DIR = "stages"
STAGES_FILE = "stages.json"
PREDICTIONS_FILE = "predictions.csv"
DERIVED_MANIFEST_FILE = "manifest.csv"
MISCLASSIFIED_SHOWN = 16


# -- configuration -----------------------------------------------------------------------------

class ClassificationDataConfig(StrictModel):
    manifest: Path | None = Field(None, description="CSV with image, label, subject[, split].")
    image_folder: Path | None = Field(None, description="One subfolder of images per class "
                                      "(each image its own subject); a manifest is derived.")
    dermamnist: Path | None = Field(None, description="DermaMNIST folder (npz + labels.csv), "
                                    "with its official train/val/test split.")
    class_names: list[str] | None = Field(None, description="Classes in label-index order; "
                                          "default: the sorted labels of the data.")
    image_size: tuple[int, int] = Field((128, 128), description="(height, width) in pixels, "
                                        "or one number for a square.")
    scaling: Literal["imagenet", "minus_one_one"] = Field(
        "imagenet", description="imagenet: mean/std, as torchvision's weights expect; "
        "minus_one_one: [-1, 1], as Keras' MobileNetV2 weights (the paper) expect.")
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    augment: ClassificationAugmentConfig = Field(default_factory=ClassificationAugmentConfig)
    class_balance: Literal["none", "weights", "sampler"] = Field(
        "weights", description="weights: inverse-frequency class weights in the loss; "
        "sampler: draw classes equally often; none.")
    cache: bool = Field(True, description="Keep decoded, resized images in memory.")
    check_images: bool = Field(True, description="Decode every image when reading the data.")

    @field_validator("image_size", mode="before")
    @classmethod
    def _square(cls, value):
        return (value, value) if isinstance(value, int) else value

    @field_validator("image_size")
    @classmethod
    def _at_least_16(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 16:
            raise ValueError("each side must be at least 16 pixels")
        return value

    @field_validator("class_names")
    @classmethod
    def _distinct(cls, names: list[str] | None) -> list[str] | None:
        if names is not None and (len(names) < 2 or len(set(names)) != len(names)):
            raise ValueError("needs at least two distinct class names")
        return names

    @model_validator(mode="after")
    def _one_source(self):
        given = [k for k in ("manifest", "image_folder", "dermamnist") if getattr(self, k)]
        if len(given) > 1:
            raise ValueError(f"give one data source, not {' and '.join(given)}")
        return self


class StageConfig(StrictModel):
    """One training stage. ``epochs`` and ``lr`` default to ``trainer.max_epochs`` and
    ``optimizer.lr``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="Names the stage's folder.")
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    trainable: Literal["head", "all", "all_but_first_n"] = Field(
        "all", description="head: only the classification head learns; all; all_but_first_n: "
        "the first freeze_first_n_layers layers stay frozen.")
    freeze_first_n_layers: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _n_with_all_but_first_n(self):
        wanted = self.trainable == "all_but_first_n"
        if wanted != (self.freeze_first_n_layers is not None):
            raise ValueError("freeze_first_n_layers goes with trainable: all_but_first_n "
                             "(and only with it)")
        return self


def paper_stages() -> list[StageConfig]:
    """The paper's schedule: the head on the frozen backbone, then fine-tuning all but the
    first 10 layers (the paper trains the head 100 epochs for 2 classes, 200 for 3)."""
    return [StageConfig(name="head", epochs=100, lr=1e-3, trainable="head"),
            StageConfig(name="fine_tune", epochs=100, lr=1e-5, trainable="all_but_first_n",
                        freeze_first_n_layers=10)]


class ClassificationConfig(BaseTaskConfig):
    task: Literal["classification"] = "classification"
    data: ClassificationDataConfig = Field(default_factory=ClassificationDataConfig)
    stages: list[StageConfig] = Field(default_factory=paper_stages, min_length=1)
    monitor: Literal["val_loss", "val_macro_f1"] = Field(
        "val_loss", description="Chooses each stage's best epoch (and early stopping).")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(
        name="mobilenet_v2", pretrained=True, kwargs={"head_hidden": 128, "dropout": 0.2}))
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig(name="none"))
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(
        max_epochs=100, batch_size=32, early_stopping_patience=None))

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        names = [s.name for s in stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"stage name {repeated[0]!r} is used twice")
        return stages


# -- freezing and stages -----------------------------------------------------------------------

class FrozenBatchNormEval(pl.Callback):
    """Keeps frozen BatchNorm layers in eval mode during training, so their running
    statistics (part of the pretrained weights) do not drift with the new data."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        set_frozen_batchnorm_eval(pl_module)


def apply_stage_freezing(model: nn.Module, stage: StageConfig, index: int) -> None:
    """Set ``requires_grad`` of ``model``'s parameters for ``stage`` (``stages[index]``)."""
    if stage.trainable == "all":
        unfreeze_all(model)
    elif stage.trainable == "head":
        freeze_backbone(model)
    else:
        try:
            freeze_first_layers(model, stage.freeze_first_n_layers)
        except ValueError as exc:
            raise ConfigError(f"stages.{index}.freeze_first_n_layers: {exc}") from None


def stage_dir(run_dir: Path, index: int, stage: StageConfig) -> Path:
    """``run_dir/stages/<index + 1>-<name>``."""
    return Path(run_dir) / STAGES_DIR / f"{index + 1}-{stage.name}"


def stage_training_config(config: ClassificationConfig,
                          stage: StageConfig) -> ClassificationConfig:
    """A copy of ``config`` whose trainer and optimizer run ``stage``."""
    staged = config.model_copy(deep=True)
    if stage.epochs is not None:
        staged.trainer.max_epochs = stage.epochs
    if stage.lr is not None:
        staged.optimizer.lr = stage.lr
    return staged


def _runs(rows: list[dict], trainable: bool) -> list[str]:
    """Runs of consecutive modules with (or without) trainable parameters, as
    ``first..last`` names; parameter-free modules (pooling) are skipped."""
    runs: list[str] = []
    current: list[str] = []

    def close() -> None:
        if current:
            runs.append(current[0] if len(current) == 1 else f"{current[0]}..{current[-1]}")
            current.clear()

    for row in rows:
        if not row["parameters"]:
            continue
        if (row["trainable"] > 0) == trainable:
            current.append(row["name"])
        else:
            close()
    close()
    return runs


def stage_summary(model: nn.Module, stage: StageConfig, index: int,
                  config: ClassificationConfig) -> dict:
    """What trains in ``stage``: counts, per-module rows and frozen BatchNorm layers."""
    rows = trainable_summary(model)
    frozen_bn = set_frozen_batchnorm_eval(model)
    model.train()
    return {
        "index": index + 1, "name": stage.name, "trainable": stage.trainable,
        "freeze_first_n_layers": stage.freeze_first_n_layers,
        "epochs": stage.epochs or config.trainer.max_epochs,
        "lr": stage.lr or config.optimizer.lr,
        "parameters": sum(r["parameters"] for r in rows),
        "trainable_parameters": sum(r["trainable"] for r in rows),
        "trainable_modules": _runs(rows, True), "frozen_modules": _runs(rows, False),
        "frozen_batchnorm_layers": len(frozen_bn), "modules": rows, "finished": False,
    }


def format_stage_summary(record: dict, n_stages: int) -> str:
    frozen = ", ".join(record["frozen_modules"]) or "none"
    return (f"stage {record['index']}/{n_stages} {record['name']} ({record['trainable']}, "
            f"{record['epochs']} epochs, lr {record['lr']:g}): "
            f"{record['trainable_parameters']:,} of {record['parameters']:,} parameters "
            f"trainable; frozen: {frozen}")


def combine_stage_histories(run_dir: Path, stages: list[StageConfig]) -> pd.DataFrame:
    """The stages' ``history.csv`` one after the other: ``stage`` (name), ``stage_epoch``
    (0-based within the stage) and ``epoch`` (0-based over the whole run)."""
    frames, offset = [], 0
    for index, stage in enumerate(stages):
        history = read_history(stage_dir(run_dir, index, stage))
        if history.empty:
            continue
        history.insert(0, "stage", stage.name)
        history["stage_epoch"] = history["epoch"]
        history["epoch"] = history["epoch"] + offset
        offset = int(history["epoch"].max()) + 1
        frames.append(history)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def stage_markers(history: pd.DataFrame) -> dict[str, int]:
    """``{stage name: its first epoch}`` for every stage after the first (plot markers)."""
    if history.empty or "stage" not in history:
        return {}
    firsts = history.groupby("stage", sort=False)["epoch"].min()
    return {f"start {name}": int(epoch) for name, epoch in list(firsts.items())[1:]}


# -- the recipe --------------------------------------------------------------------------------

class ClassificationTask(Task):
    name = "classification"
    config_class = ClassificationConfig

    def resolve_paths(self, config: ClassificationConfig,
                      base_dir: Path) -> ClassificationConfig:
        config = super().resolve_paths(config, base_dir)
        resolve_relative(config.data, ("manifest", "image_folder", "dermamnist"), base_dir)
        return config

    def demo_config(self, out_dir: Path) -> ClassificationConfig:
        """Synthetic normal/early/late skin (90 subjects x 2 images, 64 px) and a small plain
        CNN trained from scratch: one stage training everything, then a short stage at a
        tenth of the rate with the first two blocks frozen. Without pretrained weights a
        head-only stage would train a classifier on random features, so there is none."""
        from medlite.datasets.skin import SSC_CLASSES, write_skin_dataset

        manifest = write_skin_dataset(Path(out_dir) / "data", n_subjects=90,
                                      images_per_subject=2, size=64, seed=0)
        # Crease density tells the classes apart, so zoom stays mild; hue and saturation
        # jitter would double the CPU time of the augmentation for little gain here.
        augment = ClassificationAugmentConfig(scale=(0.9, 1.0), hue=0.0, saturation=0.0)
        config = ClassificationConfig(
            name="demo-classification",
            data=ClassificationDataConfig(manifest=manifest, class_names=list(SSC_CLASSES),
                                          image_size=(64, 64), augment=augment),
            model=ModelConfig(name="plain_cnn", pretrained=False,
                              kwargs={"widths": [16, 32, 64, 128], "hidden": 64,
                                      "dropout": 0.2}),
            stages=[StageConfig(name="train", epochs=45, lr=2e-3, trainable="all"),
                    StageConfig(name="fine_tune", epochs=10, lr=2e-4,
                                trainable="all_but_first_n", freeze_first_n_layers=2)],
            optimizer=OptimizerConfig(name="adam", lr=2e-3),
        )
        config.trainer.batch_size = 16
        config.split.val_fraction = 0.2
        config.split.test_fraction = 0.25
        config.evaluation.bootstrap_resamples = 500
        return config

    # -- data ------------------------------------------------------------------------------
    def load_samples(self, config: ClassificationConfig,
                     data_path: Path | None = None) -> pd.DataFrame:
        """One row per image: ``sample``, ``image``, ``label``, ``label_index``, ``subject``
        (and ``split`` when the data fixes it; ``pixels``, uint8 (H, W, 3) arrays, for
        DermaMNIST). ``attrs``: ``source`` and ``class_names``. ``data_path`` (a manifest or
        an image folder) replaces the config's data source."""
        data = config.data
        if data_path is None and data.dermamnist is not None:
            return _dermamnist_samples(Path(data.dermamnist), data.class_names)
        path = data_path or data.manifest or data.image_folder
        if path is None:
            raise DataError("data.manifest, data.image_folder or data.dermamnist: one is "
                            "required (a CSV with image, label, subject; or a folder with one "
                            "subfolder of images per class)")
        path = Path(path)
        if path.is_dir():
            table = _folder_samples(path, data.class_names, data.check_images)
        else:
            table = read_classification_manifest(path, data.class_names, data.check_images)
            table["sample"] = _sample_ids(table["image"])
        table.attrs["source"] = str(path)
        return table

    def stratify_labels(self, samples: pd.DataFrame) -> np.ndarray:
        return samples["label"].astype(str).to_numpy()

    def split(self, samples: pd.DataFrame, config: ClassificationConfig) -> pd.DataFrame:
        """Subject-grouped, label-stratified ``split`` (and ``fold`` for k-fold).

        A ``split`` column in the data is kept for the rows (and subjects) that have one; the
        other subjects are split by ``split.val_fraction`` / ``test_fraction`` among
        themselves. With ``split.folds`` the test set is fold ``split.fold`` of a stratified
        grouped k-fold and validation subjects are drawn from the other folds."""
        source = samples.attrs.get("source", "data")
        samples = samples.copy()
        subjects = samples["subject"].astype(str).to_numpy()
        labels = self.stratify_labels(samples)
        given = (samples["split"].fillna("").astype(str).str.lower().to_numpy()
                 if "split" in samples else np.full(len(samples), "", dtype=object))
        check_subject_disjoint(subjects, given, source)
        cfg = config.split
        if cfg.folds:
            if (given != "").any():
                raise ConfigError(f"split.folds: {source} fixes splits in its split column; "
                                  "remove the column or split.folds")
            if cfg.fold >= cfg.folds:
                raise ConfigError(f"split.fold: {cfg.fold} is not below split.folds "
                                  f"({cfg.folds})")
            folds = stratified_group_folds(labels, subjects, cfg.folds, seed=config.seed)
            is_test = folds == cfg.fold
            splits = np.full(len(samples), "test", dtype=object)
            val_share = min(0.9, cfg.val_fraction / (1 - 1 / cfg.folds))
            splits[~is_test] = stratified_group_split(labels[~is_test], subjects[~is_test],
                                                      val_fraction=val_share, test_fraction=0,
                                                      seed=config.seed)
            samples["fold"] = folds
        else:
            of_subject = {s: g for s, g in zip(subjects, given, strict=True) if g}
            splits = np.array([of_subject.get(s, "") for s in subjects], dtype=object)
            free = splits == ""
            if free.any():
                splits[free] = stratified_group_split(
                    labels[free], subjects[free], val_fraction=cfg.val_fraction,
                    test_fraction=cfg.test_fraction, seed=config.seed)
        samples["split"] = splits.astype(str)
        check_subject_disjoint(subjects, samples["split"].to_numpy(), source)
        for needed in ("train", "val"):
            if not (samples["split"] == needed).any():
                raise DataError(f"{source}: no subject in the {needed} split; add subjects or "
                                "change split.val_fraction / split.test_fraction")
        return samples

    def _dataset(self, config: ClassificationConfig, rows: pd.DataFrame,
                 train: bool) -> ClassificationDataset:
        images = (np.stack(rows["pixels"].to_list()) if "pixels" in rows
                  else rows["image"].tolist())
        dataset_class = ClassificationDataset if config.data.cache else _UncachedDataset
        return dataset_class(images, rows["label_index"].to_numpy(np.int64),
                             size=config.data.image_size, train=train,
                             scaling=config.data.scaling, augment=config.data.augment,
                             interpolation=config.data.interpolation)

    # -- model and training ----------------------------------------------------------------
    def build_model(self, config: ClassificationConfig, for_training: bool = True) -> nn.Module:
        names = config.data.class_names
        if names is None:
            raise ConfigError("data.class_names: unknown until the data are read")
        return create_model(
            config.model.name, task="classification", num_classes=len(names),
            pretrained=config.model.pretrained and for_training,
            weights_path=config.model.weights_path if for_training else None,
            **config.model.kwargs)

    def training_parts(self, config: ClassificationConfig,
                       samples: pd.DataFrame) -> TrainingParts:
        return self.stage_parts(config, samples, self.build_model(config))

    def stage_parts(self, config: ClassificationConfig, samples: pd.DataFrame,
                    model: nn.Module) -> TrainingParts:
        """Loaders, class-balanced loss and validation metrics around ``model``."""
        num_classes = len(config.data.class_names)
        train_rows = samples[samples["split"] == "train"]
        train = self._dataset(config, train_rows, train=True)
        val = self._dataset(config, samples[samples["split"] == "val"], train=False)
        balance = config.data.class_balance
        weight = (class_weights(train.labels, num_classes, config.data.class_names)
                  if balance == "weights" else None)
        sampler = (balanced_sampler(train.labels, seed=config.seed)
                   if balance == "sampler" else None)
        batch, workers = config.trainer.batch_size, config.trainer.num_workers
        metrics = MetricCollection({
            "accuracy": MulticlassAccuracy(num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes, average="macro"),
        })
        return TrainingParts(
            model=model, loss_fn=nn.CrossEntropyLoss(weight=weight),
            train_loader=DataLoader(train, batch_size=batch, shuffle=sampler is None,
                                    sampler=sampler, drop_last=len(train) > batch,
                                    num_workers=workers, persistent_workers=workers > 0),
            val_loader=DataLoader(val, batch_size=batch, num_workers=workers,
                                  persistent_workers=workers > 0),
            val_metrics=metrics, prediction_fn=lambda logits: logits.argmax(dim=1),
            monitor=config.monitor, monitor_mode="min" if config.monitor == "val_loss" else "max",
            extra_callbacks=[FrozenBatchNormEval()])

    def example_input(self, config: ClassificationConfig) -> torch.Tensor:
        return torch.rand(1, 3, *config.data.image_size) * 2 - 1

    # -- the pipeline ----------------------------------------------------------------------
    def run_training(self, config: ClassificationConfig, run_dir: Path, *, resume: bool,
                     progress: bool) -> dict:
        run_dir = Path(run_dir)
        samples = self.load_samples(config)
        if config.data.class_names is None:
            # Recorded in the run's config so evaluate, predict and export build the same head.
            config.data.class_names = list(samples.attrs["class_names"])
            save_config(config, run_dir)
        if config.data.image_folder is not None and not resume:
            write_classification_manifest(samples, run_dir / DERIVED_MANIFEST_FILE)
        if resume and (run_dir / SPLITS_FILE).is_file():
            samples = with_saved_splits(samples, run_dir)
        else:
            samples = self.split(samples, config)
            write_splits(run_dir / SPLITS_FILE, samples["sample"], samples["subject"],
                         samples["split"], samples.get("fold"))
        check_training_classes(samples, config.data.class_names)

        final = self.train_stages(config, samples, run_dir, resume=resume, progress=progress)
        history = combine_stage_histories(run_dir, config.stages)
        write_csv_atomic(history, run_dir / HISTORY_FILE)
        state = load_state_dict(final)
        save_torch_atomic(state, run_dir / MODEL_FILE)

        model = self.build_model(config, for_training=False)
        model.load_state_dict(state)
        return evaluate_test_split(self, model, config, samples, run_dir)

    def train_stages(self, config: ClassificationConfig, samples: pd.DataFrame,
                     run_dir: Path, *, resume: bool, progress: bool) -> Path:
        """Train every unfinished stage (one ``fit`` each) and return the last stage's best
        weights. A stage is finished when its ``model.pt`` exists; with ``resume`` an
        unfinished stage continues from its ``last.ckpt``. Each stage's record (trainable and
        frozen modules, epochs run, best monitored value) goes to ``run_dir/stages.json``."""
        records_path = run_dir / STAGES_FILE
        records = {r["name"]: r for r in read_json(records_path)} \
            if resume and records_path.is_file() else {}
        previous: Path | None = None
        first = config.stages[0]
        if first.trainable != "all" and not (config.model.pretrained
                                             or config.model.weights_path):
            warnings.warn(f"stages.0 ({first.name}) freezes layers of a model that starts from "
                          "random weights (model.pretrained is false, no model.weights_path); "
                          "those layers will never learn", UserWarning, stacklevel=2)
        for index, stage in enumerate(config.stages):
            folder = stage_dir(run_dir, index, stage)
            if (folder / MODEL_FILE).is_file():
                previous = folder / MODEL_FILE
                continue
            model = self.build_model(config, for_training=previous is None)
            if previous is not None:
                model.load_state_dict(load_state_dict(previous))
            apply_stage_freezing(model, stage, index)
            record = stage_summary(model, stage, index, config)
            record["dir"] = folder.relative_to(run_dir).as_posix()
            print(format_stage_summary(record, len(config.stages)))
            records[stage.name] = record
            _write_records(records_path, records, config.stages)
            parts = self.stage_parts(config, samples, model)
            fit(parts, stage_training_config(config, stage), folder, resume=resume,
                progress=progress)
            history = read_history(folder)
            record["finished"] = True
            record["epochs_run"] = len(history)
            if config.monitor in history and len(history):
                best = (history[config.monitor].min() if config.monitor == "val_loss"
                        else history[config.monitor].max())
                record[f"best_{config.monitor}"] = float(best)
            _write_records(records_path, records, config.stages)
            previous = folder / MODEL_FILE
        return previous

    # -- evaluation and prediction ---------------------------------------------------------
    @torch.no_grad()
    def predict_probabilities(self, model: nn.Module, dataset: ClassificationDataset,
                              batch_size: int = 32) -> np.ndarray:
        """Softmax class probabilities, float64 (N, C), of every item of ``dataset``."""
        model.eval()
        outputs = [model(batch["input"]).softmax(dim=1)
                   for batch in DataLoader(dataset, batch_size=batch_size)]
        probabilities = torch.cat(outputs).double()
        return (probabilities / probabilities.sum(dim=1, keepdim=True)).numpy()

    def evaluate(self, model: nn.Module, config: ClassificationConfig, samples: pd.DataFrame,
                 out_dir: Path) -> Evaluation:
        out_dir = Path(out_dir)
        figure_dir = out_dir / "figures"
        figure_dir.mkdir(parents=True, exist_ok=True)
        names = list(config.data.class_names)
        dataset = self._dataset(config, samples, train=False)
        probabilities = self.predict_probabilities(model, dataset, config.trainer.batch_size)
        truth = samples["label_index"].to_numpy(np.int64)
        predicted = probabilities.argmax(axis=1)
        subjects = samples["subject"].astype(str).to_numpy()

        table = pd.DataFrame({
            "sample": samples["sample"].to_numpy(), "subject": subjects,
            "image": samples["image"].to_numpy(), "label": samples["label"].to_numpy(),
            "predicted": np.asarray(names, dtype=object)[predicted],
            "correct": predicted == truth, "confidence": probabilities.max(axis=1),
            **{f"p_{name}": probabilities[:, k] for k, name in enumerate(names)}})
        write_csv_atomic(table, out_dir / PREDICTIONS_FILE)

        metrics = _metrics_with_ci(truth, probabilities, names, subjects, config)
        matrix = confusion(truth, predicted, len(names))
        curve = reliability_curve(truth, probabilities)
        mistakes = np.flatnonzero(predicted != truth)
        mistakes = mistakes[np.argsort(-probabilities[mistakes].max(axis=1),
                                       kind="stable")][:MISCLASSIFIED_SHOWN]
        figures = {
            "confusion_matrix": plot_confusion_matrix(
                matrix, names, figure_dir / "confusion_matrix.png", title="counts"),
            "confusion_matrix_normalized": plot_confusion_matrix(
                matrix, names, figure_dir / "confusion_matrix_normalized.png", normalize=True,
                title="row-normalised (recall on the diagonal)"),
            "reliability_diagram": plot_reliability_diagram(
                curve, expected_calibration_error(truth, probabilities),
                figure_dir / "reliability.png"),
            "roc_curves": plot_roc_curves(truth, probabilities, names,
                                          figure_dir / "roc_curves.png"),
            "most_confident_mistakes": save_misclassified_grid(
                [dataset.load(int(i)).permute(1, 2, 0).numpy() for i in mistakes],
                [names[truth[i]] for i in mistakes], [names[predicted[i]] for i in mistakes],
                probabilities[mistakes].max(axis=1), figure_dir / "misclassified.png"),
        }
        profile = profile_model(model, (1, 3, *config.data.image_size),
                                threads=torch.get_num_threads(), warmup=1, repeats=5)
        profile["model"] = config.model.name
        return Evaluation(
            metrics=metrics, per_sample=table, figures=figures,
            extra={"aggregation": "one prediction per image (arg-max of the softmax); "
                   "sensitivity/specificity one-vs-rest per class (binary: of class "
                   f"{names[-1]!r}); ECE over 15 confidence bins",
                   "class_names": names, "confusion_matrix": matrix.tolist(),
                   "profile": profile})

    def predict(self, model: nn.Module, config: ClassificationConfig, inputs: list[Path],
                out_dir: Path, overwrite: bool = False) -> list[Path]:
        """Image files and folders -> ``out_dir/predictions.csv``: file, predicted class,
        its probability and the probability of every class."""
        files = expand_image_inputs(inputs)
        target = Path(out_dir) / PREDICTIONS_FILE
        if target.exists() and not overwrite:
            raise DataError(f"{target}: exists; pass --overwrite to replace predictions")
        names = list(config.data.class_names)
        dataset = ClassificationDataset(files, np.zeros(len(files), dtype=np.int64),
                                        size=config.data.image_size, train=False,
                                        scaling=config.data.scaling,
                                        interpolation=config.data.interpolation)
        probabilities = self.predict_probabilities(model, dataset, config.trainer.batch_size)
        table = pd.DataFrame({
            "file": [str(f) for f in files],
            "predicted": np.asarray(names, dtype=object)[probabilities.argmax(axis=1)],
            "confidence": probabilities.max(axis=1),
            **{f"p_{name}": probabilities[:, k] for k, name in enumerate(names)}})
        return [write_csv_atomic(table, target)]

    def write_report(self, run_dir, config, evaluation, out_path, title):
        records = _read_records(Path(run_dir))
        sections = []
        if records:
            shown = ("index", "name", "trainable", "epochs", "epochs_run", "lr",
                     "trainable_parameters", "parameters")
            table = pd.DataFrame([{k: r.get(k) for k in shown} for r in records])
            frozen = "".join(f"<li>{html.escape(r['name'])}: frozen "
                             f"{html.escape(', '.join(r['frozen_modules']) or 'nothing')}</li>"
                             for r in records)
            sections.append(("Training stages", table.to_html(index=False)
                             + f"<ul>{frozen}</ul>"))
        return write_standard_report(
            run_dir, config, evaluation, out_path, title,
            monitor=config.monitor if len(config.stages) == 1 else None,
            extra_sections=sections, markers=stage_markers(read_history(run_dir)))


# -- helpers -----------------------------------------------------------------------------------

class _UncachedDataset(ClassificationDataset):
    """Decodes every image again on each use (``data.cache: false``, for large sets)."""

    def load(self, index: int) -> torch.Tensor:
        image = super().load(index)
        self._cache.pop(index, None)
        return image


def check_training_classes(samples: pd.DataFrame, class_names: list[str]) -> None:
    """Every class needs training images, or the network never learns it."""
    train = set(samples.loc[samples["split"] == "train", "label_index"].tolist())
    missing = [name for k, name in enumerate(class_names) if k not in train]
    if missing:
        source = samples.attrs.get("source", "data")
        raise DataError(f"{source}: class {missing[0]!r} has no image in the train split; add "
                        "subjects of that class or change the split")


def _metrics_with_ci(truth: np.ndarray, probabilities: np.ndarray, names: list[str],
                     subjects: np.ndarray, config: ClassificationConfig) -> dict:
    def statistic(index: np.ndarray) -> dict[str, float]:
        return classification_metrics(truth[index], probabilities[index], names)

    resamples = config.evaluation.bootstrap_resamples
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # one subject: zero-width intervals
        if resamples == 0:
            return {k: {"value": v, "ci_low": None, "ci_high": None}
                    for k, v in statistic(np.arange(len(truth))).items()}
        return metrics_with_ci(statistic, subjects, n_resamples=resamples,
                               confidence=config.evaluation.confidence, seed=config.seed)


def _sample_ids(images: pd.Series) -> list[str]:
    """Image stems when unique, else the paths below their common folder, separators
    replaced by ``_``."""
    paths = [str(p) for p in images]
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    common = os.path.commonpath(paths)
    return [Path(os.path.relpath(p, common)).with_suffix("").as_posix().replace("/", "_")
            for p in paths]


def _folder_samples(root: Path, class_names: list[str] | None,
                    check_images: bool) -> pd.DataFrame:
    """An image folder as samples, checked like a manifest: class folders against
    ``class_names`` and (``check_images``) every image decoded."""
    table = index_image_folder(root)
    found = list(table.attrs["class_names"])
    names = list(class_names) if class_names is not None else found
    problems = [f"{root / label}: class folder {label!r} is not in data.class_names "
                f"({', '.join(names)})" for label in found if label not in names]
    problems += [f"{root}: class {name!r} of data.class_names has no folder with images"
                 for name in names if name not in found]
    if check_images:
        for path in table["image"]:
            try:
                decoded_image_size(path)
            except DataError as exc:
                problems.append(f"image not readable: {exc}")
    raise_if_problems(problems, str(root))
    # Stems alone could join two classes' "1.jpg" into one subject.
    relative = [Path(p).relative_to(root.resolve()).with_suffix("").as_posix()
                for p in table["image"]]
    table["subject"] = relative
    table["sample"] = [r.replace("/", "_") for r in relative]
    table["label_index"] = table["label"].map({n: i for i, n in enumerate(names)}).astype(
        np.int64)
    table.attrs["class_names"] = names
    return table


def _dermamnist_samples(root: Path, class_names: list[str] | None) -> pd.DataFrame:
    """DermaMNIST with its official split; subjects are lesions."""
    if class_names is not None and list(class_names) != list(DERMAMNIST_CLASSES):
        raise ConfigError(f"data.class_names: DermaMNIST's classes are fixed "
                          f"({', '.join(DERMAMNIST_CLASSES)}); leave class_names out")
    frames = []
    for split, (images, labels, lesions) in load_dermamnist(root).items():
        ids = [f"DermaMNIST_{split}_{i:05d}" for i in range(len(images))]
        frames.append(pd.DataFrame({
            "sample": ids, "image": ids, "label": np.asarray(DERMAMNIST_CLASSES)[labels],
            "label_index": labels, "subject": lesions, "split": split,
            "pixels": list(images)}))
    table = pd.concat(frames, ignore_index=True)
    table.attrs["source"] = str(root)
    table.attrs["class_names"] = list(DERMAMNIST_CLASSES)
    return table


def _write_records(path: Path, records: dict[str, dict], stages: list[StageConfig]) -> None:
    write_json(path, [records[s.name] for s in stages if s.name in records])


def _read_records(run_dir: Path) -> list[dict]:
    path = run_dir / STAGES_FILE
    return read_json(path) if path.is_file() else []
