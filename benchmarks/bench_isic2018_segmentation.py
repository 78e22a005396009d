"""TinyU-Net on ISIC 2018 Task 1 (the paper's data) under a CPU budget, then across clinics.

1. A manifest of the 2,518 training pairs in ``../shared/data/isic2018_task1`` (one image
   per lesion, so the subject is the image id). The 31 pairs whose masks a data-cleaning
   study flagged as wrong are kept for training only (``split: train``): a wrong mask would
   score the model against a mistake. The other pairs get a seeded subject-disjoint
   train / val / test split, saved in the run's ``splits.csv``.
2. ``medlite train`` of TinyU-Net at ``--size`` with a cosine schedule sized to the budget
   (``trainer.max_time_minutes`` the hard stop).
3. Inference options (flip TTA, largest or most lesion-like component, hole filling) chosen
   on the validation split (``choose_inference_on_validation``); the test split once with
   the plain argmax and once with the chosen options.
4. Across clinics: the ISIC-trained model on all 200 PH2 images and on the 5 HAM10000 pairs
   (``medlite evaluate --data``), plain argmax and with the chosen options.

    python benchmarks/bench_isic2018_segmentation.py --budget-minutes 60 --out runs/bench-isic

Writes ``summary.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from medlite.config import apply_overrides, validate_config
from medlite.data.manifest import index_segmentation
from medlite.evaluation.external import evaluate_run
from medlite.evaluation.inference_choice import (
    SEGMENTATION_CANDIDATES,
    choose_inference_on_validation,
)
from medlite.runs import write_csv_atomic, write_json
from medlite.tasks.segmentation import SegmentationConfig, SegmentationDataConfig
from medlite.training.runner import train_run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def isic_manifest(isic: Path, out: Path) -> Path:
    """The ISIC manifest with the flagged pairs pinned to training."""
    manifest = out / "isic2018_manifest.csv"
    if manifest.exists():
        return manifest
    table = index_segmentation(isic / "images", isic / "masks", out / "isic2018_pairs.csv")
    index = pd.read_csv(isic / "index.csv", dtype={"image_id": str})
    flagged = set(index.loc[index["source_flag_mislabeled"] == 1, "image_id"])
    table = pd.read_csv(out / "isic2018_pairs.csv", dtype=str)
    table["split"] = ["train" if subject in flagged else "" for subject in table["subject"]]
    write_csv_atomic(table, manifest)
    return manifest


def folder_manifest(images: Path, masks: Path, path: Path) -> Path:
    if not path.exists():
        index_segmentation(images, masks, path)
    return path


def make_config(manifest: Path, args) -> SegmentationConfig:
    config = SegmentationConfig(
        name="isic2018-tinyunet", seed=args.seed,
        data=SegmentationDataConfig(manifest=manifest, image_size=tuple(args.size)))
    config.model.name = "tinyunet"
    config.optimizer.lr = args.lr
    config.scheduler.name = "cosine"
    config.scheduler.min_lr = 1e-6
    config.split.val_fraction = args.val_fraction
    config.split.test_fraction = args.test_fraction
    config.trainer.batch_size = args.batch
    config.trainer.threads = 2
    config.trainer.max_epochs = args.epochs
    config.trainer.max_time_minutes = args.budget_minutes
    config.trainer.early_stopping_patience = None
    config.evaluation.bootstrap_resamples = 1000
    if args.sets:  # e.g. model.name=mobilenet_v2_unet; the split does not depend on them
        raw = apply_overrides(config.model_dump(mode="json"), args.sets)
        config = validate_config(raw, SegmentationConfig, "--set")
    return config


def lesion_figures(metrics: dict) -> dict:
    return {f"{group}.{name}": {k: round(v, 4) if isinstance(v, float) else v
                                for k, v in metrics[group][name].items()
                                if k in ("value", "ci_low", "ci_high")}
            for group in ("per_image", "dataset") for name in ("dice_lesion", "iou_lesion")}


def ship(run_dir: Path, summary: dict, command: str, dest: Path) -> Path:
    """Write the trained run as medlite's shipped ``dermoscopy-lesion`` model: its config
    (without the training data's path, with the inference options chosen on validation as
    its defaults), record, weights, test metrics and a model card."""
    from medlite.inference.predictor import with_inference_overrides
    from medlite.runs import read_json
    from medlite.tasks import load_run_config

    choice = summary.get("inference_choice", {"chosen": "plain", "overrides": []})
    config = with_inference_overrides(load_run_config(run_dir), choice["overrides"])
    config.data.manifest = None
    config.name = "dermoscopy-lesion"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"),
                                                     sort_keys=False))
    record = read_json(run_dir / "run.json")
    write_json(dest / "run.json", {k: record[k] for k in ("seed", "task", "threads",
                                                          "started", "finished", "versions")
                                   if k in record})
    # splits.csv names the images and their sha256, so evaluating the shipped model on its
    # own training images is caught as overlap.
    for name in ("model.pt", "metrics.json", "splits.csv"):
        shutil.copyfile(run_dir / name, dest / name)

    def cell(entry: dict) -> str:
        return f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"

    rows = "\n".join(
        f"| {name} | {cell(summary[key]['per_image.dice_lesion'])} | "
        f"{cell(summary[key]['per_image.iou_lesion'])} |"
        for key, name in (("test", "ISIC 2018 held-out test split (plain argmax)"),
                          ("test_chosen", "same, the inference options chosen on validation"),
                          ("ph2", "PH2, all 200 images (another clinic)"),
                          ("ph2_chosen", "same, the options chosen on validation"),
                          ("ham10000_seg5", "HAM10000, 5 images (another source)"))
        if key in summary)
    (dest / "MODEL_CARD.md").write_text(MODEL_CARD.format(
        size=f"{summary['size'][1]}x{summary['size'][0]}", epochs=summary["epochs_run"],
        minutes=summary["train_and_test_minutes"], command=command, rows=rows,
        n_test=summary.get("n_test", "?"), chosen=choice["chosen"],
        overrides=" ".join(f"--set {o}" for o in choice["overrides"]) or "none"))
    return dest


MODEL_CARD = """# dermoscopy-lesion: TinyU-Net lesion segmenter for dermoscopy

**What it does.** Segments the skin lesion in a dermoscopy photograph (background /
lesion), at any image size (the image is resized to {size} for the network and the mask
comes back at the image's own resolution). 0.48 M parameters, about 2 MB.

**Use.** `medlite predict --model dermoscopy-lesion photo.jpg --out masks/`,
`medlite serve dermoscopy-lesion`, or start a fine-tune from it with
`model.weights: dermoscopy-lesion` in a segmentation config.

**Training data.** ISIC 2018 Challenge Task 1 training images and masks (Codella et al.
2018; Tschandl et al., HAM10000, 2018), the 256x192 copies in `../shared/data/isic2018_task1`,
licensed **CC BY-NC 4.0**: the weights are a derivative of that data, so they are for
non-commercial research use, citing both. One image per lesion; a seeded, subject-disjoint
split (train / val / test), saved in the training run; the 31 pairs a data-cleaning study
flagged as mislabelled were used for training only.

**Training.** TinyU-Net (Chen et al., MICCAI 2024) from random weights, {epochs} epochs on a
2-core CPU (about {minutes} minutes including evaluation), Adam, cosine schedule,
cross-entropy + Dice, medlite's default flips / rotation / crop / colour augmentation:

    {command}

**Inference defaults.** Chosen on the validation split among flip TTA, largest or most
lesion-like component and hole filling, by per-image lesion Dice: `{chosen}` ({overrides}).
They are this model's defaults; `--set inference.flip_tta=false` (and so on) turns them off.

**Metrics** (lesion Dice and IoU per image, mean with 95% subject-bootstrap intervals, at
each image's original resolution):

| evaluated on | Dice | IoU |
|---|---|---|
{rows}

**Limits.** Not a medical device. Trained on dermoscopy only (not clinical photos); images
with several lesions, or none, were not part of training. Check it on your own images
(`medlite evaluate`) before relying on it.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=60.0)
    parser.add_argument("--epochs", type=int, default=12,
                        help="planned epochs (the cosine period); the budget stops earlier")
    parser.add_argument("--size", type=int, nargs=2, default=[96, 128], metavar=("H", "W"))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-isic"))
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--ship", type=Path, help="also write the trained model as the "
                        "shipped dermoscopy-lesion model into this folder "
                        "(medlite/pretrained/dermoscopy_lesion)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override, e.g. model.name=mobilenet_v2_unet")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    manifest = isic_manifest(args.shared / "isic2018_task1", args.out)
    config = make_config(manifest, args)
    run_dir = args.out / config.model.name
    start = time.perf_counter()
    result = train_run(config, run_dir, overwrite=True, progress=False)
    train_minutes = (time.perf_counter() - start) / 60
    history = pd.read_csv(run_dir / "history.csv")
    summary = {"size": args.size, "batch": args.batch, "lr": args.lr,
               "planned_epochs": args.epochs, "epochs_run": len(history),
               "budget_minutes": args.budget_minutes,
               "train_and_test_minutes": round(train_minutes, 1),
               "test": lesion_figures(result.metrics),
               "n_test": result.info["n_samples"]}
    write_json(args.out / "summary.json", summary)
    chosen, choice = choose_inference_on_validation(run_dir, SEGMENTATION_CANDIDATES)
    chosen_overrides = SEGMENTATION_CANDIDATES[chosen]
    summary["inference_choice"] = {"chosen": chosen, "overrides": chosen_overrides,
                                   "val": choice.to_dict(orient="records")}
    if chosen_overrides:
        tuned, _ = evaluate_run(run_dir, split="test", overwrite=True,
                                out=run_dir / "evaluations" / f"test-{chosen}",
                                overrides=chosen_overrides)
        summary["test_chosen"] = lesion_figures(tuned.metrics)
    external = {
        "ph2": folder_manifest(args.shared / "ph2" / "images", args.shared / "ph2" / "masks",
                               args.out / "ph2_manifest.csv"),
        "ham10000_seg5": folder_manifest(args.shared / "ham10000_seg5" / "images",
                                         args.shared / "ham10000_seg5" / "masks",
                                         args.out / "ham5_manifest.csv"),
    }
    for name, data in external.items():
        evaluated, _ = evaluate_run(run_dir, data=data, out=run_dir / "evaluations" / name,
                                    overwrite=True)
        summary[name] = lesion_figures(evaluated.metrics)
        if chosen_overrides:
            tuned, _ = evaluate_run(run_dir, data=data, overwrite=True,
                                    out=run_dir / "evaluations" / f"{name}-{chosen}",
                                    overrides=chosen_overrides)
            summary[f"{name}_chosen"] = lesion_figures(tuned.metrics)
        write_json(args.out / "summary.json", summary)
    if args.ship:
        ship(run_dir, summary, "python " + " ".join(sys.argv), args.ship)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
