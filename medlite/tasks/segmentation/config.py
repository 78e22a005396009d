"""The config of the TinyU-Net lesion segmentation (Chen et al. 2024) recipe; every default is the
paper's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medlite.config import (
    BaseTaskConfig,
    FlipInferenceConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    StrictModel,
)
from medlite.data.transforms import AugmentConfig

_COUNTS = ("tp", "fp", "fn")


class SegmentationDataConfig(StrictModel):
    manifest: Path | None = Field(None, description="CSV with image, mask, subject[, split].")
    num_classes: int = Field(2, ge=2)
    class_names: list[str] = Field(default_factory=lambda: ["background", "lesion"])
    image_size: tuple[int, int] = Field((256, 256), description="(height, width), x16.")
    resize_mode: Literal["resize", "letterbox"] = "resize"
    in_channels: Literal[1, 3] = Field(3, description="3: RGB; 1: grey (CT, X-ray), colour "
                                       "images converted to luma.")
    mask_palette: dict[str, int] | None = Field(
        None, description="Colour masks: {'#rrggbb' or 'r,g,b': class index} for every "
        "colour in the masks; default: masks hold class indices (or 0/255 for two classes).")
    hu_window: tuple[float, float] | None = Field(
        None, description="CT in Hounsfield units (.npy, 16/32-bit PNG or TIFF): [level, "
        "width] mapped to 0..255, e.g. [-600, 1500] for lungs; 8-bit images are read as "
        "they are.")
    hu_offset: float = Field(0.0, description="Added to stored values to give HU (e.g. "
                             "-1024 for files storing HU + 1024).")
    color_constancy: Literal["none", "shades_of_gray"] = Field(
        "none", description="shades_of_gray: scale each channel so that the image's "
        "illuminant (Minkowski p=6 mean) is neutral, in training and inference alike (other "
        "dermatoscopes' colour casts).")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    augment_until_epoch: int | None = Field(
        None, ge=0, description="Train with augmentation for this many epochs, then without "
        "(TinyU-Net's schedule); null: throughout.")
    cache: bool = Field(True, description="Keep decoded, resized pairs in memory.")

    @field_validator("mask_palette")
    @classmethod
    def _colours(cls, palette: dict[str, int] | None) -> dict[str, int] | None:
        from medlite.data.io import parse_colour

        if palette is not None:
            colours = [parse_colour(colour) for colour in palette]
            if len(set(colours)) != len(colours):
                raise ValueError("a colour is listed twice")
        return palette

    @field_validator("hu_window")
    @classmethod
    def _positive_width(cls, window):
        if window is not None and window[1] <= 0:
            raise ValueError("the width (second value) must be positive")
        return window

    def palette(self) -> dict[tuple[int, int, int], int] | None:
        """``mask_palette`` with its colours parsed."""
        from medlite.data.io import parse_colour

        if self.mask_palette is None:
            return None
        return {parse_colour(colour): k for colour, k in self.mask_palette.items()}

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
        outside = [k for k in (self.mask_palette or {}).values()
                   if not 0 <= k < self.num_classes]
        if outside:
            raise ValueError(f"mask_palette: class {outside[0]} is outside "
                             f"0..{self.num_classes - 1}")
        return self


class SegmentationLossConfig(StrictModel):
    ce_weight: float = Field(1.0, ge=0)
    dice_weight: float = Field(1.0, ge=0)
    class_weights: list[float] | Literal["inverse_frequency"] | None = Field(
        None, description="Per-class weights of the cross-entropy and of the Dice average: "
        "a list (one per class), inverse_frequency (from the training masks' pixel counts, "
        "mean 1), or null (equal).")
    dice_classes: Literal["all", "foreground"] = Field(
        "all", description="Classes the soft Dice averages over: all (the TinyU-Net "
        "recipe) or foreground only (small lesions are not drowned by background).")

    @field_validator("class_weights")
    @classmethod
    def _positive(cls, weights):
        if isinstance(weights, list) and any(w < 0 for w in weights):
            raise ValueError("weights must be >= 0")
        return weights


class SegmentationInferenceConfig(FlipInferenceConfig):
    """How masks are predicted from a trained model (evaluate and predict). The defaults are
    the paper's plain argmax; ``medlite evaluate/predict --set inference.KEY=VALUE`` changes
    them for a trained run."""

    largest_component: bool = Field(False, description="Keep only one region of each "
                                    "foreground class (chosen by component_rule).")
    component_rule: Literal["largest", "lesion_like"] = Field(
        "largest", description="The region largest_component keeps: the largest, or the "
        "most lesion-like (most lesion probability, nearest the image centre: not a dark "
        "lens corner or a ruler at the edge).")
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

    @model_validator(mode="after")
    def _one_weight_per_class(self):
        weights = self.loss.class_weights
        if isinstance(weights, list) and len(weights) != self.data.num_classes:
            raise ValueError(f"loss.class_weights: {len(weights)} weights for "
                             f"data.num_classes={self.data.num_classes}")
        return self
