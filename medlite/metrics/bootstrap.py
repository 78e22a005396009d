"""Percentile bootstrap confidence intervals that resample subjects, not samples.

Several images of one lesion (or several windows of one ECG record) are not independent: a
bootstrap that resamples them one by one gives intervals that are too narrow. Here each draw
picks a *subject* with replacement and takes all of its samples, the cluster bootstrap.

The statistic is any function of sample indices, so the same code serves dataset-aggregated
segmentation scores (recomputed from summed counts, see
:func:`medlite.metrics.segmentation.segmentation_statistic`), regression MAE/CCC or accuracy::

    stat = lambda idx: regression_metrics(y_true[idx], y_pred[idx])
    metrics_with_ci(stat, subjects=lesion_ids)

Conventions:

- Intervals are percentile intervals (``scipy.stats.bootstrap(method="percentile")``) of the
  ``n_resamples`` bootstrap values, using numpy's default linear percentile interpolation.
- A resample for which a metric is NaN (undefined, e.g. no lesion pixel drawn) is left out of
  that metric's interval; a metric NaN in every resample gets ``(nan, nan)``.
- One subject gives a zero-width interval (every resample is the whole set), with a
  ``RuntimeWarning`` saying so; no subjects is a ``ValueError``.
- Results depend only on ``seed`` (``numpy.random.default_rng``) and the data.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Sequence

import numpy as np

Statistic = Callable[[np.ndarray], dict[str, float]]


def encode_subjects(subjects: Sequence[Hashable]) -> np.ndarray:
    """Subject labels as dense codes ``0..S-1`` in order of first appearance.

    Args:
        subjects: one hashable label (str, int, ...) per sample, length ``N``.

    Returns:
        int64 array ``(N,)``.
    """
    codes: dict[Hashable, int] = {}
    return np.array([codes.setdefault(subject, len(codes)) for subject in subjects], dtype=np.int64)


def subject_blocks(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples grouped by subject, computed once per bootstrap.

    Args:
        codes: int64 ``(N,)`` subject code of each sample, ``0..S-1`` (:func:`encode_subjects`).

    Returns:
        ``(order, starts, sizes)``: ``order`` int64 ``(N,)`` sample indices sorted by subject
        (stable); subject ``s`` owns ``order[starts[s]:starts[s] + sizes[s]]``; ``starts`` and
        ``sizes`` are int64 ``(S,)``.
    """
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    return order, np.cumsum(sizes) - sizes, sizes


def subject_resample_indices(
    blocks: tuple[np.ndarray, np.ndarray, np.ndarray], drawn_subjects: np.ndarray
) -> np.ndarray:
    """Sample indices of the drawn subjects, each draw contributing all of its samples.

    Args:
        blocks: ``(order, starts, sizes)`` from :func:`subject_blocks`.
        drawn_subjects: int ``(S',)`` drawn subject codes, repeats allowed.

    Returns:
        int64 ``(M,)`` indices into the ``N`` samples, grouped by draw in draw order, where ``M``
        is the total sample count of the drawn subjects.
    """
    order, starts, sizes = blocks
    draw_sizes = sizes[drawn_subjects]
    draw_offsets = np.cumsum(draw_sizes) - draw_sizes
    # Position within each drawn block, shifted to that subject's block in `order`.
    within = np.arange(draw_sizes.sum()) - np.repeat(draw_offsets, draw_sizes)
    return order[np.repeat(starts[drawn_subjects], draw_sizes) + within]


def _check_arguments(n_samples: int, n_resamples: int, confidence: float) -> None:
    if n_samples == 0:
        raise ValueError("bootstrap needs at least one sample, got an empty subjects list")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def bootstrap_distribution(
    statistic: Statistic, subjects: Sequence[Hashable], n_resamples: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Values of ``statistic`` on ``n_resamples`` subject-level bootstrap resamples.

    Args:
        statistic: maps int64 sample indices ``(M,)`` (repeats allowed) to ``{name: value}``.
        subjects: subject label of each of the ``N`` samples.
        n_resamples: number of bootstrap resamples ``B``.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``{name: float64 array (B,)}`` with the names of the first resample's result.
    """
    _check_arguments(len(subjects), n_resamples, 0.5)
    codes = encode_subjects(subjects)
    blocks = subject_blocks(codes)
    n_subjects = len(blocks[2])
    draws = np.random.default_rng(seed).integers(0, n_subjects, size=(n_resamples, n_subjects))
    results = [statistic(subject_resample_indices(blocks, draw)) for draw in draws]
    names = list(results[0])
    for result in results[1:]:
        if list(result) != names:
            raise ValueError(
                f"statistic returned keys {list(result)} on one resample and {names} on another"
            )
    return {name: np.array([r[name] for r in results], dtype=np.float64) for name in names}


def bootstrap_by_subject(
    statistic: Statistic,
    subjects: Sequence[Hashable],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals of each metric, resampling subjects with replacement.

    Args:
        statistic: maps int64 sample indices ``(M,)`` (repeats allowed) to ``{name: value}``.
        subjects: subject label of each of the ``N`` samples (e.g. lesion or patient id).
        n_resamples: number of bootstrap resamples.
        confidence: coverage of the interval, e.g. 0.95 for the 2.5th-97.5th percentiles.
        seed: seed of ``numpy.random.default_rng``; same seed and data give the same intervals.

    Returns:
        ``{name: (low, high)}`` for every key of the statistic.
    """
    _check_arguments(len(subjects), n_resamples, confidence)
    if len(set(subjects)) == 1:
        warnings.warn(
            "bootstrap over a single subject: every resample is the whole set, "
            "so the confidence interval has zero width",
            RuntimeWarning,
            stacklevel=2,
        )
    distribution = bootstrap_distribution(statistic, subjects, n_resamples, seed)
    tail = 100.0 * (1.0 - confidence) / 2.0
    intervals = {}
    for name, values in distribution.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=RuntimeWarning)  # all-NaN metric -> NaN
            low, high = np.nanpercentile(values, [tail, 100.0 - tail])
        intervals[name] = (float(low), float(high))
    return intervals


def metrics_with_ci(
    statistic: Statistic,
    subjects: Sequence[Hashable],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | int | None]]:
    """Point estimate on all samples plus its subject-level bootstrap interval.

    Args:
        statistic, subjects, confidence, seed: as in :func:`bootstrap_by_subject`.
        n_resamples: number of bootstrap resamples; 0 computes no interval.

    Returns:
        ``{name: {"value", "ci_low", "ci_high", "confidence", "resamples",
        "valid_resamples"}}``: ``value = statistic(all indices)``; the percentile interval
        over the resamples on which the metric is defined (``valid_resamples`` of them;
        ``None`` bounds when there are none or ``n_resamples`` is 0).
    """
    _check_arguments(len(subjects), max(n_resamples, 1), confidence)
    values = statistic(np.arange(len(subjects)))
    if n_resamples and len(set(subjects)) == 1:
        warnings.warn(
            "bootstrap over a single subject: every resample is the whole set, "
            "so the confidence interval has zero width",
            RuntimeWarning,
            stacklevel=2,
        )
    distribution = bootstrap_distribution(statistic, subjects, n_resamples, seed) \
        if n_resamples else {}
    if distribution and set(values) != set(distribution):
        raise ValueError(
            f"statistic returned keys {sorted(values)} on all samples "
            f"but {sorted(distribution)} on resamples"
        )
    tail = 100.0 * (1.0 - confidence) / 2.0
    results = {}
    for name, value in values.items():
        entry = {"value": float(value), "ci_low": None, "ci_high": None,
                 "confidence": confidence if n_resamples else None,
                 "resamples": n_resamples, "valid_resamples": 0}
        if n_resamples:
            draws = distribution[name]
            valid = draws[np.isfinite(draws)]
            entry["valid_resamples"] = int(valid.size)
            if valid.size:
                low, high = np.percentile(valid, [tail, 100.0 - tail])
                entry["ci_low"], entry["ci_high"] = float(low), float(high)
        results[name] = entry
    return results
