"""torchvision classification architectures as medlite backbones.

Every name in ``torchvision.models.list_models(module=torchvision.models)`` (resnet18,
vgg16_bn, densenet121, mobilenet_v2, efficientnet_b0, vit_b_32, ...) is registered under
its torchvision name, family ``"torchvision"``, for the tasks ``classification`` (``num_classes``
logits), ``regression`` (``num_outputs`` linear outputs, default 1) and ``features`` (the pooled
feature vector the original classifier's last Linear layer saw, no head).

Inputs are float tensors ``(batch, in_channels, height, width)``, ImageNet-normalised when
pretrained weights are used; outputs are float32 ``(batch, outputs)``. ``model.num_features``
holds the feature width and ``model.num_outputs`` the output width.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import interpolate_embeddings

from medlite.errors import ConfigError
from medlite.models.registry import register_model
from medlite.models.weights import (
    default_weights,
    hub_checkpoint_path,
    load_backbone_weights,
    load_pretrained_state_dict,
    load_state_dict_file,
)

BACKBONE_TASKS = ("classification", "regression", "features")

# GoogLeNet/Inception-v3 auxiliary classifiers only help ImageNet training from scratch; they
# are never built, so their keys in a checkpoint are skipped.
_AUX_HEAD_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


def torchvision_architectures() -> list[str]:
    """Every torchvision classification architecture name, sorted."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


def build_torchvision_backbone(
    arch: str,
    *,
    task: str = "classification",
    num_classes: int | None = None,
    num_outputs: int | None = None,
    in_channels: int = 3,
    pretrained: bool = False,
    weights_path: Path | str | None = None,
    dropout: float | None = None,
    head_hidden: int | None = None,
    image_size: int | None = None,
) -> nn.Module:
    """Build torchvision ``arch`` with a new head for ``task``.

    Args:
        arch: a torchvision model name, e.g. ``"resnet18"``.
        task: ``"classification"`` (``num_classes`` logits), ``"regression"`` (``num_outputs``
            values, default 1) or ``"features"`` (the pooled feature vector, no head).
        in_channels: input channels; for values other than 3 the first convolution is adapted
            (see :func:`adapt_first_conv`).
        pretrained: start from torchvision's default ImageNet weights, read from the local torch
            hub cache only (see :func:`medlite.models.weights.hub_checkpoint_path`).
        weights_path: a local state_dict to start from instead; takes precedence over
            ``pretrained``. Its classifier and auxiliary-head keys are ignored; every other
            key must match the architecture.
        dropout: if set, dropout probability before the new head (and after its hidden layer).
        head_hidden: if set, a hidden ``Linear(num_features, head_hidden) + ReLU (+ Dropout)``
            before the output layer.
        image_size: input side in pixels for fixed-size architectures (``vit_*``, ``maxvit_t``;
            default 224, or the pretrained weights' size); ignored by the convolutional ones,
            which accept any size above their minimum (about 64 px for alexnet, 75 px for
            inception_v3). A ViT checkpoint for another size has its position embedding
            interpolated.

    GoogLeNet and Inception-v3 re-normalise their input (torchvision's ``transform_input``)
    whenever weights are loaded, from the cache or ``weights_path``, because torchvision's
    ImageNet checkpoints for them expect it.

    Raises:
        ConfigError: an invalid argument, or a weights file that does not fit ``arch``.
        WeightsNotFoundError: ``weights_path`` missing, or ``pretrained`` weights not cached.
    """
    _check_arguments(arch, task, num_classes, num_outputs, in_channels, dropout, head_hidden)
    use_pretrained = pretrained and weights_path is None
    # Read the weights before building, so a missing file fails fast.
    state = None
    if weights_path is not None:
        field, source = "model.weights_path", Path(weights_path)
        state = load_state_dict_file(source)
    elif use_pretrained:
        field, source = "model.pretrained", hub_checkpoint_path(arch)
        state = load_pretrained_state_dict(arch)
    loads_weights = state is not None
    model = torchvision.models.get_model(
        arch,
        weights=None,
        **_architecture_kwargs(arch, loads_weights, use_pretrained, in_channels, image_size),
    )

    first_conv_adapted = False
    if state is not None:
        state = _fit_position_embedding(model, state)
        conv_name, _ = first_conv(model)
        if in_channels != 3 and _file_in_channels(state, conv_name) == in_channels:
            # A checkpoint of a model already adapted to in_channels (e.g. a fine-tuned one).
            adapt_first_conv(model, in_channels, from_pretrained=False)
            first_conv_adapted = True
        head_name, _ = find_head(model)
        load_backbone_weights(
            model,
            state,
            ignore_prefixes=(f"{head_name}.", *_AUX_HEAD_PREFIXES),
            source=str(source),
            field=field,
            model_name=arch,
            task=task,
        )
    if in_channels != 3 and not first_conv_adapted:
        adapt_first_conv(model, in_channels, from_pretrained=loads_weights)
    return replace_head(
        model,
        arch,
        task=task,
        num_classes=num_classes,
        num_outputs=num_outputs,
        dropout=dropout,
        head_hidden=head_hidden,
    )


def find_head(model: nn.Module) -> tuple[str, int]:
    """Dotted name of the layer producing a torchvision model's class scores, and its input width.

    ``fc`` (ResNet, ResNeXt, Wide ResNet, GoogLeNet, Inception, ShuffleNet, RegNet), ``head``
    (Swin), ``heads.head`` (ViT), ``classifier`` (DenseNet), the last Linear of a
    ``classifier`` Sequential (VGG, AlexNet, MobileNet, EfficientNet, MNASNet, ConvNeXt, MaxViT),
    or the whole ``classifier`` for SqueezeNet, whose scores come from a 1x1 convolution.
    """
    fc = getattr(model, "fc", None)
    if isinstance(fc, nn.Linear):
        return "fc", fc.in_features
    heads = getattr(model, "heads", None)
    if isinstance(heads, nn.Sequential) and isinstance(heads[-1], nn.Linear):
        return f"heads.{list(heads._modules)[-1]}", heads[-1].in_features
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        return "head", head.in_features
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        return "classifier", classifier.in_features
    if isinstance(classifier, nn.Sequential):
        convs = [m for m in classifier if isinstance(m, nn.Conv2d)]
        if convs:
            return "classifier", convs[-1].in_channels
        if isinstance(classifier[-1], nn.Linear):
            return f"classifier.{list(classifier._modules)[-1]}", classifier[-1].in_features
    raise ConfigError(f"model.name: cannot find the classifier head of {type(model).__name__}")


def replace_head(
    model: nn.Module,
    arch: str,
    *,
    task: str = "classification",
    num_classes: int | None = None,
    num_outputs: int | None = None,
    dropout: float | None = None,
    head_hidden: int | None = None,
) -> nn.Module:
    """Replace the classifier of torchvision model ``model`` (architecture ``arch``) in place.

    The new head maps the ``num_features`` pooled features to ``num_classes`` logits
    (classification), ``num_outputs`` values (regression, default 1) or passes them through
    (features). Sets ``model.num_features`` and ``model.num_outputs``; returns ``model``.
    """
    _check_arguments(arch, task, num_classes, num_outputs, 3, dropout, head_hidden)
    head_name, num_features = find_head(model)
    outputs = {"classification": num_classes, "regression": num_outputs or 1}.get(task)
    head = build_head(num_features, outputs, dropout=dropout, hidden=head_hidden)
    head.train(model.training)
    if head_name == "classifier" and isinstance(model.classifier, nn.Sequential):
        # SqueezeNet: conv1x1 -> ReLU -> global average pool. Pooling first, then a Linear, gives
        # the same linear map without the ReLU, which would clamp regression outputs at zero.
        original_dropout = [m for m in model.classifier if isinstance(m, nn.Dropout)]
        model.classifier = nn.Sequential(
            *original_dropout, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), head
        )
    else:
        model.set_submodule(head_name, head)
    model.num_features = num_features
    model.num_outputs = num_features if outputs is None else outputs
    return model


def build_head(
    num_features: int,
    outputs: int | None,
    *,
    dropout: float | None = None,
    hidden: int | None = None,
) -> nn.Module:
    """``[Dropout] -> [Linear(num_features, hidden) -> ReLU -> [Dropout]] -> Linear(.., outputs)``.

    ``outputs=None`` gives ``nn.Identity`` (features). Without dropout and hidden layer the head
    is a bare ``nn.Linear``, so its state_dict keys keep torchvision's names.
    """
    if outputs is None:
        return nn.Identity()
    dropout_layer = [nn.Dropout(dropout)] if dropout else []
    if hidden is None:
        if not dropout_layer:
            return nn.Linear(num_features, outputs)
        return nn.Sequential(*dropout_layer, nn.Linear(num_features, outputs))
    return nn.Sequential(
        *dropout_layer,
        nn.Linear(num_features, hidden),
        nn.ReLU(inplace=True),
        *([nn.Dropout(dropout)] if dropout else []),
        nn.Linear(hidden, outputs),
    )


@functools.cache
def feature_dim(arch: str) -> int:
    """Width of the pooled feature vector of torchvision ``arch`` (e.g. 512 for resnet18)."""
    kwargs = _architecture_kwargs(arch, False, False, 3, None)
    try:
        # On the meta device: shapes only, no memory and no initialisation cost.
        with torch.device("meta"):
            model = torchvision.models.get_model(arch, weights=None, **kwargs)
    except NotImplementedError:
        # RegNet computes its widths with tensor arithmetic, which meta tensors cannot do.
        model = torchvision.models.get_model(arch, weights=None, **kwargs)
    return find_head(model)[1]


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The convolution that reads the input image: the first registered ``Conv2d``."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ConfigError(f"model.kwargs.in_channels: {type(model).__name__} has no Conv2d to adapt")


def adapt_first_conv(model: nn.Module, in_channels: int, *, from_pretrained: bool) -> None:
    """Make ``model``'s first convolution read ``in_channels`` channels instead of 3, in place.

    From pretrained RGB kernels ``w`` (out, 3, kh, kw): one channel gets ``w.mean(1)``; more
    channels get ``w`` repeated cyclically (R, G, B, R, ...) and scaled by ``3 / in_channels``,
    which keeps the kernel's total weight (for a multiple of 3 channels, an image replicated
    over all of them gives the pretrained response to it replicated over RGB). Without
    pretrained weights the kernel is drawn afresh with the std of the architecture's own
    initialisation, so no two input channels share a kernel.
    """
    name, conv = first_conv(model)
    if conv.groups != 1:
        raise ConfigError(f"model.kwargs.in_channels: cannot adapt grouped convolution {name}")
    weight = conv.weight.detach()
    with torch.no_grad():
        if not from_pretrained:
            shape = (weight.shape[0], in_channels, *weight.shape[2:])
            new_weight = torch.randn(shape, dtype=weight.dtype, device=weight.device) * weight.std()
        elif in_channels == 1:
            new_weight = weight.mean(dim=1, keepdim=True)
        else:
            channel_index = torch.arange(in_channels, device=weight.device) % weight.shape[1]
            new_weight = weight[:, channel_index] * (weight.shape[1] / in_channels)
    conv.weight = nn.Parameter(new_weight.contiguous())
    conv.in_channels = in_channels


def _architecture_kwargs(
    arch: str, loads_weights: bool, use_pretrained: bool, in_channels: int, image_size: int | None
) -> dict:
    kwargs: dict = {}
    if arch in ("googlenet", "inception_v3"):
        kwargs["aux_logits"] = False
        # Skip the slow truncated-normal init when weights overwrite it anyway.
        kwargs["init_weights"] = not loads_weights
        # torchvision's ImageNet checkpoints for these two expect inputs re-normalised from the
        # ImageNet statistics to [-1, 1]; torchvision sets this whenever it loads them.
        kwargs["transform_input"] = loads_weights and in_channels == 3
    if arch.startswith(("vit_", "maxvit_")):
        side = image_size
        if side is None and use_pretrained:
            # Some default weights (vit_h_14's SWAG) were trained at more than 224 px.
            side = default_weights(arch).meta["min_size"][0]
        if side is not None and arch.startswith("vit_"):
            kwargs["image_size"] = side
        elif side is not None:
            kwargs["input_size"] = (side, side)
    return kwargs


def _fit_position_embedding(model: nn.Module, state: dict) -> dict:
    # A ViT checkpoint for another image size: interpolate its position embedding the way
    # torchvision documents for fine-tuning at a new resolution.
    key = "encoder.pos_embedding"
    if not isinstance(model, torchvision.models.VisionTransformer) or key not in state:
        return state
    if state[key].shape == model.encoder.pos_embedding.shape:
        return state
    return interpolate_embeddings(model.image_size, model.patch_size, state)


def _file_in_channels(state: dict, conv_name: str) -> int | None:
    weight = state.get(f"{conv_name}.weight")
    return None if weight is None or weight.dim() != 4 else int(weight.shape[1])


def _check_arguments(
    arch: str,
    task: str,
    num_classes: int | None,
    num_outputs: int | None,
    in_channels: int,
    dropout: float | None,
    head_hidden: int | None,
) -> None:
    if task not in BACKBONE_TASKS:
        raise ConfigError(f"task: {arch!r} supports {list(BACKBONE_TASKS)}, not {task!r}")
    if task == "classification" and (num_classes is None or num_classes < 1):
        raise ConfigError(
            f"model.kwargs.num_classes: classification needs a number of classes >= 1 "
            f"(got {num_classes!r})"
        )
    if num_outputs is not None and num_outputs < 1:
        raise ConfigError(f"model.kwargs.num_outputs: must be >= 1 (got {num_outputs})")
    if in_channels < 1:
        raise ConfigError(f"model.kwargs.in_channels: must be >= 1 (got {in_channels})")
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.kwargs.dropout: must be in [0, 1) (got {dropout})")
    if head_hidden is not None and head_hidden < 1:
        raise ConfigError(f"model.kwargs.head_hidden: must be >= 1 (got {head_hidden})")
    if task == "features" and head_hidden is not None:
        raise ConfigError("model.kwargs.head_hidden: task 'features' has no head; drop head_hidden")


def _description(arch: str) -> str:
    meta = default_weights(arch).meta
    top1 = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    accuracy = f", ImageNet top-1 {top1:.1f}%" if top1 is not None else ""
    return f"torchvision {arch} ({meta['num_params'] / 1e6:.1f} M parameters{accuracy})"


def _register_all() -> None:
    for arch in torchvision_architectures():
        register_model(
            arch, family="torchvision", tasks=BACKBONE_TASKS, description=_description(arch)
        )(functools.partial(build_torchvision_backbone, arch))


_register_all()
