"""DermaMNIST (7 classes, 28x28, official split) under a CPU time budget.

ImageNet MobileNetV2 (``../shared/weights``) with the SSc paper's two-stage schedule, the
28 px images upsampled (bicubic) to ``--size``: a short head-only stage, then fine-tuning.
Trained through the same pipeline as ``medlite train`` (the shipped config
``classification_dermamnist``); test accuracy and ROC-AUC (macro one-vs-rest) with 95%
bootstrap CIs, against the MedMNIST v2 anchors.

    python benchmarks/bench_dermamnist.py --out runs/bench-dermamnist

Writes ``summary.json`` in ``--out`` (the run itself in ``--out/run``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from medlite.runs import write_json
from medlite.tasks import load_config
from medlite.training.runner import train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "classification_dermamnist"  # shipped with medlite; paths relative to the repository
ANCHORS = {"ResNet-18 (28)": (0.735, 0.917), "ResNet-18 (224)": (0.754, 0.920),
           "AutoKeras": (0.749, 0.915), "Google AutoML Vision": (0.768, 0.914)}
SHOWN = ("accuracy", "roc_auc", "balanced_accuracy", "macro_f1", "ece")


def read_config(name: str, overrides: list[str]):
    """The shipped config with its relative paths (``../shared``) read from the repository
    root, whatever folder the benchmark runs in."""
    previous = Path.cwd()
    os.chdir(ROOT)
    try:
        return load_config(name, overrides)
    finally:
        os.chdir(previous)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-dermamnist"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--head-epochs", type=int, default=2)
    parser.add_argument("--finetune-epochs", type=int, default=36)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--class-balance", default="none", choices=["none", "weights", "sampler"])
    args = parser.parse_args()

    overrides = [
        f"data.image_size={args.size}", f"data.class_balance={args.class_balance}",
        f"stages=[{{name: head, epochs: {args.head_epochs}, lr: 1.0e-3, trainable: head}}, "
        f"{{name: fine_tune, epochs: {args.finetune_epochs}, lr: {args.lr}, trainable: all}}]",
        "trainer.early_stopping_patience=null", "trainer.threads=2",
        f"trainer.max_time_minutes={args.budget_minutes}",
    ]
    config = read_config(CONFIG, overrides)
    start = time.perf_counter()
    result = train_run(config, args.out / "run", overwrite=True, progress=False)
    minutes = (time.perf_counter() - start) / 60
    metrics = result.metrics["classification"]
    summary = {"size": args.size, "head_epochs": args.head_epochs,
               "finetune_epochs": args.finetune_epochs, "lr": args.lr,
               "class_balance": args.class_balance, "wall_minutes": round(minutes, 1),
               "evaluated": result.info.get("evaluated"),
               "test_images": result.info.get("n_samples"),
               "test": {k: metrics[k] for k in SHOWN if k in metrics},
               "anchors_acc_auc": ANCHORS}
    write_json(args.out / "summary.json", summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
