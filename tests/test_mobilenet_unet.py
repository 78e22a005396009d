"""mobilenet_v2_unet: shapes, ImageNet encoder weights loaded unchanged, its own checkpoints
strictly, misfits named, and a model that learns."""

from __future__ import annotations

import pytest
import torch
import torchvision

from medlite.errors import ConfigError, WeightsNotFoundError
from medlite.models import create_model
from medlite.models.mobilenet_unet import MobileNetV2UNet


def build(**kwargs):
    return create_model("mobilenet_v2_unet", task="segmentation", **kwargs)


@pytest.mark.parametrize("size", [(64, 64), (50, 70), (33, 97)])
def test_logits_have_the_input_size(size):
    model = build(num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, *size)).shape == (2, 3, *size)
        grey = MobileNetV2UNet(num_classes=2, in_channels=1).eval()
        assert grey(torch.rand(1, 1, *size)).shape == (1, 2, *size)


def test_imagenet_weights_fill_the_encoder_and_nothing_else(tmp_path):
    torch.manual_seed(0)
    imagenet = torchvision.models.mobilenet_v2()  # stands in for the ImageNet file
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(imagenet.state_dict(), path)  # with features.18 and the classifier
    model = build(num_classes=2, pretrained=True, weights_path=path).eval()
    for key, value in model.state_dict().items():
        if key.startswith("features."):
            assert torch.equal(value, imagenet.state_dict()[key]), key
    assert not any(key.startswith("features.18.") for key in model.state_dict())
    # The deepest encoder tap is torchvision's block 17 output.
    x = torch.rand(1, 3, 64, 64)
    imagenet.eval()
    with torch.no_grad():
        assert torch.allclose(model.features(x), imagenet.features[:18](x))


def test_own_checkpoint_loads_strictly_and_misfits_are_named(tmp_path):
    torch.manual_seed(1)
    trained = build(num_classes=2, in_channels=1).eval()
    path = tmp_path / "model.pt"
    torch.save(trained.state_dict(), path)
    again = build(num_classes=2, in_channels=1, weights_path=path).eval()
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(trained(x), again(x))
    with pytest.raises(ConfigError, match=r"model.weights_path: .*model.pt does not fit "
                                          r"mobilenet_v2_unet.*head.weight"):
        build(num_classes=3, in_channels=1, weights_path=path)
    tinyunet = tmp_path / "tinyunet.pt"
    torch.save(create_model("tinyunet", num_classes=2).state_dict(), tinyunet)
    with pytest.raises(ConfigError, match="tinyunet.pt does not fit mobilenet_v2_unet"):
        build(num_classes=2, weights_path=tinyunet)
    with pytest.raises(WeightsNotFoundError, match="missing.pt"):
        build(num_classes=2, weights_path=tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="decoder_channels must have 5 entries"):
        build(decoder_channels=[8, 8])


def test_one_input_channel_averages_the_pretrained_rgb_filters(tmp_path):
    imagenet = torchvision.models.mobilenet_v2()
    path = tmp_path / "features.pth"
    features = {k: v for k, v in imagenet.state_dict().items() if k.startswith("features.")}
    torch.save(features, path)
    model = build(num_classes=2, in_channels=1, pretrained=True, weights_path=path)
    rgb = features["features.0.0.weight"]
    assert torch.allclose(model.features[0][0].weight, rgb.mean(dim=1, keepdim=True))


def test_it_learns_to_segment_bright_squares():
    torch.manual_seed(0)
    torch.set_num_threads(2)
    images = torch.rand(16, 3, 32, 32) * 0.3
    masks = torch.zeros(16, 32, 32, dtype=torch.long)
    for i in range(16):
        top, left = torch.randint(0, 16, (2,)).tolist()
        images[i, :, top:top + 12, left:left + 12] += 0.7
        masks[i, top:top + 12, left:left + 12] = 1
    model = MobileNetV2UNet(num_classes=2, decoder_channels=(16, 16, 8, 8, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), masks).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(images).argmax(1)
    dice = 2 * ((predicted == 1) & (masks == 1)).sum() / ((predicted == 1).sum() + masks.sum())
    assert dice > 0.8
