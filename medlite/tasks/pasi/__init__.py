"""One-Step PASI (Xing et al.): the config (:mod:`.config`) and the recipe (:mod:`.recipe`)."""

from medlite.tasks.pasi.config import (
    PAPER_ARCHITECTURES,
    PasiConfig,
    PasiDataConfig,
    PasiEnsembleConfig,
    base_columns,
    fit_key,
    target_columns,
)
from medlite.tasks.pasi.recipe import ENSEMBLE_FILE, STACKING_FIT, PasiTask

__all__ = [
    "ENSEMBLE_FILE",
    "PAPER_ARCHITECTURES",
    "PasiConfig",
    "PasiDataConfig",
    "PasiEnsembleConfig",
    "PasiTask",
    "STACKING_FIT",
    "base_columns",
    "fit_key",
    "target_columns",
]
