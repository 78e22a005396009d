"""Small building blocks shared by the segmentation families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNAct(nn.Module):
    """Convolution (no bias) -> BatchNorm2d -> activation, as submodules ``conv``, ``bn``, ``act``.

    The submodule names follow the ``Conv`` block of the TinyU-Net and YOLO code bases, so
    state_dict keys of checkpoints trained with that code match ours.

    Args:
        in_channels / out_channels: channel counts.
        kernel_size: square kernel; padding is ``kernel_size // 2`` so H, W are kept.
        groups: ``in_channels`` for a depthwise convolution.
        act: activation module, or None for none (``nn.Identity``).
        bn_eps / bn_momentum: BatchNorm2d settings (PyTorch defaults 1e-5 / 0.1).

    Shapes: (N, in_channels, H, W) float -> (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *,
                 groups: int = 1, act: nn.Module | None = None, bn_eps: float = 1e-5,
                 bn_momentum: float = 0.1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


# Keys's cubic convolution constant used by PyTorch (and OpenCV) for bicubic resizing.
BICUBIC_A = -0.75


def cubic_kernel(distance: float, a: float = BICUBIC_A) -> float:
    """Keys's cubic convolution weight at ``|distance|`` pixels (0 beyond 2)."""
    d = abs(distance)
    if d <= 1:
        return ((a + 2) * d - (a + 3)) * d * d + 1
    if d < 2:
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return 0.0


def bicubic_x2_taps(a: float = BICUBIC_A) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """5-tap filters over input pixels ``i-2 .. i+2`` giving output pixels ``2i`` and ``2i+1``.

    With ``align_corners=False`` and scale 2, output pixel ``o`` samples the input at
    ``o / 2 - 0.25``: fractional offset 0.75 from ``i-1`` for ``o = 2i`` and 0.25 from ``i``
    for ``o = 2i+1``, so both output phases are fixed 4-tap filters.
    """
    even = (cubic_kernel(1.75, a), cubic_kernel(0.75, a), cubic_kernel(0.25, a),
            cubic_kernel(1.25, a), 0.0)
    odd = tuple(reversed(even))
    return even, odd


def bicubic_x2_weight(channels: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
    """Depthwise conv weight (4 * channels, 1, 5, 5): for each channel the four output
    phases ``(row parity, column parity)`` in :func:`torch.nn.functional.pixel_shuffle` order."""
    even, odd = (torch.tensor(taps, dtype=torch.float64) for taps in bicubic_x2_taps())
    phases = [torch.outer(rows, cols) for rows in (even, odd) for cols in (even, odd)]
    weight = torch.stack(phases).unsqueeze(1).to(dtype=dtype, device=device)
    return weight.repeat(channels, 1, 1, 1)


def bicubic_upsample_x2(x: Tensor, weight: Tensor | None = None) -> Tensor:
    """Same result as ``F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)``.

    PyTorch clamps source indices at the border, which is replicate padding; each output
    phase is then a fixed separable filter, computed here as one depthwise conv with four
    outputs per channel and interleaved with ``pixel_shuffle``.

    Shapes: (N, C, H, W) float -> (N, C, 2H, 2W); ``weight`` is
    :func:`bicubic_x2_weight` for C channels (built when None).
    """
    channels = x.shape[1]
    if weight is None:
        weight = bicubic_x2_weight(channels, x.dtype, x.device)
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    phases = F.conv2d(padded, weight, groups=channels)
    return F.pixel_shuffle(phases, 2)


class BicubicUpsample2x(nn.Module):
    """Drop-in for ``nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False)``
    computed by :func:`bicubic_upsample_x2`.

    With ``channels`` the depthwise weight is built once (and the module exports to ONNX);
    without, it is repeated for the input's channel count on each call.
    """

    def __init__(self, channels: int | None = None):
        super().__init__()
        self.channels = channels
        weight = bicubic_x2_weight(1 if channels is None else channels)
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight.to(x.dtype)
        if self.channels is None:
            weight = weight.repeat(x.shape[1], 1, 1, 1)
        return bicubic_upsample_x2(x, weight)


def is_bicubic_x2(module: nn.Module) -> bool:
    """True for ``nn.Upsample(scale_factor=2, mode="bicubic", align_corners=False)``."""
    if isinstance(module, BicubicUpsample2x):
        return True
    return (
        isinstance(module, nn.Upsample)
        and module.mode == "bicubic"
        and not module.align_corners
        and module.size is None
        and module.scale_factor in (2, 2.0, (2.0, 2.0), (2, 2))
    )
