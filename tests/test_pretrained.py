"""The lesion segmenter shipped with medlite: it predicts with no training (and on real
dermoscopy from another clinic, segments the lesion), starts a fine-tune, and unknown names
are clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from medlite.cli import main
from medlite.data.io import read_mask
from medlite.errors import ConfigError
from medlite.pretrained import SHIPPED_MODELS, resolve_run, shipped_model_dir
from medlite.runs import load_state_dict
from medlite.tasks import load_run_config
from tests.conftest import random_rgb, save_image


def test_the_shipped_model_is_a_small_complete_run_with_a_model_card():
    folder = shipped_model_dir("dermoscopy-lesion")
    assert (folder / "model.pt").stat().st_size < 3_000_000
    card = (folder / "MODEL_CARD.md").read_text()
    assert "CC BY-NC 4.0" in card and "bench_isic2018_segmentation.py" in card
    config = load_run_config(folder)
    assert config.model.name == "tinyunet" and config.data.manifest is None
    assert resolve_run("dermoscopy-lesion") == folder
    with pytest.raises(ConfigError, match="not a model shipped with medlite"):
        shipped_model_dir("dermoscopy-lesions")
    assert list(SHIPPED_MODELS) == ["dermoscopy-lesion"]


def test_predict_with_the_shipped_model_needs_no_run(tmp_path):
    image = save_image(tmp_path / "photo.jpg", random_rgb(120, 160))
    assert main(["predict", "--model", "dermoscopy-lesion", str(image),
                 "--out", str(tmp_path / "out")]) == 0
    index = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert len(index) == 1
    mask = read_mask(tmp_path / "out" / "photo_mask.png", 2)
    assert mask.shape == (120, 160)


def test_the_shipped_model_finds_lesions_in_dermoscopy_it_never_saw(shared_dir, tmp_path):
    """PH2 (another clinic, another camera): a handful of images, lesion Dice well above
    chance."""
    from medlite.inference.predictor import load_run
    from medlite.inference.types import ImageInput

    ph2 = shared_dir / "data" / "ph2"
    if not ph2.is_dir():
        pytest.skip(f"{ph2} is absent (PH2 is in ../shared only)")
    predictor = load_run("dermoscopy-lesion")
    dice = []
    for name in ("IMD002", "IMD003", "IMD009", "IMD016"):
        output = predictor.predict_one(ImageInput(ph2 / "images" / f"{name}.jpg"))
        truth = read_mask(ph2 / "masks" / f"{name}_lesion.png", 2)
        predicted = output.mask == 1
        dice.append(2 * (predicted & (truth == 1)).sum()
                    / (predicted.sum() + (truth == 1).sum()))
    assert np.mean(dice) >= 0.8, dice


def test_a_fine_tune_starts_from_the_shipped_weights(tmp_path):
    from medlite.tasks import get_task
    from medlite.tasks.segmentation import SegmentationConfig, SegmentationDataConfig

    config = SegmentationConfig(data=SegmentationDataConfig(image_size=(32, 32)))
    config.model.weights = "dermoscopy-lesion"
    model = get_task("segmentation").build_model(config)
    shipped = load_state_dict(shipped_model_dir("dermoscopy-lesion") / "model.pt")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, shipped[key], msg=key)
    with pytest.raises(Exception, match="not both"):
        config.model.weights_path = tmp_path / "model.pt"
