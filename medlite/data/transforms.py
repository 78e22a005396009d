"""Image preprocessing and joint image/mask augmentation (torchvision.transforms.v2).

Masks travel as ``tv_tensors.Mask`` so torchvision applies the same geometry to image and
mask, with nearest-neighbour interpolation for the mask and colour changes to the image only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from pydantic import Field
from torchvision import tv_tensors

from medlite.config import StrictModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AugmentConfig(StrictModel):
    """Training-time augmentation; probabilities in [0, 1], ranges as (low, high)."""

    enabled: bool = True
    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    rotate_degrees: float = Field(180.0, ge=0, le=180, description="Uniform in +-degrees.")
    scale: tuple[float, float] = Field((0.7, 1.0), description="RandomResizedCrop area range.")
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.02, ge=0, le=0.5)


def to_tensor_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) uint8 tensor, as torchvision wants it."""
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)


def normalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float32 normalised with ``mean``/``std`` (on the 0-1 scale)."""
    image = image.float() / 255.0
    mean_t = torch.tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image - mean_t) / std_t


def resize_pair(image: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int]):
    """Resize uint8 image (3, H, W) with antialiased bilinear and mask (H, W) with nearest."""
    image = T.functional.resize(image, list(size), antialias=True)
    if mask is not None:
        mask = T.functional.resize(mask[None], list(size),
                                   interpolation=T.InterpolationMode.NEAREST_EXACT)[0]
    return image, mask


def pad_to_multiple(tensor: torch.Tensor, multiple: int = 16, value: float = 0.0):
    """Pad the last two dims at the bottom/right up to a multiple; return (padded, (h, w))
    where (h, w) is the original size to crop predictions back to."""
    height, width = tensor.shape[-2:]
    pad_h = math.ceil(height / multiple) * multiple - height
    pad_w = math.ceil(width / multiple) * multiple - width
    if pad_h or pad_w:
        tensor = F.pad(tensor, (0, pad_w, 0, pad_h), value=value)
    return tensor, (height, width)


def joint_augmentation(config: AugmentConfig, size: tuple[int, int]) -> T.Compose:
    """Random geometry applied identically to image and mask, then colour jitter on the image."""
    steps: list = [
        T.RandomResizedCrop(list(size), scale=tuple(config.scale), antialias=True),
        T.RandomHorizontalFlip(config.hflip),
        T.RandomVerticalFlip(config.vflip),
    ]
    if config.rotate_degrees:
        steps.append(T.RandomRotation(config.rotate_degrees))
    if any((config.brightness, config.contrast, config.saturation, config.hue)):
        steps.append(T.ColorJitter(config.brightness, config.contrast, config.saturation,
                                   config.hue))
    return T.Compose(steps)


def augment_pair(transform: T.Compose, image: torch.Tensor, mask: torch.Tensor):
    """Apply a joint transform to uint8 image (3, H, W) and int64 mask (H, W)."""
    out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
    return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)
