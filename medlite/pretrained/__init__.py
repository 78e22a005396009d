"""Models shipped with medlite, which work without training.

Each is a small finished run folder inside the package (``config.yaml``, ``run.json``,
``model.pt``, ``metrics.json`` and a ``MODEL_CARD.md``), so everything that takes a run
takes its name instead: ``medlite predict --model dermoscopy-lesion photo.jpg``,
``medlite serve dermoscopy-lesion``, and fine-tuning from it with
``model.weights: dermoscopy-lesion``.
"""

from __future__ import annotations

from pathlib import Path

from medlite.errors import ConfigError, DataError

PACKAGE_DIR = Path(__file__).resolve().parent
#: Shipped model name -> its folder in this package.
SHIPPED_MODELS = {"dermoscopy-lesion": "dermoscopy_lesion"}


def shipped_model_dir(name: str) -> Path:
    """The run folder of shipped model ``name``.

    Raises:
        ConfigError: no shipped model has that name (the message lists them).
        DataError: the package lacks its files (a broken install).
    """
    if name not in SHIPPED_MODELS:
        raise ConfigError(f"{name}: not a model shipped with medlite (shipped: "
                          f"{', '.join(SHIPPED_MODELS)})")
    folder = PACKAGE_DIR / SHIPPED_MODELS[name]
    missing = [f for f in ("config.yaml", "run.json", "model.pt") if not (folder / f).is_file()]
    if missing:
        raise DataError(f"{folder}: the shipped model {name} is incomplete (missing "
                        f"{', '.join(missing)}); reinstall medlite")
    return folder


def resolve_run(value: str | Path) -> Path:
    """A run folder, or the folder of the shipped model named ``value`` when no such path
    exists."""
    path = Path(value)
    if not path.exists() and str(value) in SHIPPED_MODELS:
        return shipped_model_dir(str(value))
    return path
