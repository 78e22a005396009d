"""Precise BatchNorm after a PASI fit (torch.optim.swa_utils.update_bn): the running
statistics become exactly those of the fit's training composites under the final weights."""

import numpy as np
import torch
from torch import nn

from medlite.data.transforms import normalize, to_tensor_image
from medlite.data.visits import CompositeCache, read_visit_tables, visit_items
from medlite.datasets.pasi_trial import write_pasi_trial
from medlite.models.pasi_ensemble import StandardizedOutput
from medlite.tasks.pasi import PasiConfig, PasiDataConfig
from medlite.tasks.pasi.recipe import PasiTask
from medlite.training.plan import Fit


def test_precise_batchnorm_uses_the_unaugmented_training_composites(tmp_path):
    photos, scores = write_pasi_trial(tmp_path / "data", n_subjects=3, visits_per_subject=(2, 2),
                                      photo_size=16, seed=0)
    rows = visit_items(read_visit_tables(photos, scores, check_images=False))
    config = PasiConfig(data=PasiDataConfig(photos=photos, scores=scores, tile_size=8,
                                            cache_dir=tmp_path / "cache"))
    config.trainer.batch_size = len(rows)  # one batch: the statistics are its own
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=0.01),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    model = StandardizedOutput(network, 1).eval()
    fit = Fit("a-fold0", params={"head": "regional"})
    assert PasiTask().finish_fit(model, config, rows, fit)
    cache = CompositeCache(tmp_path / "cache")
    images = torch.stack([normalize(to_tensor_image(cache.get(paths, 8)))
                          for paths in rows["images"]])
    with torch.no_grad():
        features = network[0](images)
    bn = network[1]
    assert torch.allclose(bn.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, features.var(dim=(0, 2, 3)), atol=1e-4)
    assert bn.momentum == 0.01 and not model.training  # restored
    config.ensemble.precise_bn = False
    assert not PasiTask().finish_fit(model, config, rows, fit)
    no_bn = StandardizedOutput(nn.Sequential(nn.Flatten(), nn.LazyLinear(1)), 1)
    config.ensemble.precise_bn = True
    assert not PasiTask().finish_fit(no_bn, config, rows, fit)
    assert np.isfinite(bn.running_var.numpy()).all()
