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
    zoom_out: float = Field(0.0, ge=0, le=1, description="Probability of shrinking the "
                            "scene: the image and mask are mirror-padded to up to "
                            "`zoom_out_max` times their side before the crop, so lesions "
                            "appear smaller, as in sources that frame them with more skin.")
    zoom_out_max: float = Field(2.0, ge=1, le=2, description="Largest side ratio of the "
                                "mirror-padded canvas (at most 2: one mirror image per side).")
    brightness: float = Field(0.2, ge=0)
    contrast: float = Field(0.2, ge=0)
    saturation: float = Field(0.2, ge=0)
    hue: float = Field(0.02, ge=0, le=0.5)
    hair: float = Field(0.0, ge=0, le=1, description="Probability of drawing 1-8 dark "
                        "hairs across the image (dermoscopy artefact).")
    ink: float = Field(0.0, ge=0, le=1, description="Probability of a purple skin-marker "
                       "stroke near the border.")
    vignette: float = Field(0.0, ge=0, le=1, description="Probability of darkening the "
                            "corners, as a dermatoscope's circular field of view does.")


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
    steps: list = [RandomMirrorZoomOut(config.zoom_out, config.zoom_out_max)] \
        if config.zoom_out else []
    steps += [
        T.RandomResizedCrop(list(size), scale=tuple(config.scale), antialias=True),
        T.RandomHorizontalFlip(config.hflip),
        T.RandomVerticalFlip(config.vflip),
    ]
    if config.rotate_degrees:
        steps.append(T.RandomRotation(config.rotate_degrees))
    if any((config.brightness, config.contrast, config.saturation, config.hue)):
        steps.append(T.ColorJitter(config.brightness, config.contrast, config.saturation,
                                   config.hue))
    if any((config.hair, config.ink, config.vignette)):
        steps.append(DermoscopyArtefacts(config.hair, config.ink, config.vignette))
    return T.Compose(steps)


class RandomMirrorZoomOut(T.Transform):
    """With probability ``p``, pad image and mask by reflection to a canvas ``r`` times their
    side (``r`` uniform in ``[1, max_ratio]``, the image at a random position on it), so the
    scene is shown from further away once the next step resizes it. Mirroring, unlike
    torchvision's constant-fill ``RandomZoomOut``, keeps skin texture at the new border, and
    the mask is mirrored with the image, so any lesion the mirror repeats stays labelled.

    Shapes: ``(C, H, W)`` image and ``(H, W)`` mask -> ``(C, H', W')`` and ``(H', W')`` with
    ``H <= H' < 2H``.
    """

    def __init__(self, p: float = 0.5, max_ratio: float = 2.0):
        super().__init__()
        if not 1.0 <= max_ratio <= 2.0:
            raise ValueError(f"max_ratio must be in [1, 2], got {max_ratio}")
        self.p, self.max_ratio = p, max_ratio

    def make_params(self, flat_inputs):
        height, width = T.query_size(flat_inputs)
        if float(torch.rand(())) >= self.p:
            return {"padding": None}
        ratio = 1.0 + float(torch.rand(())) * (self.max_ratio - 1.0)
        top, bottom = _split_reflect_pad(int((ratio - 1.0) * height), height)
        left, right = _split_reflect_pad(int((ratio - 1.0) * width), width)
        return {"padding": [left, top, right, bottom]}

    def transform(self, inpt, params):
        if params["padding"] is None or not isinstance(inpt, (tv_tensors.Image,
                                                               tv_tensors.Mask)):
            return inpt
        return T.functional.pad(inpt, params["padding"], padding_mode="reflect")


def _split_reflect_pad(extra: int, size: int) -> tuple[int, int]:
    """``extra`` pixels of padding split at random between the two sides of an axis of
    ``size`` pixels, each side below ``size`` as reflection needs (``extra`` is clipped to
    ``2 * (size - 1)``)."""
    extra = min(extra, 2 * (size - 1))
    before = int(torch.randint(max(0, extra - (size - 1)), min(extra, size - 1) + 1, ()))
    return before, extra - before


class DermoscopyArtefacts(T.Transform):
    """Artefacts of other clinics' dermoscopy drawn on the image only (the mask is left as
    it is: a hair over a lesion is still lesion): dark hairs (quadratic Bezier curves, 1-3 px),
    a purple skin-marker stroke near the border, and dark corners of a circular field of
    view, each with its probability. Randomness comes from torch's generator, so the
    training loop's per-item seeds make it reproducible.

    Shapes: uint8 ``(3, H, W)`` -> uint8 ``(3, H, W)``.
    """

    def __init__(self, hair: float = 0.0, ink: float = 0.0, vignette: float = 0.0):
        super().__init__()
        self.hair, self.ink, self.vignette = hair, ink, vignette

    def transform(self, inpt, params):
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        image = inpt.as_subclass(torch.Tensor)
        if float(torch.rand(())) < self.hair:
            image = _draw_strokes(image, int(torch.randint(1, 9, ())), colour=None,
                                  width=(1, 3), near_border=False)
        if float(torch.rand(())) < self.ink:
            image = _draw_strokes(image, 1, colour=(110, 40, 140), width=(3, 7),
                                  near_border=True)
        if float(torch.rand(())) < self.vignette:
            image = _vignette(image)
        return tv_tensors.wrap(image, like=inpt)


def _draw_strokes(image: torch.Tensor, count: int, colour: tuple[int, int, int] | None,
                  width: tuple[int, int], near_border: bool) -> torch.Tensor:
    """``count`` curves drawn with Pillow: dark brown hairs (``colour`` None, a fraction of
    the image's mean colour) or strokes of ``colour``, blended at 60-95% opacity."""
    from PIL import Image, ImageDraw

    height, width_px = image.shape[-2:]
    rgb = image.permute(1, 2, 0).numpy()
    layer = Image.new("RGBA", (width_px, height), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    mean = rgb.reshape(-1, 3).mean(axis=0)
    for _ in range(count):
        ends = torch.rand(3, 2) * torch.tensor([width_px, height])
        if near_border:  # a marker circles the lesion near the edge of the photo
            ends[:, 1] = ends[:, 1] * 0.2 + (0.78 * height if float(torch.rand(())) < 0.5
                                             else 0.02 * height)
        t = torch.linspace(0, 1, 32)[:, None]
        curve = ((1 - t) ** 2 * ends[0] + 2 * (1 - t) * t * ends[1] + t ** 2 * ends[2])
        tone = colour or tuple(int(c) for c in mean * float(0.15 + 0.25 * torch.rand(())))
        alpha = int(255 * float(0.6 + 0.35 * torch.rand(())))
        draw.line([tuple(p) for p in curve.tolist()], fill=(*tone, alpha),
                  width=int(torch.randint(width[0], width[1] + 1, ())), joint="curve")
    over = np.asarray(layer, dtype=np.float32)
    alpha = over[:, :, 3:] / 255
    blended = rgb * (1 - alpha) + over[:, :, :3] * alpha
    return torch.from_numpy(np.round(blended).astype(np.uint8)).permute(2, 0, 1).contiguous()


def _vignette(image: torch.Tensor) -> torch.Tensor:
    """Darken outside a circle of radius 0.85-1.1 half-diagonals, softly."""
    height, width = image.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width),
                            indexing="ij")
    radius = torch.sqrt(xx ** 2 + yy ** 2) / math.sqrt(2)
    start = 0.6 + 0.3 * float(torch.rand(()))
    keep = (1 - ((radius - start) / 0.15).clamp(0, 1)) * 0.9 + 0.1
    return (image.float() * keep).round().to(torch.uint8)


def shades_of_gray(image: np.ndarray, power: float = 6.0) -> np.ndarray:
    """Colour constancy by the Shades of Gray algorithm (Finlayson and Trezzi 2004): the
    illuminant is the Minkowski ``power``-mean of each channel, and each channel is scaled
    so that the illuminant becomes neutral grey (the ISIC challenges' usual correction for
    the colour casts of different dermatoscopes).

    Shapes: uint8 ``(H, W, 3)`` -> uint8 ``(H, W, 3)``.
    """
    values = image.astype(np.float64)
    illuminant = np.power(np.mean(np.power(values, power), axis=(0, 1)), 1.0 / power)
    illuminant = illuminant / max(float(np.linalg.norm(illuminant)), 1e-12)
    gains = 1.0 / (illuminant * math.sqrt(3.0))
    return np.clip(np.round(values * gains), 0, 255).astype(np.uint8)


def augment_pair(transform: T.Compose, image: torch.Tensor, mask: torch.Tensor):
    """Apply a joint transform to uint8 image (3, H, W) and int64 mask (H, W)."""
    out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
    return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)
