"""Robustness to other clinics' dermoscopy: artefacts drawn in training, colour constancy."""

from __future__ import annotations

import numpy as np
import torch
from torchvision import tv_tensors

from medlite.data.segmentation import ScanReader, SegmentationDataset
from medlite.data.transforms import (
    AugmentConfig,
    DermoscopyArtefacts,
    RandomMirrorZoomOut,
    joint_augmentation,
    shades_of_gray,
)
from medlite.datasets.lesions import write_lesion_dataset


def skin(height=48, width=64) -> torch.Tensor:
    image = torch.empty(3, height, width, dtype=torch.uint8)
    image[0], image[1], image[2] = 210, 160, 140
    return image


def test_shades_of_gray_makes_the_illuminant_neutral():
    rng = np.random.default_rng(0)
    scene = rng.uniform(60, 200, size=(32, 32, 1)).repeat(3, axis=2)  # a grey scene
    cast = np.array([1.0, 0.8, 0.55])  # under a warm light
    image = np.clip(scene * cast, 0, 255).astype(np.uint8)
    corrected = shades_of_gray(image).astype(np.float64)
    p6 = np.power(np.mean(corrected ** 6, axis=(0, 1)), 1 / 6)
    assert np.ptp(p6) / p6.mean() < 0.01  # the 6-mean of every channel is the same
    # by hand: each channel divided by its 6-mean over the norm, times sqrt(3)
    values = image.astype(np.float64)
    e = np.power(np.mean(values ** 6, axis=(0, 1)), 1 / 6)
    expected = np.clip(np.round(values / (e / np.linalg.norm(e) * np.sqrt(3))), 0, 255)
    assert np.array_equal(corrected, expected)


def test_artefacts_change_the_image_not_the_mask_and_are_seeded():
    mask = tv_tensors.Mask(torch.zeros(48, 64, dtype=torch.int64))
    transform = DermoscopyArtefacts(hair=1.0, ink=1.0, vignette=1.0)
    torch.manual_seed(3)
    image, out_mask = transform(tv_tensors.Image(skin()), mask)
    torch.manual_seed(3)
    again, _ = transform(tv_tensors.Image(skin()), mask)
    assert torch.equal(image, again) and torch.equal(out_mask, mask)
    changed = (image.as_subclass(torch.Tensor) != skin()).any(dim=0)
    assert 0.05 < changed.float().mean() < 0.95
    assert image[:, 0, 0].float().mean() < 0.5 * skin()[:, 0, 0].float().mean()  # dark corner
    untouched, _ = DermoscopyArtefacts()(tv_tensors.Image(skin()), mask)
    assert torch.equal(untouched.as_subclass(torch.Tensor), skin())


def test_zoom_out_mirrors_image_and_mask_together_and_keeps_the_original_inside():
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8, generator=generator)
    mask = (image[0] > 128).long()  # a mask that is a function of the pixels
    shapes = set()
    for seed in range(20):
        torch.manual_seed(seed)
        out_image, out_mask = RandomMirrorZoomOut(p=1.0, max_ratio=2.0)(
            tv_tensors.Image(image), tv_tensors.Mask(mask))
        out_image, out_mask = (t.as_subclass(torch.Tensor) for t in (out_image, out_mask))
        height, width = out_image.shape[-2:]
        assert 30 <= height < 60 and 40 <= width < 80 and out_mask.shape == (height, width)
        assert torch.equal(out_mask, (out_image[0] > 128).long())  # one geometry for both
        windows = out_image.unfold(1, 30, 1).unfold(2, 40, 1)  # every 30x40 sub-block
        assert (windows == image[:, None, None]).flatten(3).all(-1).all(0).any()
        shapes.add((height, width))
    assert len(shapes) > 5  # the ratio and the position are drawn
    torch.manual_seed(0)
    unchanged, _ = RandomMirrorZoomOut(p=0.0)(tv_tensors.Image(image), tv_tensors.Mask(mask))
    assert torch.equal(unchanged.as_subclass(torch.Tensor), image)


def test_zoom_out_makes_lesions_smaller_in_the_training_crop():
    image = skin(64, 64)
    mask = torch.zeros(64, 64, dtype=torch.int64)
    mask[16:48, 16:48] = 1  # a lesion covering a quarter of the frame
    def mean_fraction(config):
        transform = joint_augmentation(config, (32, 32))
        fractions = []
        for seed in range(40):
            torch.manual_seed(seed)
            _, out = transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
            fractions.append(out.float().mean().item())
        return float(np.mean(fractions))
    plain = AugmentConfig(rotate_degrees=0, scale=(1.0, 1.0))
    zoomed = plain.model_copy(update={"zoom_out": 1.0})
    assert abs(mean_fraction(plain) - 0.25) < 0.01
    assert mean_fraction(zoomed) < 0.8 * mean_fraction(plain)


def test_hairs_are_dark_and_thin():
    torch.manual_seed(0)
    image, _ = DermoscopyArtefacts(hair=1.0)(tv_tensors.Image(skin(64, 64)),
                                           tv_tensors.Mask(torch.zeros(64, 64)))
    darker = (image.as_subclass(torch.Tensor).float().mean(0) < 0.7 * 170)
    assert 0 < darker.float().mean() < 0.3


def test_training_pairs_see_colour_constancy_and_artefacts(tmp_path):
    manifest = write_lesion_dataset(tmp_path / "data", n_subjects=2, images_per_subject=1,
                                    size=(48, 48), seed=1)
    import pandas as pd

    rows = pd.read_csv(manifest)
    images = [tmp_path / "data" / p for p in rows["image"]]
    masks = [tmp_path / "data" / p for p in rows["mask"]]
    plain = SegmentationDataset(images, masks, size=(48, 48))
    corrected = SegmentationDataset(images, masks, size=(48, 48),
                                    reader=ScanReader(color_constancy="shades_of_gray"))
    raw, _, _ = plain.load(0)
    balanced, mask, _ = corrected.load(0)
    expected = shades_of_gray(raw.permute(1, 2, 0).numpy())
    # the correction runs before resizing, so compare channel balance, not pixels
    assert abs(np.ptp(balanced.float().mean(dim=(1, 2)).numpy())) < \
        abs(np.ptp(raw.float().mean(dim=(1, 2)).numpy()))
    assert expected.shape == (48, 48, 3) and mask.shape == (48, 48)
    augment = AugmentConfig(hair=1.0, vignette=1.0, rotate_degrees=0, hflip=0, vflip=0,
                            scale=(1.0, 1.0), brightness=0, contrast=0, saturation=0, hue=0)
    drawn = SegmentationDataset(images, masks, size=(48, 48), augment=augment)
    torch.manual_seed(1)
    item = drawn[0]
    assert torch.equal(item["target"], plain[0]["target"])
    assert not torch.equal(item["input"], plain[0]["input"])
