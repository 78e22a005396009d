"""Small image classifiers trained from scratch: a plain CNN baseline and a TinyU-Net encoder.

- :class:`PlainCNN` (registered as ``plain_cnn``): the baseline of Akay et al. 2021 ("Deep
  Learning Classification of Systemic Sclerosis Skin Using the MobileNetV2 Model"), repeated
  3x3 convolution, ReLU and 2x2 max-pooling blocks with channels doubling at each block, then
  fully connected layers. A global average pool before the fully connected layers makes it
  accept any input size.
- :class:`TinyUNetClassifier` (registered as ``tinyunet_classifier``): the four CMRF encoder
  stages of :class:`~medlite.models.tinyunet.TinyUNet` (the same modules, under the same
  names ``encoder1``..``encoder4``), global average pooling, dropout and a linear layer.

Both take float images ``(batch, in_channels, H, W)`` with H, W >= 16 and return logits
``(batch, num_classes)``. Like the torchvision backbones they expose ``num_features`` (width
of the pooled feature vector), ``num_outputs`` and ``head_name`` (dotted name of the
classification head, read by :mod:`medlite.models.freezing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import Tensor, nn

from medlite.errors import ConfigError
from medlite.models.registry import register_model
from medlite.models.tinyunet import (
    TINYUNET_WIDTHS,
    EncoderStage,
    load_local_weights,
    refuse_pretrained,
)

PLAIN_CNN_WIDTHS = (32, 64, 128, 256)


def _check_classifier_arguments(name: str, num_classes: int, in_channels: int,
                                widths: Sequence[int], dropout: float) -> tuple[int, ...]:
    if num_classes < 1:
        raise ConfigError(f"model.kwargs.num_classes: {name} needs >= 1 classes "
                          f"(got {num_classes})")
    if in_channels < 1:
        raise ConfigError(f"model.kwargs.in_channels: must be >= 1 (got {in_channels})")
    widths = tuple(int(w) for w in widths)
    if not widths or min(widths) < 1:
        raise ConfigError(f"model.kwargs.widths: {name} needs positive widths (got {widths})")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"model.kwargs.dropout: must be in [0, 1) (got {dropout})")
    return widths


class PlainCNN(nn.Module):
    """Baseline CNN: ``[Conv3x3 -> ReLU -> MaxPool2x2]`` per width, GAP, ``Linear -> ReLU ->
    Dropout -> Linear``.

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        widths: output channels of the convolution blocks, in order; the default doubles at
            each block (32, 64, 128, 256).
        hidden: width of the hidden fully connected layer.
        dropout: dropout probability after the hidden layer.

    Submodules: ``features`` (one ``nn.Sequential(conv, relu, pool)`` per width), ``pool``
    (global average pool) and ``classifier`` (the fully connected head, ``head_name``).

    Shapes: (N, in_channels, H, W) float, H and W >= ``2 ** len(widths)`` ->
    (N, num_classes) float logits. Parameters for the defaults and 3 classes: 421,699.
    """

    head_name = "classifier"

    def __init__(self, num_classes: int, in_channels: int = 3,
                 widths: Sequence[int] = PLAIN_CNN_WIDTHS, hidden: int = 128,
                 dropout: float = 0.5):
        super().__init__()
        widths = _check_classifier_arguments("plain_cnn", num_classes, in_channels, widths,
                                             dropout)
        if hidden < 1:
            raise ConfigError(f"model.kwargs.hidden: must be >= 1 (got {hidden})")
        blocks = []
        for block_in, block_out in zip((in_channels, *widths[:-1]), widths, strict=True):
            blocks.append(nn.Sequential(
                nn.Conv2d(block_in, block_out, kernel_size=3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(kernel_size=2, stride=2),
            ))
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Linear(widths[-1], hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        self.num_features = widths[-1]
        self.num_outputs = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))


class TinyUNetClassifier(nn.Module):
    """TinyU-Net's CMRF encoder, global average pooling, dropout and a linear layer.

    The encoder stages are :class:`~medlite.models.tinyunet.EncoderStage` modules named as
    in :class:`~medlite.models.tinyunet.TinyUNet`, so the ``encoder*`` weights of a TinyU-Net
    segmentation checkpoint load into this model (``load_state_dict(state, strict=False)``).

    Args:
        num_classes: number of output logits.
        in_channels: image channels.
        widths: the four encoder widths, each a multiple of 16 (TinyU-Net's by default).
        dropout: dropout probability before the linear layer.

    Submodules: ``encoder1``..``encoder4``, ``pool`` and ``classifier`` =
    ``Sequential(Flatten, Dropout, Linear)`` (``head_name``).

    Shapes: (N, in_channels, H, W) float, H and W >= 16 -> (N, num_classes) float logits.
    Parameters for the defaults and 3 classes: 203,927 (202,388 in the encoder).
    """

    head_name = "classifier"

    def __init__(self, num_classes: int, in_channels: int = 3,
                 widths: Sequence[int] = TINYUNET_WIDTHS, dropout: float = 0.2):
        super().__init__()
        widths = _check_classifier_arguments("tinyunet_classifier", num_classes, in_channels,
                                             widths, dropout)
        if len(widths) != 4 or any(w % 16 for w in widths):
            raise ConfigError(f"model.kwargs.widths: tinyunet_classifier needs 4 widths, each "
                              f"a multiple of 16 (got {widths})")
        w1, w2, w3, w4 = widths
        self.encoder1 = EncoderStage(in_channels, w1)
        self.encoder2 = EncoderStage(w1, w2)
        self.encoder3 = EncoderStage(w2, w3)
        self.encoder4 = EncoderStage(w3, w4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(1), nn.Dropout(dropout),
                                        nn.Linear(w4, num_classes))
        self.num_features = w4
        self.num_outputs = num_classes

    def forward(self, x: Tensor) -> Tensor:
        for stage in (self.encoder1, self.encoder2, self.encoder3, self.encoder4):
            x, _ = stage(x)  # the skip connections only serve a decoder
        return self.classifier(self.pool(x))


@register_model("plain_cnn", family="plain_cnn", tasks=("classification",),
                description="baseline CNN of Akay et al. 2021 (conv-ReLU-pool x4, 0.42 M "
                            "parameters)")
def build_plain_cnn(num_classes: int = 2, in_channels: int = 3,
                    widths: Sequence[int] = PLAIN_CNN_WIDTHS, hidden: int = 128,
                    dropout: float = 0.5, *, task: str | None = None, pretrained: bool = False,
                    weights_path: str | Path | None = None) -> PlainCNN:
    """Registry builder for :class:`PlainCNN` (classification only; no pretrained weights)."""
    refuse_pretrained("plain_cnn", pretrained)
    model = PlainCNN(num_classes, in_channels, widths, hidden, dropout)
    if weights_path is not None:
        load_local_weights(model, weights_path, model_name="plain_cnn", task=task)
    return model


@register_model("tinyunet_classifier", family="tinyunet", tasks=("classification",),
                description="TinyU-Net CMRF encoder + linear head (0.20 M parameters)")
def build_tinyunet_classifier(num_classes: int = 2, in_channels: int = 3,
                              widths: Sequence[int] = TINYUNET_WIDTHS, dropout: float = 0.2, *,
                              task: str | None = None, pretrained: bool = False,
                              weights_path: str | Path | None = None) -> TinyUNetClassifier:
    """Registry builder for :class:`TinyUNetClassifier` (no pretrained weights)."""
    refuse_pretrained("tinyunet_classifier", pretrained)
    model = TinyUNetClassifier(num_classes, in_channels, widths, dropout)
    if weights_path is not None:
        load_local_weights(model, weights_path, model_name="tinyunet_classifier", task=task)
    return model
