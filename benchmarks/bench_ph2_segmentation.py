"""PH2 lesion segmentation under a CPU time budget: TinyU-Net against the classic U-Net.

Both models train through the same medlite pipeline (``medlite.training.runner.train_run``,
as ``medlite train``) on the same subject-disjoint split of the 200 PH2 lesions at 256x256,
each with the same wall-clock budget. The number of epochs is set from a measured
throughput so that the cosine schedule ends when the budget does;
``trainer.max_time_minutes`` is the hard stop.

    python benchmarks/bench_ph2_segmentation.py --budget-minutes 30 --out runs/bench-ph2

Writes ``summary.json`` in ``--out`` and prints a table (test split, per-image and
dataset-level lesion Dice/IoU with 95% subject-bootstrap CIs). Each trained model is
evaluated on the test split with the paper's plain argmax (``test``) and, when the
validation split prefers other inference options (flip TTA, largest or most lesion-like
component, hole filling; ``choose_inference_on_validation``), once with those
(``test_chosen``). With ``--isic-test`` each model is also evaluated on the ISIC 2018
held-out split of the shipped ``dermoscopy-lesion`` model (another clinic's images), and
with ``--isic-val`` on that model's ISIC validation split: the data on which a robustness
recipe (``--set data.augment.hair=0.5 --set data.color_constancy=shades_of_gray`` ...) is
chosen, so that the ISIC test split is evaluated once per configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch

from medlite.config import apply_overrides, validate_config
from medlite.data.manifest import index_segmentation
from medlite.data.splits import split_samples
from medlite.evaluation.external import evaluate_run
from medlite.evaluation.inference_choice import (
    SEGMENTATION_CANDIDATES,
    choose_inference_on_validation,
)
from medlite.pretrained import shipped_model_dir
from medlite.runs import write_csv_atomic, write_json
from medlite.tasks import get_task
from medlite.tasks.segmentation import SegmentationConfig, SegmentationDataConfig
from medlite.training.runner import train_run

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ph2"
ISIC = SHARED.parent / "isic2018_task1"


def make_config(manifest: Path, model: str, lr: float, batch: int, seed: int,
                weights: str | None = None, overrides: list[str] | None = None
                ) -> SegmentationConfig:
    config = SegmentationConfig(
        name=f"ph2-{model}", seed=seed,
        data=SegmentationDataConfig(manifest=manifest, image_size=(256, 256)))
    config.model.name = model
    config.model.weights = weights
    config.optimizer.lr = lr
    config.trainer.batch_size = batch
    config.trainer.threads = 2
    config.trainer.early_stopping_patience = None
    if overrides:
        raw = apply_overrides(config.model_dump(mode="json"), overrides)
        config = validate_config(raw, SegmentationConfig, "--set")
    return config


def seconds_per_epoch(config: SegmentationConfig, n_train: int, n_val: int) -> float:
    """Time a few training steps and validation batches of this model on random data."""
    torch.set_num_threads(config.trainer.threads)
    model = get_task("segmentation").build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batch = config.trainer.batch_size
    x = torch.randn(batch, config.data.in_channels, *config.data.image_size)
    y = torch.randint(0, config.data.num_classes, (batch, *config.data.image_size))
    loss_fn = torch.nn.CrossEntropyLoss()
    steps = 3
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        optimizer.step()
    train_step = (time.perf_counter() - start) / steps
    model.eval()
    with torch.no_grad():
        start = time.perf_counter()
        model(x)
        val_step = time.perf_counter() - start
    return n_train / batch * train_step + math.ceil(n_val / batch) * val_step


def subset_manifest(samples: pd.DataFrame, n_train: int, seed: int, path: Path) -> Path:
    """A manifest of the same split with only ``n_train`` training subjects (a seeded draw):
    validation and test are unchanged, so points of a learning curve compare."""
    train_subjects = samples.loc[samples["split"] == "train", "subject"].drop_duplicates()
    kept = set(train_subjects.sample(n=n_train, random_state=seed))
    rows = samples[(samples["split"] != "train") | samples["subject"].isin(kept)]
    write_csv_atomic(rows[["image", "mask", "subject", "split"]], path)
    return path


def isic_test_manifest(isic: Path, path: Path, split: str = "test") -> Path:
    """The ISIC 2018 pairs of one split (``test`` or ``val``) of the shipped model, as a
    manifest."""
    splits = pd.read_csv(shipped_model_dir("dermoscopy-lesion") / "splits.csv", dtype=str)
    test = splits[splits["split"] == split]
    rows = pd.DataFrame({"image": [str(isic / "images" / f"{s}.jpg") for s in test["sample"]],
                         "mask": [str(isic / "masks" / f"{s}_segmentation.png")
                                  for s in test["sample"]],
                         "subject": test["subject"].to_numpy()})
    write_csv_atomic(rows, path)
    return path


def evaluate_with_chosen_inference(run_dir: Path, data: Path | None = None) -> dict:
    """Inference options chosen on the run's validation split; the test split (or
    ``data``) evaluated with them when they are not the plain argmax."""
    chosen, table = choose_inference_on_validation(run_dir, SEGMENTATION_CANDIDATES)
    overrides = SEGMENTATION_CANDIDATES[chosen]
    entry = {"chosen": chosen, "overrides": overrides, "val": table.to_dict(orient="records")}
    if overrides:
        result, _ = evaluate_run(run_dir, split="test", out=run_dir / "evaluations" /
                                 f"test-{chosen}", overwrite=True, overrides=overrides)
        entry["test_chosen"] = result.metrics
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ph2"))
    parser.add_argument("--models", nargs="+", default=["tinyunet", "unet"])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, nargs="+",
                        help="epochs per model instead of the throughput estimate (a timing "
                        "taken while the machine is busy underestimates what fits)")
    parser.add_argument("--ph2", type=Path, default=SHARED)
    parser.add_argument("--weights", help="start from a shipped model (fine-tuning), e.g. "
                        "dermoscopy-lesion; TinyU-Net only")
    parser.add_argument("--train-subjects", type=int,
                        help="train on only this many of the training subjects (learning "
                        "curves); validation and test stay the same")
    parser.add_argument("--skip-inference-choice", action="store_true",
                        help="leave out the choice of inference options on validation and "
                        "its test evaluation; for quick checks")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override for every model, e.g. "
                        "data.augment.hair=0.5 (repeatable)")
    parser.add_argument("--isic-val", action="store_true",
                        help="also evaluate each model on the shipped model's ISIC 2018 "
                        "validation split (to choose a robustness recipe on)")
    parser.add_argument("--isic-test", action="store_true",
                        help="also evaluate each model on the ISIC 2018 held-out split of "
                        "the shipped dermoscopy-lesion model (needs ../shared's ISIC data)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    manifest = args.out / "ph2_manifest.csv"
    if not manifest.exists():
        index_segmentation(args.ph2 / "images", args.ph2 / "masks", manifest)
    summary = {"budget_minutes": args.budget_minutes, "lr": args.lr, "batch": args.batch,
               "image_size": [256, 256], "threads": 2, "weights": args.weights,
               "train_subjects": args.train_subjects, "overrides": args.overrides,
               "models": {}}
    for position, model in enumerate(args.models):
        config = make_config(manifest, model, args.lr, args.batch, args.seed, args.weights,
                             args.overrides)
        task = get_task("segmentation")
        # The split train_run makes (same seed and fractions), to size the epochs.
        loaded = task.load_samples(config)
        samples = split_samples(loaded, config.split, seed=config.seed,
                                stratify=task.stratify_labels(loaded))
        if args.train_subjects:
            config.data.manifest = subset_manifest(samples, args.train_subjects, args.seed,
                                                   args.out / f"ph2_train{args.train_subjects}.csv")
            samples = task.load_samples(config)
        counts = samples["split"].value_counts()
        per_epoch = seconds_per_epoch(config, counts["train"], counts["val"])
        # 10% of the budget is kept for evaluation overhead and the slower first epoch.
        epochs = max(1, int(0.9 * args.budget_minutes * 60 / per_epoch))
        if args.epochs:
            epochs = args.epochs[position]
        config.trainer.max_epochs = epochs
        config.trainer.max_time_minutes = args.budget_minutes
        print(f"{model}: ~{per_epoch:.0f} s/epoch -> {epochs} epochs "
              f"({counts['train']} train / {counts['val']} val / {counts['test']} test)")
        start = time.perf_counter()
        result = train_run(config, args.out / model, overwrite=True, progress=False)
        elapsed = time.perf_counter() - start
        history = pd.read_csv(args.out / model / "history.csv")
        entry = {"planned_epochs": epochs, "epochs_run": len(history),
                 "wall_minutes": round(elapsed / 60, 1), "test": result.metrics}
        if not args.skip_inference_choice:
            entry["inference_choice"] = evaluate_with_chosen_inference(args.out / model)
            if "test_chosen" in entry["inference_choice"]:
                entry["test_chosen"] = entry["inference_choice"].pop("test_chosen")
        for split in [s for s, asked in (("val", args.isic_val), ("test", args.isic_test))
                      if asked]:
            isic = isic_test_manifest(ISIC, args.out / f"isic_{split}_manifest.csv", split)
            result, _ = evaluate_run(args.out / model, data=isic, overwrite=True,
                                     out=args.out / model / "evaluations" / f"isic-{split}")
            entry[f"isic_{split}"] = result.metrics
        summary["models"][model] = entry
        write_json(args.out / "summary.json", summary)
    print(json.dumps({f"{m} {variant}": {f"{g}.{k}": round(v[variant][g][k]["value"], 4)
                                         for g in ("per_image", "dataset")
                                         for k in ("dice_lesion", "iou_lesion")}
                      for m, v in summary["models"].items()
                      for variant in ("test", "test_chosen", "isic_val", "isic_test")
                      if variant in v},
                     indent=1))


if __name__ == "__main__":
    main()
