"""BatchNorm running statistics recomputed after training ("precise BN").

A short CPU schedule gives BatchNorm layers with a small momentum too few steps for their
running mean and variance to reach the data's: torchvision's MobileNetV3 uses momentum 0.01,
so after 500 steps the running statistics still carry ~0.7% of their initial value per step
of drift and lag the weights they were collected under. In eval mode such a network
compresses or shifts its outputs. Recomputing the statistics with the final weights, as an
exact average over a pass of training batches, removes that lag (Wu and Johnson, "Rethinking
'Batch' in BatchNorm", 2021).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def recompute_batchnorm_statistics(model: nn.Module, batches: Iterable[torch.Tensor],
                                   max_batches: int | None = None) -> int:
    """Replace every BatchNorm layer's running mean and variance by their average over
    ``batches`` under the model's current weights.

    Args:
        model: any module; its train/eval mode is restored afterwards.
        batches: input tensors ``(B, ...)`` as the model takes them (e.g. training images
            without augmentation).
        max_batches: stop after this many batches (None: all).

    Returns:
        The number of BatchNorm layers updated (0: nothing to do, no forward pass run).
    """
    layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
              and m.track_running_stats]
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    was_training = model.training
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative moving average: the exact mean over batches
    model.train()
    try:
        for count, batch in enumerate(batches):
            if max_batches is not None and count >= max_batches:
                break
            model(batch)
    finally:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
        model.train(was_training)
    return len(layers)
