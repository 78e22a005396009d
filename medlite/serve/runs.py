"""The runs a service puts online: loaded once at start, each with its predictor, model card
and (for classifiers) a confidence threshold calibrated on the run's validation split."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from medlite.errors import MedliteError
from medlite.inference.predictor import Fast, Predictor, load_run
from medlite.metrics.classification import selective_threshold
from medlite.reports.model_card import model_card

log = logging.getLogger("medlite.serve")


@dataclass
class ServedRun:
    """One run behind the service.

    Attributes:
        name: the run's name in URLs (its folder name, made unique).
        predictor: the loaded model (fast path as asked).
        card: :func:`~medlite.reports.model_card.model_card`; for classifiers with the
            ``confidence_threshold`` of :func:`calibrate`.
    """

    name: str
    predictor: Predictor
    card: dict

    @property
    def task(self) -> str:
        return self.predictor.config.task

    @property
    def calibration(self) -> dict | None:
        """Classifiers: :func:`~medlite.metrics.classification.selective_threshold` on the
        validation split (``threshold`` None when it could not be computed, with
        ``reason``)."""
        return self.card.get("confidence_threshold")


def calibrate(predictor: Predictor, target_accuracy: float) -> dict:
    """The confidence threshold of a classifier from its run's validation split."""
    from medlite.evaluation.evaluator import predict_table

    task, config, run_dir = predictor.task, predictor.config, predictor.run_dir
    try:
        samples = task.load_run_samples(config, run_dir)
        rows = samples[samples["split"] == "val"]
        if rows.empty:
            return {"threshold": None, "target_accuracy": target_accuracy,
                    "reason": "the run has no validation split"}
        table = predict_table(predictor, rows, None)
    except MedliteError as exc:  # the training images are not on this machine
        return {"threshold": None, "target_accuracy": target_accuracy,
                "reason": f"validation data unavailable ({exc})"}
    result = selective_threshold(table["confidence"].to_numpy(), table["correct"].to_numpy(),
                                 target_accuracy)
    return {**result, "target_accuracy": target_accuracy, "validation_samples": len(table),
            "reason": None if result["threshold"] is not None else
            f"no threshold reaches {target_accuracy:.0%} accuracy on validation"}


def run_names(run_dirs: list[Path]) -> list[str]:
    """URL-safe names: each run's folder name, numbered when two runs share one."""
    names = [re.sub(r"[^A-Za-z0-9._-]+", "_", Path(d).resolve().name) or "run"
             for d in run_dirs]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if names.count(name) == 1 else f"{name}-{seen[name]}")
    return unique


def load_served_runs(run_dirs: list[Path], *, fast: Fast = "torch",
                     target_accuracy: float = 0.9) -> list[ServedRun]:
    """Load every run named on the command line (nothing else can ever be served)."""
    names = run_names(run_dirs)
    served = []
    for name, run_dir in zip(names, run_dirs, strict=True):
        predictor = load_run(run_dir, fast=fast)
        card = model_card(predictor.run_dir, predictor.config, predictor.class_names)
        if predictor.config.task == "classification":
            card["confidence_threshold"] = calibrate(predictor, target_accuracy)
            slides = predictor.config.data.slides
            card["slides"] = slides.model_dump() if slides is not None else None
        card["name"] = name
        served.append(ServedRun(name, predictor, card))
        log.info("loaded run %s (%s)", name, predictor.config.task)
    return served
