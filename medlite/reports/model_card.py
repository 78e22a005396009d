"""A model card for a trained run, written from the run itself: what the model is, what it
was trained and tested on, how well it did (with confidence intervals), and what it is and
is not for."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from medlite.tasks.base import SPLITS_FILE

#: Per task: the method, the metrics the card shows first, and what the model is for.
TASK_CARDS: dict[str, dict] = {
    "segmentation": {
        "method": "TinyU-Net (Chen et al. 2024): a U-Net of cascaded multi-receptive-field "
                  "blocks for lesion segmentation",
        "metrics": ("dice_lesion", "iou_lesion", "pixel_accuracy", "miou"),
        "use": "Outlining a skin lesion in a dermoscopy image to measure its area and "
               "diameter, for research and as a second reader.",
        "limitations": ["Trained on dermoscopy; clinical (non-dermoscopic) photos, other "
                        "devices or skin types not in the training data may segment worse.",
                        "The mask does not say whether a lesion is malignant."],
    },
    "classification": {
        "method": "ImageNet CNN fine-tuned in stages (Akay et al.: MobileNetV2 frozen, then "
                  "partly fine-tuned)",
        "metrics": ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "ece"),
        "use": "Sorting skin images into the classes it was trained on, for research and "
               "triage support; a clinician makes the diagnosis.",
        "limitations": ["Knows only its training classes: an image of anything else still "
                        "gets one of them.",
                        "Low-confidence predictions are flagged; they should not be used "
                        "without review."],
    },
    "pasi": {
        "method": "One-Step PASI (Xing et al.): ImageNet CNNs on 2x2 region composites, "
                  "stacked by a linear/ridge meta-learner, PASI by Equation 2",
        "metrics": ("mae", "ccc", "pcc", "severity_acc"),
        "use": "Estimating PASI (0-72) and its regional and component sub-scores from a "
               "visit's photos, and following a patient's response over visits.",
        "limitations": ["Photos must show the four body regions as in training (standard "
                        "views, lighting); the head region is optional.",
                        "Errors are in PASI points (see MAE); PASI50/75/90 decisions near "
                        "a threshold are uncertain."],
    },
    "stress": {
        "method": "SONIC (Phukan et al.): ECG windows as spectrograms, several vision "
                  "backbones' logits fused by a small network, trained end to end",
        "metrics": ("accuracy", "balanced_accuracy", "macro_f1", "roc_auc"),
        "use": "Estimating the probability of stress over time from a single-lead ECG, "
               "for research.",
        "limitations": ["Windows failing the signal-quality checks get no prediction.",
                        "Stress protocols differ between studies; a model from one study "
                        "may not transfer to another without evaluation."],
    },
}
COMMON_LIMITATIONS = [
    "Research software, not a medical device; not validated prospectively.",
    "Performance on other clinics' data is unknown until measured with "
    "`medlite evaluate RUN --data ...`.",
]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _data_summary(run_dir: Path) -> list[dict]:
    path = run_dir / SPLITS_FILE
    if not path.is_file():
        return []
    splits = pd.read_csv(path, dtype={"subject": str})
    return [{"split": split, "samples": int(len(rows)),
             "subjects": int(rows["subject"].nunique())}
            for split, rows in splits.groupby("split", sort=False)]


def _shown_metrics(metrics: dict, preferred: tuple[str, ...]) -> list[dict]:
    shown = []
    for group, entries in metrics.get("metrics", {}).items():
        names = [n for n in preferred if n in entries] or list(entries)[:4]
        for name in names:
            entry = entries[name]
            shown.append({"group": group, "metric": name, "value": entry.get("value"),
                          "ci_low": entry.get("ci_low"), "ci_high": entry.get("ci_high")})
    return shown


def model_card(run_dir: Path, config, class_names: list[str] | None) -> dict:
    """The card of a finished run as plain data (JSON-ready).

    Args:
        run_dir: the run folder (``config.yaml``, ``run.json``, ``metrics.json``, ``splits.csv``).
        config: the run's resolved config.
        class_names: the classes the model predicts, or None.
    """
    run_dir = Path(run_dir)
    task = config.task
    facts = TASK_CARDS.get(task, {"method": task, "metrics": (), "use": "", "limitations": []})
    record = _read_json(run_dir / "run.json")
    metrics = _read_json(run_dir / "metrics.json")
    profile = metrics.get("profile") or {}
    data = _data_summary(run_dir)
    limitations = list(facts["limitations"])
    if metrics.get("note"):
        limitations.append(metrics["note"])
    trained_on = next((d for d in data if d["split"] == "train"), None)
    if trained_on:
        limitations.append(f"Trained on {trained_on['samples']} samples of "
                           f"{trained_on['subjects']} subjects; small data sets give wide "
                           "confidence intervals.")
    return {
        "run": run_dir.name,
        "task": task,
        "method": facts["method"],
        "model": config.model.name,
        "parameters": profile.get("params"),
        "classes": class_names,
        "trained": record.get("finished"),
        "medlite": (record.get("versions") or {}).get("medlite"),
        "data": data,
        "evaluated": metrics.get("evaluated"),
        "confidence": metrics.get("confidence"),
        "n_subjects": metrics.get("n_subjects"),
        "metrics": _shown_metrics(metrics, tuple(facts["metrics"])),
        "intended_use": facts["use"],
        "limitations": limitations + COMMON_LIMITATIONS,
    }
