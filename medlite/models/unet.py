"""The classic U-Net baseline, and the same network with CMRF blocks.

Ronneberger et al., "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, in its common modern form: padded 3x3 convolutions with BatchNorm and ReLU
(so the output has the input's size), 2x2 max-pooling, a bottleneck at the lowest
resolution, and 2x upsampling (transposed convolution or bilinear) concatenated with the
encoder's skip. ``block="cmrf"`` swaps every double convolution for a TinyU-Net
:class:`~medlite.models.tinyunet.CMRF` block, the paper's claim that CMRF drops into
other networks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from medlite.errors import ConfigError
from medlite.models.layers import ConvBNAct
from medlite.models.registry import register_model
from medlite.models.tinyunet import CMRF, load_local_weights, refuse_pretrained

UNET_WIDTHS = (64, 128, 256, 512, 1024)
BLOCKS = ("double_conv", "cmrf")
UPSAMPLES = ("transpose", "bilinear")


class DoubleConv(nn.Sequential):
    """Two 3x3 conv-BN-ReLU layers: (N, C_in, H, W) -> (N, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            ConvBNAct(in_channels, out_channels, 3, act=nn.ReLU(inplace=True)),
            ConvBNAct(out_channels, out_channels, 3, act=nn.ReLU(inplace=True)),
        )


def make_block(kind: str, in_channels: int, out_channels: int, cmrf_n: int = 8) -> nn.Module:
    """A U-Net stage block: ``double_conv`` or ``cmrf`` (with ``cmrf_n`` pieces)."""
    if kind == "double_conv":
        return DoubleConv(in_channels, out_channels)
    if kind == "cmrf":
        return CMRF(in_channels, out_channels, cmrf_n)
    raise ValueError(f"UNet: block must be one of {BLOCKS}, got {kind!r}")


class DownStage(nn.Module):
    """2x2 max-pool then a block: (N, C_in, H, W) -> (N, C_out, H/2, W/2)."""

    def __init__(self, in_channels: int, out_channels: int, block: str):
        super().__init__()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.block = make_block(block, in_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(self.pool(x))


class UpStage(nn.Module):
    """2x upsampling, concat ``[upsampled, skip]``, block.

    ``upsample="transpose"`` uses a 2x2 stride-2 transposed convolution that also halves the
    channels (``x_channels -> skip_channels``); ``"bilinear"`` keeps the channels.

    Shapes: (N, x_channels, H, W), (N, skip_channels, 2H, 2W) -> (N, out_channels, 2H, 2W).
    """

    def __init__(self, x_channels: int, skip_channels: int, out_channels: int, block: str,
                 upsample: str):
        super().__init__()
        if upsample == "transpose":
            self.upsample = nn.ConvTranspose2d(x_channels, skip_channels, 2, stride=2)
            upsampled_channels = skip_channels
        elif upsample == "bilinear":
            self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            upsampled_channels = x_channels
        else:
            raise ValueError(f"UNet: upsample must be one of {UPSAMPLES}, got {upsample!r}")
        self.upsampled_channels = upsampled_channels
        self.skip_channels = skip_channels
        self.block = make_block(block, upsampled_channels + skip_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.block(torch.cat([self.upsample(x), skip], dim=1))


class UNet(nn.Module):
    """U-Net with ``len(widths) - 1`` poolings; the last width is the bottleneck.

    Args:
        in_channels: image channels.
        num_classes: output channels (logits).
        widths: channels per resolution, e.g. (64, 128, 256, 512, 1024) (Ronneberger) or
            (8, 16, 32, 64, 128) for tests; multiples of 16 for ``block="cmrf"``.
        block: ``"double_conv"`` (classic) or ``"cmrf"``.
        upsample: ``"transpose"`` (classic) or ``"bilinear"``.

    Shapes: (N, in_channels, H, W), H and W multiples of ``2 ** (len(widths) - 1)`` ->
    logits (N, num_classes, H, W).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2,
                 widths: Sequence[int] = UNET_WIDTHS, block: str = "double_conv",
                 upsample: str = "transpose"):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2:
            raise ValueError(f"UNet: widths needs at least 2 entries, got {widths}")
        self.depth = len(widths) - 1
        self.stem = make_block(block, in_channels, widths[0])
        self.encoder = nn.ModuleList(
            DownStage(widths[i], widths[i + 1], block) for i in range(self.depth)
        )
        self.decoder = nn.ModuleList(
            UpStage(widths[i + 1], widths[i], widths[i], block, upsample)
            for i in reversed(range(self.depth))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        multiple = 2**self.depth
        if x.shape[-1] % multiple or x.shape[-2] % multiple:
            raise ValueError(
                f"UNet: H and W must be multiples of {multiple}, got {tuple(x.shape)}"
            )
        x = self.stem(x)
        skips = []
        for stage in self.encoder:
            skips.append(x)
            x = stage(x)
        for stage, skip in zip(self.decoder, reversed(skips), strict=True):
            x = stage(x, skip)
        return self.head(x)


def _build_unet(name: str, block: str, num_classes: int, in_channels: int,
                widths: Sequence[int], upsample: str, pretrained: bool,
                weights_path: str | Path | None, task: str | None = None) -> UNet:
    refuse_pretrained(name, pretrained)
    try:
        model = UNet(in_channels, num_classes, widths=widths, block=block, upsample=upsample)
    except ValueError as error:
        raise ConfigError(f"model.kwargs: {error}") from None
    if weights_path is not None:
        load_local_weights(model, weights_path, model_name=name, task=task)
    return model


@register_model("unet", family="unet", tasks=("segmentation",),
                description="classic U-Net (double 3x3 conv-BN-ReLU), Ronneberger 2015")
def build_unet(num_classes: int = 2, in_channels: int = 3, widths: Sequence[int] = UNET_WIDTHS,
               upsample: str = "transpose", *, task: str | None = None,
               pretrained: bool = False, weights_path: str | Path | None = None) -> UNet:
    """Registry builder for the double-conv :class:`UNet` (``task`` is accepted and ignored)."""
    return _build_unet("unet", "double_conv", num_classes, in_channels, widths, upsample,
                       pretrained, weights_path, task)


@register_model("unet_cmrf", family="unet", tasks=("segmentation",),
                description="U-Net with every double conv replaced by a CMRF block")
def build_unet_cmrf(num_classes: int = 2, in_channels: int = 3,
                    widths: Sequence[int] = UNET_WIDTHS, upsample: str = "transpose", *,
                    task: str | None = None, pretrained: bool = False,
                    weights_path: str | Path | None = None) -> UNet:
    """Registry builder for the CMRF :class:`UNet` (``task`` is accepted and ignored)."""
    return _build_unet("unet_cmrf", "cmrf", num_classes, in_channels, widths, upsample,
                       pretrained, weights_path, task)
