"""Choose a trained run's inference options (test-time augmentation, post-processing) on its
validation split, so that the test split is evaluated once, with options it did not pick.

Each candidate is a list of ``inference.*`` overrides, as ``medlite evaluate --set`` takes
them. Every candidate is evaluated on the run's ``val`` split (written to
``RUN/evaluations/val-<candidate>``) and the one with the best value of the chosen metric
wins; ties go to the earlier candidate, so cheaper options come first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from medlite.evaluation.external import evaluate_run

_POST_PROCESSING = ["inference.largest_component=true", "inference.fill_holes=true"]
_LESION_LIKE = [*_POST_PROCESSING, "inference.component_rule=lesion_like"]
_TTA = ["inference.flip_tta=true"]

SEGMENTATION_CANDIDATES: dict[str, list[str]] = {
    "plain": [],
    "largest_fill": _POST_PROCESSING,
    "lesion_like_fill": _LESION_LIKE,
    "flip_tta": _TTA,
    "flip_tta_largest_fill": [*_TTA, *_POST_PROCESSING],
    "flip_tta_lesion_like_fill": [*_TTA, *_LESION_LIKE],
}
CLASSIFICATION_CANDIDATES: dict[str, list[str]] = {"plain": [], "flip_tta": _TTA}


def choose_inference_on_validation(run_dir: Path, candidates: Mapping[str, Sequence[str]],
                                   metric: tuple[str, str] = ("per_image", "dice_lesion"),
                                   higher_is_better: bool = True, fast: str = "none"
                                   ) -> tuple[str, pd.DataFrame]:
    """Evaluate each candidate on the run's validation split and pick the best.

    Args:
        run_dir: a finished training run with a ``val`` split.
        candidates: name -> ``inference.*`` overrides (e.g. :data:`SEGMENTATION_CANDIDATES`).
        metric: ``(group, name)`` of the run's ``metrics.json``, e.g. per-image lesion Dice.
        higher_is_better: the direction of ``metric``.
        fast: the inference path, as ``medlite evaluate --fast``.

    Returns:
        ``(chosen, table)``: the winning candidate's name, and one row per candidate
        (``candidate``, ``overrides``, ``value``, ``ci_low``, ``ci_high``) in the given order.
    """
    rows = []
    for name, overrides in candidates.items():
        result, _ = evaluate_run(Path(run_dir), split="val", overwrite=True,
                                 out=Path(run_dir) / "evaluations" / f"val-{name}",
                                 overrides=list(overrides), fast=fast)
        entry = result.metrics[metric[0]][metric[1]]
        rows.append({"candidate": name, "overrides": " ".join(overrides), "value":
                     float(entry["value"]), "ci_low": entry.get("ci_low"),
                     "ci_high": entry.get("ci_high")})
    table = pd.DataFrame(rows)
    values = table["value"] if higher_is_better else -table["value"]
    return str(table.loc[values.idxmax(), "candidate"]), table
