"""Metrics: segmentation scores, regression scores and subject-level bootstrap intervals."""

from medlite.metrics.bootstrap import (
    bootstrap_by_subject,
    bootstrap_distribution,
    encode_subjects,
    metrics_with_ci,
    subject_blocks,
    subject_resample_indices,
)
from medlite.metrics.classification import (
    check_probabilities,
    classification_metrics,
    confusion,
    expected_calibration_error,
    reliability_curve,
)
from medlite.metrics.regression import regression_metrics
from medlite.metrics.segmentation import (
    SEGMENTATION_CLASS_NAMES,
    per_image_scores,
    segmentation_counts,
    segmentation_scores,
    segmentation_statistic,
)

__all__ = [
    "SEGMENTATION_CLASS_NAMES",
    "bootstrap_by_subject",
    "bootstrap_distribution",
    "encode_subjects",
    "metrics_with_ci",
    "per_image_scores",
    "regression_metrics",
    "segmentation_counts",
    "segmentation_scores",
    "segmentation_statistic",
    "subject_blocks",
    "subject_resample_indices",
    "check_probabilities",
    "classification_metrics",
    "confusion",
    "expected_calibration_error",
    "reliability_curve",
]
