"""The stress network: spectrogram normalisation, 3-channel replication and a classifier
(SONIC or one logit-head backbone) in one module, so that predict and the ONNX export take
raw dB spectrograms and the normalisation statistics travel with the weights."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medlite.data.spectrogram import NORMALIZER_MODES, SpectrogramNormalizer
from medlite.errors import ConfigError
from medlite.models.registry import create_model
from medlite.models.sonic import LogitHeadBackbone, SonicFusion


class SpectrogramStandardize(nn.Module):
    """:class:`~medlite.data.spectrogram.SpectrogramNormalizer`'s transform as a module, so the
    statistics travel with the weights. ``(B, 1, H, W)`` -> same shape, float.

    Buffers ``mean`` and ``std`` are ``(1, 1, H, 1)`` (one value per frequency row; the
    global mode repeats its scalar); the window modes use no buffers."""

    def __init__(self, mode: str, height: int, eps: float = 1e-6):
        super().__init__()
        if mode not in NORMALIZER_MODES:
            raise ConfigError(f"spectrogram.normalization: one of {NORMALIZER_MODES}, not "
                              f"{mode!r}")
        self.mode = mode
        self.eps = eps
        self.register_buffer("mean", torch.zeros(1, 1, height, 1))
        self.register_buffer("std", torch.ones(1, 1, height, 1))

    def set_statistics(self, normalizer: SpectrogramNormalizer) -> None:
        """Copy a fitted normaliser's statistics (a scalar, or one per frequency row)."""
        if not normalizer.needs_fit:
            return
        for name in ("mean", "std"):
            values = torch.as_tensor(np.ravel(getattr(normalizer, name)), dtype=torch.float32)
            buffer = getattr(self, name)
            buffer.copy_(values.reshape(1, 1, -1, 1).expand_as(buffer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "window_zscore":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
            return (x - mean) / (std + self.eps)
        if self.mode == "window_minmax":
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            high = x.amax(dim=(1, 2, 3), keepdim=True)
            return (x - low) / torch.clamp(high - low, min=self.eps)
        return (x - self.mean) / (self.std + self.eps)


class StressNet(nn.Module):
    """Normalisation, 3-channel replication and the classifier in one module.

    ``forward(x (B, 1, H, W) float dB spectrograms) -> logits (B, C)``; with
    ``return_features=True`` also the penultimate features used for t-SNE: SONIC's fused
    12-unit layer, a ``logit_backbone``'s 128-unit layer, else the logits."""

    def __init__(self, network: nn.Module, normalize: SpectrogramStandardize, channels: int = 3):
        super().__init__()
        self.network = network
        self.normalize = normalize
        self.channels = channels

    def forward(self, x: torch.Tensor, return_features: bool = False):
        images = self.normalize(x).expand(-1, self.channels, -1, -1)
        if not return_features:
            return self.network(images)
        network = self.network
        if isinstance(network, SonicFusion):
            return network(images, return_features=True)
        if isinstance(network, LogitHeadBackbone):
            hidden = network.head[:-1](network.backbone(images))
            return network.head[-1](hidden), hidden
        logits = network(images)
        return logits, logits


def build_stress_net(name: str, num_classes: int, image_size: int, normalization: str, *,
                     kwargs: Mapping[str, Any] | None = None, pretrained: bool = False,
                     weights_path: Path | None = None, for_training: bool = True) -> StressNet:
    """A :class:`StressNet` around registry model ``name`` (``sonic``, ``logit_backbone`` or
    any classification model) for ``image_size`` square spectrograms. ``for_training``
    loads the initial weights (``pretrained``, ``weights_path``, SONIC's
    ``backbone_weights``); otherwise the trained weights are loaded afterwards."""
    kwargs = dict(kwargs or {})
    if name in ("sonic", "logit_backbone"):
        kwargs.setdefault("image_size", image_size)
    if not for_training:
        kwargs.pop("backbone_weights", None)  # the trained weights replace them
    network = create_model(name, task="classification", num_classes=num_classes,
                           in_channels=3, pretrained=pretrained and for_training,
                           weights_path=weights_path if for_training else None, **kwargs)
    return StressNet(network, SpectrogramStandardize(normalization, image_size))


def check_model_input(model: StressNet, image_size: int, name: str) -> None:
    """Fail before any fit when the network cannot take ``image_size`` spectrograms."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, 1, image_size, image_size))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"spectrogram.image_size: {name} cannot take {image_size}x"
                          f"{image_size} spectrograms ({first}); use larger images or other "
                          "backbones") from None


def scoring_device(accelerator: str) -> torch.device:
    """The GPU when training may use one (``trainer.accelerator`` auto/gpu/cuda) and one is
    present, else the CPU: scoring thousands of held-out 224 px windows on a CPU is slow."""
    wants_gpu = accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict_dataset(model: StressNet, dataset: Dataset, batch_size: int,
                    device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, C)`` float64 and penultimate features ``(N, F)`` float32 of
    a dataset of ``{"input": (1, H, W)}`` items; ``model`` is left on the CPU."""
    model.eval().to(device)
    probabilities, features = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size):
            logits, feats = model(batch["input"].to(device), return_features=True)
            probabilities.append(logits.softmax(dim=1).double().cpu())
            features.append(feats.float().cpu())
    finally:
        model.cpu()
    return torch.cat(probabilities).numpy(), torch.cat(features).numpy()
