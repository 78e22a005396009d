"""Plain CNN baseline, TinyU-Net classifier and the two-stage transfer-learning freezing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medlite.errors import ConfigError, WeightsNotFoundError
from medlite.models import TinyUNet, create_model, list_models
from medlite.models.freezing import (
    classification_head_name,
    freezable_layers,
    freeze_backbone,
    freeze_first_layers,
    set_frozen_batchnorm_eval,
    trainable_summary,
    unfreeze_all,
)
from medlite.models.plain_cnn import PlainCNN, TinyUNetClassifier


def count(parameters) -> int:
    return sum(p.numel() for p in parameters)


def trainable(model: nn.Module) -> int:
    return count(p for p in model.parameters() if p.requires_grad)


@pytest.fixture
def mobilenet() -> nn.Module:
    torch.manual_seed(0)
    return create_model("mobilenet_v2", task="classification", num_classes=2)


# --------------------------------------------------------------------------- plain CNN


def test_plain_cnn_structure_is_conv_relu_pool_with_doubling_channels():
    model = PlainCNN(num_classes=3)
    assert len(model.features) == 4
    in_channels = 3
    for block, width in zip(model.features, (32, 64, 128, 256), strict=True):
        conv, relu, pool = block
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)
        assert (conv.in_channels, conv.out_channels) == (in_channels, width)
        assert isinstance(relu, nn.ReLU)
        assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 2 and pool.stride == 2
        in_channels = width
    widths = [block[0].out_channels for block in model.features]
    assert all(b == 2 * a for a, b in zip(widths, widths[1:], strict=False))
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(256, 128), (128, 3)]
    assert [m.p for m in model.classifier if isinstance(m, nn.Dropout)] == [0.5]
    # 3x3 conv weights + biases per block, then the two fully connected layers.
    convs = sum(9 * a * b + b for a, b in zip((3, 32, 64, 128), (32, 64, 128, 256), strict=True))
    assert count(model.parameters()) == convs + (256 * 128 + 128) + (128 * 3 + 3) == 421_699


@pytest.mark.parametrize("size", [(32, 32), (16, 16), (40, 24)])
def test_plain_cnn_accepts_any_size_above_sixteen(size):
    model = create_model("plain_cnn", task="classification", num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 3) and out.dtype == torch.float32


def test_plain_cnn_registry_contract(tmp_path):
    assert "plain_cnn" in list_models(task="classification")
    assert "plain_cnn" not in list_models(task="segmentation")
    model = create_model("plain_cnn", task="classification", num_classes=4, in_channels=1,
                         widths=(8, 16), hidden=12, dropout=0.1)
    assert model.features[0][0].in_channels == 1 and model.classifier[-1].out_features == 4
    assert model(torch.rand(1, 1, 32, 32)).shape == (1, 4)
    with pytest.raises(WeightsNotFoundError, match="no pretrained weights"):
        create_model("plain_cnn", task="classification", num_classes=3, pretrained=True)
    with pytest.raises(ConfigError, match="supports tasks"):
        create_model("plain_cnn", task="segmentation", num_classes=3)
    with pytest.raises(ConfigError, match="num_classes"):
        create_model("plain_cnn", task="classification", num_classes=0)
    # A state_dict written from one model loads into a fresh one.
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    again = create_model("plain_cnn", num_classes=4, in_channels=1, widths=(8, 16), hidden=12,
                         weights_path=path).eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(again(x), model.eval()(x))


# --------------------------------------------------------------------------- TinyU-Net classifier


def test_tinyunet_classifier_reuses_the_tinyunet_encoder():
    torch.manual_seed(0)
    model = create_model("tinyunet_classifier", task="classification", num_classes=3)
    segmenter = TinyUNet(in_channels=3, num_classes=2)
    encoder = {k: v for k, v in segmenter.state_dict().items() if k.startswith("encoder")}
    encoder_parameters = count(p for n, p in segmenter.named_parameters()
                               if n.startswith("encoder"))
    assert count(model.parameters()) == encoder_parameters + 512 * 3 + 3 == 203_927
    # A segmentation checkpoint's encoder loads by name; only the head is left.
    result = model.load_state_dict(encoder, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ["classifier.2.bias", "classifier.2.weight"]
    model.eval()
    segmenter.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        pooled = x
        for stage in (segmenter.encoder1, segmenter.encoder2, segmenter.encoder3,
                      segmenter.encoder4):
            pooled, _ = stage(pooled)
        expected = model.classifier[-1](pooled.mean(dim=(2, 3)))
        torch.testing.assert_close(model(x), expected)
    assert model(torch.rand(1, 3, 48, 16)).shape == (1, 3)
    with pytest.raises(WeightsNotFoundError):
        create_model("tinyunet_classifier", num_classes=2, pretrained=True)
    with pytest.raises(ConfigError, match="multiple of 16"):
        TinyUNetClassifier(num_classes=2, widths=(16, 32, 40, 64))


# --------------------------------------------------------------------------- freezing


def test_first_ten_layers_rule_on_mobilenet_v2(mobilenet):
    assert len(mobilenet.features) == 19
    frozen = freeze_first_layers(mobilenet, 10)
    assert frozen == [f"features.{i}" for i in range(10)]
    for i, block in enumerate(mobilenet.features):
        assert all(p.requires_grad is (i >= 10) for p in block.parameters()), i
    assert all(p.requires_grad for p in mobilenet.classifier.parameters())
    expected = count(mobilenet.parameters()) - count(mobilenet.features[:10].parameters())
    assert trainable(mobilenet) == expected
    # Frozen parameters get no gradient; the trainable ones do.
    mobilenet(torch.rand(2, 3, 32, 32)).sum().backward()
    for name, parameter in mobilenet.named_parameters():
        assert (parameter.grad is None) is (not parameter.requires_grad), name
    assert freeze_first_layers(mobilenet, 0) == [] and trainable(mobilenet) == count(
        mobilenet.parameters())
    assert len(freeze_first_layers(mobilenet, 19)) == 19
    with pytest.raises(ValueError, match="has 19"):
        freeze_first_layers(mobilenet, 20)


def test_freeze_backbone_keeps_only_the_head_trainable(mobilenet):
    assert classification_head_name(mobilenet) == "classifier.1"
    freeze_backbone(mobilenet)
    assert trainable(mobilenet) == 1280 * 2 + 2
    mobilenet(torch.rand(2, 3, 32, 32)).sum().backward()
    assert mobilenet.features[0][0].weight.grad is None
    assert mobilenet.classifier[1].weight.grad is not None
    unfreeze_all(mobilenet)
    assert trainable(mobilenet) == count(mobilenet.parameters())


def test_head_found_when_replaced_by_a_hidden_layer_head():
    resnet = create_model("resnet18", task="classification", num_classes=2, head_hidden=8,
                          dropout=0.1)
    assert classification_head_name(resnet) == "fc"
    freeze_backbone(resnet)
    assert trainable(resnet) == (512 * 8 + 8) + (8 * 2 + 2)
    assert freezable_layers(resnet) == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                        "layer3", "layer4", "avgpool"]
    assert freeze_first_layers(resnet, 5)[-1] == "layer1"
    assert trainable(resnet) == count(resnet.parameters()) - count(
        p for n, p in resnet.named_parameters() if n.startswith(("conv1", "bn1", "layer1")))
    mobilenet = create_model("mobilenet_v2", task="classification", num_classes=3,
                             head_hidden=4)
    assert classification_head_name(mobilenet) == "classifier.1"
    freeze_backbone(mobilenet)
    assert trainable(mobilenet) == (1280 * 4 + 4) + (4 * 3 + 3)
    plain = PlainCNN(num_classes=3)
    freeze_backbone(plain)
    assert trainable(plain) == (256 * 128 + 128) + (128 * 3 + 3)
    assert freezable_layers(TinyUNetClassifier(2, widths=(16, 32, 48, 64))) == [
        "encoder1", "encoder2", "encoder3", "encoder4", "pool"]
    with pytest.raises(ConfigError, match="classification head"):
        freeze_backbone(create_model("resnet18", task="features"))


def test_trainable_summary_rows(mobilenet):
    freeze_first_layers(mobilenet, 10)
    rows = trainable_summary(mobilenet)
    assert [r["name"] for r in rows] == [f"features.{i}" for i in range(19)] + ["classifier"]
    assert sum(r["parameters"] for r in rows) == count(mobilenet.parameters())
    assert sum(r["trainable"] for r in rows) == trainable(mobilenet)
    for row in rows[:10]:
        assert row["trainable"] == 0 and row["parameters"] > 0
    for row in rows[10:]:
        assert row["trainable"] == row["parameters"]
    assert rows[0]["parameters"] == count(mobilenet.features[0].parameters())


def test_frozen_batchnorm_statistics_stay_fixed_in_training(mobilenet):
    freeze_first_layers(mobilenet, 10)
    frozen_bn = mobilenet.features[0][1]
    trained_bn = mobilenet.features[18][1]
    x = torch.rand(4, 3, 32, 32) * 3 + 1  # far from the initial statistics (mean 0, var 1)

    # Without the call, train() lets the frozen layer's statistics drift.
    mobilenet.train()
    before = frozen_bn.running_mean.clone()
    mobilenet(x)
    assert not torch.equal(frozen_bn.running_mean, before)

    mobilenet.train()
    names = set_frozen_batchnorm_eval(mobilenet)
    assert "features.0.1" in names and "features.18.1" not in names
    assert len(names) == sum(isinstance(m, nn.BatchNorm2d) for m in mobilenet.features[:10]
                             .modules())
    frozen_mean, frozen_var = frozen_bn.running_mean.clone(), frozen_bn.running_var.clone()
    trained_mean = trained_bn.running_mean.clone()
    mobilenet(x).sum().backward()
    assert not frozen_bn.training and trained_bn.training
    assert torch.equal(frozen_bn.running_mean, frozen_mean)
    assert torch.equal(frozen_bn.running_var, frozen_var)
    assert not torch.equal(trained_bn.running_mean, trained_mean)
