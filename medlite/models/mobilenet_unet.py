"""A U-Net whose encoder is ImageNet MobileNetV2: transfer learning for segmentation.

TinyU-Net and the classic U-Net start from random weights, so what they know of skin comes
from the training set alone; a model trained on one clinic's 140 lesions then fails on
another clinic's (BENCHMARKS.md, PH2 -> ISIC). This network reuses MobileNetV2's ImageNet
features (Sandler et al., CVPR 2018) as the encoder of a U-Net (Ronneberger et al., MICCAI
2015), the design of ``segmentation_models_pytorch``'s ``Unet(encoder_name="mobilenet_v2")``
with a lighter decoder:

- encoder: torchvision's ``mobilenet_v2().features`` blocks 0-17 (``features.18``, the
  1x1 convolution to 1280 channels that only the classifier needs, is dropped), tapped at
  strides 2, 4, 8, 16 and 32 (16, 24, 32, 96 and 320 channels);
- decoder: five stages of 2x bilinear upsampling, concatenation with the encoder tap of that
  stride (none at full resolution) and two 3x3 conv-BN-ReLU layers, ``decoder_channels``
  wide; a 1x1 convolution to ``num_classes`` logits.

Shapes: ``(N, in_channels, H, W)`` float, ImageNet-normalised (what the segmentation task
feeds) -> ``(N, num_classes, H, W)`` logits, for any H and W (inputs are padded to a
multiple of 32 and the output cropped back).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from medlite.errors import ConfigError
from medlite.models.layers import ConvBNAct
from medlite.models.registry import register_model
from medlite.models.torchvision_backbones import adapt_first_conv
from medlite.models.weights import (
    hub_checkpoint_path,
    load_backbone_weights,
    load_pretrained_state_dict,
    load_state_dict_file,
)

DECODER_CHANNELS = (128, 64, 32, 24, 16)
# (last block index + 1, channels) of the encoder taps at strides 2, 4, 8, 16, 32.
ENCODER_TAPS = ((2, 16), (4, 24), (7, 32), (14, 96), (18, 320))
# Keys of an ImageNet MobileNetV2 file the encoder does not use.
UNUSED_IMAGENET_KEYS = ("features.18.", "classifier.")


class DecoderBlock(nn.Module):
    """2x bilinear upsampling, concatenation with ``skip`` (if any), two 3x3 conv-BN-ReLU:
    (N, C_in, H, W) and (N, C_skip, 2H, 2W) -> (N, C_out, 2H, 2W)."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvBNAct(in_channels + skip_channels, out_channels, 3,
                               act=nn.ReLU(inplace=True))
        self.conv2 = ConvBNAct(out_channels, out_channels, 3, act=nn.ReLU(inplace=True))

    def forward(self, x: Tensor, skip: Tensor | None) -> Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class MobileNetV2UNet(nn.Module):
    """U-Net with a MobileNetV2 encoder (module docstring).

    Args:
        num_classes: output channels (background included).
        in_channels: input channels; other than 3, the first convolution is adapted (its
            pretrained RGB filters averaged, as for the torchvision backbones).
        decoder_channels: widths of the five decoder stages, deepest first.

    ``features`` holds the encoder under torchvision's key names, so an ImageNet
    ``mobilenet_v2`` state_dict (or its ``features.*`` part) loads into it unchanged.
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 3,
                 decoder_channels: Sequence[int] = DECODER_CHANNELS):
        super().__init__()
        if len(decoder_channels) != len(ENCODER_TAPS):
            raise ValueError(f"MobileNetV2UNet: decoder_channels must have "
                             f"{len(ENCODER_TAPS)} entries, got {list(decoder_channels)}")
        self.features = torchvision.models.mobilenet_v2(weights=None).features[:18]
        if in_channels != 3:
            adapt_first_conv(self.features, in_channels, from_pretrained=False)
        skips = [channels for _, channels in ENCODER_TAPS[:-1]][::-1] + [0]
        widths = [ENCODER_TAPS[-1][1], *decoder_channels]
        self.decoder = nn.ModuleList(
            DecoderBlock(widths[i], skips[i], widths[i + 1]) for i in range(len(skips)))
        self.head = nn.Conv2d(decoder_channels[-1], num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % 32, -width % 32
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        taps, start = [], 0
        for end, _ in ENCODER_TAPS:
            for block in self.features[start:end]:
                x = block(x)
            taps.append(x)
            start = end
        skips = taps[-2::-1] + [None]
        for block, skip in zip(self.decoder, skips, strict=True):
            x = block(x, skip)
        return self.head(x)[..., :height, :width]


@register_model("mobilenet_v2_unet", family="mobilenet_unet", tasks=("segmentation",),
                description="U-Net with an ImageNet MobileNetV2 encoder (transfer learning)")
def build_mobilenet_v2_unet(num_classes: int = 2, in_channels: int = 3,
                            decoder_channels: Sequence[int] = DECODER_CHANNELS, *,
                            task: str | None = None, pretrained: bool = False,
                            weights_path: str | Path | None = None) -> MobileNetV2UNet:
    """Registry builder for :class:`MobileNetV2UNet`.

    ``weights_path`` is either a checkpoint of this network (every key must fit: a run's
    ``model.pt``, to fine-tune) or ImageNet MobileNetV2 weights (a torchvision
    ``mobilenet_v2`` state_dict or its ``features.*`` part: the encoder is loaded, the
    decoder starts at random). ``pretrained`` without ``weights_path`` reads torchvision's
    ImageNet weights from the local torch hub cache.

    Raises:
        WeightsNotFoundError: the file (or the cached weights) is missing.
        ConfigError: the file fits neither this network nor MobileNetV2's encoder.
    """
    state = None
    if weights_path is not None:
        field, source = "model.weights_path", Path(weights_path)
        state = load_state_dict_file(source)
    elif pretrained:
        field, source = "model.pretrained", hub_checkpoint_path("mobilenet_v2")
        state = load_pretrained_state_dict("mobilenet_v2")
    # A checkpoint of this network keeps its adapted first convolution; ImageNet weights are
    # RGB, so the network is built for 3 channels, loaded, then adapted from them.
    own_checkpoint = state is not None and any(k.startswith(("decoder.", "head.")) for k in state)
    from_imagenet = state is not None and not own_checkpoint
    try:
        model = MobileNetV2UNet(num_classes, 3 if from_imagenet else in_channels,
                                decoder_channels)
    except ValueError as error:
        raise ConfigError(f"model.kwargs: {error}") from None
    if state is not None:
        ignored = ("decoder.", "head.", *UNUSED_IMAGENET_KEYS) if from_imagenet else ()
        load_backbone_weights(model, state, ignore_prefixes=ignored, source=str(source),
                              field=field, model_name="mobilenet_v2_unet", task=task)
    if from_imagenet and in_channels != 3:
        adapt_first_conv(model.features, in_channels, from_pretrained=True)
    return model
