"""TinyU-Net lesion segmentation (Chen et al. 2024): the config (:mod:`.config`) and the recipe
(:mod:`.recipe`)."""

from medlite.tasks.segmentation.config import (
    SegmentationConfig,
    SegmentationDataConfig,
    SegmentationInferenceConfig,
    SegmentationLossConfig,
)
from medlite.tasks.segmentation.recipe import SegmentationTask, mask_to_png, sample_ids

__all__ = [
    "SegmentationConfig",
    "SegmentationDataConfig",
    "SegmentationInferenceConfig",
    "SegmentationLossConfig",
    "SegmentationTask",
    "mask_to_png",
    "sample_ids",
]
