"""Small building blocks shared by the segmentation families."""

from __future__ import annotations

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
