"""torchvision backbones in the registry: heads, input channels and offline weights."""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from medlite.errors import ConfigError, WeightsNotFoundError
from medlite.models import create_model, list_models
from medlite.models.registry import get_entry
from medlite.models.torchvision_backbones import feature_dim, find_head, replace_head
from medlite.models.weights import fix_legacy_keys, hub_checkpoint_path, load_state_dict_file

# The 29 ImageNet CNNs stacked by One-Step PASI, plus SONIC's efficientnet_b0 and vit_b_32.
PASI_BACKBONES = [
    "alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn",
    "vgg19_bn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d",
    "wide_resnet50_2", "wide_resnet101_2", "squeezenet1_0", "squeezenet1_1", "densenet121",
    "densenet169", "googlenet", "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "mobilenet_v2",
    "mobilenet_v3_large", "mobilenet_v3_small", "mnasnet0_5", "mnasnet1_0",
]  # fmt: skip
SONIC_BACKBONES = ["efficientnet_b0", "vit_b_32"]

# Pooled feature widths as published with each architecture (the input width of the
# original classifier's last Linear layer).
FEATURE_DIMS = {
    "alexnet": 4096, "vgg16": 4096, "resnet18": 512, "resnet50": 2048, "wide_resnet50_2": 2048,
    "squeezenet1_1": 512, "densenet121": 1024, "densenet169": 1664, "googlenet": 1024,
    "shufflenet_v2_x1_0": 1024, "mobilenet_v2": 1280, "mobilenet_v3_large": 1280,
    "mobilenet_v3_small": 1024, "mnasnet1_0": 1280, "efficientnet_b0": 1280, "vit_b_32": 768,
    "convnext_tiny": 768, "swin_t": 768, "regnet_x_400mf": 400, "inception_v3": 2048,
}  # fmt: skip

SHARED_MOBILENET_FEATURES = "weights/mobilenet_v2_imagenet_features.pth"
SHARED_MOBILENET_FULL = "weights/mobilenet_v2_imagenet_int8_dequantized.pth"


def images(channels: int = 3, side: int = 64, seed: int = 0) -> torch.Tensor:
    """A batch of 2 random images, (2, channels, side, side) float32."""
    return torch.randn(2, channels, side, side, generator=torch.Generator().manual_seed(seed))


def pooled_mobilenet_v2_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """torchvision MobileNetV2's own feature path: features -> global average pool, (B, 1280)."""
    return nn.functional.adaptive_avg_pool2d(model.features(x), 1).flatten(1)


def reference_model(name: str, state: dict, strict: bool = True) -> nn.Module:
    """torchvision's model loaded directly with ``state``, in eval mode."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(state, strict=strict)
    return model.eval()


def saved_resnet18(tmp_path: Path) -> tuple[Path, OrderedDict]:
    """A randomly initialised torchvision resnet18 state_dict saved to a file, and the dict."""
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    return path, state


# ---------------------------------------------------------------- registry and heads


def test_every_torchvision_classifier_is_registered_for_the_three_tasks():
    torchvision_names = set(torchvision.models.list_models(module=torchvision.models))
    registered = set(list_models(family="torchvision"))
    assert registered == torchvision_names
    assert set(PASI_BACKBONES + SONIC_BACKBONES) <= registered
    assert set(list_models(task="regression", family="torchvision")) == registered
    assert set(list_models(task="features", family="torchvision")) == registered
    assert list_models(task="segmentation", family="torchvision") == []
    assert get_entry("resnet18").tasks == ("classification", "regression", "features")
    with pytest.raises(ConfigError, match="supports tasks"):
        create_model("resnet18", task="segmentation")


# Other torchvision families, one member each, to exercise their head layouts.
OTHER_FAMILIES = ["convnext_tiny", "swin_t", "regnet_x_400mf"]


@pytest.mark.parametrize("name", PASI_BACKBONES + SONIC_BACKBONES + OTHER_FAMILIES)
def test_backbones_build_for_regression_classification_and_features(name):
    # vit_b_32 needs its input size at build time; 64 px = 2x2 patches of 32 px.
    extra = {"image_size": 64} if name.startswith("vit") else {}
    model = create_model(name, task="regression", **extra).eval()
    x = images()
    with torch.no_grad():
        scores = model(x)
    assert scores.shape == (2, 1)
    assert torch.isfinite(scores).all()
    assert model.num_outputs == 1
    regression_head = model.get_submodule(find_head(model)[0])
    assert isinstance(regression_head, nn.Linear) and regression_head.out_features == 1

    # The same network, re-headed in place: logits, then the bare feature vector.
    replace_head(model, name, task="classification", num_classes=7)
    with torch.no_grad():
        assert model(x).shape == (2, 7)
    replace_head(model, name, task="features")
    with torch.no_grad():
        features = model(x)
    assert features.shape == (2, FEATURE_DIMS.get(name, feature_dim(name)))
    assert model.num_features == model.num_outputs == features.shape[1]
    # The regression score is exactly the linear head applied to these features.
    expected = features @ regression_head.weight.T + regression_head.bias
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-5)

    if name == "googlenet":
        # Auxiliary heads are not built: training mode returns a plain tensor too.
        assert not any(key.startswith(("aux1.", "aux2.")) for key in model.state_dict())
        assert isinstance(model.train()(x), torch.Tensor)


@pytest.mark.parametrize("name", list(FEATURE_DIMS))
def test_feature_dim_matches_published_widths(name):
    assert feature_dim(name) == FEATURE_DIMS[name]


def test_fixed_size_and_auxiliary_architectures_on_the_meta_device():
    # Shapes only (no memory, no init cost): maxvit needs its input size, inception_v3 at
    # least 75 px, and with the auxiliary heads off a training-mode forward gives a tensor.
    with torch.device("meta"):
        maxvit = create_model("maxvit_t", task="classification", num_classes=4, image_size=224)
        inception = create_model("inception_v3", task="regression").train()
        assert maxvit.eval()(torch.empty(2, 3, 224, 224)).shape == (2, 4)
        out = inception(torch.empty(2, 3, 80, 80))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1)
    assert inception.AuxLogits is None


def test_hidden_head_with_dropout_has_the_sonic_layout():
    model = create_model("resnet18", task="classification", num_classes=3, head_hidden=128,
                         dropout=0.5)  # fmt: skip
    layers = list(model.fc)
    assert [type(layer) for layer in layers] == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout,
                                                  nn.Linear]  # fmt: skip
    assert layers[0].p == layers[3].p == 0.5
    assert (layers[1].in_features, layers[1].out_features) == (512, 128)
    assert (layers[4].in_features, layers[4].out_features) == (128, 3)
    assert model.eval()(images()).shape == (2, 3)


def test_squeezenet_regression_is_not_clamped_at_zero():
    # torchvision's SqueezeNet ends in ReLU -> pool; a regression head must reach negatives.
    model = create_model("squeezenet1_1", task="regression").eval()
    head = model.classifier[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-3.0)
        out = model(images())
    torch.testing.assert_close(out, torch.full((2, 1), -3.0))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"task": "classification"}, "num_classes"),
        ({"task": "regression", "num_outputs": 0}, "num_outputs"),
        ({"task": "regression", "dropout": 1.0}, "dropout"),
        ({"task": "features", "head_hidden": 128}, "head_hidden"),
        ({"task": "regression", "in_channels": 0}, "in_channels"),
    ],
)
def test_invalid_arguments_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        create_model("squeezenet1_1", **kwargs)


# ---------------------------------------------------------------- input channels


def test_one_channel_input_averages_the_loaded_rgb_kernel(tmp_path):
    path, state = saved_resnet18(tmp_path)
    model = create_model("resnet18", task="regression", in_channels=1, weights_path=path).eval()
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].mean(dim=1, keepdim=True))
    assert model(images(channels=1)).shape == (2, 1)


def test_more_channels_repeat_and_rescale_the_rgb_kernel(tmp_path):
    path, state = saved_resnet18(tmp_path)
    rgb = state["conv1.weight"]
    four = create_model("resnet18", task="features", in_channels=4, weights_path=path)
    torch.testing.assert_close(four.conv1.weight, torch.cat([rgb, rgb[:, :1]], dim=1) * 3 / 4)
    # With 6 channels a grey image repeated over all of them gives the RGB model's response.
    six = create_model("resnet18", task="features", in_channels=6, weights_path=path).eval()
    reference = reference_model("resnet18", state)
    reference.fc = nn.Identity()
    grey = images(channels=1)
    with torch.no_grad():
        torch.testing.assert_close(six(grey.repeat(1, 6, 1, 1)), reference(grey.repeat(1, 3, 1, 1)))


def test_random_init_with_two_channels_gives_each_channel_its_own_kernel():
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", task="regression", in_channels=2).eval()
    weight = model.features[0][0].weight
    assert weight.shape[1] == 2
    assert not torch.equal(weight[:, 0], weight[:, 1])
    assert model(images(channels=2)).shape == (2, 1)


def test_an_adapted_checkpoint_reloads_with_the_same_input_channels(tmp_path):
    torch.manual_seed(0)
    trained = create_model("resnet18", task="regression", in_channels=1)
    torch.save(trained.state_dict(), tmp_path / "finetuned.pth")
    reloaded = create_model(
        "resnet18", task="regression", in_channels=1, weights_path=tmp_path / "finetuned.pth"
    )
    torch.testing.assert_close(reloaded.conv1.weight, trained.conv1.weight)
    torch.testing.assert_close(reloaded.layer4[1].bn2.weight, trained.layer4[1].bn2.weight)


# ---------------------------------------------------------------- weights files


def test_weights_path_loads_a_wrapped_state_dict_and_replaces_only_the_head(tmp_path):
    _, state = saved_resnet18(tmp_path)
    wrapped = {"state_dict": {f"module.{key}": value for key, value in state.items()}}
    torch.save(wrapped, tmp_path / "wrapped.ckpt")
    model = create_model("resnet18", task="regression", weights_path=tmp_path / "wrapped.ckpt")
    loaded = model.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            continue
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)
    assert loaded["fc.weight"].shape == (1, 512)
    # The features are those of torchvision's model loaded directly.
    reference = reference_model("resnet18", state)
    reference.fc = nn.Identity()
    features = create_model("resnet18", task="features", weights_path=tmp_path / "wrapped.ckpt")
    with torch.no_grad():
        torch.testing.assert_close(features.eval()(images()), reference(images()))


def test_a_classifier_for_other_classes_starts_a_new_one_with_its_backbone(tmp_path):
    # A run trained on DermaMNIST's 7 classes starting PH2's 3-class task: the hidden head of
    # the first does not fit the second, so only its backbone is carried over.
    torch.manual_seed(0)
    seven = create_model("mobilenet_v2", task="classification", num_classes=7, head_hidden=16,
                         dropout=0.2)
    torch.save(seven.state_dict(), tmp_path / "dermamnist.pt")
    three = create_model("mobilenet_v2", task="classification", num_classes=3, head_hidden=16,
                         dropout=0.2, weights_path=tmp_path / "dermamnist.pt")
    source, loaded = seven.state_dict(), three.state_dict()
    backbone = [key for key in source if key.startswith("features.")]
    assert len(backbone) > 300
    for key in backbone:
        torch.testing.assert_close(loaded[key], source[key], rtol=0, atol=0, msg=key)
    assert three(images()).shape == (2, 3)
    assert not torch.equal(loaded["classifier.1.1.weight"], source["classifier.1.1.weight"])


def test_weights_file_for_another_architecture_lists_the_offending_keys(tmp_path):
    path, _ = saved_resnet18(tmp_path)
    with pytest.raises(ConfigError) as caught:
        create_model("resnet34", task="regression", weights_path=path)
    message = str(caught.value)
    assert message.startswith("model.weights_path: ") and str(path) in message
    assert "does not fit resnet34" in message
    assert "missing backbone keys" in message and "layer1.2.conv1.weight" in message
    assert "\n" not in message
    assert "missing backbone key layer3.5.bn2.running_var" in caught.value.problems


def test_weights_file_with_wrong_shapes_or_extra_keys_is_refused(tmp_path):
    _, state = saved_resnet18(tmp_path)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    state["projector.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"1 unexpected keys: projector.weight.*layer1.0.conv1"):
        create_model("resnet18", task="regression", weights_path=tmp_path / "bad.pth")


def test_missing_or_unreadable_weights_files(tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsNotFoundError, match=f"model.weights_path: .*{missing}"):
        create_model("resnet18", task="regression", weights_path=missing)
    (tmp_path / "pickle.pth").write_bytes(pickle.dumps({"a": object()}, protocol=2))
    with pytest.raises(ConfigError, match="weights_only"):
        create_model("resnet18", task="regression", weights_path=tmp_path / "pickle.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ConfigError, match="holds no state_dict"):
        load_state_dict_file(tmp_path / "list.pth")


def test_mnasnet_state_dict_without_version_metadata_loads(tmp_path):
    # MNASNet reads its format version from the state_dict's metadata; a plain dict has none.
    torch.manual_seed(0)
    state = dict(torchvision.models.mnasnet0_5(weights=None).state_dict())
    torch.save(state, tmp_path / "plain.pth")
    model = create_model("mnasnet0_5", task="features", weights_path=tmp_path / "plain.pth")
    torch.testing.assert_close(model.layers[0].weight, state["layers.0.weight"])


def test_legacy_densenet_keys_are_renamed():
    legacy = {
        "features.denseblock1.denselayer1.norm.1.weight": torch.ones(1),
        "features.denseblock1.denselayer12.conv.2.weight": torch.ones(1),
        "features.conv0.weight": torch.ones(1),
    }
    assert list(fix_legacy_keys("densenet121", legacy)) == [
        "features.denseblock1.denselayer1.norm1.weight",
        "features.denseblock1.denselayer12.conv2.weight",
        "features.conv0.weight",
    ]


def test_vit_checkpoint_for_another_image_size_is_interpolated(tmp_path):
    torch.manual_seed(0)
    small = create_model("vit_b_32", task="features", image_size=64)
    torch.save(small.state_dict(), tmp_path / "vit64.pth")
    large = create_model(
        "vit_b_32", task="features", image_size=96, weights_path=tmp_path / "vit64.pth"
    )
    position = large.encoder.pos_embedding
    assert position.shape == (1, 1 + 3 * 3, 768)
    # The class token's embedding is carried over; only the patch grid is resampled.
    torch.testing.assert_close(position[:, 0], small.encoder.pos_embedding[:, 0])
    assert large.eval()(images(side=96)).shape == (2, 768)


# ---------------------------------------------------------------- pretrained (torch hub cache)


def test_pretrained_weights_missing_from_the_cache_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert hub_checkpoint_path("resnet18") == expected
    with pytest.raises(WeightsNotFoundError) as caught:
        create_model("resnet18", task="regression", pretrained=True)
    message = str(caught.value)
    assert "\n" not in message
    assert "'resnet18'" in message and str(expected) in message
    assert "model.weights_path" in message
    assert not expected.parent.exists()  # nothing was downloaded


def test_pretrained_weights_are_read_from_the_local_cache(tmp_path, monkeypatch, shared_dir):
    source = shared_dir / SHARED_MOBILENET_FULL
    if not source.is_file():
        pytest.skip(f"{source} is absent")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = tmp_path / "torch_home" / "hub" / "checkpoints" / "mobilenet_v2-7ebf99e0.pth"
    cached.parent.mkdir(parents=True)
    cached.symlink_to(source)
    model = create_model("mobilenet_v2", task="classification", num_classes=3, pretrained=True)
    reference = reference_model("mobilenet_v2", torch.load(source, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(
            pooled_mobilenet_v2_features(model.eval(), images()),
            pooled_mobilenet_v2_features(reference, images()),
        )
        assert model(images()).shape == (2, 3)


@pytest.mark.parametrize("file_name", [SHARED_MOBILENET_FEATURES, SHARED_MOBILENET_FULL])
def test_shared_mobilenet_v2_weights_load_through_weights_path(file_name, shared_dir):
    path = shared_dir / file_name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    state = torch.load(path, weights_only=True)
    reference = torchvision.models.mobilenet_v2(weights=None)
    result = reference.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= {"classifier.1.weight", "classifier.1.bias"}
    reference.eval()
    model = create_model("mobilenet_v2", task="features", weights_path=path).eval()
    with torch.no_grad():
        features = model(images())
        torch.testing.assert_close(features, pooled_mobilenet_v2_features(reference, images()))
    assert features.shape == (2, 1280)
