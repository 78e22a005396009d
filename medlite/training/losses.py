"""Losses shared by the task recipes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over classes.

    logits: (N, C, H, W) float; target: (N, H, W) int64 class indices. Dice is computed per
    class over the whole batch (so a class absent from one image does not give 0/0) and
    averaged over classes, background included, as in the TinyU-Net recipe.
    """
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1)
    one_hot = F.one_hot(target, num_classes).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    dice = (2 * intersection + smooth) / (denominator + smooth)
    return 1 - dice.mean()


class DiceCELoss(nn.Module):
    """``ce_weight * cross_entropy + dice_weight * soft_dice_loss`` (the TinyU-Net loss)."""

    def __init__(self, ce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0):
        super().__init__()
        self.ce_weight = ce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, target)
        return self.ce_weight * ce + self.dice_weight * soft_dice_loss(logits, target, self.smooth)


class StandardizedMSELoss(nn.Module):
    """MSE in standardised target units: ``mean(((pred - target) / std) ** 2)``; ``std``
    ``(K,)`` the targets' standard deviations. ``pred`` and ``target`` are ``(B, K)``."""

    def __init__(self, std: torch.Tensor):
        super().__init__()
        self.register_buffer("std", std.clone())

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (((pred - target) / self.std) ** 2).mean()
