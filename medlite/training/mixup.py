"""Mixup (Zhang et al., 2018): train on convex combinations of pairs of images and of their
one-hot labels, a regulariser for small training sets."""

from __future__ import annotations

import torch
from scipy import stats


def mixup(inputs: torch.Tensor, targets: torch.Tensor, *, alpha: float, num_classes: int,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with a shuffled copy of itself.

    One weight ``lam ~ Beta(alpha, alpha)`` is drawn per batch (by the inverse CDF of a
    uniform from ``generator``, so a seeded generator gives the same batch again) and one
    random pairing ``perm``: ``inputs' = lam * inputs + (1 - lam) * inputs[perm]`` and
    ``targets' = lam * onehot(targets) + (1 - lam) * onehot(targets[perm])``.

    Args:
        inputs: ``(B, ...)`` float batch.
        targets: ``(B,)`` int64 class indices in ``[0, num_classes)``.
        alpha: the Beta distribution's parameter (> 0); 0.2-0.4 is usual for images.

    Returns:
        ``(B, ...)`` mixed inputs and ``(B, num_classes)`` float class probabilities, as
        :class:`torch.nn.CrossEntropyLoss` takes them.
    """
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    uniform = float(torch.rand((), generator=generator))
    lam = float(stats.beta.ppf(uniform, alpha, alpha))
    perm = torch.randperm(len(inputs), generator=generator)
    onehot = torch.nn.functional.one_hot(targets, num_classes).to(inputs.dtype)
    return (lam * inputs + (1 - lam) * inputs[perm],
            lam * onehot + (1 - lam) * onehot[perm])
