"""Skin-lesion segmentation (TinyU-Net, Chen et al. 2024) as a task recipe.

Defaults reproduce the paper: 256x256 inputs, TinyU-Net, Adam lr 1e-4 (beta1 0.9), cosine
annealing to 1e-6, loss = cross-entropy + Dice. Test metrics are computed at each image's
original resolution (logits are resized back before the argmax), per image and over the
whole set, with subject-level bootstrap CIs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image
from pydantic import Field, field_validator, model_validator
from torch.utils.data import DataLoader
from torchmetrics import MetricCollection
from torchmetrics.segmentation import DiceScore, MeanIoU
from tqdm import tqdm

from medlite.config import (
    BaseTaskConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    StrictModel,
)
from medlite.data.io import IMAGE_EXTENSIONS, read_image, read_mask
from medlite.data.manifest import read_manifest
from medlite.data.segmentation import (
    SegmentationDataset,
    fit_to_size,
    postprocess_mask,
    restore_logits,
)
from medlite.data.transforms import AugmentConfig, normalize, to_tensor_image
from medlite.errors import DataError
from medlite.metrics import (
    metrics_with_ci,
    per_image_scores,
    segmentation_counts,
    segmentation_statistic,
)
from medlite.models import create_model, profile_model
from medlite.reports.figures import overlay_image, save_case_grid
from medlite.reports.html import write_standard_report
from medlite.tasks.base import Evaluation, Task, resolve_relative
from medlite.training.loop import TrainingParts
from medlite.training.losses import DiceCELoss


class SegmentationDataConfig(StrictModel):
    manifest: Path | None = Field(None, description="CSV with image, mask, subject[, split].")
    num_classes: int = Field(2, ge=2)
    class_names: list[str] = Field(default_factory=lambda: ["background", "lesion"])
    image_size: tuple[int, int] = Field((256, 256), description="(height, width), x16.")
    resize_mode: Literal["resize", "letterbox"] = "resize"
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    cache: bool = Field(True, description="Keep decoded, resized pairs in memory.")

    @field_validator("image_size")
    @classmethod
    def _multiple_of_16(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(side < 16 or side % 16 for side in value):
            raise ValueError("each side must be a multiple of 16 (four 2x poolings)")
        return value

    @model_validator(mode="after")
    def _names_match_classes(self):
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for "
                             f"num_classes={self.num_classes}")
        return self


class SegmentationLossConfig(StrictModel):
    ce_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)


class SegmentationInferenceConfig(StrictModel):
    """How masks are predicted from a trained model (evaluate and predict). The defaults are
    the paper's plain argmax; ``medlite evaluate/predict --set inference.KEY=VALUE`` changes
    them for a trained run."""

    flip_tta: bool = Field(False, description="Average softmax over the image and its "
                           "horizontal, vertical and double flips (4 forward passes).")
    largest_component: bool = Field(False, description="Keep only the largest region of "
                                    "each foreground class.")
    fill_holes: bool = Field(False, description="Fill background holes enclosed by a class.")


class SegmentationConfig(BaseTaskConfig):
    task: Literal["segmentation"] = "segmentation"
    data: SegmentationDataConfig = Field(default_factory=SegmentationDataConfig)
    loss: SegmentationLossConfig = Field(default_factory=SegmentationLossConfig)
    inference: SegmentationInferenceConfig = Field(default_factory=SegmentationInferenceConfig)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="tinyunet"))
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(name="adam", lr=1e-4, betas=(0.9, 0.999)))
    scheduler: SchedulerConfig = Field(
        default_factory=lambda: SchedulerConfig(name="cosine", min_lr=1e-6))


class SegmentationTask(Task):
    name = "segmentation"
    config_class = SegmentationConfig

    def resolve_paths(self, config: SegmentationConfig, base_dir: Path) -> SegmentationConfig:
        config = super().resolve_paths(config, base_dir)
        resolve_relative(config.data, ("manifest",), base_dir)
        return config

    def demo_config(self, out_dir: Path) -> SegmentationConfig:
        from medlite.datasets.lesions import write_lesion_dataset

        manifest = write_lesion_dataset(Path(out_dir) / "data", n_subjects=30,
                                        images_per_subject=2, size=(96, 96), seed=0)
        config = SegmentationConfig(
            name="demo-segmentation",
            data=SegmentationDataConfig(manifest=manifest, image_size=(64, 64)),
            optimizer=OptimizerConfig(name="adam", lr=1e-3),
        )
        # Small batches give TinyU-Net's slow BatchNorm statistics (momentum 0.03) enough
        # steps to settle within the demo's time.
        config.trainer.max_epochs = 25
        config.trainer.batch_size = 4
        config.trainer.early_stopping_patience = None
        config.split.val_fraction = 0.2
        config.split.test_fraction = 0.2
        config.evaluation.bootstrap_resamples = 500
        return config

    # -- data ----------------------------------------------------------------------------
    def load_samples(self, config: SegmentationConfig, data_path: Path | None = None):
        path = data_path or config.data.manifest
        if path is None:
            raise DataError("data.manifest: required (a CSV with image, mask, subject); "
                            "`medlite data index IMAGES MASKS --out manifest.csv` makes one")
        table = read_manifest(Path(path))
        table["sample"] = _sample_ids(table["image"])
        table.attrs["source"] = str(path)
        return table

    def _dataset(self, config: SegmentationConfig, rows: pd.DataFrame, train: bool):
        return SegmentationDataset(
            rows["image"].tolist(), rows["mask"].tolist(), size=config.data.image_size,
            num_classes=config.data.num_classes, resize_mode=config.data.resize_mode,
            augment=config.data.augment if train else None, cache=config.data.cache)

    # -- model and training --------------------------------------------------------------
    def build_model(self, config: SegmentationConfig, for_training: bool = True):
        return create_model(
            config.model.name, task="segmentation", num_classes=config.data.num_classes,
            in_channels=3, pretrained=config.model.pretrained and for_training,
            weights_path=config.model.weights_path if for_training else None,
            **config.model.kwargs)

    def training_parts(self, config: SegmentationConfig, samples: pd.DataFrame) -> TrainingParts:
        batch = config.trainer.batch_size
        workers = config.trainer.num_workers
        train = self._dataset(config, samples[samples["split"] == "train"], train=True)
        val = self._dataset(config, samples[samples["split"] == "val"], train=False)
        with warnings.catch_warnings():
            # torchmetrics warns about a default we set explicitly (average="micro").
            warnings.filterwarnings("ignore", "DiceScore metric currently defaults")
            metrics = self._val_metrics(config.data.num_classes)
        return TrainingParts(
            model=self.build_model(config),
            loss_fn=DiceCELoss(config.loss.ce_weight, config.loss.dice_weight),
            train_loader=DataLoader(train, batch_size=batch, shuffle=True,
                                    drop_last=len(train) > batch,
                                    num_workers=workers, persistent_workers=workers > 0),
            val_loader=DataLoader(val, batch_size=batch, num_workers=workers,
                                  persistent_workers=workers > 0),
            val_metrics=metrics, prediction_fn=lambda logits: logits.argmax(dim=1),
            monitor="val_dice", monitor_mode="max")

    @staticmethod
    def _val_metrics(num_classes: int) -> MetricCollection:
        """Lesion Dice (foreground classes pooled) and mean IoU for epoch-level monitoring."""
        return MetricCollection({
            "dice": DiceScore(num_classes=num_classes, include_background=False,
                              average="micro", input_format="index"),
            "miou": MeanIoU(num_classes=num_classes, include_background=True,
                            input_format="index"),
        })

    def example_input(self, config: SegmentationConfig) -> torch.Tensor:
        return torch.randn(1, 3, *config.data.image_size)

    # -- inference -----------------------------------------------------------------------
    @torch.no_grad()
    def predict_probabilities(self, model, config: SegmentationConfig,
                              image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 image -> (C, H, W) class probabilities at the image's own
        resolution (flip-averaged when ``inference.flip_tta``)."""
        tensor, _, valid = fit_to_size(to_tensor_image(image), None, config.data.image_size,
                                       config.data.resize_mode)
        batch = normalize(tensor)[None]
        flips = [(), (3,), (2,), (2, 3)] if config.inference.flip_tta else [()]
        probabilities = sum(_flip(model(_flip(batch, dims)).softmax(dim=1), dims)
                            for dims in flips) / len(flips)
        return restore_logits(probabilities[0], valid, image.shape[:2])

    def predict_mask(self, model, config: SegmentationConfig, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 image -> (H, W) int64 class map, post-processed as configured."""
        pred = self.predict_probabilities(model, config, image).argmax(dim=0).numpy()
        return postprocess_mask(pred, config.data.num_classes,
                                largest_component=config.inference.largest_component,
                                fill_holes=config.inference.fill_holes)

    def evaluate(self, model, config: SegmentationConfig, samples: pd.DataFrame,
                 out_dir: Path) -> Evaluation:
        out_dir = Path(out_dir)
        pred_dir = out_dir / "predictions"
        pred_dir.mkdir(parents=True, exist_ok=True)
        num_classes = config.data.num_classes
        counts = []
        model.eval()
        for row in tqdm(samples.itertuples(), total=len(samples), desc="evaluate", leave=False):
            image = read_image(row.image)
            truth = read_mask(row.mask, num_classes)
            if truth.shape != image.shape[:2]:
                raise DataError(f"{row.mask}: mask is {truth.shape[1]}x{truth.shape[0]}, image "
                                f"is {image.shape[1]}x{image.shape[0]}")
            pred = self.predict_mask(model, config, image)
            counts.append(segmentation_counts(torch.from_numpy(pred[None]),
                                              torch.from_numpy(truth[None]), num_classes)[0])
            Image.fromarray(_mask_to_png(pred, num_classes)).save(
                pred_dir / f"{row.sample}_mask.png")
        counts_t = torch.stack(counts)
        names = config.data.class_names
        subjects = samples["subject"].astype(str).to_numpy()
        n_boot = config.evaluation.bootstrap_resamples
        metrics = {
            group: metrics_with_ci(
                segmentation_statistic(counts_t, aggregate=aggregate, class_names=names),
                subjects, n_resamples=n_boot, confidence=config.evaluation.confidence,
                seed=config.seed)
            for group, aggregate in (("per_image", "image"), ("dataset", "dataset"))
        }
        per_image = pd.DataFrame({"sample": samples["sample"].to_numpy(), "subject": subjects,
                                  **per_image_scores(counts_t, names)})
        per_image.to_csv(out_dir / "per_image_metrics.csv", index=False)
        figures = self._case_figures(per_image, samples, config, pred_dir, out_dir / "figures")
        profile = profile_model(model, (1, 3, *config.data.image_size),
                                threads=torch.get_num_threads(), warmup=1, repeats=5)
        profile["model"] = config.model.name
        return Evaluation(metrics=metrics, per_sample=per_image, figures=figures,
                          extra={"aggregation": "per_image: mean over images of each image's "
                                 "score; dataset: pixels of all images pooled; computed at "
                                 "original image resolution", "profile": profile,
                                 "inference": config.inference.model_dump()})

    @staticmethod
    def _case_figures(per_image: pd.DataFrame, samples: pd.DataFrame,
                      config: SegmentationConfig, pred_dir: Path, figure_dir: Path):
        """Best and worst four cases by lesion Dice. Only these are read back from disk, so
        evaluating thousands of images never holds them all in memory."""
        key = f"dice_{config.data.class_names[-1]}"
        ranked = per_image["sample"].to_numpy()[per_image[key].fillna(-1).to_numpy().argsort()]
        rows = samples.set_index("sample")
        num_classes = config.data.num_classes

        def case(sample: str) -> tuple:
            return (sample, read_image(rows.loc[sample, "image"]),
                    read_mask(rows.loc[sample, "mask"], num_classes),
                    read_mask(pred_dir / f"{sample}_mask.png", num_classes))

        figure_dir.mkdir(parents=True, exist_ok=True)
        best = save_case_grid([case(s) for s in ranked[::-1][:4]], per_image, key,
                              figure_dir / "best_cases.png", "Best cases")
        worst = save_case_grid([case(s) for s in ranked[:4]], per_image, key,
                               figure_dir / "worst_cases.png", "Worst cases")
        return {"best_cases": best, "worst_cases": worst}

    def predict(self, model, config: SegmentationConfig, inputs: list[Path], out_dir: Path,
                overwrite: bool = False) -> list[Path]:
        files = expand_image_inputs(inputs)
        out_dir = Path(out_dir)
        targets = []
        for path in files:
            targets += [out_dir / f"{path.stem}_mask.png", out_dir / f"{path.stem}_overlay.png"]
        existing = [str(t) for t in targets if t.exists()]
        if existing and not overwrite:
            raise DataError(f"{existing[0]}: exists (and {len(existing) - 1} more); pass "
                            "--overwrite to replace predictions")
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        model.eval()
        for path in tqdm(files, desc="predict", leave=False):
            image = read_image(path)
            pred = self.predict_mask(model, config, image)
            mask_path = out_dir / f"{path.stem}_mask.png"
            Image.fromarray(_mask_to_png(pred, config.data.num_classes)).save(mask_path)
            overlay_path = out_dir / f"{path.stem}_overlay.png"
            Image.fromarray(overlay_image(image, pred, None)).save(overlay_path)
            written += [mask_path, overlay_path]
        return written

    def write_report(self, run_dir, config, evaluation, out_path, title):
        return write_standard_report(run_dir, config, evaluation, out_path, title,
                                     monitor="val_dice")


def _flip(batch: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return batch.flip(dims) if dims else batch


def _sample_ids(images: pd.Series) -> list[str]:
    stems = [Path(p).stem for p in images]
    if len(set(stems)) == len(stems):
        return stems
    return [str(Path(p)).replace("/", "_").replace("\\", "_") for p in images]


def _mask_to_png(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Binary masks as 0/255 (like PH2 and ISIC), multi-class as class indices."""
    if num_classes == 2:
        return (pred.astype(np.uint8) * 255)
    return pred.astype(np.uint8)


def expand_image_inputs(inputs: list[Path]) -> list[Path]:
    """Files and folders (their images, sorted) -> image files; a missing path is an error."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    if not files:
        raise DataError(f"{', '.join(map(str, inputs))}: no images found")
    return files
