"""Mixup: the blend by hand, its Beta weights, and the loop applying it to training batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from medlite.datasets.skin import write_skin_dataset
from medlite.tasks.classification import ClassificationConfig, ClassificationDataConfig
from medlite.tasks.classification.recipe import ClassificationTask
from medlite.training.loop import fit
from medlite.training.mixup import mixup

CLASSES = ["normal", "early", "late"]


def tiny_classification(tmp_path, n_subjects: int, mixup_alpha: float):
    """The classification task, a plain-CNN config with mixup and its samples, on synthetic
    16 px skin images."""
    manifest = write_skin_dataset(tmp_path / "data", n_subjects=n_subjects,
                                  images_per_subject=1, size=16)
    config = ClassificationConfig(
        data=ClassificationDataConfig(manifest=manifest, class_names=CLASSES, image_size=16,
                                      class_balance="none"),
        model={"name": "plain_cnn", "pretrained": False, "kwargs": {}},
        loss={"mixup_alpha": mixup_alpha})
    task = ClassificationTask()
    return task, config, task.load_samples(config)


def test_mixup_blends_inputs_and_one_hot_targets_by_hand():
    inputs = torch.randn(6, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 1, 2, 2, 1, 0])
    mixed, soft = mixup(inputs, targets, alpha=0.4, num_classes=3,
                        generator=torch.Generator().manual_seed(7))
    replay = torch.Generator().manual_seed(7)  # the same draws, by hand
    lam = stats.beta.ppf(float(torch.rand((), generator=replay)), 0.4, 0.4)
    perm = torch.randperm(6, generator=replay)
    assert torch.allclose(mixed, lam * inputs + (1 - lam) * inputs[perm], atol=1e-6)
    expected = np.zeros((6, 3))
    expected[np.arange(6), targets.numpy()] += lam
    expected[np.arange(6), targets[perm].numpy()] += 1 - lam
    assert np.allclose(soft.numpy(), expected, atol=1e-6)
    assert torch.allclose(soft.sum(dim=1), torch.ones(6))


def test_mixup_weights_follow_the_beta_distribution():
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.tensor([[0.0], [1.0]]), torch.tensor([0, 1])
    weights = []
    for _ in range(600):
        mixed, _ = mixup(inputs, targets, alpha=0.2, num_classes=2, generator=generator)
        if float(mixed[1, 0]) != 1.0:  # the pair was swapped: mixed[1] = lam * 1 + (1-lam) * 0
            weights.append(float(mixed[1, 0]))
    assert 200 < len(weights) < 400  # the pairing is random
    assert stats.kstest(weights, stats.beta(0.2, 0.2).cdf).pvalue > 0.01
    assert stats.kstest(weights, stats.beta(1.0, 1.0).cdf).pvalue < 0.01  # not uniform
    with pytest.raises(ValueError, match="alpha"):
        mixup(inputs, targets, alpha=0.0, num_classes=2)


def test_mixed_cross_entropy_is_the_blend_of_the_two_losses(tmp_path):
    task, config, samples = tiny_classification(tmp_path, n_subjects=9, mixup_alpha=0.3)
    parts = task.training_parts(config, samples.iloc[:7], samples.iloc[7:],
                                task.build_model(config), None)
    torch.manual_seed(5)
    inputs = torch.randn(4, 3, 16, 16)
    targets = torch.tensor([0, 1, 2, 0])
    _, soft = parts.batch_mixer(inputs, targets)
    logits = torch.randn(4, 3)
    log_p = logits.log_softmax(dim=1)
    assert float(parts.loss_fn(logits, soft)) == pytest.approx(
        float(-(soft * log_p).sum(dim=1).mean()), rel=1e-6)
    config.loss.mixup_alpha = 0.0
    assert task.training_parts(config, samples.iloc[:7], samples.iloc[7:],
                               task.build_model(config), None).batch_mixer is None


def test_the_loop_mixes_every_training_batch_reproducibly(tmp_path):
    task, config, samples = tiny_classification(tmp_path, n_subjects=12, mixup_alpha=0.4)
    config.trainer.max_epochs, config.trainer.batch_size, config.trainer.threads = 2, 4, 1

    def mixed_targets(fit_dir):
        parts = task.training_parts(config, samples.iloc[:8], samples.iloc[8:],
                                    task.build_model(config), None)
        seen, mixer = [], parts.batch_mixer

        def spy(inputs, targets):
            inputs, soft = mixer(inputs, targets)
            seen.append(soft)
            return inputs, soft
        parts.batch_mixer = spy
        fit(parts, config, fit_dir, seed=3, progress=False)
        return seen

    first, again = mixed_targets(tmp_path / "a"), mixed_targets(tmp_path / "b")
    assert len(first) == 2 * 2  # 8 training images in batches of 4, two epochs
    assert all(soft.shape == (4, 3) for soft in first)
    assert any(bool((soft.max(dim=1).values < 0.99).any()) for soft in first)  # blended
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
