"""Skin image classification (Akay et al., IEEE OJEMB 2021: systemic sclerosis skin with
MobileNetV2) as a task recipe.

The paper: photographs resized to 128x128 and augmented (flips, crops, zoom); MobileNetV2
pretrained on ImageNet with a new head (global pooling, dense layers, softmax) for 2 classes
(normal vs SSc) or 3 (normal, early, late); trained in two stages, first the head alone on the
frozen backbone, then everything but the first 10 layers (fine-tuning); a plain CNN as the
baseline; accuracy, sensitivity, specificity, confusion matrices and learning curves.

Here the config's ``stages`` are a chain of fits of the run's plan, each starting from the
previous one's best weights with its layers frozen (and their BatchNorm statistics fixed).
Splits are subject-grouped and label-stratified. Choices where the paper is silent:
ImageNet mean/std scaling by default (what torchvision's weights expect; ``data.scaling:
minus_one_one`` gives the paper's Keras [-1, 1]); Adam 1e-3 for the head, 1e-5 for
fine-tuning; each stage's best epoch chosen by validation loss, which on small validation sets
is continuous where macro F1 ties for many epochs; inverse-frequency class weights.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from medlite.config import (
    ModelConfig,
    OptimizerConfig,
)
from medlite.data.classification import (
    ClassificationAugmentConfig,
    ClassificationDataset,
    balanced_weights,
    class_weights,
    classification_sample_ids,
    dermamnist_samples,
    read_classification_manifest,
    read_image_folder,
    scale_pixels,
    write_classification_manifest,
)
from medlite.data.io import image_files
from medlite.data.slides import (
    aggregate_tiles,
    iter_tiles,
    read_slide_image,
    slide_files,
    slide_tile_rows,
    tile_mosaic,
)
from medlite.data.transforms import to_tensor_image
from medlite.errors import ConfigError, DataError
from medlite.evaluation.conformal import conformal_columns, conformal_statistic
from medlite.evaluation.decision import BalancedDecision, load_balanced_decision
from medlite.evaluation.operating_point import (
    OperatingPoint,
    flag_columns,
    load_operating_point,
    operating_point_statistic,
    save_validation_predictions,
)
from medlite.inference.predictor import Prepared
from medlite.inference.tta import flip_averaged_softmax
from medlite.inference.types import ClassificationOutput, ImageInput, SlideInput
from medlite.metrics import classification_metrics
from medlite.models import create_model
from medlite.reports.classification_figures import classification_figures
from medlite.reports.figures import save_png
from medlite.tasks.base import Stage, Task, model_profile, resolve_relative
from medlite.tasks.classification.config import (
    ClassificationConfig,
    ClassificationDataConfig,
    SlideConfig,
    StageConfig,
)
from medlite.training.loop import TrainingParts
from medlite.training.mixup import mixup


class ClassificationTask(Task):
    name = "classification"
    config_class = ClassificationConfig
    derived_keys = ("data.class_names",)
    content_columns = ("image",)

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

    def class_names(self, config: ClassificationConfig) -> list[str] | None:
        return list(config.data.class_names) if config.data.class_names else None

    def complete_config(self, config: ClassificationConfig, samples: pd.DataFrame,
                        run_dir: Path):
        if config.data.class_names is None:
            # Recorded in the run's config so evaluate, predict and export build the same head.
            config.data.class_names = list(samples.attrs["class_names"])
        return config

    # -- data ------------------------------------------------------------------------------
    def load_samples(self, config: ClassificationConfig, data_path: Path | None = None,
                     require_every_class: bool = True) -> pd.DataFrame:
        """One row per image: ``sample``, ``image``, ``label``, ``label_index``, ``subject``
        (and ``split`` when the data fixes it; ``pixels``, uint8 (H, W, 3) arrays, for
        DermaMNIST and slides; with ``data.slides.mode: tiles`` one row per tile, see
        :func:`~medlite.data.slides.slide_tile_rows`). ``data_path`` (a manifest or an image
        folder) replaces the config's."""
        data = config.data
        if data_path is None and data.dermamnist is not None:
            return dermamnist_samples(Path(data.dermamnist), data.class_names)
        path = data_path or data.manifest or data.image_folder
        if path is None:
            raise DataError("data.manifest, data.image_folder or data.dermamnist: one is "
                            "required (a CSV with image, label, subject; or a folder with one "
                            "subfolder of images per class)")
        path, slides = Path(path), data.slides
        if path.is_dir() and slides is not None:
            raise DataError(f"{path}: data.slides reads a manifest CSV of slides, not a folder")
        if path.is_dir():
            table = read_image_folder(path, data.class_names, data.check_images,
                                      require_every_class)
        else:
            table = read_classification_manifest(path, data.class_names, data.check_images
                                                 and slides is None, require_every_class)
            table["sample"] = classification_sample_ids(table["image"])
        if slides is not None and slides.mode == "tiles":
            table = slide_tile_rows(table, **slides.tile_selection(config.seed))
        elif slides is not None:
            table["slide"] = table["sample"]
            table["pixels"] = [self._slide_image(image, config) for image in table["image"]]
        table.attrs["source"] = str(path)
        return table

    def load_evaluation_samples(self, config: ClassificationConfig, data_path: Path):
        return self.load_samples(config, data_path, require_every_class=False)

    def prepare_training(self, config: ClassificationConfig, samples, run_dir, progress):
        if config.data.image_folder is not None:  # the manifest the folder stands for
            write_classification_manifest(samples, Path(run_dir) / "manifest.csv",
                                          overwrite=True)
        return samples

    def stratify_labels(self, samples: pd.DataFrame) -> np.ndarray:
        return samples["label"].astype(str).to_numpy()

    def split(self, samples: pd.DataFrame, config: ClassificationConfig) -> pd.DataFrame:
        samples = super().split(samples, config)
        in_training = samples["split"] == "train"
        missing = [name for k, name in enumerate(config.data.class_names)
                   if k not in set(samples.loc[in_training, "label_index"])]
        if missing:
            raise DataError(f"{samples.attrs.get('source', 'data')}: class {missing[0]!r} has "
                            "no image in the train split; add subjects of that class or "
                            "change the split")
        return samples

    def fingerprints(self, samples: pd.DataFrame) -> list[str]:
        if "pixels" not in samples or "slide" in samples:  # slides: their files' hashes
            return super().fingerprints(samples)
        import hashlib

        return [hashlib.sha256(np.ascontiguousarray(p).tobytes()).hexdigest()
                for p in samples["pixels"]]

    def stages(self, config: ClassificationConfig) -> list[Stage]:
        first = config.stages[0]
        if first.trainable != "all" and not (config.model.pretrained
                                             or config.model.initial_weights()):
            warnings.warn(f"stages.0 ({first.name}) freezes layers of a model that starts from "
                          "random weights (model.pretrained is false, no model.weights_path); "
                          "those layers will never learn", UserWarning, stacklevel=2)
        return [Stage(s.name, s.trainable, s.freeze_first_n_layers,
                      {k: v for k, v in (("trainer.max_epochs", s.epochs),
                                         ("optimizer.lr", s.lr),
                                         ("data.class_balance", s.class_balance),
                                         ("monitor", s.monitor))
                       if v is not None})
                for s in config.stages]

    def dataset(self, config: ClassificationConfig, rows: pd.DataFrame,
                train: bool) -> ClassificationDataset:
        images = (np.stack(rows["pixels"].to_list()) if "pixels" in rows
                  else rows["image"].tolist())
        data = config.data
        return ClassificationDataset(images, rows["label_index"].to_numpy(np.int64),
                                     size=data.image_size, train=train, scaling=data.scaling,
                                     augment=data.augment, interpolation=data.interpolation,
                                     cache=data.cache)

    # -- model and training ----------------------------------------------------------------
    def build_model(self, config: ClassificationConfig, for_training: bool = True) -> nn.Module:
        names = config.data.class_names
        if names is None:
            raise ConfigError("data.class_names: unknown until the data are read")
        return create_model(
            config.model.name, task="classification", num_classes=len(names),
            pretrained=config.model.pretrained and for_training,
            weights_path=config.model.initial_weights() if for_training else None,
            **config.model.kwargs)

    def training_parts(self, config: ClassificationConfig, train_rows, val_rows, model, fit):
        """Loaders, class-balanced loss and validation metrics around ``model``."""
        names = config.data.class_names
        train = self.dataset(config, train_rows, train=True)
        balance = config.data.class_balance
        metrics = MetricCollection({
            "accuracy": MulticlassAccuracy(len(names), average="micro"),
            "macro_f1": MulticlassF1Score(len(names), average="macro"),
        })
        return TrainingParts(
            model=model, loss_fn=nn.CrossEntropyLoss(
                weight=class_weights(train.labels, len(names), names)
                if balance == "weights" else None,
                label_smoothing=config.loss.label_smoothing),
            train_data=train, val_data=self.dataset(config, val_rows, train=False),
            sample_weights=balanced_weights(train.labels) if balance == "sampler" else None,
            val_metrics=metrics, prediction_fn=_argmax, monitor=config.monitor,
            monitor_mode="min" if config.monitor == "val_loss" else "max",
            batch_mixer=partial(mixup, alpha=config.loss.mixup_alpha, num_classes=len(names))
            if config.loss.mixup_alpha else None)

    # -- inference -------------------------------------------------------------------------
    def example_input(self, config: ClassificationConfig) -> torch.Tensor:
        return torch.rand(1, 3, *config.data.image_size) * 2 - 1

    def prepare(self, item: ImageInput | SlideInput, config: ClassificationConfig) -> Prepared:
        """One network input per image; a slide in tiles mode gives its tiles, read one at
        a time (the context collects a few views for the report)."""
        slides = config.data.slides
        if not isinstance(item, SlideInput) or slides is None or slides.mode == "whole":
            pixels = item.load() if isinstance(item, ImageInput) \
                else self._slide_image(item.path, config)
            tensor, view = _network_input(pixels, config)
            return Prepared([tensor], (item.source, view))
        tiles = item.tiles if item.tiles is not None else (
            pixels for _, pixels in iter_tiles(item.path, name=item.name,
                                               **slides.tile_selection(config.seed)))
        views: list[np.ndarray] = []

        def tensors():
            for pixels in tiles:
                tensor, view = _network_input(pixels, config)
                if len(views) < 16:
                    views.append(view)
                yield tensor
        return Prepared(tensors(), (item.source, views))

    def _slide_image(self, path, config: ClassificationConfig) -> np.ndarray:
        slides = config.data.slides or SlideConfig()
        return read_slide_image(path, config.data.image_size, mpp=slides.mpp,
                                level=slides.level, crop_to_tissue=slides.crop_to_tissue)

    def forward(self, model, batch, config):
        """Class probabilities ``(B, K)``, averaged over flips with ``inference.flip_tta``."""
        return flip_averaged_softmax(model, batch, enabled=config.inference.flip_tta)

    def assemble(self, outputs, context, config) -> ClassificationOutput:
        """The image's probabilities; a slide's tiles' aggregated (data.slides.aggregate)."""
        source, view = context
        probabilities, slides = torch.stack(outputs).double().numpy(), config.data.slides
        probabilities = (aggregate_tiles(probabilities, slides.aggregate, slides.top_k)
                         if slides is not None else probabilities[0])
        tiled = isinstance(view, list)
        return ClassificationOutput(probabilities / probabilities.sum(), self.class_names(config),
                                    source=source, image=tile_mosaic(view) if tiled else view,
                                    tiles=len(outputs) if tiled else None)

    def parse_inputs(self, paths, visits, config):
        if visits:
            raise DataError("--visit: only for pasi runs")
        if config.data.slides is not None:
            return [SlideInput(path) for path in slide_files(paths)]
        return [ImageInput(path) for path in image_files(paths)]

    def load_postprocessing(self, run_dir: Path, config: ClassificationConfig
                            ) -> ReadingRules | None:
        """The operating point of ``evaluation.positive_class`` and the balanced decision
        (``evaluation.decision``), both chosen on the run's validation predictions."""
        names = self.class_names(config)
        point = load_operating_point(run_dir, names, config.evaluation.positive_class,
                                     config.evaluation.target_specificity)
        decision = load_balanced_decision(run_dir, names) \
            if config.evaluation.decision == "balanced" else None
        return None if point is None and decision is None else ReadingRules(point, decision)

    def postprocess(self, output: ClassificationOutput, state: ReadingRules | None,
                    config: ClassificationConfig) -> ClassificationOutput:
        if state is not None and state.operating_point is not None:
            point = state.operating_point
            probability = output.probabilities[output.class_names.index(point.class_name)]
            output.flagged, output.flag_class = point.flag(probability), point.class_name
        if state is not None and state.decision is not None:
            output.decision_weights = state.decision.weights
        return output

    def write_prediction(self, output: ClassificationOutput, name: str, writer):
        return [], {"predicted": output.predicted, "confidence": output.confidence,
                    **({"tiles": output.tiles} if output.tiles is not None else {}),
                    **flag_columns(output), **conformal_columns(output),
                    **{f"p_{c}": float(p) for c, p in zip(output.class_names,
                                                          output.probabilities, strict=True)}}

    def evaluation_extras(self, context, results) -> dict:
        """What each stage of the deployed model trained (for the report), and the
        operating point chosen on validation."""
        from medlite.training.plan import fit_chain

        shown = ("epochs", "trainable_parameters", "parameters", "trainable_modules",
                 "frozen_modules", "frozen_batchnorm_layers")
        return {"stages": [{"fit": key, "stage": context.fits[key].params.get("stage"),
                            "trainable": context.fits[key].trainable,
                            **{k: results[key].get(k) for k in shown}}
                           for key in fit_chain(context, self.deployed_fit(context))],
                **self.saved_extras(context.run_dir, context.config)}

    def saved_extras(self, run_dir: Path, config: ClassificationConfig) -> dict:
        rules = self.load_postprocessing(run_dir, config)
        extras = {}
        if rules is not None and rules.operating_point is not None:
            extras["operating_point"] = rules.operating_point.to_json()
        if rules is not None and rules.decision is not None:
            extras["decision"] = rules.decision.to_json()
        return extras

    def conformal_calibration(self, context, model, results):
        """``1 - p(true class)`` of the deployed model on the validation split; its class
        probabilities there are kept too (``validation_predictions.csv``), the held-out
        data an operating point is chosen on."""
        from medlite.evaluation.conformal import ConformalCalibration, class_scores
        from medlite.evaluation.evaluator import predict_table
        from medlite.inference.predictor import Predictor

        config = context.config
        rows = context.samples[context.samples["split"] == "val"]
        if rows.empty:
            return None
        table = predict_table(Predictor(self, config, model), rows, None)
        names = self.class_names(config)
        save_validation_predictions(table, names, context.run_dir)
        scores = class_scores(table[[f"p_{c}" for c in names]].to_numpy(),
                              table["label_index"].to_numpy())
        return ConformalCalibration("classification", scores,
                                    f"validation split ({len(scores)} samples)")

    # -- evaluation ------------------------------------------------------------------------
    def evaluation_inputs(self, rows: pd.DataFrame, config: ClassificationConfig):
        """One input per image; tile rows (data.slides.mode: tiles) as one per slide."""
        inputs = []
        if config.data.slides is not None and config.data.slides.mode == "tiles":
            for slide, tiles in rows.groupby("slide", sort=False):
                row = tiles.iloc[0]
                inputs.append(({"sample": slide, "subject": str(row.subject),
                                "image": str(row.image), "label": row.label,
                                "label_index": int(row.label_index), "tiles": len(tiles)},
                               SlideInput(Path(row.image), tuple(tiles["pixels"]), slide)))
            return inputs
        for row in rows.itertuples():
            image = row.pixels if "pixels" in rows else Path(row.image)
            inputs.append(({"sample": row.sample, "subject": str(row.subject),
                            "image": str(row.image), "label": row.label,
                            "label_index": int(row.label_index)}, ImageInput(image, row.sample)))
        return inputs

    def score(self, output: ClassificationOutput, info: dict, config, prediction_dir):
        predicted = output.predicted_index
        if prediction_dir is not None and predicted != info["label_index"]:
            # Mistakes are kept at network size for the report's most confident mistakes.
            save_png(output.image, prediction_dir / "mistakes" / f"{info['sample']}.png")
        covered = {}
        if output.prediction_set is not None:
            covered = {"covered": info["label"] in output.prediction_set}
        return [{**info, "predicted": output.predicted,
                 "correct": predicted == info["label_index"], "confidence": output.confidence,
                 **conformal_columns(output), **covered, **flag_columns(output),
                 **{f"p_{c}": float(p) for c, p in zip(output.class_names,
                                                       output.probabilities, strict=True)}}]

    def statistic(self, table: pd.DataFrame, config: ClassificationConfig, extras: dict):
        names = self.class_names(config)
        truth = table["label_index"].to_numpy(np.int64)
        probabilities = table[[f"p_{c}" for c in names]].to_numpy(np.float64)
        present = sorted(set(truth.tolist()))
        classes = None if len(present) == len(names) else present
        sets = conformal_statistic(table)
        point = operating_point_statistic(table, extras.get("operating_point"))
        weights = extras.get("decision", {}).get("weights")
        return lambda index: {"classification": classification_metrics(
            truth[index], probabilities[index], names, classes=classes,
            decision_weights=weights), **sets(index), **point(index)}

    def figures(self, table: pd.DataFrame, config: ClassificationConfig, figure_dir: Path,
                extras: dict):
        names = self.class_names(config)
        present = sorted(set(table["label_index"].tolist()))
        decision = extras.get("decision")
        figures, info = classification_figures(
            table, names, figure_dir, figure_dir.parent / "predictions" / "mistakes",
            decision_weights=decision["weights"] if decision else None)
        info["profile"] = model_profile(self, config)
        info["inference"] = config.inference.model_dump()
        if extras.get("operating_point"):
            info["operating_point"] = extras["operating_point"]
        if decision:
            info["decision"] = decision
        info["classes_absent"] = [n for k, n in enumerate(names) if k not in present]
        rule = ("arg-max of p_k * prior_k^-tau, the balanced decision chosen on validation "
                f"(tau {decision['tau']})" if decision else "arg-max of the softmax")
        slides = config.data.slides
        unit = "image" if slides is None or slides.mode == "whole" else (
            "slide, the mean of its tiles' probabilities" if slides.aggregate == "mean" else
            f"slide, per class the mean of its top {slides.top_k} tiles', renormalised")
        views = ", softmax averaged over 4 flips" if config.inference.flip_tta else ""
        info["aggregation"] = (f"one prediction per {unit} ({rule}{views}); "
                               "sensitivity/specificity one-vs-rest per class (binary: of "
                               f"class {names[-1]!r}); ECE over 15 confidence bins"
                               + (f"; balanced accuracy, macro F1 and ROC AUC over the "
                                  f"classes present (absent: "
                                  f"{', '.join(info['classes_absent'])})"
                                  if info["classes_absent"] else ""))
        sections = []
        if extras.get("stages"):
            stages = pd.DataFrame(extras["stages"])
            info["stages"] = extras["stages"]
            sections.append(("Training stages", stages.drop(
                columns=["trainable_modules", "frozen_modules"]).to_html(index=False)
                + "<ul>" + "".join(f"<li>{s['stage']}: frozen "
                                   f"{', '.join(s['frozen_modules']) or 'nothing'}</li>"
                                   for s in extras["stages"]) + "</ul>"))
        return figures, sections, info


def _network_input(pixels: np.ndarray, config: ClassificationConfig
                   ) -> tuple[torch.Tensor, np.ndarray]:
    """An image as the network's scaled input at data.image_size, and the uint8 view."""
    image = to_tensor_image(pixels)
    size = tuple(config.data.image_size)
    if tuple(image.shape[-2:]) != size:
        import torchvision.transforms.v2.functional as F

        mode = F.InterpolationMode.BICUBIC if config.data.interpolation == "bicubic" \
            else F.InterpolationMode.BILINEAR
        image = F.resize(image, list(size), interpolation=mode, antialias=True)
    return scale_pixels(image, config.data.scaling), image.permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class ReadingRules:
    """How a classification run reads its probabilities, both chosen on validation: a fixed
    cut for one class (``evaluation.positive_class``) and the balanced decision
    (``evaluation.decision: balanced``); either may be None."""

    operating_point: OperatingPoint | None
    decision: BalancedDecision | None


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=1)


