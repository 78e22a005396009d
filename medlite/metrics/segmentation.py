"""Segmentation metrics from per-image confusion counts (TinyU-Net, Table 1).

Everything is computed from one small integer array, ``counts`` of shape ``(N, C, 3)`` holding
``[tp, fp, fn]`` for each image ``n`` and class ``c`` (see :func:`segmentation_counts`). Counts
of several batches concatenate along the first axis, so evaluation never keeps masks in memory,
and a bootstrap resample of images is just ``counts[indices]``.

Two aggregations, as reported in the segmentation literature:

- ``"image"``: IoU, Dice and pixel accuracy are computed per image, then averaged over images.
- ``"dataset"``: tp/fp/fn are summed over all pixels of all images, then the scores are computed
  once (what ``torchmetrics`` calls ``aggregation_level="global"``).

Empty classes. A class that appears in neither the truth nor the prediction of an image has no
defined IoU or Dice (0/0). Its score is ``empty_score``: the default ``NaN`` leaves it out of
every average (over images and over classes), which is what ``torchmetrics``' ``dice_score`` and
``mean_iou`` and MONAI's ``DiceMetric(ignore_empty=True)`` do. ``empty_score=1.0`` counts a
correctly empty prediction as perfect instead (the nnU-Net/``zero_division=1`` convention), and
``0.0`` as a failure. Under ``"dataset"`` a class is empty only if absent from the whole set.

Mean over classes. ``miou``/``mdice`` are the mean of the reported per-class values
``iou_<name>``/``dice_<name>`` (NaN-ignoring), so ``miou == mean(iou_background, iou_lesion)``
always holds in a report. Without empty classes this equals the mean over images of per-image
mIoU; with ``empty_score=NaN`` and empty classes the two differ slightly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

SEGMENTATION_CLASS_NAMES: tuple[str, str] = ("background", "lesion")
AGGREGATES: tuple[str, str] = ("image", "dataset")


def _as_label_tensor(labels: Tensor | np.ndarray, name: str, num_classes: int) -> Tensor:
    """Integer label map as an int64 tensor, checked to lie in ``[0, num_classes)``."""
    labels = torch.as_tensor(labels)
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"{name} must hold integer class indices, got dtype {labels.dtype} "
            "(take argmax over the class axis of logits first)"
        )
    labels = labels.long()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{name} holds values in [{int(labels.min())}, {int(labels.max())}], "
            f"outside [0, {num_classes}) for num_classes={num_classes}"
        )
    return labels


def segmentation_counts(
    pred: Tensor | np.ndarray, target: Tensor | np.ndarray, num_classes: int
) -> Tensor:
    """Per-image, per-class true positives, false positives and false negatives.

    Args:
        pred: predicted class index per pixel, integer, shape ``(N, H, W)`` (any trailing
            shape ``(N, ...)`` works, e.g. volumes). Tensor on any device, or a numpy array.
        target: true class index per pixel, same shape as ``pred``.
        num_classes: number of classes ``C``; values must lie in ``[0, C)``.

    Returns:
        int64 tensor ``(N, C, 3)`` on ``pred``'s device: ``[..., 0]`` tp, ``[..., 1]`` fp,
        ``[..., 2]`` fn. Each image's ``tp + fn`` summed over classes is its pixel count.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = _as_label_tensor(pred, "pred", num_classes)
    target = _as_label_tensor(target, "target", num_classes).to(pred.device)
    if pred.shape != target.shape or pred.ndim < 2:
        raise ValueError(
            f"pred and target must share a shape (N, H, W), got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    n_images = pred.shape[0]
    image_index = torch.arange(n_images, device=pred.device).view(-1, *([1] * (pred.ndim - 1)))
    # One bincount over (image, true class, predicted class) gives every confusion matrix at once.
    flat = (image_index * num_classes + target) * num_classes + pred
    confusion = torch.bincount(flat.reshape(-1), minlength=n_images * num_classes**2)
    confusion = confusion.view(n_images, num_classes, num_classes)  # [image, true, predicted]
    tp = confusion.diagonal(dim1=1, dim2=2)
    fp = confusion.sum(dim=1) - tp
    fn = confusion.sum(dim=2) - tp
    return torch.stack([tp, fp, fn], dim=-1)


def _as_counts_array(counts: Tensor | np.ndarray) -> np.ndarray:
    """``counts`` as an int64 numpy array ``(N, C, 3)``, shape-checked."""
    if isinstance(counts, Tensor):
        counts = counts.detach().cpu().numpy()
    counts = np.asarray(counts, dtype=np.int64)
    if counts.ndim != 3 or counts.shape[2] != 3 or counts.shape[0] == 0:
        raise ValueError(f"counts must have shape (N>0, C, 3), got {counts.shape}")
    return counts


def _resolve_class_names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    """Given names checked against ``num_classes``, or ``class0, class1, ...``."""
    if class_names is None:
        return [f"class{index}" for index in range(num_classes)]
    names = list(class_names)
    if len(names) != num_classes or len(set(names)) != len(names):
        raise ValueError(
            f"class_names must be {num_classes} distinct names (one per class), got {names}"
        )
    return names


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; all-NaN slices give NaN without a RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return np.nanmean(values, axis=axis)


def per_image_scores(
    counts: Tensor | np.ndarray,
    class_names: Sequence[str] | None = None,
    empty_score: float = float("nan"),
) -> dict[str, np.ndarray]:
    """IoU, Dice and pixel accuracy of each image (to rank cases or bootstrap them).

    Args:
        counts: ``(N, C, 3)`` tp/fp/fn from :func:`segmentation_counts`.
        class_names: ``C`` names used in the keys; default ``class0..class{C-1}``.
        empty_score: IoU/Dice of a class absent from both truth and prediction of an image
            (NaN: undefined, ignored by means; see the module docstring).

    Returns:
        float64 arrays of shape ``(N,)`` under ``iou_<name>``, ``dice_<name>`` for each class,
        ``miou``/``mdice`` (NaN-ignoring mean over classes) and ``pixel_accuracy`` (0..1).
    """
    counts = _as_counts_array(counts)
    names = _resolve_class_names(class_names, counts.shape[1])
    tp, fp, fn = (counts[..., k].astype(np.float64) for k in range(3))
    union = tp + fp + fn
    empty = union == 0
    safe_union = np.where(empty, 1.0, union)
    iou = np.where(empty, empty_score, tp / safe_union)  # (N, C)
    dice = np.where(empty, empty_score, 2 * tp / np.where(empty, 1.0, union + tp))
    pixels = (tp + fn).sum(axis=1)
    scores: dict[str, np.ndarray] = {}
    for index, name in enumerate(names):
        scores[f"iou_{name}"] = iou[:, index]
        scores[f"dice_{name}"] = dice[:, index]
    scores["miou"] = _nanmean(iou, axis=1)
    scores["mdice"] = _nanmean(dice, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        scores["pixel_accuracy"] = tp.sum(axis=1) / pixels
    return scores


def segmentation_scores(
    counts: Tensor | np.ndarray,
    aggregate: str = "image",
    class_names: Sequence[str] | None = None,
    empty_score: float = float("nan"),
) -> dict[str, float]:
    """IoU and Dice per class, their means, and pixel accuracy over a set of images.

    Args:
        counts: ``(N, C, 3)`` tp/fp/fn from :func:`segmentation_counts`.
        aggregate: ``"image"`` (score each image, then average over images, NaN-ignoring) or
            ``"dataset"`` (sum counts over all images, then score once).
        class_names: ``C`` names used in the keys; default ``class0..class{C-1}``; lesion
            segmentation uses :data:`SEGMENTATION_CLASS_NAMES` ``("background", "lesion")``.
        empty_score: score of a class absent from truth and prediction (see module docstring).

    Returns:
        ``{"iou_<name>", "dice_<name>" (per class), "miou", "mdice", "pixel_accuracy"}`` as
        floats in [0, 1]; ``miou``/``mdice`` average the per-class values; NaN where undefined
        (a class empty in every image with ``empty_score=NaN``).
    """
    if aggregate not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {AGGREGATES}, got {aggregate!r}")
    counts = _as_counts_array(counts)
    if aggregate == "dataset":
        counts = counts.sum(axis=0, keepdims=True)
    per_image = per_image_scores(counts, class_names, empty_score)
    scores = {
        key: float(_nanmean(values, axis=0))
        for key, values in per_image.items()
        if key not in ("miou", "mdice")
    }
    iou_keys = [key for key in scores if key.startswith("iou_")]
    dice_keys = [key for key in scores if key.startswith("dice_")]
    scores["miou"] = float(_nanmean(np.array([scores[key] for key in iou_keys]), axis=0))
    scores["mdice"] = float(_nanmean(np.array([scores[key] for key in dice_keys]), axis=0))
    return scores


def segmentation_statistic(
    counts: Tensor | np.ndarray,
    aggregate: str = "dataset",
    class_names: Sequence[str] | None = None,
    empty_score: float = float("nan"),
) -> Callable[[np.ndarray], dict[str, float]]:
    """``indices -> segmentation_scores(counts[indices], ...)``, a bootstrap statistic.

    Args:
        counts: ``(N, C, 3)`` tp/fp/fn of the whole evaluation set.
        aggregate, class_names, empty_score: as in :func:`segmentation_scores`.

    Returns:
        A function of an int array of image indices (repeats allowed) giving the score dict.
    """
    counts = _as_counts_array(counts)
    names = _resolve_class_names(class_names, counts.shape[1])

    def statistic(indices: np.ndarray) -> dict[str, float]:
        return segmentation_scores(counts[indices], aggregate, names, empty_score)

    return statistic
