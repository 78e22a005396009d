"""Offline weights: torchvision's ImageNet checkpoints from the local torch hub cache, or a
local ``state_dict`` file. Nothing here downloads.

A state_dict is a mapping ``{parameter or buffer name: torch.Tensor}`` (float32 for the
checkpoints torchvision publishes).
"""

from __future__ import annotations

import pickle
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from medlite.errors import ConfigError, WeightsNotFoundError

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
    or ``"model"``; strips wrapper prefixes ``module.`` / ``model.`` from the keys. ``field``
    is the config key named in error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{field}: weights file not found: {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{field}: {path} is not a state_dict readable with torch.load(weights_only=True) "
            f"({first_line})"
        ) from None
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
) -> None:
    """Copy ``state`` into ``model``; every key outside ``ignore_prefixes`` must match.

    ``ignore_prefixes`` names the parts the caller replaces or drops (the classifier head,
    auxiliary heads): their keys may be missing from ``state`` or present with any shape.
    Anything else missing, unexpected or of the wrong shape raises :class:`ConfigError` whose
    message names ``field``, ``source`` (a path), ``model_name`` (default: the class name) and
    the first few offending keys; the full lists are in ``error.problems``.
    """
    prefixes = tuple(ignore_prefixes)

    def ignored(key: str) -> bool:
        return key.startswith(prefixes)

    expected = {k: v for k, v in model.state_dict().items() if not ignored(k)}
    given = {k: v for k, v in state.items() if not ignored(k)}
    # Keys are listed in the model's (or the file's) order, so the first ones shown point at
    # the first layer that differs.
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    mismatched = [
        f"{k} {tuple(given[k].shape)} vs {tuple(value.shape)}"
        for k, value in expected.items()
        if k in given and tuple(given[k].shape) != tuple(value.shape)
    ]
    if missing or unexpected or mismatched:
        problems = (
            [f"missing backbone key {k}" for k in missing]
            + [f"unexpected key {k}" for k in unexpected]
            + [f"shape mismatch {k} (file vs model)" for k in mismatched]
        )
        parts = [
            _summarise(label, keys)
            for label, keys in (
                ("missing backbone keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches (file vs model)", mismatched),
            )
            if keys
        ]
        raise ConfigError(
            f"{field}: {source} does not fit {model_name or type(model).__name__} "
            f"({'; '.join(parts)})",
            problems=problems,
        )
    to_load = OrderedDict(given)
    # Modules read their format version from `_metadata` (MNASNet refuses to load without
    # one); a file that carries none is taken to be in the current format.
    metadata = dict(getattr(model.state_dict(), "_metadata", {}))
    metadata.update(getattr(state, "_metadata", {}) or {})
    to_load._metadata = metadata  # type: ignore[attr-defined]
    # strict=False because the ignored (head) keys may be missing; everything else was checked.
    model.load_state_dict(to_load, strict=False)


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
