"""DermaMNIST (7 classes, 28x28, official split) under a CPU time budget.

ImageNet MobileNetV2 (``../shared/weights``) with the SSc paper's two-stage schedule, the
28 px images upsampled (bicubic) to ``--size``: a short head-only stage, then fine-tuning.
Trained through the same pipeline as ``medlite train``; test accuracy and ROC-AUC (macro
one-vs-rest) with 95% bootstrap CIs, against the MedMNIST v2 anchors.

    python benchmarks/bench_dermamnist.py --out runs/bench-dermamnist

Writes ``summary.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from medlite.config import load_config
from medlite.runs import write_json
from medlite.tasks.base import train_run

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = {"ResNet-18 (28)": (0.735, 0.917), "ResNet-18 (224)": (0.754, 0.920),
           "AutoKeras": (0.749, 0.915), "Google AutoML Vision": (0.768, 0.914)}


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
    config = load_config(ROOT / "configs" / "classification_dermamnist.yaml", overrides)
    start = time.perf_counter()
    metrics = train_run(config, args.out / "run", overwrite=True, progress=False)
    minutes = (time.perf_counter() - start) / 60
    summary = {"size": args.size, "head_epochs": args.head_epochs,
               "finetune_epochs": args.finetune_epochs, "lr": args.lr,
               "class_balance": args.class_balance, "wall_minutes": round(minutes, 1),
               "test": {k: metrics[k] for k in ("accuracy", "roc_auc", "balanced_accuracy",
                                                "macro_f1", "ece") if k in metrics},
               "anchors_acc_auc": ANCHORS}
    write_json(args.out / "summary.json", summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
