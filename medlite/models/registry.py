"""The model registry behind :func:`create_model`.

Each model family lives in its own module and registers a builder with
:func:`register_model`. A builder takes keyword arguments (``num_classes``,
``in_channels``, ``task``, ``pretrained``, ``weights_path`` and family-specific ones) and
returns an ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from medlite.errors import ConfigError

TASKS = ("segmentation", "classification", "regression", "features")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    tasks: tuple[str, ...]
    description: str = ""
    defaults: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, family: str, tasks: tuple[str, ...], description: str = "", **defaults
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder`` under ``name`` (lower case, unique)."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        unknown = set(tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"model {name!r}: unknown tasks {sorted(unknown)}")
        _REGISTRY[name] = ModelEntry(name, builder, family, tuple(tasks), description, defaults)
        return builder

    return decorator


def _ensure_families_loaded() -> None:
    # Importing the family modules runs their @register_model decorators.
    from medlite.models import mobilenet_unet, tinyunet, torchvision_backbones, unet  # noqa: F401


def list_models(task: str | None = None, family: str | None = None) -> list[str]:
    """Names of registered models, optionally only those supporting ``task`` / in ``family``."""
    _ensure_families_loaded()
    return sorted(
        name
        for name, entry in _REGISTRY.items()
        if (task is None or task in entry.tasks) and (family is None or entry.family == family)
    )


def get_entry(name: str) -> ModelEntry:
    _ensure_families_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `medlite models`"
        raise ConfigError(f"model.name: unknown model {name!r}{hint}") from None


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name.

    Common keyword arguments: ``task`` (one of ``segmentation``, ``classification``,
    ``regression``, ``features``), ``num_classes`` (outputs of the head), ``in_channels``,
    ``pretrained`` (ImageNet weights through torchvision's weights API, from the local
    cache only), ``weights_path`` (a local ``state_dict`` file). Unknown names raise
    :class:`~medlite.errors.ConfigError` with suggestions.
    """
    entry = get_entry(name)
    task = kwargs.get("task")
    if task is not None and task not in entry.tasks:
        raise ConfigError(
            f"model.name: {name!r} supports tasks {list(entry.tasks)}, not {task!r}"
        )
    import inspect

    arguments = {**entry.defaults, **kwargs}
    parameters = inspect.signature(entry.builder).parameters.values()
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        accepted = {p.name for p in parameters}
        unknown = sorted(set(arguments) - accepted)
        if unknown:
            raise ConfigError(f"model.kwargs: {name!r} does not take {', '.join(unknown)} "
                              f"(it takes {', '.join(sorted(accepted))})")
    return entry.builder(**arguments)
