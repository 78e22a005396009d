"""drivedb stress recognition under time-blocked CV and under the paper's window-level CV.

SONIC (Phukan et al. 2024) shuffles overlapping 5 s windows (a new one every 2 s, 60% shared
samples) into five folds. This benchmark trains the shipped config ``stress_drivedb``
(drive17a and drive17b of ../shared, one driver, rest vs driving) once through the training
pipeline of ``medlite train`` with ``cv.compare_window_cv: true``: the same SONIC model
(MobileNetV2 + ResNet18 at 64 px) under time-blocked folds with purged boundaries
(``time-fold<k>`` fits), and under window-level folds (``window-fold<k>``), plus the final
model on every window. Both rows come out of the same run, so they differ only in the folds.

    python benchmarks/bench_drivedb_stress.py --out runs/bench-drivedb-stress
    python benchmarks/bench_drivedb_stress.py --quick --out /tmp/bench-drivedb-quick

Prints the leakage table (accuracy and macro F1 with 95% CIs over 60 s blocks, and how much
of each test window's samples a training window shares) and writes ``summary.json`` in
``--out`` beside the run (``--out/run``, with its report.html).

Cost on 2 CPU cores (1 torch thread): ``--quick`` (32 px, 3 folds, 2 epochs) took 3.2 minutes;
the config (64 px, about 30 s per epoch per fold, 20 epochs x (5 + 5 folds + 1 final model))
takes about 2 hours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

from medlite.errors import MedliteError
from medlite.runs import write_json
from medlite.tasks import load_config
from medlite.training.runner import train_run

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "stress_drivedb"  # shipped with medlite; its paths are relative to the repository
SHARED_ECG = ROOT.parent / "shared" / "data" / "ecg"
QUICK = ["spectrogram.image_size=32", "cv.folds=3", "trainer.max_epochs=2",
         "evaluation.bootstrap_resamples=200"]
SHOWN = ["scheme", "folds", "tested_windows", "accuracy", "accuracy_ci_low", "accuracy_ci_high",
         "macro_f1", "macro_f1_ci_low", "macro_f1_ci_high", "mean_shared_with_training",
         "share_of_test_windows_sharing_samples"]


def read_config(config: str | Path, overrides: list[str]):
    """A config file, or a shipped config by name with its paths read from the repository
    root (where ../shared sits beside it), whatever folder the benchmark runs in."""
    if Path(config).is_file():
        return load_config(config, overrides)
    previous = Path.cwd()
    os.chdir(ROOT)
    try:
        return load_config(config, overrides)
    finally:
        os.chdir(previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-drivedb-stress"))
    parser.add_argument("--config", default=CONFIG,
                        help="a config file, or a shipped config's name (default %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="32 px, 3 folds, 2 epochs: checks the pipeline in minutes")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="further config overrides (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run")
    args = parser.parse_args(argv)
    if not (SHARED_ECG / "drivedb_drive17a").is_dir():
        print(f"skipped: {SHARED_ECG} has no drivedb records (only on the project's machines)")
        return 0

    overrides = ["cv.compare_window_cv=true", *(QUICK if args.quick else []), *args.overrides]
    try:
        config = read_config(args.config, overrides)
        start = time.perf_counter()
        train_run(config, args.out / "run", overwrite=args.overwrite)
    except MedliteError as exc:
        print(f"bench_drivedb_stress: error: {exc}", file=sys.stderr)
        return exc.exit_code
    seconds = time.perf_counter() - start

    leakage = pd.read_csv(args.out / "run" / "leakage.csv")
    folds = pd.read_csv(args.out / "run" / "folds.csv")
    summary = {
        "command": " ".join(sys.argv), "config": str(args.config), "overrides": overrides,
        "date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
        "processor": platform.processor(), "threads": config.trainer.threads,
        "image_size": config.spectrogram.image_size, "epochs": config.trainer.max_epochs,
        "backbones": config.model.kwargs.get("backbones"), "seconds": round(seconds, 1),
        "leakage": leakage.to_dict(orient="records"),
        "per_fold": folds.to_dict(orient="records"),
    }
    write_json(args.out / "summary.json", summary)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(leakage[SHOWN].round(3).to_string(index=False))
    print(f"{seconds / 60:.1f} min; run and report in {args.out / 'run'}; "
          f"summary in {args.out / 'summary.json'}")
    print(json.dumps({row["scheme"]: {"accuracy": round(row["accuracy"], 3),
                                      "macro_f1": round(row["macro_f1"], 3)}
                      for row in summary["leakage"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
