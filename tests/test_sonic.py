"""SONIC: per-backbone logit heads and their fusion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medlite.errors import ConfigError
from medlite.models import create_model, list_models
from medlite.models.sonic import LogitHeadBackbone, SonicFusion

SMALL = ["resnet18", "mobilenet_v3_small"]


@pytest.fixture(scope="module")
def model() -> SonicFusion:
    torch.manual_seed(0)
    return SonicFusion(SMALL, num_classes=3)


def _images(batch: int = 2, side: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


def test_structure(model):
    assert len(model.branches) == 2
    for branch, features in zip(model.branches, (512, 1024), strict=True):
        layers = list(branch.head)
        assert [type(layer) for layer in layers] == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
        assert (layers[0].in_features, layers[0].out_features) == (features, 128)
        assert (layers[3].in_features, layers[3].out_features) == (128, 3)
        assert layers[2].p == 0.5
    assert (model.fusion[0].in_features, model.fusion[0].out_features) == (2 * 3, 12)
    assert (model.classifier.in_features, model.classifier.out_features) == (12, 3)


def test_forward_concatenates_branch_logits(model):
    model.eval()
    x = _images()
    with torch.no_grad():
        logits, fused = model(x, return_features=True)
        branch_logits = [branch(x) for branch in model.branches]
        # The fusion input is the branch logits side by side, branch 0 first.
        concatenated = torch.cat(branch_logits, dim=1)
        expected_fused = torch.relu(model.fusion[0](concatenated))
        expected_logits = model.classifier(expected_fused)
    assert logits.shape == (2, 3) and fused.shape == (2, 12)
    assert all(b.shape == (2, 3) for b in branch_logits)
    torch.testing.assert_close(model.branch_logits(x), concatenated)
    torch.testing.assert_close(fused, expected_fused)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(model(x), logits)


def test_every_backbone_receives_gradients(model):
    model.train()
    model.zero_grad()
    # Bias the fusion layer so its ReLU is active and gradients reach every branch.
    with torch.no_grad():
        model.fusion[0].bias.fill_(1.0)
    loss = nn.functional.cross_entropy(model(_images()), torch.tensor([0, 2]))
    loss.backward()
    for branch in model.branches:
        backbone_grads = [p.grad for p in branch.backbone.parameters() if p.requires_grad]
        assert all(g is not None for g in backbone_grads)
        assert sum(g.abs().sum().item() for g in backbone_grads) > 0
        assert branch.head[0].weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "features", "kwargs"),
    [("vgg19", 512, {}), ("resnet50", 2048, {}), ("efficientnet_b0", 1280, {}),
     ("vit_b_32", 768, {}), ("vit_b_32", 768, {"image_size": 64})],
)
def test_paper_backbones_build_as_logit_heads(name, features, kwargs):
    # On the meta device: shapes only, so the big models cost no memory or init time.
    side = kwargs.get("image_size", 224)
    with torch.device("meta"):
        branch = LogitHeadBackbone(name, num_classes=2, **kwargs)
        logits = branch(torch.zeros(2, 3, side, side))
        pooled = branch.features(torch.zeros(2, 3, side, side))
    assert branch.num_features == features
    assert branch.head[0].in_features == features
    assert tuple(logits.shape) == (2, 2) and tuple(pooled.shape) == (2, features)
    if name == "vgg19":
        # Global average pooling replaces VGG's 4096-unit dense layers.
        assert not any(isinstance(m, nn.Linear) for m in branch.backbone.modules())
        assert sum(p.numel() for p in branch.backbone.parameters()) < 21e6


def test_native_pooling_keeps_vgg_dense_layers():
    with torch.device("meta"):
        branch = LogitHeadBackbone("vgg11", num_classes=2, pooling="native")
    assert branch.num_features == 4096


def test_registry_builds_sonic_and_logit_backbone(tmp_path):
    assert {"sonic", "logit_backbone"} <= set(list_models(task="classification"))
    torch.manual_seed(0)
    sonic = create_model("sonic", backbones=["mobilenet_v3_small"] * 2, num_classes=2,
                         task="classification", in_channels=3, pretrained=False,
                         weights_path=None, fusion_hidden=5)
    assert isinstance(sonic, SonicFusion) and sonic.classifier.in_features == 5
    single = create_model("logit_backbone", backbone="mobilenet_v3_small", num_classes=4)
    assert isinstance(single, LogitHeadBackbone) and single(_images(2, 32)).shape == (2, 4)
    # weights_path restores a whole SonicFusion.
    path = tmp_path / "sonic.pt"
    torch.save(sonic.state_dict(), path)
    torch.manual_seed(1)
    restored = create_model("sonic", backbones=["mobilenet_v3_small"] * 2, num_classes=2,
                            fusion_hidden=5, weights_path=path)
    for (key, value), other in zip(sonic.state_dict().items(),
                                   restored.state_dict().values(), strict=True):
        assert torch.equal(value, other), key


def test_bad_configurations_are_config_errors():
    with pytest.raises(ConfigError, match="model.kwargs.backbones"):
        create_model("sonic", num_classes=2)
    with pytest.raises(ConfigError, match="did you mean resnet50"):
        create_model("sonic", backbones=["resnet5O"], num_classes=2)
    with pytest.raises(ConfigError, match="model.kwargs.backbone:"):
        create_model("logit_backbone", num_classes=2)
    with pytest.raises(ConfigError, match="backbone_weights: 1 entries for 2"):
        SonicFusion(SMALL, 2, backbone_weights=[None])
