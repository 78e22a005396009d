"""Multi-class COVID-19 CT segmentation (TinyU-Net's NCP table) on the Inf-Net split.

``../shared/data/ct_multiclass/medseg100``: 98 axial CT slices (8-bit grey, as published)
labelled background / ground-glass opacity (GGO) / consolidation, with Inf-Net's 50 / 48
train / test split (``index.csv``). Each model trains through the same medlite pipeline
(``train_run``, as ``medlite train``) on one grey channel at 256x256, the Inf-Net test
slices held out and 10 of its 50 training slices kept for validation (the epoch is chosen
there), within the same wall-clock budget; the test split is evaluated once per model at
each slice's original resolution: per-class IoU and Dice per image and over the data set,
with 95% bootstrap CIs over slices (patients are not published), and the pixel confusion
matrix.

    python benchmarks/bench_ct_multiclass.py --out runs/bench-ct --budget-minutes 10

``--models`` picks the networks (default TinyU-Net, the U-Net baseline and U-Net with CMRF
blocks, the latter two at ``--unet-widths``); ``--set KEY=VALUE`` overrides any config key
of every model (e.g. ``loss.dice_classes=all``). Writes ``summary.json`` in ``--out``.
:func:`medseg_manifest`, :func:`medseg_config` and :func:`train_and_score` are reused by
``bench_cmrf_ablation.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ph2_segmentation import seconds_per_epoch  # noqa: E402

from medlite.config import apply_overrides  # noqa: E402
from medlite.runs import write_csv_atomic, write_json  # noqa: E402
from medlite.tasks import get_task  # noqa: E402
from medlite.tasks.segmentation import SegmentationConfig  # noqa: E402
from medlite.training.runner import train_run  # noqa: E402

MEDSEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_multiclass" / "medseg100"
CLASS_NAMES = ["background", "ggo", "consolidation"]
# Fan et al. (IEEE TMI 2020) multi-class results on this split, as tabulated with their
# updated numbers in Table 3 of PMC7836902: (GGO Dice, consolidation Dice).
ANCHORS = {"Semi-Inf-Net & MC (Inf-Net)": (0.639, 0.471),
           "Semi-Inf-Net & FCN8s (Inf-Net)": (0.657, 0.318),
           "U-Net, VGG16 encoder": (0.462, 0.421), "FCN8s": (0.482, 0.289)}
SHOWN = [f"{kind}_{name}" for name in CLASS_NAMES[1:] for kind in ("dice", "iou")]


def medseg_manifest(medseg: Path, path: Path) -> Path:
    """A manifest of the slices: Inf-Net's test slices fixed as ``test``, its training
    slices left for medlite to split into train and validation; each slice its own
    subject (the data do not say which slices share a patient)."""
    index = pd.read_csv(medseg / "index.csv")
    rows = pd.DataFrame({
        "image": [str(medseg / "images" / f) for f in index["file"]],
        "mask": [str(medseg / "masks" / f) for f in index["file"]],
        "subject": [Path(f).stem for f in index["file"]],
        "split": ["test" if s == "test" else "" for s in index["infnet_split"]]})
    write_csv_atomic(rows, path)
    return path


def medseg_config(manifest: Path, model: str, widths: list[int] | None, *, lr: float,
                  batch: int, seed: int, overrides: list[str] = (),
                  kwargs: dict | None = None) -> SegmentationConfig:
    """The benchmark's recipe: one grey channel at 256 px; CE + Dice over the foreground
    classes with inverse-frequency class weights (GGO and consolidation are 8% and 3% of
    the pixels); flips and small rotations, no colour jitter; Adam, cosine."""
    raw = {
        "name": f"medseg-{model}", "seed": seed,
        "data": {"manifest": str(manifest), "num_classes": 3, "class_names": CLASS_NAMES,
                 "image_size": [256, 256], "in_channels": 1,
                 "augment": {"hflip": 0.5, "vflip": 0.0, "rotate_degrees": 15,
                             "scale": [0.8, 1.0], "brightness": 0.1, "contrast": 0.1,
                             "saturation": 0.0, "hue": 0.0}},
        "model": {"name": model, "kwargs": {**({"widths": widths} if widths else {}),
                                            **(kwargs or {})}},
        "loss": {"class_weights": "inverse_frequency", "dice_classes": "foreground"},
        "optimizer": {"name": "adam", "lr": lr},
        "trainer": {"batch_size": batch, "threads": 2, "early_stopping_patience": None},
        "split": {"val_fraction": 10 / 50, "test_fraction": 0.0},
        "evaluation": {"bootstrap_resamples": 1000}}
    return SegmentationConfig.model_validate(apply_overrides(raw, list(overrides)))


def train_and_score(config: SegmentationConfig, out: Path, budget_minutes: float,
                    epochs: int | None = None, n_train: int = 40, n_val: int = 10,
                    shown: list[str] = SHOWN) -> dict:
    """Train ``epochs`` epochs (default: as many as a timing says fit in ``budget_minutes``,
    so that the cosine schedule ends with the budget), stopping at the budget in any case,
    and return the test figures and the run's facts. Fixed epochs make the figures
    independent of how busy the machine is."""
    if epochs is None:
        per_epoch = seconds_per_epoch(config, n_train, n_val)
        epochs = max(1, int(0.85 * budget_minutes * 60 / per_epoch))
    config.trainer.max_epochs = epochs
    config.trainer.max_time_minutes = budget_minutes
    start = time.perf_counter()
    result = train_run(config, out, overwrite=True, progress=False)
    history = pd.read_csv(out / "history.csv")
    model = get_task("segmentation").build_model(config, for_training=False)
    figures = {group: {key: result.metrics[group][key] for key in shown}
               for group in ("per_image", "dataset")}
    return {"model": config.model.name, "kwargs": config.model.kwargs,
            "parameters": sum(p.numel() for p in model.parameters()),
            "planned_epochs": config.trainer.max_epochs, "epochs_run": len(history),
            "best_epoch": int(history["val_dice"].idxmax()) + 1,
            "wall_minutes": round((time.perf_counter() - start) / 60, 1),
            "test": figures,
            "pixel_confusion_matrix": result.info.get("pixel_confusion_matrix")}


def table_rows(entries: dict, classes: list[str] = CLASS_NAMES[1:]) -> str:
    """Markdown rows: model, parameters, epochs, each class's Dice and IoU (per image, with
    CIs) and dataset Dice."""
    lines = []
    for name, entry in entries.items():
        image, dataset = entry["test"]["per_image"], entry["test"]["dataset"]

        def cell(metrics, key):
            m = metrics[key]
            return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"

        cells = " | ".join(f"{cell(image, f'dice_{c}')} | {cell(image, f'iou_{c}')}"
                           for c in classes)
        pooled = " / ".join(f"{dataset[f'dice_{c}']['value']:.3f}" for c in classes)
        lines.append(f"| {name} | {entry['parameters'] / 1e6:.2f} M | {entry['epochs_run']} "
                     f"| {cells} | {pooled} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ct"))
    parser.add_argument("--medseg", type=Path, default=MEDSEG)
    parser.add_argument("--models", nargs="+", default=["tinyunet", "unet", "unet_cmrf"])
    parser.add_argument("--unet-widths", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                        help="U-Net widths (Ronneberger's 64..1024 is 31 M parameters, "
                        "too slow to train on a 2-core CPU in the budget)")
    parser.add_argument("--budget-minutes", type=float, default=10.0,
                        help="wall-clock cap per model")
    parser.add_argument("--epochs", type=int, help="epochs per model (default: sized from a "
                        "timing to fill the budget; a timing taken on a busy machine "
                        "underestimates what fits)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    manifest = medseg_manifest(args.medseg, args.out / "medseg_manifest.csv")
    summary = {"budget_minutes": args.budget_minutes, "lr": args.lr, "batch": args.batch,
               "overrides": args.overrides, "anchors_dice_ggo_consolidation": ANCHORS,
               "models": {}}
    for model in args.models:
        widths = None if model == "tinyunet" else args.unet_widths
        config = medseg_config(manifest, model, widths, lr=args.lr, batch=args.batch,
                               seed=args.seed, overrides=args.overrides)
        summary["models"][model] = train_and_score(config, args.out / model,
                                                   args.budget_minutes, args.epochs)
        write_json(args.out / "summary.json", summary)
        print(json.dumps({model: summary["models"][model]["test"]["per_image"]}, indent=1))
    print(table_rows(summary["models"]))


if __name__ == "__main__":
    main()
