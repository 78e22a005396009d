"""Segmentation datasets: image/mask pairs from a manifest, resized or letterboxed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import Dataset

from medlite.data.io import read_ct_slice, read_image, read_mask
from medlite.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentConfig,
    augment_pair,
    joint_augmentation,
    normalize,
    resize_pair,
    shades_of_gray,
    to_tensor_image,
)

ResizeMode = Literal["resize", "letterbox"]
#: ITU-R BT.601 luma weights: colour images given to a one-channel network.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# ImageNet's statistics averaged over channels, so that a grey network's inputs have the
# scale an RGB one's have.
GREY_MEAN = (float(np.mean(IMAGENET_MEAN)),)
GREY_STD = (float(np.mean(IMAGENET_STD)),)


@dataclass(frozen=True)
class ScanReader:
    """How a segmentation run reads its files: images (CT windowing when ``hu_window`` is
    set) and masks (class indices, or colours through ``palette``), and what the network
    sees of an image (:meth:`network_view`: colour constancy when ``color_constancy`` is
    ``shades_of_gray``).

    The readers return what :func:`read_image` and :func:`read_mask` do: uint8 ``(H, W, 3)``
    and int64 ``(H, W)``."""

    num_classes: int = 2
    palette: dict[tuple[int, int, int], int] | None = None
    hu_window: tuple[float, float] | None = None
    hu_offset: float = 0.0
    color_constancy: str = "none"

    def image(self, path: str | Path) -> np.ndarray:
        if self.hu_window is None and Path(path).suffix.lower() != ".npy":
            return read_image(path)
        return read_ct_slice(path, self.hu_window, self.hu_offset)

    def mask(self, path: str | Path) -> np.ndarray:
        return read_mask(path, self.num_classes, self.palette)

    def network_view(self, image: np.ndarray) -> np.ndarray:
        """The image as the network is trained on it and predicts from it."""
        return shades_of_gray(image) if self.color_constancy == "shades_of_gray" else image


def network_input(image: torch.Tensor, in_channels: int = 3) -> torch.Tensor:
    """uint8 ``(3, H, W)`` -> float32 ``(in_channels, H, W)`` normalised: ImageNet
    statistics for RGB; for one channel the luma, scaled by their channel means."""
    if in_channels == 3:
        return normalize(image)
    weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.float32).view(3, 1, 1)
    grey = (image.float() * weights).sum(dim=0, keepdim=True)
    return normalize(grey, GREY_MEAN, GREY_STD)


def letterbox_geometry(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """Scaled (h, w) that fits (height, width) inside ``size`` keeping the aspect ratio."""
    scale = min(size[0] / height, size[1] / width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_to_size(image: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int],
                mode: ResizeMode):
    """Bring uint8 image (3, H, W) [and mask (H, W)] to ``size``.

    ``resize`` stretches; ``letterbox`` keeps the aspect ratio and pads the bottom/right
    with zeros (background in the mask). Returns (image, mask, valid (h, w)): the region of
    the output that holds the picture, to crop predictions back.
    """
    if mode == "resize":
        image, mask = resize_pair(image, mask, size)
        return image, mask, tuple(size)
    valid = letterbox_geometry(image.shape[-2], image.shape[-1], size)
    image, mask = resize_pair(image, mask, valid)
    pad = (0, size[1] - valid[1], 0, size[0] - valid[0])
    image = F.pad(image, pad)
    if mask is not None:
        mask = F.pad(mask, pad)
    return image, mask, valid


def component_scores(labels: np.ndarray, count: int, rule: str,
                     probabilities: np.ndarray | None = None) -> np.ndarray:
    """A score per region ``1..count`` of a label image (H, W); the highest is kept.

    ``largest``: the pixel count. ``lesion_like``: the region's summed class probability
    (its pixel count without ``probabilities``) times ``1 - r``, where ``r`` is the distance
    of its centroid from the image centre over the half-diagonal: a dermoscopy photo centres
    its lesion, while the dark corners of the lens, rulers and ink marks sit at the edges and
    are often as large.
    """
    index = np.arange(1, count + 1)
    if rule == "largest":
        return ndimage.sum_labels(np.ones(labels.shape), labels, index)
    weights = np.ones(labels.shape) if probabilities is None else probabilities
    mass = ndimage.sum_labels(weights, labels, index)
    centre = (np.array(labels.shape, dtype=np.float64) - 1) / 2
    centroids = np.array(ndimage.center_of_mass(weights, labels, index)).reshape(count, 2)
    distance = np.linalg.norm(centroids - centre, axis=1) / max(np.linalg.norm(centre), 1.0)
    return mass * (1.0 - np.clip(distance, 0.0, 1.0))


def postprocess_mask(pred: np.ndarray, num_classes: int, *, largest_component: bool = False,
                     fill_holes: bool = False, component_rule: str = "largest",
                     probabilities: np.ndarray | None = None) -> np.ndarray:
    """Clean a predicted label map (H, W) of ints in ``0..num_classes-1``.

    For each foreground class on its own: ``largest_component`` keeps only one 8-connected
    region (the others become background, class 0), since a dermoscopy image frames one
    lesion: the largest, or with ``component_rule="lesion_like"`` the most lesion-like one
    (:func:`component_scores`; ``probabilities`` (C, H, W) weigh it); ``fill_holes`` gives
    the class to background pixels it fully encloses (lesions have no holes; low-contrast
    centres of regressing lesions are a common miss).
    """
    out = pred.copy()
    structure = np.ones((3, 3), dtype=bool)
    for cls in range(1, num_classes):
        region = out == cls
        if largest_component and region.any():
            labels, count = ndimage.label(region, structure=structure)
            if count > 1:
                scores = component_scores(labels, count, component_rule,
                                          None if probabilities is None else probabilities[cls])
                out[region & (labels != 1 + int(scores.argmax()))] = 0
                region = out == cls
        if fill_holes and region.any():
            out[ndimage.binary_fill_holes(region) & (out == 0)] = cls
    return out


def restore_logits(logits: torch.Tensor, valid: tuple[int, int],
                   original: tuple[int, int]) -> torch.Tensor:
    """Network logits (C, h, w) -> logits at the original (H, W): crop the letterbox padding,
    then bilinear resize. Argmax of the result is the full-resolution mask."""
    logits = logits[:, : valid[0], : valid[1]]
    return F.interpolate(logits[None], size=tuple(original), mode="bilinear",
                         align_corners=False)[0]


class SegmentationDataset(Dataset):
    """Image/mask pairs as network-ready tensors.

    Each item is a dict: ``input`` float32 (in_channels, H, W) from :func:`network_input`,
    ``target`` int64 (H, W) class indices (absent when ``masks`` is None), ``index``.
    Decoded, resized pairs are cached in memory (``cache=True``) because decoding a JPEG
    costs more than a CPU training step of a small model on it; augmentation runs after
    the cache, so every epoch still sees new variants, up to epoch ``augment_until_epoch``
    (0-based, exclusive; None: every epoch; the training loop calls :meth:`set_epoch`).
    ``reader`` reads the files (default: :class:`ScanReader` for ``num_classes``).
    """

    def __init__(self, images: Sequence[Path], masks: Sequence[Path] | None, *,
                 size: tuple[int, int] = (256, 256), num_classes: int = 2,
                 resize_mode: ResizeMode = "resize", augment: AugmentConfig | None = None,
                 cache: bool = True, in_channels: int = 3, reader: ScanReader | None = None,
                 augment_until_epoch: int | None = None):
        if masks is not None and len(masks) != len(images):
            raise ValueError("images and masks differ in length")
        self.images = [Path(p) for p in images]
        self.masks = [Path(p) for p in masks] if masks is not None else None
        self.size = tuple(size)
        self.num_classes = num_classes
        self.resize_mode = resize_mode
        self.augment = augment if augment is not None and augment.enabled else None
        self._transform = joint_augmentation(augment, self.size) if self.augment else None
        self.cache = cache
        self.in_channels = in_channels
        self.reader = reader or ScanReader(num_classes)
        self.augment_until_epoch = augment_until_epoch
        self.augment_enabled = True
        self._cache: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        until = self.augment_until_epoch
        self.augment_enabled = until is None or epoch < until

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """Resized uint8 image (3, H, W), mask (H, W) or None, and the valid region."""
        if index in self._cache:
            return self._cache[index]
        image = to_tensor_image(self.reader.network_view(self.reader.image(self.images[index])))
        mask = None
        if self.masks is not None:
            mask = torch.from_numpy(self.reader.mask(self.masks[index]))
        item = fit_to_size(image, mask, self.size, self.resize_mode)
        if self.cache:
            self._cache[index] = item
        return item

    def __getitem__(self, index: int) -> dict:
        image, mask, _ = self.load(index)
        if self._transform is not None and mask is not None and self.augment_enabled:
            image, mask = augment_pair(self._transform, image, mask)
        item = {"input": network_input(image, self.in_channels), "index": index}
        if mask is not None:
            item["target"] = mask.long()
        return item



def class_pixel_counts(dataset: SegmentationDataset) -> np.ndarray:
    """``(C,)`` int64 pixels of each class over the (resized) masks of ``dataset``."""
    counts = np.zeros(dataset.num_classes, np.int64)
    for index in range(len(dataset)):
        _, mask, _ = dataset.load(index)
        counts += np.bincount(mask.numpy().ravel(), minlength=dataset.num_classes)
    return counts


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """``(C,)`` float weights ``1 / frequency`` normalised to mean 1 (a class with no pixel
    gets the largest weight of the others, not infinity)."""
    counts = np.asarray(counts, np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1.0), 0.0)
    weights[counts == 0] = weights.max() if weights.max() > 0 else 1.0
    return weights / weights.mean()
