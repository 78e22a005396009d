"""PH2 3-class (common nevus, atypical nevus, melanoma) as the stand-in for the SSc paper's
normal/early/late: MobileNetV2 two-stage transfer learning against the plain CNN and against
MobileNetV2 trained from scratch, with subject-grouped, label-stratified 5-fold CV.

Every fold of every model is one run of the ``medlite train`` pipeline (``split.folds: 5,
split.fold: k``: fold k is the run's test split, its validation subjects come from the four
training folds; the two stages are two chained fits of the run's plan). Reports the paper's
table: accuracy, sensitivity and specificity (macro over the three one-vs-rest classes) as
mean and SD over folds, plus CPU training minutes.

    python benchmarks/bench_ph2_classification.py --out runs/bench-ph2-cls

``--set KEY=VALUE`` applies a config override to every variant (``trainer.ema_decay=0.999``);
each fold's deployed model is also scored on its validation subjects (``val_accuracy``, from
the run's ``validation_predictions.csv``), where one configuration is chosen over another.

Writes ``summary.json``, ``folds.csv`` and ``learning_curves.png`` (each fold's training and
validation loss per epoch of its last stage, by model) in ``--out``; ``--plot-only`` redraws
the figure from an existing ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

from medlite.config import apply_overrides, validate_config
from medlite.evaluation.operating_point import read_validation_predictions
from medlite.reports.style import BLUE, PAPER_STYLE, VERMILLION, new_figure, save_figure
from medlite.runs import write_json
from medlite.tasks.classification import ClassificationConfig, ClassificationDataConfig, StageConfig
from medlite.training.runner import train_run

ROOT = Path(__file__).resolve().parents[1]
PH2 = ROOT.parent / "shared" / "data" / "ph2"
WEIGHTS = ROOT.parent / "shared" / "weights" / "mobilenet_v2_imagenet_features.pth"
CLASSES = ["common_nevus", "atypical_nevus", "melanoma"]


def write_manifest(ph2: Path, out: Path) -> Path:
    """PH2 labels.csv -> manifest (image, label, subject); one lesion per image."""
    labels = pd.read_csv(ph2 / "labels.csv", dtype={"image_id": str})
    manifest = pd.DataFrame({
        "image": [str(ph2 / "images" / f"{i}.jpg") for i in labels["image_id"]],
        "label": [CLASSES[int(c)] for c in labels["clinical_diagnosis"]],
        "subject": labels["image_id"]})
    path = out / "ph2_3class.csv"
    manifest.to_csv(path, index=False)
    return path


def variant_config(variant: str, manifest: Path, args, fold: int) -> ClassificationConfig:
    config = ClassificationConfig(
        name=f"ph2-{variant}-fold{fold}", seed=args.seed,
        data=ClassificationDataConfig(manifest=manifest, class_names=CLASSES,
                                      image_size=(args.size, args.size)))
    config.split.folds, config.split.fold = 5, fold
    config.trainer.batch_size = 16
    config.trainer.threads = 2
    config.trainer.early_stopping_patience = None
    config.optimizer.name = "adam"
    config.evaluation.bootstrap_resamples = 200
    epochs = args.epochs
    if variant == "mobilenet_v2_two_stage":
        config.model.name = "mobilenet_v2"
        config.model.pretrained = True
        config.model.weights_path = WEIGHTS
        config.model.kwargs = {"head_hidden": 128, "dropout": 0.2}
        config.stages = [
            StageConfig(name="head", epochs=max(1, epochs // 3), lr=1e-3, trainable="head"),
            StageConfig(name="fine_tune", epochs=epochs, lr=1e-4, trainable="all_but_first_n",
                        freeze_first_n_layers=10)]
    else:
        config.model.name = "plain_cnn" if variant == "plain_cnn" else "mobilenet_v2"
        config.model.pretrained = False
        config.model.weights_path = None
        config.model.kwargs = {}
        config.stages = [StageConfig(name="train", epochs=epochs, lr=1e-3, trainable="all")]
    if args.sets:
        raw = apply_overrides(config.model_dump(mode="json"), args.sets)
        config = validate_config(raw, ClassificationConfig, "--set")
    return config


def validation_accuracy(run_dir: Path) -> float:
    """Accuracy of the deployed model on the run's validation subjects."""
    columns = [f"p_{name}" for name in CLASSES]
    table = read_validation_predictions(run_dir, columns)
    probabilities = table[columns].to_numpy()
    return float(np.mean(probabilities.argmax(axis=1) == table["label_index"].to_numpy()))


def last_stage_history(run_dir: Path) -> pd.DataFrame:
    """The per-epoch history of the run's last fit (the fine-tuning stage of a two-stage run)."""
    last_fit = sorted((run_dir / "fits").iterdir())[-1]
    return pd.read_csv(last_fit / "history.csv")


def plot_fold_curves(out: Path, variants: list[str]) -> Path:
    """One panel per model: training and validation loss per epoch of each fold's last stage
    (thin lines), their mean over folds (thick), and each fold's best epoch by validation
    loss (the deployed one) as a dot."""
    with matplotlib.rc_context(PAPER_STYLE):
        fig = new_figure((3.4 * len(variants), 3.0))
        axes = np.atleast_1d(fig.subplots(1, len(variants), sharey=True))
        for ax, variant in zip(axes, variants, strict=True):
            histories = [last_stage_history(run) for run in sorted((out / variant).glob("fold*"))]
            for history in histories:
                epoch = history["epoch"] + 1
                ax.plot(epoch, history["train_loss"], color=BLUE, alpha=0.3, linewidth=0.7)
                ax.plot(epoch, history["val_loss"], color=VERMILLION, alpha=0.3, linewidth=0.7)
                best = history["val_loss"].idxmin()
                ax.plot(epoch[best], history["val_loss"][best], "o", color=VERMILLION,
                        markersize=3)
            mean = pd.concat(histories).groupby("epoch")[["train_loss", "val_loss"]].mean()
            ax.plot(mean.index + 1, mean["train_loss"], color=BLUE, label="training loss")
            ax.plot(mean.index + 1, mean["val_loss"], color=VERMILLION,
                    label="validation loss (dot: best epoch)")
            ax.set_title(variant.replace("_", " "))
            ax.set_xlabel("epoch of the last stage")
        axes[0].set_ylabel("cross-entropy")
        axes[0].legend(frameon=False)
        fig.tight_layout()
        return save_figure(fig, out / "learning_curves.png")


def macro(metrics: dict, prefix: str) -> float:
    values = [metrics[f"{prefix}_{name}"]["value"] for name in CLASSES]
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ph2-cls"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=[
        "mobilenet_v2_two_stage", "plain_cnn", "mobilenet_v2_scratch"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--plot-only", action="store_true",
                        help="only redraw learning_curves.png from the runs in --out")
    args = parser.parse_args()
    if args.plot_only:
        print(plot_fold_curves(args.out, args.variants))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(PH2, args.out)
    rows = []
    for variant in args.variants:
        for fold in args.folds:
            config = variant_config(variant, manifest, args, fold)
            start = time.perf_counter()
            run_dir = args.out / variant / f"fold{fold}"
            result = train_run(config, run_dir, overwrite=True, progress=False)
            metrics = result.metrics["classification"]
            rows.append({"variant": variant, "fold": fold,
                         "minutes": (time.perf_counter() - start) / 60,
                         "accuracy": metrics["accuracy"]["value"],
                         "sensitivity": macro(metrics, "sensitivity"),
                         "specificity": macro(metrics, "specificity"),
                         "roc_auc": metrics["roc_auc"]["value"],
                         "val_accuracy": validation_accuracy(run_dir),
                         "best_epoch": int(last_stage_history(run_dir)["val_loss"].idxmin()) + 1})
            pd.DataFrame(rows).to_csv(args.out / "folds.csv", index=False)
    table = pd.DataFrame(rows).groupby("variant", sort=False).agg(["mean", "std"])
    summary = {variant: {metric: [round(table.loc[variant, (metric, "mean")], 3),
                                  round(table.loc[variant, (metric, "std")], 3)]
                         for metric in ("accuracy", "sensitivity", "specificity", "roc_auc",
                                        "val_accuracy", "best_epoch", "minutes")}
               for variant in table.index}
    summary["settings"] = {"size": args.size, "epochs": args.epochs, "folds": args.folds,
                           "overrides": args.sets}
    write_json(args.out / "summary.json", summary)
    plot_fold_curves(args.out, args.variants)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
