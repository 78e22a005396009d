"""SONIC: fusion of the logits of several ImageNet backbones (Phukan et al. 2024).

"SONIC: Synergizing VisiON Foundation Models for Stress RecogNItion from ECG Signals" classifies
spectrogram images of 5 s ECG windows. Each backbone (VGG19, ResNet50, EfficientNet-B0,
ViT-B/32 in the paper; any torchvision classification architecture here) is followed by global
average pooling and a two-layer head whose output is one logit per class
(:class:`LogitHeadBackbone`). SONIC concatenates the logits of two or more such branches and
passes them through a 12-unit dense layer and the classification layer
(:class:`SonicFusion`); the whole network is trained end to end (nothing frozen).

Pooling: torchvision's ResNet, EfficientNet and most CNNs already end in global average
pooling. VGG and AlexNet instead flatten a 7 x 7 map into two 4096-unit dense layers;
``pooling="gap"`` (the default) replaces those with global average pooling over the last
convolution (512 features for VGG19), as in the paper's Keras setup (``include_top=False`` plus
``GlobalAveragePooling2D``), which also drops about 120 M parameters. ViT has no spatial map:
its pooled representation is the class token, as torchvision computes it.

Inputs: float ``(B, 3, H, W)`` images (spectrograms replicated to 3 channels, normalised);
``image_size`` must match H = W for ViT (default 224).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

from medlite.errors import ConfigError
from medlite.models.registry import register_model
from medlite.models.tinyunet import load_local_weights
from medlite.models.torchvision_backbones import (
    build_torchvision_backbone,
    torchvision_architectures,
)

POOLINGS = ("gap", "native")


def _last_conv_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"model.kwargs.pooling: {type(module).__name__} has no convolution")
    return convs[-1].out_channels


def use_global_average_pooling(model: nn.Module) -> nn.Module:
    """Make a torchvision VGG / AlexNet (built with ``task="features"``) output the global
    average of its last convolutional map instead of its fully connected layers, in place.
    Other architectures already pool globally and are returned unchanged. Updates
    ``model.num_features``."""
    if isinstance(model, (torchvision.models.VGG, torchvision.models.AlexNet)):
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Identity()
        model.num_features = _last_conv_channels(model.features)
    return model


def _check_backbone_name(name: str, field: str) -> None:
    if name not in torchvision_architectures():
        import difflib

        close = difflib.get_close_matches(name, torchvision_architectures(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{field}: unknown torchvision backbone {name!r}{hint}")


class LogitHeadBackbone(nn.Module):
    """A pretrained-style backbone with SONIC's head: pooled features -> ``Linear(F, hidden)``
    -> ReLU -> Dropout -> ``Linear(hidden, num_classes)``, whose outputs are the logits.

    Args:
        backbone_name: a torchvision classification architecture, e.g. ``"resnet50"``.
        num_classes: logits per image.
        hidden: width of the head's hidden layer (128 in the paper).
        dropout: dropout probability between the two head layers.
        pretrained: start from torchvision's ImageNet weights (local torch hub cache only).
        weights_path: a local torchvision-format state_dict for the backbone (its classifier
            keys are ignored); takes precedence over ``pretrained``.
        image_size: input side in pixels for ViT / MaxViT (default 224); ignored by CNNs.
        in_channels: input channels (3 for replicated spectrograms).
        pooling: ``"gap"`` (global average pooling, see the module docstring) or ``"native"``
            (torchvision's own pooled features, e.g. VGG's 4096-unit dense layers).

    Attributes:
        backbone: the torchvision model returning ``(B, num_features)``.
        head: the two-layer head. ``num_features``, ``num_classes``: widths.
    """

    def __init__(self, backbone_name: str, num_classes: int, hidden: int = 128,
                 dropout: float = 0.5, pretrained: bool = False,
                 weights_path: str | Path | None = None, image_size: int | None = None,
                 in_channels: int = 3, pooling: str = "gap"):
        super().__init__()
        _check_backbone_name(backbone_name, "model.kwargs.backbone")
        if pooling not in POOLINGS:
            raise ConfigError(f"model.kwargs.pooling: must be one of {POOLINGS}, "
                              f"not {pooling!r}")
        if num_classes < 1 or hidden < 1:
            raise ConfigError(f"model.kwargs: num_classes ({num_classes}) and hidden "
                              f"({hidden}) must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"model.kwargs.dropout: must be in [0, 1) (got {dropout})")
        self.backbone_name = backbone_name
        self.backbone = build_torchvision_backbone(
            backbone_name, task="features", in_channels=in_channels, pretrained=pretrained,
            weights_path=weights_path, image_size=image_size)
        if pooling == "gap":
            use_global_average_pooling(self.backbone)
        self.num_features = int(self.backbone.num_features)
        self.num_classes = num_classes
        self.head = nn.Sequential(
            nn.Linear(self.num_features, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, num_features)``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, C, H, W)``."""
        return self.head(self.backbone(x))


class SonicFusion(nn.Module):
    """SONIC: concatenated logits of ``k`` :class:`LogitHeadBackbone` branches ``(B, k * C)``
    -> ``Linear(k * C, fusion_hidden)`` -> ReLU -> ``Linear(fusion_hidden, C)``.

    Every branch sees the same image; all parameters train together. The paper uses two or
    more backbones (one is accepted, as an ablation of the fusion layers).

    Args:
        backbones: torchvision architecture names, one branch each (repeats allowed).
        num_classes: ``C``, classes of the task (and logits per branch).
        fusion_hidden: units of the fusion layer (12 in the paper).
        hidden, dropout, pretrained, image_size, in_channels, pooling: passed to every branch.
        backbone_weights: optional local torchvision-format state_dict per branch (a sequence
            aligned with ``backbones``, None entries for none).
    """

    def __init__(self, backbones: Sequence[str], num_classes: int, fusion_hidden: int = 12,
                 hidden: int = 128, dropout: float = 0.5, pretrained: bool = False,
                 backbone_weights: Sequence[str | Path | None] | None = None,
                 image_size: int | None = None, in_channels: int = 3, pooling: str = "gap"):
        super().__init__()
        if isinstance(backbones, str) or len(backbones) < 1:
            raise ConfigError("model.kwargs.backbones: SONIC needs a list of torchvision "
                              "backbones, e.g. [vgg19, resnet50]")
        if fusion_hidden < 1:
            raise ConfigError(f"model.kwargs.fusion_hidden: must be >= 1 (got {fusion_hidden})")
        weights = [None] * len(backbones) if backbone_weights is None else list(backbone_weights)
        if len(weights) != len(backbones):
            raise ConfigError(f"model.kwargs.backbone_weights: {len(weights)} entries for "
                              f"{len(backbones)} backbones")
        self.backbone_names = list(backbones)
        self.num_classes = num_classes
        self.branches = nn.ModuleList(
            LogitHeadBackbone(name, num_classes, hidden=hidden, dropout=dropout,
                              pretrained=pretrained, weights_path=path, image_size=image_size,
                              in_channels=in_channels, pooling=pooling)
            for name, path in zip(backbones, weights, strict=True)
        )
        self.fusion = nn.Sequential(nn.Linear(len(backbones) * num_classes, fusion_hidden),
                                    nn.ReLU(inplace=True))
        self.classifier = nn.Linear(fusion_hidden, num_classes)

    def branch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated branch logits ``(B, k * num_classes)``, branch by branch."""
        return torch.cat([branch(x) for branch in self.branches], dim=1)

    def forward(self, x: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, num_classes)``; with ``return_features`` also the fused
        ``(B, fusion_hidden)`` activations (after ReLU), e.g. for a t-SNE plot."""
        fused = self.fusion(self.branch_logits(x))
        logits = self.classifier(fused)
        return (logits, fused) if return_features else logits


@register_model("sonic", family="sonic", tasks=("classification",),
                description="SONIC logit fusion of torchvision backbones (kwargs backbones=[...])")
def build_sonic(backbones: Sequence[str] | None = None, num_classes: int = 2, *,
                task: str | None = None, in_channels: int = 3, pretrained: bool = False,
                weights_path: str | Path | None = None,
                backbone_weights: Sequence[str | Path | None] | None = None,
                fusion_hidden: int = 12, hidden: int = 128, dropout: float = 0.5,
                image_size: int | None = None, pooling: str = "gap") -> SonicFusion:
    """Registry builder for :class:`SonicFusion` (``task`` is accepted and ignored).

    ``weights_path`` is a state_dict of a whole SonicFusion of the same configuration (loaded
    strictly, e.g. to continue from a trained model); per-backbone ImageNet-style files go in
    ``backbone_weights``.
    """
    if backbones is None:
        raise ConfigError("model.kwargs.backbones: SONIC needs a list of torchvision "
                          "backbones, e.g. [vgg19, resnet50]")
    model = SonicFusion(backbones, num_classes, fusion_hidden=fusion_hidden, hidden=hidden,
                        dropout=dropout, pretrained=pretrained and weights_path is None,
                        backbone_weights=backbone_weights, image_size=image_size,
                        in_channels=in_channels, pooling=pooling)
    if weights_path is not None:
        load_local_weights(model, weights_path, model_name="sonic", task=task)
    return model


@register_model("logit_backbone", family="sonic", tasks=("classification",),
                description="one torchvision backbone with SONIC's 128-unit logit head "
                            "(kwargs backbone=...)")
def build_logit_backbone(backbone: str | None = None, num_classes: int = 2, *,
                         task: str | None = None, in_channels: int = 3,
                         pretrained: bool = False, weights_path: str | Path | None = None,
                         hidden: int = 128, dropout: float = 0.5, image_size: int | None = None,
                         pooling: str = "gap") -> LogitHeadBackbone:
    """Registry builder for :class:`LogitHeadBackbone`, the paper's single-backbone baselines
    (``task`` is accepted and ignored; ``weights_path`` is a torchvision-format backbone file)."""
    if backbone is None:
        raise ConfigError("model.kwargs.backbone: logit_backbone needs a torchvision backbone "
                          "name, e.g. resnet50")
    return LogitHeadBackbone(backbone, num_classes, hidden=hidden, dropout=dropout,
                             pretrained=pretrained, weights_path=weights_path,
                             image_size=image_size, in_channels=in_channels, pooling=pooling)
