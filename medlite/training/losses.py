"""Losses shared by the task recipes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0,
                   class_weights: torch.Tensor | None = None,
                   include_background: bool = True) -> torch.Tensor:
    """1 - the (weighted) mean soft Dice over classes.

    logits: (N, C, H, W) float; target: (N, H, W) int64 class indices. Dice is computed per
    class over the whole batch (so a class absent from one image does not give 0/0) and
    averaged over classes, background included as in the TinyU-Net recipe unless
    ``include_background`` is False; ``class_weights`` ``(C,)`` weigh the average.
    """
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    weights = torch.ones_like(dice) if class_weights is None else class_weights.to(dice)
    if not include_background:
        weights = weights.clone()
        weights[0] = 0
    return 1 - (dice * weights).sum() / weights.sum().clamp_min(1e-12)


class DiceCELoss(nn.Module):
    """``ce_weight * cross_entropy + dice_weight * soft_dice_loss`` (the TinyU-Net loss).

    ``class_weights`` ``(C,)`` weigh both terms per class (None: equal);
    ``include_background=False`` leaves class 0 out of the Dice average."""

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0,
                 class_weights: torch.Tensor | None = None, include_background: bool = True):
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.include_background = include_background
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(class_weights, dtype=torch.float32))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = self.class_weights
        ce = F.cross_entropy(logits, target,
                             weight=None if weights is None else weights.to(logits.dtype))
        dice = soft_dice_loss(logits, target, self.smooth, weights, self.include_background)
        return self.ce_weight * ce + self.dice_weight * dice


class StandardizedMSELoss(nn.Module):
    """MSE in standardised target units: ``mean(((pred - target) / std) ** 2)``; ``std``
    ``(K,)`` the targets' standard deviations. ``pred`` and ``target`` are ``(B, K)``."""

    def __init__(self, std: torch.Tensor):
        super().__init__()
        self.register_buffer("std", std.clone())

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (((pred - target) / self.std) ** 2).mean()
