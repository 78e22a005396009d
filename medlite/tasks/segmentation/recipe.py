"""Skin-lesion segmentation (TinyU-Net, Chen et al. 2024) as a task recipe.

Defaults reproduce the paper: 256x256 inputs, TinyU-Net, Adam lr 1e-4 (beta1 0.9), cosine
annealing to 1e-6, loss = cross-entropy + Dice. Test metrics are computed at each image's
original resolution (probabilities are resized back before the argmax), per image and over
the whole set, with subject-level bootstrap CIs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchmetrics import MetricCollection
from torchmetrics.segmentation import DiceScore, MeanIoU

from medlite.config import (
    OptimizerConfig,
)
from medlite.data.io import image_files
from medlite.data.manifest import read_manifest
from medlite.data.segmentation import (
    ScanReader,
    SegmentationDataset,
    class_pixel_counts,
    fit_to_size,
    inverse_frequency_weights,
    network_input,
    postprocess_mask,
    restore_logits,
)
from medlite.data.transforms import to_tensor_image
from medlite.errors import DataError
from medlite.inference.predictor import Prepared
from medlite.inference.tta import flip_averaged_softmax
from medlite.inference.types import ImageInput, SegmentationOutput
from medlite.metrics import per_image_scores, segmentation_counts, segmentation_statistic
from medlite.models import create_model
from medlite.reports.figures import class_overlay, overlay_image, save_case_grid
from medlite.tasks.base import Task, model_profile, resolve_relative
from medlite.tasks.segmentation.config import (
    SegmentationConfig,
    SegmentationDataConfig,
)
from medlite.training.loop import TrainingParts
from medlite.training.losses import DiceCELoss

_COUNTS = ("tp", "fp", "fn")


class SegmentationTask(Task):
    name = "segmentation"
    config_class = SegmentationConfig
    content_columns = ("image",)
    monitor = "val_dice"

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

    def class_names(self, config: SegmentationConfig) -> list[str]:
        return list(config.data.class_names)

    # -- data ------------------------------------------------------------------------------
    def load_samples(self, config: SegmentationConfig, data_path: Path | None = None):
        path = data_path or config.data.manifest
        if path is None:
            raise DataError("data.manifest: required (a CSV with image, mask, subject); "
                            "`medlite data index IMAGES MASKS --out manifest.csv` makes one")
        table = read_manifest(Path(path))
        table["sample"] = sample_ids(table["image"])
        table.attrs["source"] = str(path)
        return table

    # -- model and training ----------------------------------------------------------------
    def build_model(self, config: SegmentationConfig, for_training: bool = True):
        return create_model(
            config.model.name, task="segmentation", num_classes=config.data.num_classes,
            in_channels=config.data.in_channels,
            pretrained=config.model.pretrained and for_training,
            weights_path=config.model.initial_weights() if for_training else None,
            **config.model.kwargs)

    def training_parts(self, config: SegmentationConfig, train_rows, val_rows, model, fit):
        data = config.data

        def dataset(rows: pd.DataFrame, train: bool) -> SegmentationDataset:
            return SegmentationDataset(rows["image"].tolist(), rows["mask"].tolist(),
                                       size=data.image_size, num_classes=data.num_classes,
                                       resize_mode=data.resize_mode,
                                       augment=data.augment if train else None,
                                       cache=data.cache, in_channels=data.in_channels,
                                       reader=scan_reader(config),
                                       augment_until_epoch=data.augment_until_epoch)

        train = dataset(train_rows, True)
        weights = config.loss.class_weights
        if weights == "inverse_frequency":
            weights = inverse_frequency_weights(class_pixel_counts(train))

        with warnings.catch_warnings():
            # torchmetrics warns about a default we set explicitly (average="micro").
            warnings.filterwarnings("ignore", "DiceScore metric currently defaults")
            metrics = MetricCollection({
                "dice": DiceScore(num_classes=data.num_classes, include_background=False,
                                  average="micro", input_format="index"),
                "miou": MeanIoU(num_classes=data.num_classes, include_background=True,
                                input_format="index"),
            })
        loss = DiceCELoss(config.loss.ce_weight, config.loss.dice_weight,
                          class_weights=None if weights is None else torch.tensor(weights),
                          include_background=config.loss.dice_classes == "all")
        return TrainingParts(
            model=model, loss_fn=loss, train_data=train, val_data=dataset(val_rows, False),
            val_metrics=metrics, prediction_fn=_argmax, monitor="val_dice", monitor_mode="max")

    # -- inference -------------------------------------------------------------------------
    def example_input(self, config: SegmentationConfig) -> torch.Tensor:
        return torch.randn(1, config.data.in_channels, *config.data.image_size)

    def prepare(self, item: ImageInput, config: SegmentationConfig) -> Prepared:
        reader = scan_reader(config)
        image = item.image if isinstance(item.image, np.ndarray) else reader.image(item.image)
        tensor, _, valid = fit_to_size(to_tensor_image(reader.network_view(image)), None,
                                       config.data.image_size, config.data.resize_mode)
        return Prepared([network_input(tensor, config.data.in_channels)],
                        (image, valid, item.source))

    def forward(self, model, batch: torch.Tensor, config: SegmentationConfig) -> torch.Tensor:
        """Softmax probabilities ``(B, C, h, w)``, averaged over flips with ``flip_tta``."""
        return flip_averaged_softmax(model, batch, enabled=config.inference.flip_tta,
                                     dense=True)

    def assemble(self, outputs: list, context, config: SegmentationConfig) -> SegmentationOutput:
        image, valid, source = context
        probabilities = restore_logits(outputs[0], valid, image.shape[:2])
        inference = config.inference
        mask = postprocess_mask(probabilities.argmax(dim=0).numpy(), config.data.num_classes,
                                largest_component=inference.largest_component,
                                fill_holes=inference.fill_holes,
                                component_rule=inference.component_rule,
                                probabilities=probabilities.numpy())
        return SegmentationOutput(mask=mask, probabilities=probabilities.numpy(),
                                  class_names=self.class_names(config), source=source,
                                  image=image)

    def parse_inputs(self, paths, visits, config):
        if visits:
            raise DataError("--visit: only for pasi runs")
        return [ImageInput(path) for path in image_files(paths)]

    def write_prediction(self, output: SegmentationOutput, name: str, writer):
        mask_file = writer.save_png(mask_to_png(output.mask, len(output.class_names)), name,
                                    "_mask.png")
        num_classes = len(output.class_names)
        overlay = writer.save_png(
            overlay_image(output.image, output.mask, None) if num_classes == 2
            else class_overlay(output.image, output.mask, num_classes), name, "_overlay.png")
        pixels = {f"pixels_{c}": output.area_pixels(k)
                  for k, c in enumerate(output.class_names) if k}
        return [mask_file, overlay], pixels

    # -- evaluation ------------------------------------------------------------------------
    def evaluation_inputs(self, rows: pd.DataFrame, config: SegmentationConfig):
        return [({"sample": r.sample, "subject": str(r.subject), "image": r.image,
                  "mask": r.mask}, ImageInput(Path(r.image), name=r.sample))
                for r in rows.itertuples()]

    def score(self, output: SegmentationOutput, info: dict, config: SegmentationConfig,
              prediction_dir: Path | None) -> list[dict]:
        num_classes = config.data.num_classes
        truth = scan_reader(config).mask(info["mask"])
        if truth.shape != output.mask.shape:
            raise DataError(f"{info['mask']}: mask is {truth.shape[1]}x{truth.shape[0]}, image "
                            f"is {output.mask.shape[1]}x{output.mask.shape[0]}")
        counts = segmentation_counts(torch.from_numpy(output.mask[None]),
                                     torch.from_numpy(truth[None]), num_classes)
        if prediction_dir is not None:
            prediction_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask_to_png(output.mask, num_classes)).save(
                prediction_dir / f"{info['sample']}_mask.png")
        names = self.class_names(config)
        row = dict(info)
        row.update({name: float(values[0])
                    for name, values in per_image_scores(counts, names).items()})
        for k, name in enumerate(names):
            for j, kind in enumerate(_COUNTS):
                row[f"{kind}_{name}"] = int(counts[0, k, j])
        if num_classes > 2:
            pixels = np.bincount(truth.ravel() * num_classes + output.mask.ravel(),
                                 minlength=num_classes ** 2)
            row.update({confusion_column(names, t, p): int(pixels[t * num_classes + p])
                        for t in range(num_classes) for p in range(num_classes)})
        return [row]

    def statistic(self, table: pd.DataFrame, config: SegmentationConfig, extras: dict):
        names = self.class_names(config)
        counts = np.stack([table[[f"{kind}_{name}" for kind in _COUNTS]].to_numpy(np.int64)
                           for name in names], axis=1)
        per_image = segmentation_statistic(counts, aggregate="image", class_names=names)
        dataset = segmentation_statistic(counts, aggregate="dataset", class_names=names)
        return lambda index: {"per_image": per_image(index), "dataset": dataset(index)}

    def figures(self, table: pd.DataFrame, config: SegmentationConfig, figure_dir: Path,
                extras: dict):
        """Best and worst four cases by lesion Dice (only these images are read back), and
        the model's size and CPU latency."""
        info = {"aggregation": "per_image: mean over images of each image's score; dataset: "
                "pixels of all images pooled; computed at original image resolution",
                "inference": config.inference.model_dump()}
        prediction_dir = figure_dir.parent / "predictions"
        names = self.class_names(config)
        num_classes = config.data.num_classes
        # Multi-class cases are ranked by their mean foreground Dice.
        key = f"dice_{names[-1]}" if num_classes == 2 else "mean_dice_foreground"
        if num_classes > 2:
            table = table.assign(mean_dice_foreground=table[
                [f"dice_{n}" for n in names[1:]]].mean(axis=1))
        figures = {}
        if num_classes > 2:
            from medlite.reports.classification_figures import plot_confusion_matrix

            figure_dir.mkdir(parents=True, exist_ok=True)
            matrix = np.array([[int(table[confusion_column(names, t, p)].sum())
                                for p in range(num_classes)] for t in range(num_classes)])
            info["pixel_confusion_matrix"] = {"class_names": names, "rows": "true class",
                                              "columns": "predicted class",
                                              "pixels": matrix.tolist()}
            figures["pixel_confusion_matrix"] = plot_confusion_matrix(
                matrix, names, figure_dir / "pixel_confusion_matrix.png", normalize=True,
                title="pixels, row-normalised (recall on the diagonal)")
        if (prediction_dir / f"{table['sample'].iloc[0]}_mask.png").is_file():
            figure_dir.mkdir(parents=True, exist_ok=True)
            ranked = table.iloc[table[key].fillna(-1).to_numpy().argsort()]
            reader = scan_reader(config)
            saved = ScanReader(num_classes)  # predictions are written as class indices

            def case(row) -> tuple:
                return (row.sample, reader.image(row.image), reader.mask(row.mask),
                        saved.mask(prediction_dir / f"{row.sample}_mask.png"))

            for name, rows in (("best_cases", ranked.iloc[::-1][:4]),
                               ("worst_cases", ranked.iloc[:4])):
                figures[name] = save_case_grid([case(r) for r in rows.itertuples()], table,
                                               key, figure_dir / f"{name}.png",
                                               name.replace("_", " ").capitalize(), names)
        info["profile"] = model_profile(self, config)
        return figures, [], info


def scan_reader(config: SegmentationConfig) -> ScanReader:
    """How the run's images and masks are read (CT window, mask palette)."""
    data = config.data
    return ScanReader(data.num_classes, data.palette(), data.hu_window, data.hu_offset,
                      data.color_constancy)


def confusion_column(names: list[str], true: int, predicted: int) -> str:
    """The per-image column of pixels of class ``true`` predicted as ``predicted``."""
    return f"pixels_{names[true]}_as_{names[predicted]}"


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1)


def sample_ids(images: pd.Series) -> list[str]:
    """Image stems when unique, else the paths with separators replaced by ``_``."""
    stems = [Path(p).stem for p in images]
    if len(set(stems)) == len(stems):
        return stems
    return [str(Path(p)).replace("/", "_").replace("\\", "_") for p in images]


def mask_to_png(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Binary masks as 0/255 (like PH2 and ISIC), multi-class as class indices."""
    if num_classes == 2:
        return pred.astype(np.uint8) * 255
    return pred.astype(np.uint8)
