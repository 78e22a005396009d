"""Offline weights: torchvision's ImageNet checkpoints from the local torch hub cache, or a
local ``state_dict`` file. Nothing here downloads.

A state_dict is a mapping ``{parameter or buffer name: torch.Tensor}`` (float32 for the
checkpoints torchvision publishes).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from medlite.errors import ConfigError, DataError, MedliteError, WeightsNotFoundError
from medlite.runs import load_torch_file

# Wrappers that prefix every key: DataParallel/DDP ("module.") and Lightning modules or
# training scripts that keep the network in ``self.model`` ("model.").
_WRAPPER_PREFIXES = ("module.", "model.")

# torchvision's DenseNet checkpoints predate the ban on '.' in module names and still use
# 'norm.1' for what the module now calls 'norm1'; torchvision remaps them the same way in
# torchvision.models.densenet._load_state_dict.
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)

# How many offending keys a one-line error message shows before "...".
_KEYS_SHOWN = 5


def default_weights(arch: str) -> torchvision.models.WeightsEnum:
    """torchvision's default ImageNet weights for ``arch`` (``ResNet18_Weights.IMAGENET1K_V1``)."""
    try:
        return torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        raise WeightsNotFoundError(
            f"model.pretrained: torchvision publishes no pretrained weights for {arch!r}; "
            "set model.weights_path in the config to a local .pth state_dict instead"
        ) from None


def hub_checkpoint_path(arch: str) -> Path:
    """Where torchvision would have cached ``arch``'s default weights:
    ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>`` (honours ``TORCH_HOME``)."""
    file_name = Path(urlparse(default_weights(arch).url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def load_pretrained_state_dict(arch: str) -> OrderedDict[str, torch.Tensor]:
    """The default ImageNet state_dict for ``arch``, read from the local torch hub cache only.

    Raises :class:`WeightsNotFoundError` naming the expected file when it is not cached.
    """
    path = hub_checkpoint_path(arch)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"model.pretrained: ImageNet weights for {arch!r} are not in the local torch cache "
            f"(expected {path}) and medlite never downloads; copy that file there, or set "
            "model.weights_path in the config to a local .pth state_dict"
        )
    state = load_state_dict_file(path, field="model.pretrained")
    return fix_legacy_keys(arch, state)


def fix_legacy_keys(arch: str, state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Rename keys of old torchvision checkpoints to the current module names (DenseNet only)."""
    if not arch.startswith("densenet"):
        return _copy_state(state, state.items())
    renamed = []
    for key, value in state.items():
        match = _LEGACY_DENSENET_KEY.match(key)
        renamed.append((match.group(1) + match.group(2) if match else key, value))
    return _copy_state(state, renamed)


def load_state_dict_file(path: Path | str, field: str = "model.weights_path") -> OrderedDict:
    """Read a state_dict saved with ``torch.save`` safely (``weights_only=True``).

    Accepts a raw state_dict or a checkpoint dict holding one under ``"state_dict"`` (Lightning)
    or ``"model"``, or a medlite run folder (its ``model.pt``); strips wrapper prefixes
    ``module.`` / ``model.`` from the keys. ``field`` is the config key named in error
    messages. A file naming any global but tensors and containers (a custom class,
    ``os.system``) is refused with a ConfigError naming it; nothing in it runs.
    """
    path = Path(path)
    if path.is_dir() and _run_of(path / "model.pt") is not None:
        path = path / "model.pt"
    if not path.is_file():
        raise WeightsNotFoundError(f"{field}: weights file not found: {path}")
    try:
        loaded = load_torch_file(path)
    except DataError as error:
        raise ConfigError(f"{field}: {error}") from None
    state = _unwrap_checkpoint(loaded)
    if state is None:
        raise ConfigError(
            f"{field}: {path} holds no state_dict (expected a mapping of names to tensors, "
            "or a dict with a 'state_dict' or 'model' entry)"
        )
    stripped = OrderedDict((_strip_wrapper_prefixes(k), v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        # Metadata keys are module paths ("module.layers.0"); strip them like the tensor keys.
        stripped._metadata = {  # type: ignore[attr-defined]
            _strip_wrapper_prefixes(f"{k}.").rstrip("."): v for k, v in metadata.items()
        }
    return stripped


def load_backbone_weights(
    model: nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    ignore_prefixes: Iterable[str],
    source: str,
    field: str = "model.weights_path",
    model_name: str | None = None,
    task: str | None = None,
) -> None:
    """Copy ``state`` into ``model``; every key outside ``ignore_prefixes`` must match.

    ``ignore_prefixes`` names the parts the caller replaces or drops (the classifier head,
    auxiliary heads): their keys may be missing from ``state`` or present with any shape.
    Anything else missing, unexpected or of the wrong shape raises :class:`ConfigError` whose
    message names ``field``, ``source`` (a path), ``model_name`` (default: the class name),
    ``task``, the first few offending keys and what the file holds (:func:`check_fit`); the
    full lists are in ``error.problems``.
    """
    prefixes = tuple(ignore_prefixes)

    def ignored(key: str) -> bool:
        return key.startswith(prefixes)

    given = {k: v for k, v in state.items() if not ignored(k)}
    check_fit(model, given, source=source, field=field, model_name=model_name, task=task,
              ignored=ignored, missing_label="backbone key", list_all=True)
    to_load = OrderedDict(given)
    # Modules read their format version from `_metadata` (MNASNet refuses to load without
    # one); a file that carries none is taken to be in the current format.
    metadata = dict(getattr(model.state_dict(), "_metadata", {}))
    metadata.update(getattr(state, "_metadata", {}) or {})
    to_load._metadata = metadata  # type: ignore[attr-defined]
    # strict=False because the ignored (head) keys may be missing; everything else was checked.
    model.load_state_dict(to_load, strict=False)


def check_fit(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: Path | str,
              field: str | None = "model.weights_path", model_name: str | None = None,
              task: str | None = None, ignored=lambda key: False, missing_label: str = "key",
              error: type[MedliteError] = ConfigError, list_all: bool = False) -> None:
    """Raise ``error`` when ``state``'s keys or shapes differ from ``model``'s (keys for which
    ``ignored(key)`` holds aside). The one-line message names ``field``, ``source``, the
    expected model (``model_name``, default the class name) and ``task``, the first few
    offending keys (``list_all``: all of them in ``error.problems``, which the CLI prints one
    per line), and what the file holds: the task and model of the run it comes from, or the
    architecture its keys look like."""
    expected = {k: v for k, v in model.state_dict().items() if not ignored(k)}
    # Keys are listed in the model's (or the file's) order, so the first ones shown point at
    # the first layer that differs.
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(value.shape)}"
        for k, value in expected.items()
        if k in state and tuple(state[k].shape) != tuple(value.shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    problems = (
        [f"missing {missing_label} {k}" for k in missing]
        + [f"unexpected key {k}" for k in unexpected]
        + [f"shape mismatch {k} (file vs model)" for k in mismatched]
    )
    parts = [
        _summarise(label, keys)
        for label, keys in (
            (f"missing {missing_label}s", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches (file vs model)", mismatched),
        )
        if keys
    ]
    name = model_name or type(model).__name__
    wanted = f"{name} for {task}" if task else name
    origin = weights_origin(source)
    looks_like = guess_architecture(state)
    if origin is not None and origin[:2] != (task, name):
        found = f"the file is from a {origin[0]} run (model {origin[1]}, {origin[2]})"
    else:
        found = f"its keys look like {looks_like}'s" if looks_like else None
    prefix = f"{field}: " if field else ""
    raise error(f"{prefix}{source} does not fit {wanted}" + (f": {found}" if found else "")
                + f" ({'; '.join(parts)})", problems=problems if list_all else None)


def _run_of(path: Path) -> Path | None:
    """The run folder a weights file belongs to: ``RUN/model.pt`` or
    ``RUN/fits/<key>/model.pt`` (a folder with ``config.yaml`` and ``run.json``), or the
    run folder itself."""
    for folder in (path, path.parent, path.parent.parent.parent):
        if (folder / "config.yaml").is_file() and (folder / "run.json").is_file():
            return folder
    return None


def weights_origin(path: Path | str) -> tuple[str, str, Path] | None:
    """``(task, model name, run folder)`` of the run a weights file belongs to (its
    ``config.yaml`` says), or None for a file outside a run."""
    run = _run_of(Path(path))
    if run is None:
        return None
    from medlite.config import read_yaml

    try:
        raw = read_yaml(run / "config.yaml")
    except MedliteError:
        return None
    model = raw.get("model") if isinstance(raw.get("model"), Mapping) else {}
    return str(raw.get("task")), str(model.get("name")), run


# Key prefixes that tell architectures apart; the first one a state_dict has names it.
_ARCHITECTURE_KEYS = (
    ("decoder1.", "tinyunet"), ("encoder1.cmrf.", "tinyunet_classifier"),
    ("stem.pwconv1.", "unet_cmrf"), ("stem.0.conv.", "unet"),
    ("branches.0.backbone.", "sonic"), ("backbone.", "logit_backbone"),
    ("layer1.0.", "a torchvision ResNet"), ("features.denseblock1.", "a torchvision DenseNet"),
    ("encoder.layers.encoder_layer_0.", "a torchvision ViT"),
    ("Conv2d_1a_3x3.", "inception_v3"), ("inception3a.", "googlenet"),
    ("stage2.0.", "a torchvision ShuffleNetV2"), ("layers.0.", "a torchvision MNASNet"),
    ("trunk_output.", "a torchvision RegNet"), ("features.3.squeeze.", "a torchvision SqueezeNet"),
    ("features.1.0.attn.", "a torchvision Swin"), ("features.1.0.block.", "a torchvision ConvNeXt"),
    ("features.0.0.bias", "plain_cnn"),
    ("features.0.1.", "a torchvision MobileNet or EfficientNet"),
    ("features.0.weight", "a torchvision VGG or AlexNet"),
)


def guess_architecture(state: Mapping[str, object]) -> str | None:
    """The architecture whose keys ``state``'s look like (see :data:`_ARCHITECTURE_KEYS`)."""
    for prefix, name in _ARCHITECTURE_KEYS:
        if any(key.startswith(prefix) for key in state):
            return name
    return None


def _summarise(label: str, keys: list[str]) -> str:
    shown = ", ".join(keys[:_KEYS_SHOWN])
    more = f", ... {len(keys) - _KEYS_SHOWN} more" if len(keys) > _KEYS_SHOWN else ""
    return f"{len(keys)} {label}: {shown}{more}"


def _unwrap_checkpoint(loaded: object) -> Mapping[str, torch.Tensor] | None:
    if not isinstance(loaded, Mapping):
        return None
    for wrapper_key in ("state_dict", "model"):
        inner = loaded.get(wrapper_key)
        if isinstance(inner, Mapping):
            loaded = inner
            break
    tensors_only = all(isinstance(k, str) and torch.is_tensor(v) for k, v in loaded.items())
    return loaded if loaded and tensors_only else None


def _strip_wrapper_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                stripped = True
    return key


def _copy_state(original: Mapping, items: Iterable[tuple[str, torch.Tensor]]) -> OrderedDict:
    # load_state_dict reads per-module versions from `_metadata` (MNASNet uses it); keep it.
    state = OrderedDict(items)
    metadata = getattr(original, "_metadata", None)
    if metadata is not None:
        state._metadata = metadata  # type: ignore[attr-defined]
    return state


def check_pretrained_available(architectures: Sequence[str], pretrained: bool,
                               weights_path: Path | None) -> None:
    """Fail before any training when ImageNet weights are asked for and missing, listing
    every missing file (medlite never downloads)."""
    if weights_path is not None:
        if len(architectures) > 1:
            raise ConfigError("model.weights_path: one file cannot initialise several "
                              "architectures; use model.pretrained (torch hub cache) or a "
                              "single architecture")
        return
    if not pretrained:
        return
    missing = []
    for architecture in architectures:
        try:
            path = hub_checkpoint_path(architecture)
        except WeightsNotFoundError as error:
            missing.append(str(error))
            continue
        if not path.is_file():
            missing.append(f"model.pretrained: ImageNet weights for {architecture!r} are not "
                           f"in the local torch cache (expected {path})")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightsNotFoundError(
            f"{missing[0]}{more}; medlite never downloads: copy the file(s) there, or set "
            "model.pretrained: false", problems=missing)
