"""Skin image classification (Akay et al. 2021, MobileNetV2 in stages): the config (:mod:`.config`)
and the recipe (:mod:`.recipe`)."""

from medlite.tasks.classification.config import (
    ClassificationAugmentConfig,
    ClassificationConfig,
    ClassificationDataConfig,
    SlideConfig,
    StageConfig,
    paper_stages,
)
from medlite.tasks.classification.recipe import ClassificationTask

__all__ = [
    "ClassificationAugmentConfig",
    "ClassificationConfig",
    "ClassificationDataConfig",
    "ClassificationTask",
    "SlideConfig",
    "StageConfig",
    "paper_stages",
]
