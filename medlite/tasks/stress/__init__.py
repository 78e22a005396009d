"""SONIC stress recognition from ECG spectrograms (Phukan et al. 2024): the config (:mod:`.config`)
and the recipe (:mod:`.recipe`)."""

from medlite.tasks.stress.config import (
    StressConfig,
    StressCVConfig,
    StressDataConfig,
    StressEvaluationConfig,
    StressInferenceConfig,
    StressSpectrogramConfig,
)
from medlite.tasks.stress.recipe import StressTask

__all__ = [
    "StressCVConfig",
    "StressConfig",
    "StressDataConfig",
    "StressEvaluationConfig",
    "StressInferenceConfig",
    "StressSpectrogramConfig",
    "StressTask",
]
