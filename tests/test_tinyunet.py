"""TinyU-Net, its CMRF block and the U-Net baselines.

The strongest check here is against an independent re-implementation of the published
TinyU-Net code, written below in that code's own style (a ``Conv`` = conv, bn, act block,
list-juggling CMRF forward, ``F.interpolate`` in the decoder): our weights are copied into
it by order and shape, and both must agree in eval and train mode, BatchNorm running
statistics included.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medlite.errors import ConfigError, WeightsNotFoundError
from medlite.models import CMRF, TinyUNet, UNet, create_model, list_models
from medlite.models.layers import ConvBNAct

# --- independent reference, in the style of the authors' code --------------------------


class RefConv(nn.Module):
    default_act = nn.GELU()

    def __init__(self, c1, c2, k=1, s=1, g=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(c2, eps=0.001, momentum=0.03, affine=True,
                                 track_running_stats=True)
        self.act = self.default_act if act is True else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class RefDWConv(RefConv):
    def __init__(self, c1, c2, k=1, s=1, act=True):
        super().__init__(c1, c2, k, s, g=math.gcd(c1, c2), act=act)


class RefCMRF(nn.Module):
    def __init__(self, c1, c2, N=8, e=0.5):
        super().__init__()
        self.N = N
        self.c = int(c2 * e / N)
        self.add = c1 == c2
        self.pwconv1 = RefConv(c1, c2 // N, 1, 1)
        self.pwconv2 = RefConv(c2 // 2, c2, 1, 1)
        self.m = nn.ModuleList(RefDWConv(self.c, self.c, k=3, act=False) for _ in range(N - 1))

    def forward(self, x):
        shortcut = x
        x = self.pwconv1(x)
        x = [x[:, 0::2, :, :], x[:, 1::2, :, :]]
        # extend() consumes the generator lazily, so each block sees the previous output.
        x.extend(block(x[-1]) for block in self.m)
        x[0] = x[0] + x[1]
        x.pop(1)
        y = self.pwconv2(torch.cat(x, dim=1))
        return shortcut + y if self.add else y


class RefEncoder(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.cmrf = RefCMRF(c1, c2)
        self.downsample = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        x = self.cmrf(x)
        return self.downsample(x), x


class RefDecoder(nn.Module):
    def __init__(self, c1, c2):
        super().__init__()
        self.cmrf = RefCMRF(c1, c2)
        self.upsample = F.interpolate

    def forward(self, x, skip):
        x = self.upsample(x, scale_factor=2, mode="bicubic", align_corners=False)
        return self.cmrf(torch.cat([x, skip], dim=1))


class RefTinyUNet(nn.Module):
    def __init__(self, in_channels=3, num_classes=2):
        super().__init__()
        in_filters = [192, 384, 768, 1024]
        out_filters = [64, 128, 256, 512]
        self.encoder1 = RefEncoder(in_channels, 64)
        self.encoder2 = RefEncoder(64, 128)
        self.encoder3 = RefEncoder(128, 256)
        self.encoder4 = RefEncoder(256, 512)
        self.decoder4 = RefDecoder(in_filters[3], out_filters[3])
        self.decoder3 = RefDecoder(in_filters[2], out_filters[2])
        self.decoder2 = RefDecoder(in_filters[1], out_filters[1])
        self.decoder1 = RefDecoder(in_filters[0], out_filters[0])
        self.final_conv = nn.Conv2d(out_filters[0], num_classes, kernel_size=1)

    def forward(self, x):
        x, s1 = self.encoder1(x)
        x, s2 = self.encoder2(x)
        x, s3 = self.encoder3(x)
        x, s4 = self.encoder4(x)
        x = self.decoder4(x, s4)
        x = self.decoder3(x, s3)
        x = self.decoder2(x, s2)
        x = self.decoder1(x, s1)
        return self.final_conv(x)


# --- helpers ----------------------------------------------------------------------------


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm affine parameters and running statistics."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) - 0.5)
    return model


def copy_by_order_and_shape(source: nn.Module, target: nn.Module) -> None:
    """Load ``source``'s state_dict into ``target`` matching entries by position and shape
    only (names ignored)."""
    source_state, target_state = source.state_dict(), target.state_dict()
    assert len(source_state) == len(target_state)
    matched = {}
    for (target_key, target_value), source_value in zip(
        target_state.items(), source_state.values(), strict=True
    ):
        assert target_value.shape == source_value.shape, target_key
        matched[target_key] = source_value.clone()
    target.load_state_dict(matched)


# --- TinyU-Net --------------------------------------------------------------------------


def test_tinyunet_has_the_published_parameter_count():
    assert sum(p.numel() for p in TinyUNet(3, 2).parameters()) == 481_170
    assert sum(p.numel() for p in create_model("tinyunet").parameters()) == 481_170
    assert sum(p.numel() for p in RefTinyUNet(3, 2).parameters()) == 481_170


def test_cmrf_structure():
    block = CMRF(32, 64)
    assert isinstance(block.pwconv1, ConvBNAct) and isinstance(block.pwconv2, ConvBNAct)
    assert (block.pwconv1.conv.in_channels, block.pwconv1.conv.out_channels) == (32, 8)
    assert (block.pwconv2.conv.in_channels, block.pwconv2.conv.out_channels) == (32, 64)
    assert len(block.m) == 7
    for depthwise in block.m:
        conv = depthwise.conv
        assert (conv.in_channels, conv.out_channels, conv.groups) == (4, 4, 4)
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
        assert isinstance(depthwise.act, nn.Identity)
    for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
        assert conv.bias is None
    for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
        assert (bn.eps, bn.momentum) == (1e-3, 0.03)
    for act in (block.pwconv1.act, block.pwconv2.act):
        assert isinstance(act, nn.GELU) and act.approximate == "none"
    # Registration order is the reference's: pwconv1, pwconv2, then the cascade.
    assert [name for name, _ in block.named_children()] == ["pwconv1", "pwconv2", "m"]
    assert block(torch.randn(2, 32, 8, 8)).shape == (2, 64, 8, 8)


@pytest.mark.parametrize(("in_channels", "residual"), [(64, True), (32, False)])
def test_cmrf_adds_its_input_only_when_channels_match(in_channels, residual):
    block = CMRF(in_channels, 64).eval()
    # Zero the last BatchNorm so the block's own branch outputs GELU(0) = 0 everywhere.
    nn.init.zeros_(block.pwconv2.bn.weight)
    nn.init.zeros_(block.pwconv2.bn.bias)
    x = torch.randn(1, in_channels, 8, 8)
    with torch.no_grad():
        out = block(x)
    expected = x if residual else torch.zeros(1, 64, 8, 8)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_cmrf_rejects_widths_below_two_channels_per_piece():
    with pytest.raises(ValueError, match="at least 2 \\* n"):
        CMRF(8, 12)
    # widths 2n does not divide keep b = out // 2n channels per piece (the ablation's n = 6)
    block = CMRF(8, 24, n=5)
    assert block.pwconv1.conv.out_channels == 4 and block.pwconv2.conv.in_channels == 10
    assert block(torch.randn(1, 8, 8, 8)).shape == (1, 24, 8, 8)


def test_tinyunet_keys_order_and_shapes_match_the_reference():
    ours, reference = TinyUNet(3, 2), RefTinyUNet(3, 2)
    assert list(ours.state_dict()) == list(reference.state_dict())
    shapes = [v.shape for v in ours.state_dict().values()]
    assert shapes == [v.shape for v in reference.state_dict().values()]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_tinyunet_matches_the_reference_implementation(mode):
    torch.manual_seed(0)
    ours = randomise_batchnorm(TinyUNet(3, 2))
    reference = RefTinyUNet(3, 2)
    copy_by_order_and_shape(ours, reference)
    ours.train(mode == "train")
    reference.train(mode == "train")
    x = torch.randn(2, 3, 32, 32)
    mean_before = ours.encoder1.cmrf.pwconv1.bn.running_mean.clone()
    with torch.no_grad():
        out_ours, out_reference = ours(x), reference(x)
    assert out_ours.shape == (2, 2, 32, 32)
    # Not bit-identical: the decoders upsample after pwconv1's convolution (same function).
    torch.testing.assert_close(out_ours, out_reference, rtol=0, atol=1e-5)
    # A train-mode forward moves BatchNorm running statistics; they must move alike.
    for (key, ours_value), reference_value in zip(
        ours.state_dict().items(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(ours_value, reference_value, rtol=0, atol=1e-6, msg=key)
    moved = not torch.equal(mean_before, ours.encoder1.cmrf.pwconv1.bn.running_mean)
    assert moved == (mode == "train")


def test_tinyunet_trains_like_the_reference_implementation():
    """The decoders upsample after the first 1x1 convolution (faster): the gradients of a
    training step must still be the reference's."""
    torch.manual_seed(0)
    ours = randomise_batchnorm(TinyUNet(3, 2))
    reference = RefTinyUNet(3, 2)
    copy_by_order_and_shape(ours, reference)
    x, target = torch.randn(2, 3, 32, 48), torch.randint(0, 2, (2, 32, 48))
    for model in (ours, reference):
        F.cross_entropy(model.train()(x), target).backward()
    for (name, ours_param), reference_param in zip(
        ours.named_parameters(), reference.parameters(), strict=True
    ):
        torch.testing.assert_close(ours_param.grad, reference_param.grad, rtol=1e-4,
                                   atol=1e-6, msg=name)


def test_tinyunet_small_widths_and_input_checks():
    model = TinyUNet(in_channels=1, num_classes=3, widths=(16, 32, 48, 64))
    assert model(torch.randn(1, 1, 32, 48)).shape == (1, 3, 32, 48)
    with pytest.raises(ValueError, match="multiples of 16"):
        model(torch.randn(1, 1, 40, 32))


def test_tinyunet_registry_builder(tmp_path):
    assert {"tinyunet", "unet", "unet_cmrf"} <= set(list_models(task="segmentation"))
    model = create_model("tinyunet", num_classes=3, in_channels=1, task="segmentation",
                         widths=(16, 32, 48, 64))
    assert model.final_conv.out_channels == 3
    with pytest.raises(WeightsNotFoundError, match="model.pretrained"):
        create_model("tinyunet", pretrained=True)

    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = create_model("tinyunet", num_classes=3, in_channels=1, widths=(16, 32, 48, 64),
                          weights_path=path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    with pytest.raises(ConfigError, match="model.weights_path"):
        create_model("tinyunet", weights_path=path)  # 2 classes, 3 input channels: no fit
    with pytest.raises(WeightsNotFoundError):
        create_model("tinyunet", weights_path=tmp_path / "missing.pt")


# --- U-Net ------------------------------------------------------------------------------


def double_conv_params(c_in: int, c_out: int) -> int:
    # two bias-free 3x3 convolutions, each followed by a BatchNorm (weight + bias)
    return 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out


def test_unet_parameter_count_by_hand():
    widths = (8, 16, 32, 64, 128)
    expected = double_conv_params(3, 8)
    expected += sum(double_conv_params(widths[i], widths[i + 1]) for i in range(4))
    # transposed 2x2 convolution (with bias) halving the channels, then a double conv
    expected += sum(4 * widths[i + 1] * widths[i] + widths[i]
                    + double_conv_params(2 * widths[i], widths[i]) for i in range(4))
    expected += 8 * 2 + 2  # 1x1 head with bias
    model = create_model("unet", widths=widths)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2, 32, 32)


def test_unet_variants():
    bilinear = UNet(3, 4, widths=(8, 16, 32), upsample="bilinear")
    assert bilinear(torch.randn(1, 3, 16, 24)).shape == (1, 4, 16, 24)
    with pytest.raises(ValueError, match="multiples of 4"):
        bilinear(torch.randn(1, 3, 18, 24))

    cmrf = create_model("unet_cmrf", widths=(16, 32, 48, 64, 80))
    blocks = [m for m in cmrf.modules() if isinstance(m, CMRF)]
    assert len(blocks) == 1 + 4 + 4  # stem, every encoder and decoder stage
    assert not any(isinstance(m, nn.ReLU) for m in cmrf.modules())
    assert cmrf(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)

    with pytest.raises(ConfigError, match="model.kwargs"):
        create_model("unet_cmrf", widths=(8, 16, 32, 64, 128))
    with pytest.raises(WeightsNotFoundError):
        create_model("unet", pretrained=True)
