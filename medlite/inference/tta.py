"""Test-time augmentation by flips: a dermoscopy photo, a biopsy tile or a CT slice has no
preferred orientation, so averaging a model's softmax over the image and its flips removes
some of the variance of a single view at the cost of four forward passes."""

from __future__ import annotations

from collections.abc import Callable

import torch

FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,), (2, 3))
"""The identity, horizontal, vertical and double flip of a ``(B, C, H, W)`` batch."""


def flip_averaged_softmax(model: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor,
                          *, enabled: bool = True, dense: bool = False) -> torch.Tensor:
    """The softmax over classes (dim 1) of ``model(batch)``, averaged over :data:`FLIPS`.

    Args:
        model: maps ``(B, C, H, W)`` to logits, ``(B, K)`` or, when ``dense``, ``(B, K, H, W)``.
        batch: ``(B, C, H, W)`` network inputs.
        enabled: False gives the plain softmax of one pass.
        dense: the output is a per-pixel map, flipped back before averaging.

    Returns:
        Probabilities of the output's shape; each sample's (or pixel's) sum to 1.
    """
    flips = FLIPS if enabled else ((),)
    total = None
    for dims in flips:
        probabilities = model(batch.flip(dims) if dims else batch).softmax(dim=1)
        if dense and dims:
            probabilities = probabilities.flip(dims)
        total = probabilities if total is None else total + probabilities
    return total / len(flips)
