"""Task recipes: each method of medlite is a thin recipe composed from shared parts.

A recipe (:class:`~medlite.tasks.base.Task`) says how to read samples, build the model,
loss and metrics, evaluate and predict; the training loop, run directories, splits and
reports are shared. ``get_task(name)`` returns the recipe for a config's ``task:`` key.
"""

from __future__ import annotations

from functools import cache

from medlite.errors import ConfigError


@cache
def _tasks() -> dict:
    from medlite.tasks.classification import ClassificationTask
    from medlite.tasks.pasi import PasiTask
    from medlite.tasks.segmentation import SegmentationTask
    from medlite.tasks.stress import StressTask

    return {task.name: task for task in (SegmentationTask(), PasiTask(), ClassificationTask(),
                                             StressTask())}


def list_tasks() -> list[str]:
    return list(_tasks())


def get_task(name: str, source: str = "task"):
    tasks = _tasks()
    if name not in tasks:
        raise ConfigError(f"{source}: unknown task {name!r} (one of {', '.join(tasks)})")
    return tasks[name]
