"""DermaMNIST (7 classes, 28x28, official split) under a CPU time budget.

ImageNet MobileNetV2 (``../shared/weights``) with the SSc paper's two-stage schedule, the
28 px images upsampled (bicubic) to ``--size``: a short head-only stage, then fine-tuning.
Trained through the same pipeline as ``medlite train`` (the shipped config
``classification_dermamnist``); test accuracy and ROC-AUC (macro one-vs-rest) with 95%
bootstrap CIs, against the MedMNIST v2 anchors.

    python benchmarks/bench_dermamnist.py --out runs/bench-dermamnist

With ``--positive-class mel`` the run also reads melanoma at a fixed specificity
(``--target-specificity``, the cut chosen on the validation split): mel-vs-rest ROC AUC and
sensitivity / specificity at that cut on the test split. ``--set KEY=VALUE`` passes any
other override (``trainer.ema_decay=0.999``, ``loss.label_smoothing=0.1``). With ``--ph2``
the trained model is also evaluated on dermoscopy from another clinic: PH2's 200 images,
reduced to 28x28 as DermaMNIST's were made from HAM10000's, melanoma as ``mel`` and common
and atypical nevi as ``nv``, at the same cut. With ``--balanced-decision`` the same trained
model is evaluated once more on the test split under a second configuration,
``evaluation.decision: balanced``: the arg-max of ``p_k * prior_k^-tau`` with ``tau`` chosen
on the validation split for balanced accuracy (post-hoc logit adjustment; probabilities and
AUCs unchanged).

Writes ``summary.json`` in ``--out`` (the run itself in ``--out/run``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd
from PIL import Image

from medlite.evaluation.external import evaluate_run
from medlite.runs import write_csv_atomic, write_json
from medlite.tasks import load_config
from medlite.training.runner import train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "classification_dermamnist"  # shipped with medlite; paths relative to the repository
ANCHORS = {"ResNet-18 (28)": (0.735, 0.917), "ResNet-18 (224)": (0.754, 0.920),
           "AutoKeras": (0.749, 0.915), "Google AutoML Vision": (0.768, 0.914)}
SHOWN = ("accuracy", "roc_auc", "balanced_accuracy", "macro_f1", "ece")
PH2 = ROOT.parent / "shared" / "data" / "ph2"


def ph2_as_dermamnist(ph2: Path, out: Path, size: int = 28) -> Path:
    """A manifest of PH2's images reduced to ``size`` x ``size`` (Pillow's antialiased
    bicubic, aspect not kept, as DermaMNIST's 28 px images were made from 600x450 ones),
    labelled ``mel`` (PH2 melanoma) or ``nv`` (common and atypical nevi)."""
    labels = pd.read_csv(ph2 / "labels.csv", dtype={"image_id": str})
    folder = out / f"ph2_{size}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for entry in labels.itertuples():
        source = next((ph2 / "images").glob(f"{entry.image_id}.*"))
        target = folder / f"{entry.image_id}.png"
        with Image.open(source) as image:
            image.convert("RGB").resize((size, size), Image.BICUBIC).save(target)
        label = "mel" if entry.melanoma == 1 else "nv"
        rows.append({"image": str(target.resolve()), "label": label, "subject": entry.image_id})
    manifest = out / f"ph2_{size}_manifest.csv"
    write_csv_atomic(pd.DataFrame(rows), manifest)
    return manifest


def figures(metrics: dict) -> dict:
    shown = {k: metrics["classification"][k] for k in SHOWN if k in metrics["classification"]}
    if "operating_point" in metrics:
        shown.update({f"operating_point_{k}": v for k, v in metrics["operating_point"].items()})
    return shown


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
    parser.add_argument("--positive-class", help="read this class at a fixed specificity, "
                        "e.g. mel")
    parser.add_argument("--target-specificity", type=float, default=0.8)
    parser.add_argument("--balanced-decision", action="store_true",
                        help="also evaluate the test split with evaluation.decision=balanced")
    parser.add_argument("--ph2", type=Path, nargs="?", const=PH2,
                        help="also evaluate on PH2 reduced to 28 px (default ../shared's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="any other config override, e.g. trainer.ema_decay=0.999")
    args = parser.parse_args()

    overrides = [
        f"data.image_size={args.size}", f"data.class_balance={args.class_balance}",
        f"stages=[{{name: head, epochs: {args.head_epochs}, lr: 1.0e-3, trainable: head}}, "
        f"{{name: fine_tune, epochs: {args.finetune_epochs}, lr: {args.lr}, trainable: all}}]",
        "trainer.early_stopping_patience=null", "trainer.threads=2",
        f"trainer.max_time_minutes={args.budget_minutes}",
    ]
    if args.positive_class:
        overrides += [f"evaluation.positive_class={args.positive_class}",
                      f"evaluation.target_specificity={args.target_specificity}"]
    overrides += args.sets
    config = read_config(CONFIG, overrides)
    start = time.perf_counter()
    result = train_run(config, args.out / "run", overwrite=True, progress=False)
    minutes = (time.perf_counter() - start) / 60
    summary = {"size": args.size, "head_epochs": args.head_epochs,
               "finetune_epochs": args.finetune_epochs, "lr": args.lr,
               "class_balance": args.class_balance, "overrides": args.sets,
               "wall_minutes": round(minutes, 1),
               "evaluated": result.info.get("evaluated"),
               "test_images": result.info.get("n_samples"),
               "operating_point": result.info.get("operating_point"),
               "test": figures(result.metrics), "anchors_acc_auc": ANCHORS}
    write_json(args.out / "summary.json", summary)
    if args.balanced_decision:
        balanced, _ = evaluate_run(args.out / "run", split="test", overwrite=True,
                                   out=args.out / "run" / "evaluations" / "balanced_decision",
                                   overrides=["evaluation.decision=balanced"])
        summary["test_balanced_decision"] = {**figures(balanced.metrics),
                                             "decision": balanced.info.get("decision")}
        write_json(args.out / "summary.json", summary)
    if args.ph2:
        manifest = ph2_as_dermamnist(args.ph2, args.out)
        other, _ = evaluate_run(args.out / "run", data=manifest, overwrite=True,
                                out=args.out / "run" / "evaluations" / "ph2_28")
        summary["ph2_28"] = figures(other.metrics)
        write_json(args.out / "summary.json", summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
