"""The config of the Skin image classification (Akay et al. 2021, MobileNetV2 in stages) recipe;
every default is the paper's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medlite.config import (
    BaseTaskConfig,
    EvaluationConfig,
    FlipInferenceConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    StrictModel,
    TrainerConfig,
)
from medlite.data.classification import (
    ClassificationAugmentConfig,
)


class SlideConfig(StrictModel):
    """Whole-slide images (SVS, NDPI, pyramidal TIFF...) as the manifest's ``image``
    entries: one downsampled image per slide, or tiles with slide-level aggregation."""

    mode: Literal["whole", "tiles"] = Field(
        "whole", description="whole: each slide (or its tissue box) downsampled to one "
        "data.image_size image (the SSc paper); tiles: tissue tiles train with the slide's "
        "label, and each slide's prediction aggregates its tiles'.")
    level: int | None = Field(None, ge=0, description="The pyramid level read (0: full "
                              "resolution), instead of mpp or tile_mpp.")
    mpp: float | None = Field(None, gt=0, description="whole: microns per pixel of the "
                              "level read (the nearest); default: the smallest level still "
                              "at least data.image_size.")
    crop_to_tissue: bool = Field(True, description="whole: the tissue's bounding box "
                                 "rather than the whole glass.")
    tile_size: int = Field(256, ge=16, description="tiles: side in pixels of the level "
                           "tiled (tiles are then resized to data.image_size).")
    tile_mpp: float | None = Field(None, gt=0, description="tiles: microns per pixel of the "
                                   "level tiled (the nearest); default: level (or 0).")
    min_tissue: float = Field(0.5, ge=0, le=1, description="tiles: least share of tissue "
                              "(Otsu on saturation) a tile keeps.")
    max_tiles_per_slide: int | None = Field(
        64, ge=1, description="tiles: at most this many tiles per slide, a subsample fixed by "
        "the seed and the file name (None: all; each tile is held in memory).")
    aggregate: Literal["mean", "top_k"] = Field(
        "mean", description="tiles: a slide's probabilities, the mean of its tiles', or "
        "per class the mean of the top_k highest, renormalised to sum to 1.")
    top_k: int = Field(5, ge=1, description="tiles: tiles per class of aggregate: top_k.")

    @model_validator(mode="after")
    def _one_resolution(self):
        for key, mode in (("mpp", "whole"), ("tile_mpp", "tiles")):
            if getattr(self, key) is not None and self.level is not None:
                raise ValueError(f"give {key} or level, not both")
            if getattr(self, key) is not None and self.mode != mode:
                raise ValueError(f"{key} goes with mode: {mode}")
        return self

    def tile_selection(self, seed: int) -> dict:
        """The keywords of :func:`medlite.data.slides.iter_tiles` (tiles mode)."""
        return {"tile_size": self.tile_size, "mpp": self.tile_mpp, "level": self.level,
                "min_tissue": self.min_tissue, "max_tiles": self.max_tiles_per_slide,
                "seed": seed}


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
    slides: SlideConfig | None = Field(None, description="The manifest's images are whole-"
                                       "slide files, read as this says (None: ordinary images).")

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
        if self.slides is not None and (self.image_folder or self.dermamnist):
            raise ValueError("slides: come from a manifest (data.manifest) of slide files")
        return self


class StageConfig(StrictModel):
    """One training stage. ``epochs`` and ``lr`` default to ``trainer.max_epochs`` and
    ``optimizer.lr``."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="Names the stage's fit.")
    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    trainable: Literal["head", "all", "all_but_first_n"] = Field(
        "all", description="head: only the classification head learns; all; all_but_first_n: "
        "the first freeze_first_n_layers layers stay frozen.")
    freeze_first_n_layers: int | None = Field(None, ge=0)
    class_balance: Literal["none", "weights", "sampler"] | None = Field(
        None, description="This stage's data.class_balance (None: data.class_balance); e.g. "
        "a last head stage with sampler re-balances the classifier of a network fine-tuned "
        "on the natural class frequencies (decoupled classifier re-training).")
    monitor: Literal["val_loss", "val_macro_f1"] | None = Field(
        None, description="This stage's monitor (None: the config's monitor); a re-balancing "
        "stage is better judged by val_macro_f1 than by the loss on natural frequencies.")

    @model_validator(mode="after")
    def _n_with_all_but_first_n(self):
        wanted = self.trainable == "all_but_first_n"
        if wanted != (self.freeze_first_n_layers is not None):
            raise ValueError("freeze_first_n_layers goes with trainable: all_but_first_n "
                             "(and only with it)")
        return self


class ClassificationEvaluationConfig(EvaluationConfig):
    positive_class: str | None = Field(
        None, description="A class read at a fixed specificity (e.g. mel): its one-vs-rest "
        "ROC AUC, and sensitivity and specificity at the cut on its probability chosen on "
        "the validation split to reach target_specificity; predict flags images at or above "
        "the cut. Can change after training.")
    target_specificity: float = Field(
        0.8, gt=0, lt=1, description="The validation specificity the positive_class cut "
        "is chosen to reach (the lowest such cut, so the most sensitive).")
    decision: Literal["argmax", "balanced"] = Field(
        "argmax", description="How a class is named from the probabilities. argmax: the "
        "most probable; balanced: argmax of p_k * prior_k^-tau, the validation class "
        "frequencies as prior and tau chosen on the validation split for balanced accuracy "
        "(post-hoc logit adjustment; the probabilities are unchanged). Can change after "
        "training.")


def paper_stages() -> list[StageConfig]:
    """The paper's schedule: the head on the frozen backbone, then fine-tuning all but the
    first 10 layers (the paper trains the head 100 epochs for 2 classes, 200 for 3)."""
    return [StageConfig(name="head", epochs=100, lr=1e-3, trainable="head"),
            StageConfig(name="fine_tune", epochs=100, lr=1e-5, trainable="all_but_first_n",
                        freeze_first_n_layers=10)]


class ClassificationLossConfig(StrictModel):
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="Cross-entropy against "
                                   "targets with this share spread evenly over the classes.")
    mixup_alpha: float = Field(0.0, ge=0, description="Mixup: train on pairs of images "
                               "blended with a weight drawn from Beta(alpha, alpha) per batch, "
                               "and their labels blended alike (0 = off; 0.2-0.4 usual). The "
                               "training loss is then the mixed one; validation is not mixed.")


class ClassificationInferenceConfig(FlipInferenceConfig):
    """How classes are predicted from a trained model. Set at training, the validation
    predictions that choose the operating point, the balanced decision and the conformal
    sets are made the same way; ``medlite evaluate/predict --set inference.flip_tta=true``
    on a trained run applies those rules, chosen without it, to the averaged
    probabilities."""


class ClassificationConfig(BaseTaskConfig):
    task: Literal["classification"] = "classification"
    data: ClassificationDataConfig = Field(default_factory=ClassificationDataConfig)
    loss: ClassificationLossConfig = Field(default_factory=ClassificationLossConfig)
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
    evaluation: ClassificationEvaluationConfig = Field(
        default_factory=ClassificationEvaluationConfig)
    inference: ClassificationInferenceConfig = Field(
        default_factory=ClassificationInferenceConfig)

    @field_validator("stages")
    @classmethod
    def _unique_names(cls, stages: list[StageConfig]) -> list[StageConfig]:
        names = [s.name for s in stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"stage name {repeated[0]!r} is used twice")
        return stages
