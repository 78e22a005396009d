"""Task recipes: each method of medlite is a thin recipe composed from shared parts.

A recipe (:class:`~medlite.tasks.base.Task`) says how to read samples, build the model,
loss and metrics, and turn network outputs into its clinical result; run folders, splits,
fit plans, the training loop, the predictor, the evaluator and reports are shared.
``get_task(name)`` returns the recipe for a config's ``task:`` key; :func:`load_config`
reads a YAML config (a file, or the name of a config shipped with medlite).
"""

from __future__ import annotations

from functools import cache
from importlib import import_module, resources
from pathlib import Path

from medlite.config import BaseTaskConfig, apply_overrides, read_yaml, validate_config
from medlite.errors import ConfigError

#: Task name -> the module and class of its recipe, imported when first asked for.
RECIPES: dict[str, tuple[str, str]] = {
    "segmentation": ("medlite.tasks.segmentation", "SegmentationTask"),
    "pasi": ("medlite.tasks.pasi", "PasiTask"),
    "classification": ("medlite.tasks.classification", "ClassificationTask"),
    "stress": ("medlite.tasks.stress", "StressTask"),
}


def list_tasks() -> list[str]:
    return list(RECIPES)


@cache
def _recipe(name: str):
    module, cls = RECIPES[name]
    return getattr(import_module(module), cls)()


def get_task(name: str, source: str = "task"):
    if name not in RECIPES:
        raise ConfigError(f"{source}: unknown task {name!r} (one of {', '.join(RECIPES)})")
    return _recipe(name)


def shipped_configs() -> dict[str, Path]:
    """Configs shipped with medlite (package data): name -> file."""
    folder = resources.files("medlite") / "configs"
    return {Path(str(item)).stem: Path(str(item)) for item in folder.iterdir()
            if str(item).endswith(".yaml")}


def config_description(path: Path) -> str:
    """The first comment line of a config file."""
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def load_config(path: Path | str, overrides: list[str] | None = None) -> BaseTaskConfig:
    """Read a YAML config, pick the task's config class from its ``task:`` key, validate it.

    ``path`` is a YAML file, whose relative paths are resolved against its folder (a config
    travels with its data), or the name of a shipped config (``medlite configs``), whose
    relative paths are resolved against the current folder.
    """
    path = Path(path)
    shipped = shipped_configs()
    base_dir = path.parent
    if not path.is_file() and path.suffix == "" and str(path) in shipped:
        path, base_dir = shipped[str(path)], Path.cwd()
    raw = apply_overrides(read_yaml(path), overrides or [])
    task_name = raw.get("task")
    if task_name is None:
        raise ConfigError(f"{path}: task: required key is missing (one of "
                          f"{', '.join(list_tasks())})")
    task = get_task(str(task_name), source=f"{path}: task")
    config = validate_config(raw, task.config_class, str(path))
    if config.name is None:
        config.name = path.stem
    return task.resolve_paths(config, base_dir=base_dir)


def load_run_config(run_dir: Path) -> BaseTaskConfig:
    """The resolved config a run saved."""
    path = Path(run_dir) / "config.yaml"
    raw = read_yaml(path)
    task = get_task(str(raw.get("task")), source=f"{path}: task")
    return validate_config(raw, task.config_class, str(path))
