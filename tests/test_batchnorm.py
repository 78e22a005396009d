"""Precise BatchNorm: running statistics recomputed exactly over a pass of batches."""

import torch
from torch import nn

from medlite.training.batchnorm import recompute_batchnorm_statistics


def test_running_statistics_become_the_average_over_the_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.01), nn.ReLU())
    model.eval()
    batches = [torch.randn(8, 3, 5, 5) * 3 + 2 for _ in range(4)]
    assert recompute_batchnorm_statistics(model, batches) == 1
    bn = model[1]
    with torch.no_grad():
        features = [model[0](b) for b in batches]
    means = torch.stack([f.mean(dim=(0, 2, 3)) for f in features])
    variances = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in features])
    assert torch.allclose(bn.running_mean, means.mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, variances.mean(0), atol=1e-4)
    assert bn.momentum == 0.01 and not model.training  # restored


def test_max_batches_and_models_without_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    seen = []
    batches = (seen.append(i) or torch.randn(2, 3, 4, 4) for i in range(10))
    recompute_batchnorm_statistics(model, batches, max_batches=3)
    assert model[1].num_batches_tracked == 3
    assert recompute_batchnorm_statistics(nn.Linear(2, 2), [torch.randn(1, 2)]) == 0
