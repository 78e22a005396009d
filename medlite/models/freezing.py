"""Freezing helpers for two-stage transfer learning (Akay et al. 2021, MobileNetV2).

Stage 1 trains the new classification head on a frozen ImageNet backbone
(:func:`freeze_backbone`); stage 2 keeps the first layers frozen and fine-tunes the rest
(:func:`freeze_first_layers` with ``n=10``). Freezing sets ``requires_grad=False``; build the
optimiser from the trainable parameters only (``[p for p in model.parameters() if
p.requires_grad]``) after each change.

What a "layer" is (:func:`freezable_layers`):

- Models with an ``nn.Sequential`` named ``features`` (torchvision MobileNetV2/V3,
  EfficientNet, VGG, AlexNet, DenseNet, ConvNeXt, SqueezeNet, Swin; medlite's ``plain_cnn``)
  or ``layers`` (MNASNet): the children of that container in order. MobileNetV2 has 19:
  ``features.0`` is the stem convolution, ``features.1``-``features.17`` the inverted-residual
  blocks and ``features.18`` the final 1x1 convolution. (Keras counts every convolution,
  BatchNorm and activation as a layer: its first 10 MobileNetV2 layers end inside
  ``features.2``. This module follows the block definition; pass another ``n`` for Keras'.)
- Any other model (ResNet, RegNet, GoogLeNet, ViT, medlite's ``tinyunet_classifier``, ...):
  the top-level children in registration order, leaving out the one holding the head, e.g.
  ResNet's ``conv1, bn1, relu, maxpool, layer1..layer4, avgpool``. Parameters registered on
  the model itself (ViT's ``class_token``) belong to no layer and stay trainable.

A frozen BatchNorm layer must also stop updating its running statistics, which
``requires_grad`` does not do: call :func:`set_frozen_batchnorm_eval` after every
``model.train()`` (at the start of each training epoch), as Keras does for layers with
``trainable=False``.
"""

from __future__ import annotations

from torch import nn

from medlite.errors import ConfigError
from medlite.models.torchvision_backbones import find_head

_HEAD_CONTAINERS = ("fc", "head", "heads", "classifier")
# Sequential containers whose children are the layers; MNASNet calls its ``layers``.
_LAYER_CONTAINERS = ("features", "layers")


def classification_head_name(model: nn.Module) -> str:
    """Dotted name of the module producing the class scores of ``model``.

    In order: the model's own ``head_name`` attribute (medlite's ``plain_cnn`` and
    ``tinyunet_classifier``), :func:`~medlite.models.torchvision_backbones.find_head` (an
    unmodified head or a bare ``nn.Linear`` one), then a head built by
    :func:`~medlite.models.torchvision_backbones.build_head` with ``dropout`` or
    ``head_hidden`` (an ``nn.Sequential`` ending in ``nn.Linear`` in place of the original
    Linear, e.g. ``fc`` for ResNet or ``classifier.1`` for MobileNetV2).

    Raises:
        ConfigError: no classification head found (e.g. a ``features`` model without a head).
    """
    declared = getattr(model, "head_name", None)
    if isinstance(declared, str):
        return declared
    try:
        return find_head(model)[0]
    except ConfigError:
        pass
    for container in _HEAD_CONTAINERS:
        module = getattr(model, container, None)
        if _ends_in_linear(module):
            return container
        if isinstance(module, nn.Sequential) and len(module) and _ends_in_linear(module[-1]):
            return f"{container}.{list(module._modules)[-1]}"
    raise ConfigError(f"model.name: cannot find the classification head of "
                      f"{type(model).__name__} to keep it trainable")


def _ends_in_linear(module: nn.Module | None) -> bool:
    return isinstance(module, nn.Sequential) and len(module) > 0 and isinstance(
        module[-1], nn.Linear)


def _head_or_none(model: nn.Module) -> str | None:
    try:
        return classification_head_name(model)
    except ConfigError:
        return None


def freezable_layers(model: nn.Module) -> list[str]:
    """Dotted names of ``model``'s layers in forward order (see the module docstring)."""
    container = _layer_container(model)
    if container is not None:
        return [f"{container}.{name}"
                for name, _ in model.get_submodule(container).named_children()]
    head = _head_or_none(model)
    return [name for name, _ in model.named_children()
            if head is None or (head != name and not head.startswith(f"{name}."))]


def _layer_container(model: nn.Module) -> str | None:
    for name in _LAYER_CONTAINERS:
        if isinstance(getattr(model, name, None), nn.Sequential):
            return name
    return None


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(trainable)


def unfreeze_all(model: nn.Module) -> None:
    """Make every parameter of ``model`` trainable (``requires_grad=True``), in place."""
    _set_trainable(model, True)


def freeze_backbone(model: nn.Module) -> None:
    """Freeze every parameter except those of the classification head, in place.

    The head is found by :func:`classification_head_name`. Stage 1 of two-stage transfer
    learning: only the new head learns, on the ImageNet features.
    """
    head = model.get_submodule(classification_head_name(model))
    _set_trainable(model, False)
    _set_trainable(head, True)


def freeze_first_layers(model: nn.Module, n: int) -> list[str]:
    """Freeze the first ``n`` layers of :func:`freezable_layers`; all else becomes trainable.

    Args:
        model: the network, changed in place.
        n: number of leading layers to freeze, ``0 <= n <= len(freezable_layers(model))``;
            ``n=10`` on MobileNetV2 freezes ``features.0``..``features.9`` and leaves
            ``features.10``..``features.18`` and the head trainable.

    Returns:
        Dotted names of the frozen layers, in order (for the run log).

    Raises:
        ValueError: ``n`` outside ``[0, number of layers]``.
    """
    layers = freezable_layers(model)
    if not 0 <= n <= len(layers):
        raise ValueError(f"cannot freeze the first {n} layers of {type(model).__name__}: it has "
                         f"{len(layers)} ({', '.join(layers[:3])}, ...)")
    unfreeze_all(model)
    for name in layers[:n]:
        _set_trainable(model.get_submodule(name), False)
    return layers[:n]


def trainable_summary(model: nn.Module) -> list[dict]:
    """Parameter counts per top-level module, the layer container (``features``) split up.

    Returns:
        One dict per module in registration order: ``name`` (dotted), ``parameters`` (int,
        all of them) and ``trainable`` (int, those with ``requires_grad``). Parameters set on
        the model itself get a row each under their own name. The ``parameters`` sum to the
        model's total.
    """
    container = _layer_container(model)
    modules: list[tuple[str, nn.Module | nn.Parameter]] = list(
        model.named_parameters(recurse=False))
    for name, child in model.named_children():
        if name == container:
            modules.extend((f"{name}.{i}", block) for i, block in child.named_children())
        else:
            modules.append((name, child))
    rows = []
    for name, item in modules:
        parameters = [item] if isinstance(item, nn.Parameter) else list(item.parameters())
        rows.append({
            "name": name,
            "parameters": sum(p.numel() for p in parameters),
            "trainable": sum(p.numel() for p in parameters if p.requires_grad),
        })
    return rows


def module_runs(rows: list[dict], trainable: bool) -> list[str]:
    """Runs of consecutive modules of :func:`trainable_summary` with (or without) trainable
    parameters, as ``first..last`` names; parameter-free modules (pooling) are skipped."""
    runs: list[str] = []
    current: list[str] = []

    def close() -> None:
        if current:
            runs.append(current[0] if len(current) == 1 else f"{current[0]}..{current[-1]}")
            current.clear()

    for row in rows:
        if not row["parameters"]:
            continue
        if (row["trainable"] > 0) == trainable:
            current.append(row["name"])
        else:
            close()
    close()
    return runs


def trainable_record(model: nn.Module) -> dict:
    """What trains in ``model``: counts, trainable and frozen module runs (for a run's log)."""
    rows = trainable_summary(model)
    return {"parameters": sum(r["parameters"] for r in rows),
            "trainable_parameters": sum(r["trainable"] for r in rows),
            "trainable_modules": module_runs(rows, True),
            "frozen_modules": module_runs(rows, False)}


def set_frozen_batchnorm_eval(model: nn.Module) -> list[str]:
    """Put every frozen BatchNorm layer in eval mode so its running statistics stay fixed.

    A BatchNorm layer is frozen when it has affine parameters and none of them requires a
    gradient (layers with ``affine=False`` are left alone). Call it after ``model.train()``,
    i.e. at the start of each training epoch; trainable BatchNorm layers keep training mode.

    Returns:
        Dotted names of the layers put in eval mode.
    """
    frozen = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            continue
        parameters = list(module.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            module.eval()
            frozen.append(name)
    return frozen


def apply_trainable(model: nn.Module, trainable: str, freeze_first_n_layers: int | None = None
                    ) -> list[str]:
    """Set which parameters of ``model`` learn, in place: ``all``, ``head`` (only the
    classification head, :func:`freeze_backbone`) or ``all_but_first_n`` (the first
    ``freeze_first_n_layers`` layers frozen, :func:`freeze_first_layers`).

    Returns:
        The BatchNorm layers that are now frozen (keep them in eval mode while training).

    Raises:
        ValueError: an unknown ``trainable`` or an ``n`` the model does not have.
    """
    if trainable == "all":
        unfreeze_all(model)
    elif trainable == "head":
        freeze_backbone(model)
    elif trainable == "all_but_first_n":
        if freeze_first_n_layers is None:
            raise ValueError("all_but_first_n needs freeze_first_n_layers")
        freeze_first_layers(model, freeze_first_n_layers)
    else:
        raise ValueError(f"trainable must be all, head or all_but_first_n, not {trainable!r}")
    frozen = set_frozen_batchnorm_eval(model)
    model.train()
    return frozen
