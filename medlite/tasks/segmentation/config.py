"""The config of the TinyU-Net lesion segmentation (Chen et al. 2024) recipe; every default is the
paper's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from medlite.config import (
    BaseTaskConfig,
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
