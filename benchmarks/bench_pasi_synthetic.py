"""One-Step PASI on the built-in synthetic trial, whose true scores are exact.

Trains the stacked ensemble (architectures x 5 folds + the four meta-learners) through the
same pipeline as ``medlite train`` on a generated trial, then reports the best base learner
and the best meta-learner on the held-out subjects (visit-level PASI: MAE, Pearson, CCC with
95% subject-bootstrap CIs), the time per (architecture, fold) job, the composite cache
counts, and the wall time of the same job list with 2 workers against 1.

    python benchmarks/bench_pasi_synthetic.py --out runs/bench-pasi

Writes ``summary.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from medlite.datasets.pasi_trial import write_pasi_trial
from medlite.runs import write_json
from medlite.tasks.base import train_run
from medlite.tasks.pasi import PasiConfig, PasiDataConfig, PasiEnsembleConfig

DEFAULT_ARCHITECTURES = ["mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1",
                         "resnet18"]


def make_config(data_dir: Path, args, architectures: list[str], workers: int) -> PasiConfig:
    config = PasiConfig(
        name="bench-pasi", seed=args.seed,
        data=PasiDataConfig(photos=data_dir / "photos.csv", scores=data_dir / "scores.csv",
                            tile_size=args.tile),
        ensemble=PasiEnsembleConfig(architectures=architectures, workers=workers))
    config.model.pretrained = False  # no ImageNet weights on this machine
    config.optimizer.name = "adam"
    config.optimizer.lr = args.lr
    config.scheduler.name = "cosine"
    config.scheduler.min_lr = 1e-5
    config.trainer.max_epochs = args.epochs
    config.trainer.batch_size = 16
    config.trainer.early_stopping_patience = None
    config.trainer.threads = 2
    return config


def headline(board: pd.DataFrame, kind: str) -> dict:
    row = board[board["kind"] == kind].iloc[0]
    return {"model": row["model"], **{
        key: [round(row[key], 3), round(row[f"{key}_ci_low"], 3), round(row[f"{key}_ci_high"], 3)]
        for key in ("mae", "pcc", "ccc", "severity_acc")}}


def timed_run(config: PasiConfig, run_dir: Path) -> float:
    start = time.perf_counter()
    train_run(config, run_dir, overwrite=True, progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-pasi"))
    parser.add_argument("--subjects", type=int, default=60)
    parser.add_argument("--photo-size", type=int, default=64)
    parser.add_argument("--tile", type=int, default=32, help="composite = 2 x tile pixels")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--architectures", nargs="+", default=DEFAULT_ARCHITECTURES)
    parser.add_argument("--skip-workers", action="store_true",
                        help="skip the 1-vs-2-worker timing")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = args.out / "trial"
    if not (data_dir / "photos.csv").is_file():
        shutil.rmtree(data_dir, ignore_errors=True)
        write_pasi_trial(data_dir, n_subjects=args.subjects, photo_size=args.photo_size,
                         seed=args.seed)
    summary: dict = {"subjects": args.subjects, "tile": args.tile, "epochs": args.epochs,
                     "architectures": args.architectures, "lr": args.lr}

    run = args.out / "ensemble"
    seconds = timed_run(make_config(data_dir, args, args.architectures, workers=1), run)
    board = pd.read_csv(run / "leaderboard.csv")
    jobs = pd.read_csv(run / "jobs" / "jobs.csv")
    metrics = json.loads((run / "metrics.json").read_text())
    summary.update({
        "wall_minutes": round(seconds / 60, 1),
        "seconds_per_job": {"median": round(jobs["seconds"].median(), 1),
                            "min": round(jobs["seconds"].min(), 1),
                            "max": round(jobs["seconds"].max(), 1), "jobs": len(jobs)},
        "best_base": headline(board, "base"), "best_meta": headline(board, "meta"),
        "composite_cache": metrics["composite_cache"],
        "test_visits": metrics["n_visits"], "test_subjects": metrics["n_subjects"],
    })
    write_json(args.out / "summary.json", summary)

    if not args.skip_workers:
        # The same 5 jobs (one architecture x 5 folds), with 1 and then 2 worker processes.
        one = [args.architectures[0]]
        walls = {}
        for workers in (1, 2):
            walls[workers] = timed_run(make_config(data_dir, args, one, workers),
                                       args.out / f"workers{workers}")
        summary["workers"] = {"jobs": 5, "seconds_1_worker": round(walls[1], 1),
                              "seconds_2_workers": round(walls[2], 1),
                              "speedup": round(walls[1] / walls[2], 2)}
        write_json(args.out / "summary.json", summary)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
