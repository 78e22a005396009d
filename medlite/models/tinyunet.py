"""TinyU-Net and its Cascade Multi-Receptive Fields (CMRF) block.

Chen et al., "TinyU-Net: Lighter Yet Better U-Net with Cascaded Multi-Receptive Fields",
MICCAI 2024. The code follows the authors' published implementation: same layers, same
BatchNorm settings, same registration order and submodule names, so a state_dict trained
with the reference code loads here unchanged (and vice versa).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medlite.errors import ConfigError, WeightsNotFoundError
from medlite.models.layers import BicubicUpsample2x, ConvBNAct
from medlite.models.registry import register_model
from medlite.models.weights import check_fit, load_state_dict_file

# The reference code inherits YOLO's BatchNorm settings, not PyTorch's defaults.
CMRF_BN_EPS = 1e-3
CMRF_BN_MOMENTUM = 0.03
TINYUNET_WIDTHS = (64, 128, 256, 512)


def _cmrf_conv(in_channels: int, out_channels: int, kernel_size: int = 1, *, groups: int = 1,
               act: bool = True) -> ConvBNAct:
    return ConvBNAct(in_channels, out_channels, kernel_size, groups=groups,
                     act=nn.GELU() if act else None, bn_eps=CMRF_BN_EPS,
                     bn_momentum=CMRF_BN_MOMENTUM)


class CMRF(nn.Module):
    """Cascade Multi-Receptive Fields block.

    1x1 conv-BN-GELU to ``2b`` channels, ``b = out_channels // (2n)``; the even-index
    channels are kept as ``even + odd``, the odd-index ones go through a cascade of ``n - 1``
    depthwise 3x3 conv-BN blocks (receptive fields 3, 5, ..., 2n - 1) whose outputs are all
    kept; the ``n`` pieces (``n * b`` channels, ``out_channels / 2`` when ``2n`` divides
    ``out_channels``) are concatenated and mixed by a 1x1 conv-BN-GELU to ``out_channels``.
    The input is added back when the channel counts match.

    Args:
        in_channels / out_channels: ``out_channels`` at least ``2 * n``.
        n: number of pieces (the paper's N = 8; its Table 4 varies it).

    Shapes: (N, in_channels, H, W) float -> (N, out_channels, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, n: int = 8):
        super().__init__()
        if n < 2 or out_channels < 2 * n:
            raise ValueError(f"CMRF: n must be >= 2 and out_channels ({out_channels}) at "
                             f"least 2 * n ({2 * n})")
        self.n = n
        self.add_residual = in_channels == out_channels
        branch = out_channels // (2 * n)
        # Registration order (pwconv1, pwconv2, m) matches the reference implementation.
        self.pwconv1 = _cmrf_conv(in_channels, 2 * branch)
        self.pwconv2 = _cmrf_conv(n * branch, out_channels)
        # `m` is the reference's name for the depthwise cascade; kept for checkpoint keys.
        self.m = nn.ModuleList(
            _cmrf_conv(branch, branch, 3, groups=branch, act=False) for _ in range(n - 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(self.pwconv1(x))
        return x + out if self.add_residual else out

    def expand(self, reduced: Tensor) -> Tensor:
        """The block after ``pwconv1``: (N, out / n, H, W) -> (N, out, H, W), no residual."""
        odd = reduced[:, 1::2]
        pieces = [reduced[:, 0::2] + odd]
        for depthwise in self.m:
            odd = depthwise(odd)
            pieces.append(odd)
        return self.pwconv2(torch.cat(pieces, dim=1))


class EncoderStage(nn.Module):
    """CMRF then 2x2 max-pool; returns ``(pooled, skip)`` with the skip taken before pooling.

    Shapes: (N, C_in, H, W) -> ((N, C_out, H/2, W/2), (N, C_out, H, W)).
    """

    def __init__(self, in_channels: int, out_channels: int, n: int = 8):
        super().__init__()
        self.cmrf = CMRF(in_channels, out_channels, n)
        self.downsample = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.cmrf(x)
        return self.downsample(skip), skip


class DecoderStage(nn.Module):
    """Bicubic x2 upsampling (align_corners=False), concat ``[upsampled, skip]``, CMRF.

    Computed in an equivalent, cheaper order: upsampling is linear and the CMRF's first 1x1
    convolution mixes channels only, so ``pwconv1.conv(cat[up(x), skip]) == up(W_x x) +
    W_skip skip``. Only ``out / 8`` channels are upsampled (8 instead of 128 in the last
    decoder), the full-resolution concatenation is never built, and BatchNorm sees the same
    tensor as in the reference order (its batch statistics are unchanged). The upsampling
    is an exact depthwise convolution (:class:`BicubicUpsample2x`) whose backward pass is
    far cheaper on a CPU than ``upsample_bicubic2d``'s. Training is about 2.5x faster;
    outputs match the reference order to float rounding.

    Shapes: (N, x_channels, H, W), (N, skip_channels, 2H, 2W) -> (N, out_channels, 2H, 2W).
    """

    def __init__(self, x_channels: int, skip_channels: int, out_channels: int, n: int = 8):
        super().__init__()
        # The split of the block's concatenated input, read by optimize_for_inference.
        self.upsampled_channels = x_channels
        self.skip_channels = skip_channels
        self.upsample = BicubicUpsample2x()
        self.cmrf = CMRF(x_channels + skip_channels, out_channels, n)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        pwconv1 = self.cmrf.pwconv1
        weight = pwconv1.conv.weight
        mixed = (F.conv2d(skip, weight[:, self.upsampled_channels:])
                 + self.upsample(F.conv2d(x, weight[:, :self.upsampled_channels])))
        return self.cmrf.expand(pwconv1.act(pwconv1.bn(mixed)))


class TinyUNet(nn.Module):
    """TinyU-Net: four CMRF encoder stages, four CMRF decoder stages, no bottleneck.

    Args:
        in_channels: image channels (3 for RGB).
        num_classes: output channels (2 for lesion / background).
        widths: encoder widths, each a multiple of 16; the default is the paper's
            (64, 128, 256, 512), which gives 481,170 parameters for (3, 2).
        cmrf_n: pieces per CMRF block (:class:`CMRF`'s ``n``, the paper's N = 8); the
            ablation of its Table 4 varies it.

    Shapes: (N, in_channels, H, W) float, H and W multiples of 16 ->
    logits (N, num_classes, H, W) float.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2,
                 widths: Sequence[int] = TINYUNET_WIDTHS, cmrf_n: int = 8):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) != 4:
            raise ValueError(f"TinyUNet: widths must have 4 entries, got {widths}")
        w1, w2, w3, w4 = widths
        n = cmrf_n
        self.encoder1 = EncoderStage(in_channels, w1, n)
        self.encoder2 = EncoderStage(w1, w2, n)
        self.encoder3 = EncoderStage(w2, w3, n)
        self.encoder4 = EncoderStage(w3, w4, n)
        # The deepest decoder upsamples the pooled encoder4 output (w4 channels).
        self.decoder4 = DecoderStage(w4, w4, w4, n)
        self.decoder3 = DecoderStage(w4, w3, w3, n)
        self.decoder2 = DecoderStage(w3, w2, w2, n)
        self.decoder1 = DecoderStage(w2, w1, w1, n)
        self.final_conv = nn.Conv2d(w1, num_classes, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise ValueError(f"TinyUNet: H and W must be multiples of 16, got {tuple(x.shape)}")
        x, skip1 = self.encoder1(x)
        x, skip2 = self.encoder2(x)
        x, skip3 = self.encoder3(x)
        x, skip4 = self.encoder4(x)
        x = self.decoder4(x, skip4)
        x = self.decoder3(x, skip3)
        x = self.decoder2(x, skip2)
        x = self.decoder1(x, skip1)
        return self.final_conv(x)


def load_local_weights(model: nn.Module, weights_path: str | Path, *,
                       model_name: str | None = None, task: str | None = None) -> nn.Module:
    """Load a local state_dict file (read with ``torch.load(weights_only=True)`` by
    :func:`~medlite.models.weights.load_state_dict_file`) into ``model``, strictly.

    Raises WeightsNotFoundError when the file is missing and ConfigError when it is not a
    state_dict or its keys or shapes do not fit the model; both name the file and
    ``model.weights_path``; a misfit also names the expected model (``model_name``) and
    ``task``, and what the file holds (see :func:`~medlite.models.weights.check_fit`).
    """
    state = load_state_dict_file(weights_path, field="model.weights_path")
    check_fit(model, state, source=weights_path, model_name=model_name, task=task)
    model.load_state_dict(state)
    return model


def refuse_pretrained(name: str, pretrained: bool) -> None:
    """No ImageNet-pretrained weights exist for the segmentation families."""
    if pretrained:
        raise WeightsNotFoundError(
            f"model.pretrained: no pretrained weights exist for {name!r}; set pretrained: false "
            "or give model.weights_path"
        )


@register_model("tinyunet", family="tinyunet", tasks=("segmentation",),
                description="TinyU-Net (CMRF blocks, 0.48 M parameters), MICCAI 2024")
def build_tinyunet(num_classes: int = 2, in_channels: int = 3,
                   widths: Sequence[int] = TINYUNET_WIDTHS, cmrf_n: int = 8, *,
                   task: str | None = None, pretrained: bool = False,
                   weights_path: str | Path | None = None) -> TinyUNet:
    """Registry builder for :class:`TinyUNet` (``task`` is accepted and ignored)."""
    refuse_pretrained("tinyunet", pretrained)
    try:
        model = TinyUNet(in_channels=in_channels, num_classes=num_classes, widths=widths,
                         cmrf_n=cmrf_n)
    except ValueError as error:
        raise ConfigError(f"model.kwargs: {error}") from None
    if weights_path is not None:
        load_local_weights(model, weights_path, model_name="tinyunet", task=task)
    return model
