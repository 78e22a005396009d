"""Mask post-processing and flip test-time augmentation for segmentation inference."""

import numpy as np
import pytest
import torch
from torch import nn

from medlite.data.segmentation import postprocess_mask
from medlite.inference import ImageInput, Predictor
from medlite.tasks.segmentation import SegmentationConfig, SegmentationTask


def test_largest_component_keeps_only_the_biggest_region_per_class():
    pred = np.zeros((10, 12), dtype=np.int64)
    pred[1:5, 1:6] = 1       # 20 px
    pred[7:9, 8:10] = 1      # 4 px, removed
    pred[6:9, 1:3] = 2       # class 2 keeps its own largest region
    pred[0, 11] = 2          # 1 px, removed
    out = postprocess_mask(pred, 3, largest_component=True)
    assert (out == 1).sum() == 20 and (out[7:9, 8:10] == 0).all()
    assert (out == 2).sum() == 6 and out[0, 11] == 0
    assert np.array_equal(postprocess_mask(pred, 3), pred)  # both off: unchanged


def test_lesion_like_rule_keeps_the_central_lesion_over_a_bigger_dark_corner():
    """A vignetted corner predicted as lesion, larger than the real, central lesion."""
    pred = np.zeros((40, 40), dtype=np.int64)
    pred[:14, :14] = 1          # 196 px in the corner
    pred[17:27, 17:27] = 1      # 100 px at the centre
    largest = postprocess_mask(pred, 2, largest_component=True)
    assert largest[:14, :14].all() and not largest[17:27, 17:27].any()
    central = postprocess_mask(pred, 2, largest_component=True, component_rule="lesion_like")
    assert central[17:27, 17:27].all() and not central[:14, :14].any()
    # Lesion probability weighs the regions: a faint central blob loses to a sure one.
    probabilities = np.zeros((2, 40, 40))
    probabilities[1] = np.where(pred == 1, 0.99, 0.0)
    probabilities[1, 17:27, 17:27] = 0.05
    probabilities[0] = 1 - probabilities[1]
    kept = postprocess_mask(pred, 2, largest_component=True, component_rule="lesion_like",
                            probabilities=probabilities)
    assert kept[:14, :14].all() and not kept[17:27, 17:27].any()


def test_diagonal_touching_pixels_are_one_component():
    pred = np.eye(5, dtype=np.int64)
    assert np.array_equal(postprocess_mask(pred, 2, largest_component=True), pred)


def test_fill_holes_fills_enclosed_background_only():
    pred = np.zeros((9, 9), dtype=np.int64)
    pred[1:8, 1:8] = 1
    pred[3:6, 3:6] = 0            # enclosed hole: filled
    pred[0:3, 8] = 0              # open to the border: stays background
    out = postprocess_mask(pred, 2, fill_holes=True)
    assert (out[3:6, 3:6] == 1).all()
    assert (out[0, :] == 0).all() and (out[:, 0] == 0).all()
    expected = pred.copy()
    expected[3:6, 3:6] = 1
    assert np.array_equal(out, expected)


class _LeftBiased(nn.Module):
    """Logits that favour class 1 more to the left of the image: not flip-invariant."""

    def forward(self, x):
        ramp = torch.linspace(1.0, -1.0, x.shape[-1]).expand(x.shape[0], 1, *x.shape[-2:])
        return torch.cat([torch.zeros_like(ramp), ramp * 3], dim=1)


def test_flip_tta_averages_the_four_flipped_predictions():
    task = SegmentationTask()
    config = SegmentationConfig()
    config.data.image_size = (16, 16)
    image = ImageInput(np.zeros((16, 16, 3), dtype=np.uint8))
    plain = torch.from_numpy(Predictor(task, config, _LeftBiased()).predict_one(
        image).probabilities)
    assert plain[1, 0, 0] > 0.9 and plain[1, 0, -1] < 0.1
    config.inference.flip_tta = True
    averaged = torch.from_numpy(Predictor(task, config, _LeftBiased()).predict_one(
        image).probabilities)
    # Each ramp is cancelled by its horizontal mirror: every pixel averages to 0.5.
    assert torch.allclose(averaged, torch.full_like(averaged, 0.5), atol=1e-6)
    assert torch.allclose(averaged.sum(dim=0), torch.ones(16, 16))


def test_inference_options_are_chosen_on_validation_and_never_see_test(tiny_runs, tmp_path):
    import shutil

    import pandas as pd

    from medlite.evaluation.inference_choice import (
        SEGMENTATION_CANDIDATES,
        choose_inference_on_validation,
    )

    run = tmp_path / "run"
    shutil.copytree(tiny_runs["segmentation"], run)
    candidates = {k: SEGMENTATION_CANDIDATES[k] for k in ("plain", "largest_fill", "flip_tta")}
    chosen, table = choose_inference_on_validation(run, candidates)
    assert table["candidate"].tolist() == list(candidates)
    assert chosen == table.loc[table["value"].idxmax(), "candidate"]
    val = set(pd.read_csv(run / "splits.csv").query("split == 'val'")["sample"])
    for name in candidates:
        scored = pd.read_csv(run / "evaluations" / f"val-{name}" / "per_sample.csv")
        assert set(scored["sample"]) == val  # the validation split only
        # the reported value is the per-image mean of the scored validation images
        value = table.set_index("candidate").loc[name, "value"]
        assert value == pytest.approx(scored["dice_lesion"].mean(), abs=1e-6)
    assert not (run / "evaluations" / "test").exists()
