"""Segmentation with more than one foreground class: CT slices (grey, HU windows), colour
masks, class-weighted losses, per-class metrics and the pixel confusion matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import confusion_matrix

from medlite.cli import main
from medlite.data.io import read_ct_slice, read_mask
from medlite.data.segmentation import (
    SegmentationDataset,
    inverse_frequency_weights,
    network_input,
)
from medlite.data.transforms import AugmentConfig
from medlite.datasets.ct import CT_CLASS_NAMES, make_ct_study, window_to_uint8, write_ct_dataset
from medlite.errors import DataError
from medlite.models import create_model
from medlite.tasks.segmentation import SegmentationConfig
from medlite.training.losses import soft_dice_loss
from medlite.training.runner import train_run
from medlite.training.seeding import SeededItems


def test_colour_masks_map_through_the_palette(tmp_path):
    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[1, 1:3] = (255, 204, 0)
    rgb[3, 4] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    palette = {(0, 0, 0): 0, (255, 204, 0): 1, (255, 0, 0): 2}
    expected = np.zeros((4, 5), np.int64)
    expected[1, 1:3], expected[3, 4] = 1, 2
    assert (read_mask(tmp_path / "m.png", 3, palette) == expected).all()

    rgb[0, 0] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "bad.png")
    with pytest.raises(DataError) as error:
        read_mask(tmp_path / "bad.png", 3, palette)
    message = str(error.value)
    assert "bad.png" in message and "#0000ff (1 px)" in message and "\n" not in message


def test_a_palette_naming_a_class_that_does_not_exist_is_refused():
    with pytest.raises(ValueError, match="mask_palette: class 3"):
        SegmentationConfig.model_validate({"data": {
            "num_classes": 3, "class_names": list(CT_CLASS_NAMES),
            "mask_palette": {"#000000": 0, "#ffffff": 3}}})


def test_hounsfield_units_are_windowed_to_eight_bits(tmp_path):
    hu = np.array([[-2000.0, -1350.0, -600.0], [150.0, 900.0, -975.0]], np.float32)
    np.save(tmp_path / "s.npy", hu + 1024)  # stored as HU + 1024, as many scanners do
    image = read_ct_slice(tmp_path / "s.npy", window=(-600, 1500), offset=-1024)
    # (HU - (level - width / 2)) / width, clipped to [0, 1], times 255
    expected = np.round(np.clip((hu + 1350) / 1500, 0, 1) * 255).astype(np.uint8)
    assert image.shape == (2, 3, 3) and (image[..., 0] == expected).all()
    assert (image[..., 0] == image[..., 2]).all()

    Image.fromarray(np.uint8([[0, 128, 255]])).save(tmp_path / "8bit.png")
    assert (read_ct_slice(tmp_path / "8bit.png", window=(-600, 1500))[..., 0]
            == [[0, 128, 255]]).all()  # already windowed: unchanged
    with pytest.raises(DataError, match=r"s\.npy.*hu_window"):
        read_ct_slice(tmp_path / "s.npy")
    np.save(tmp_path / "nan.npy", np.array([[np.nan, 0.0]]))
    with pytest.raises(DataError, match="NaN"):
        read_ct_slice(tmp_path / "nan.npy", window=(0, 100))


def test_grey_network_input_is_the_luma():
    image = torch.randint(0, 256, (3, 4, 4), dtype=torch.uint8)
    grey = network_input(image, in_channels=1)
    luma = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).float() / 255
    assert grey.shape == (1, 4, 4)
    assert torch.allclose(grey[0] * 0.226 + 0.449, luma, atol=1e-5)


def test_weighted_and_foreground_dice_by_hand():
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 5, 5))
    probs = logits.softmax(1)
    dice = []
    for k in range(3):
        p, t = probs[:, k], (target == k).float()
        dice.append((2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1))
    dice = torch.stack(dice)
    weights = torch.tensor([0.2, 1.0, 3.0])
    assert soft_dice_loss(logits, target) == pytest.approx(1 - dice.mean().item(), rel=1e-5)
    assert soft_dice_loss(logits, target, include_background=False) == pytest.approx(
        1 - dice[1:].mean().item(), rel=1e-5)
    assert soft_dice_loss(logits, target, class_weights=weights) == pytest.approx(
        1 - ((dice * weights).sum() / weights.sum()).item(), rel=1e-5)


def test_inverse_frequency_weights_have_mean_one():
    weights = inverse_frequency_weights(np.array([900, 90, 10]))
    assert weights.mean() == pytest.approx(1.0)
    assert weights[2] / weights[1] == pytest.approx(9.0)
    assert weights[1] / weights[0] == pytest.approx(10.0)
    assert np.isfinite(inverse_frequency_weights(np.array([10, 0, 5]))).all()


def test_augmentation_stops_after_the_configured_epoch(tmp_path):
    manifest = write_ct_dataset(tmp_path / "ct", n_subjects=2, slices_per_subject=1, size=32)
    table = pd.read_csv(manifest)
    images = [tmp_path / "ct" / p for p in table["image"]]
    masks = [tmp_path / "ct" / p for p in table["mask"]]
    augment = AugmentConfig(hflip=1.0, vflip=0.0, rotate_degrees=0, scale=(1.0, 1.0),
                            brightness=0, contrast=0, saturation=0, hue=0)
    dataset = SeededItems(SegmentationDataset(images, masks, size=(32, 32), num_classes=3,
                                              augment=augment, augment_until_epoch=2))
    plain = SegmentationDataset(images, masks, size=(32, 32), num_classes=3)[0]["input"]
    assert torch.equal(dataset[(0, 7, 1)]["input"], plain.flip(-1))  # epoch 1: flipped
    assert torch.equal(dataset[(0, 7, 2)]["input"], plain)  # epoch 2: augmentation off


def test_cmrf_pieces_are_a_model_option():
    assert sum(p.numel() for p in create_model("tinyunet").parameters()) == 481_170
    for n in (2, 6, 10):
        model = create_model("tinyunet", num_classes=3, in_channels=1, cmrf_n=n,
                             widths=[32, 32, 64, 64])
        assert model.encoder1.cmrf.n == n and len(model.encoder1.cmrf.m) == n - 1
        assert model(torch.randn(1, 1, 32, 32)).shape == (1, 3, 32, 32)


def test_synthetic_ct_study_is_deterministic_and_has_both_lesion_kinds():
    first, again = make_ct_study(6, 2, 48, seed=4), make_ct_study(6, 2, 48, seed=4)
    assert all(np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
               for a, b in zip(first, again, strict=True))
    classes = np.bincount(np.concatenate([m.ravel() for _, _, m in first]), minlength=3)
    assert classes[1] > 0 and classes[2] > 0
    hu = np.concatenate([h.ravel() for _, h, _ in first])
    masks = np.concatenate([m.ravel() for _, _, m in first])
    # ground glass is hazier than consolidation, both denser than air-filled lung
    assert -750 < hu[masks == 1].mean() < -250 < hu[masks == 2].mean()
    assert window_to_uint8(np.array([-1350.0, -600.0, 150.0])).tolist() == [0, 128, 255]


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    manifest = write_ct_dataset(root / "ct", n_subjects=20, slices_per_subject=2, size=64,
                                seed=2, hu=True)
    config = SegmentationConfig.model_validate({
        "name": "ct", "seed": 3,
        "data": {"manifest": str(manifest), "num_classes": 3,
                 "class_names": list(CT_CLASS_NAMES), "image_size": [64, 64],
                 "in_channels": 1, "hu_window": [-600, 1500], "augment_until_epoch": 8},
        # U-Net's BatchNorm settles in a few steps; TinyU-Net's (momentum 0.03) needs more
        "model": {"name": "unet", "kwargs": {"widths": [16, 32, 64]}},
        "loss": {"class_weights": "inverse_frequency", "dice_classes": "foreground"},
        "optimizer": {"name": "adam", "lr": 3e-3},
        "trainer": {"max_epochs": 12, "batch_size": 4, "threads": 2,
                    "early_stopping_patience": None},
        "split": {"val_fraction": 0.2, "test_fraction": 0.2},
        "evaluation": {"bootstrap_resamples": 50}})
    run = root / "run"
    result = train_run(config, run, progress=False)
    return run, result, root / "ct"


def test_a_grey_three_class_model_learns_both_lesion_kinds(ct_run):
    run, result, _ = ct_run
    per_image = result.metrics["per_image"]
    dataset = result.metrics["dataset"]
    for name in ("ggo", "consolidation"):
        score = dataset[f"dice_{name}"]
        assert score["value"] > 0.4, (name, score)
        assert score["ci_low"] <= score["value"] <= score["ci_high"]
        assert f"iou_{name}" in per_image


def test_the_pixel_confusion_matrix_counts_every_test_pixel(ct_run):
    run, result, data = ct_run
    table = pd.read_csv(run / "per_sample.csv")
    names = list(CT_CLASS_NAMES)
    expected = np.zeros((3, 3), np.int64)
    for row in table.itertuples():
        truth = read_mask(row.mask, 3)
        predicted = np.asarray(Image.open(run / "predictions" / f"{row.sample}_mask.png"))
        expected += confusion_matrix(truth.ravel(), predicted.ravel(), labels=[0, 1, 2])
    saved = result.info["pixel_confusion_matrix"]
    assert saved["class_names"] == names and np.array_equal(saved["pixels"], expected)
    # the per-class dataset Dice is the one the matrix gives
    for k, name in enumerate(names[1:], start=1):
        tp, fp, fn = expected[k, k], expected[:, k].sum() - expected[k, k], \
            expected[k].sum() - expected[k, k]
        assert result.metrics["dataset"][f"dice_{name}"]["value"] == pytest.approx(
            2 * tp / (2 * tp + fp + fn))
    assert (run / "figures" / "pixel_confusion_matrix.png").is_file()
    assert (run / "figures" / "best_cases.png").is_file()


def test_predict_reads_hounsfield_slices_and_tints_each_class(ct_run, tmp_path):
    run, _, data = ct_run
    slices = sorted((data / "images").glob("*.npy"))[:2]
    assert main(["predict", str(run), *map(str, slices), "--out", str(tmp_path / "p")]) == 0
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert {"pixels_ggo", "pixels_consolidation"} <= set(table.columns)
    mask = np.asarray(Image.open(next((tmp_path / "p").rglob(f"{slices[0].stem}_mask.png"))))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 1, 2}


def test_the_cli_writes_synthetic_ct_data(tmp_path, capsys):
    assert main(["data", "synthetic", "ct", "--out", str(tmp_path / "ct"), "--subjects", "3",
                 "--size", "32", "--hu"]) == 0
    table = pd.read_csv(tmp_path / "ct" / "manifest.csv")
    assert len(table) == 6 and table["subject"].nunique() == 3
    assert np.load(tmp_path / "ct" / table["image"][0]).shape == (32, 32)
    assert main(["data", "synthetic", "ct", "--out", str(tmp_path / "x"), "--size", "8"]) == 2
    assert "--size" in capsys.readouterr().err
