"""One-Step PASI on the built-in synthetic trial, whose true scores are exact.

Trains the stacked ensemble (architectures x 5 folds + the four meta-learners) through the
same pipeline as ``medlite train`` on a generated trial, then reports the base learner and
the meta-learner with the lowest out-of-fold visit MAE (chosen on the training subjects
only; with this cosine schedule each fold's fit keeps its last epoch, so the held-out fold
chooses nothing, see ``ensemble.inner_val_fraction``) and the deployed model, on the
held-out subjects (visit-level PASI: MAE, Pearson, CCC with 95% subject-bootstrap CIs), the
time per
(architecture, fold) fit, the composite cache, and the wall time of the same plan with 2
worker processes against 1.

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
from medlite.evaluation.evaluator import EvaluationResult
from medlite.runs import read_json, write_json
from medlite.tasks.pasi import PasiConfig, PasiDataConfig, PasiEnsembleConfig
from medlite.tasks.pasi.config import inner_val_fraction
from medlite.training.runner import train_run

DEFAULT_ARCHITECTURES = ["mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1",
                         "resnet18"]
#: CPU cores the benchmark is sized for: the sequential run trains with all of them; with
#: N worker processes each fit gets cores // N threads.
CORES = 2


def make_config(data_dir: Path, args, architectures: list[str], workers: int,
                executor: str = "processes", threads: int | None = None) -> PasiConfig:
    config = PasiConfig(
        name="bench-pasi", seed=args.seed,
        data=PasiDataConfig(photos=data_dir / "photos.csv", scores=data_dir / "scores.csv",
                            tile_size=args.tile),
        ensemble=PasiEnsembleConfig(architectures=architectures,
                                    test_fraction=args.test_fraction,
                                    selection_metric=args.selection_metric,
                                    heads=args.heads))
    config.model.pretrained = False  # no ImageNet weights on this machine
    config.optimizer.name = "adam"
    config.optimizer.lr = args.lr
    config.scheduler.name = "cosine"
    config.scheduler.min_lr = 1e-5
    config.trainer.max_epochs = args.epochs
    config.trainer.batch_size = 16
    config.trainer.early_stopping_patience = None
    threads = threads or max(1, CORES // workers)
    config.trainer.threads = threads
    if workers > 1 or executor == "dask":
        config.executor.name = executor
        config.executor.workers = workers
        config.executor.threads_per_worker = threads
    return config


SHOWN = ("mae", "pcc", "ccc", "severity_acc")


def rounded(value) -> float | None:
    """A metric rounded to 3 digits; None where it is undefined (an interval without valid
    resamples)."""
    return None if value is None or pd.isna(value) else round(float(value), 3)


def headline(board: pd.DataFrame, model: str) -> dict:
    """Test metrics [value, CI low, CI high] and out-of-fold MAE of one leaderboard row."""
    row = board[board["model"] == model].iloc[0]
    return {"model": model, "kind": row["kind"], "oof_mae": rounded(row["oof_mae"]),
            **{key: [rounded(row[key]), rounded(row[f"{key}_ci_low"]),
                     rounded(row[f"{key}_ci_high"])] for key in SHOWN}}


def deployed_headline(result: EvaluationResult) -> dict:
    """Test metrics [value, CI low, CI high] of the model the run deploys."""
    name = result.info["deployed"]
    metrics = result.metrics[f"deployed: {name}"]
    return {"model": name, **{key: [rounded(metrics[key][part])
                                    for part in ("value", "ci_low", "ci_high")]
                              for key in SHOWN}}


def clear_visit_summary(run: Path) -> dict:
    """Test visits the physician scored clear (PASI <= 0.5): how many, and the share the
    deployed model calls clear after and before its visit calibration; and the share of the
    other visits it wrongly calls clear."""
    table = pd.read_csv(run / "per_sample.csv")
    clear = table["true"] <= 0.5
    out = {"clear_visits": int(clear.sum()), "other_visits": int((~clear).sum()),
           "predicted_clear": rounded((table.loc[clear, "deployed"] <= 0.5).mean()),
           "other_predicted_clear": rounded((table.loc[~clear, "deployed"] <= 0.5).mean())}
    if "deployed_uncalibrated" in table:
        out["predicted_clear_before_calibration"] = rounded(
            (table.loc[clear, "deployed_uncalibrated"] <= 0.5).mean())
        out["mean_prediction_on_clear_visits_before_calibration"] = rounded(
            table.loc[clear, "deployed_uncalibrated"].mean())
    return out


def timed_run(config: PasiConfig, run_dir: Path) -> tuple[float, EvaluationResult]:
    start = time.perf_counter()
    result = train_run(config, run_dir, overwrite=True, progress=False)
    return time.perf_counter() - start, result


def network_fit_seconds(run: Path) -> pd.Series:
    """Seconds of each (architecture, fold) fit of a run, the stacking fit left out."""
    kinds = {fit["key"]: fit["kind"] for fit in read_json(run / "plan.json")}
    fits = pd.read_csv(run / "fits.csv")
    return fits.loc[fits["key"].map(kinds) == "network", "seconds"]


def plan_span_seconds(run: Path) -> float:
    """Seconds from the start of the first network fit to the end of the last (the fits
    alone: no composites, cluster start or evaluation), from each fit's ``done.json``."""
    kinds = {fit["key"]: fit["kind"] for fit in read_json(run / "plan.json")}
    starts, ends = [], []
    for key, kind in kinds.items():
        if kind != "network":
            continue
        record = read_json(run / "fits" / key / "done.json")
        end = pd.Timestamp(record["finished"])
        starts.append(end - pd.Timedelta(seconds=record["seconds"]))
        ends.append(end)
    return (max(ends) - min(starts)).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-pasi"))
    parser.add_argument("--subjects", type=int, default=120)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--selection-metric", default="visit_mae",
                        choices=["visit_mae", "pasi75_kappa", "pasi90_kappa", "pasi100_kappa"])
    parser.add_argument("--heads", nargs="+", default=["regional"],
                        choices=["regional", "components"])
    parser.add_argument("--photo-size", type=int, default=64)
    parser.add_argument("--tile", type=int, default=32, help="composite = 2 x tile pixels")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--architectures", nargs="+", default=DEFAULT_ARCHITECTURES)
    parser.add_argument("--skip-workers", action="store_true",
                        help="skip the 1-vs-2-worker timing")
    parser.add_argument("--only-workers", action="store_true",
                        help="only the 1-vs-2-worker timing")
    parser.add_argument("--executor", choices=["processes", "dask"], default="processes",
                        help="executor of the worker timing")
    parser.add_argument("--worker-threads", type=int,
                        help="torch threads per fit in the worker timing (default cores / "
                        "workers)")
    parser.add_argument("--worker-architectures", nargs="+",
                        help="architectures of the worker timing (default: the first)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = args.out / "trial"
    generation: dict = {}
    if not (data_dir / "photos.csv").is_file():
        shutil.rmtree(data_dir, ignore_errors=True)
        start = time.perf_counter()
        photos_csv, _ = write_pasi_trial(data_dir, n_subjects=args.subjects,
                                         photo_size=args.photo_size, seed=args.seed)
        seconds = time.perf_counter() - start
        generation = {"generation_seconds": round(seconds, 2),
                      "generation_ms_per_photo": round(
                          1000 * seconds / len(pd.read_csv(photos_csv)), 2)}
    summary: dict = {"subjects": args.subjects, "tile": args.tile, "epochs": args.epochs,
                     "architectures": args.architectures, "heads": args.heads, "lr": args.lr,
                     "test_fraction": args.test_fraction,
                     "selection_metric": args.selection_metric, **generation}

    if not args.only_workers:
        ensemble_summary(args, data_dir, summary)
    if not args.skip_workers:
        # The same fits (architectures x 5 folds), with 1 and then 2 workers.
        chosen = args.worker_architectures or [args.architectures[0]]
        walls = {}
        for workers in (1, 2):
            folder = args.out / f"{args.executor}-workers{workers}"
            walls[workers], _ = timed_run(
                make_config(data_dir, args, chosen, workers, args.executor,
                            args.worker_threads), folder)
        threads = {str(w): args.worker_threads or max(1, CORES // w) for w in (1, 2)}
        summary[f"workers_{args.executor}"] = {
            "architectures": chosen,
            "fits": len(network_fit_seconds(args.out / f"{args.executor}-workers1")),
            "threads_per_fit": threads, "seconds_1_worker": round(walls[1], 1),
            "seconds_2_workers": round(walls[2], 1), "speedup": round(walls[1] / walls[2], 2)}
        spans = {w: plan_span_seconds(args.out / f"{args.executor}-workers{w}") for w in (1, 2)}
        summary[f"workers_{args.executor}"].update({
            "fit_seconds_1_worker": network_fit_seconds(
                args.out / f"{args.executor}-workers1").round(1).tolist(),
            "fit_seconds_2_workers": network_fit_seconds(
                args.out / f"{args.executor}-workers2").round(1).tolist(),
            "fits_span_1_worker": round(spans[1], 1), "fits_span_2_workers": round(spans[2], 1),
            "fits_speedup": round(spans[1] / spans[2], 2)})
        name = f"summary-{args.executor}-workers.json" if args.only_workers else "summary.json"
        write_json(args.out / name, summary)
    print(json.dumps(summary, indent=1))


def ensemble_summary(args, data_dir: Path, summary: dict) -> None:
    run = args.out / "ensemble"
    config = make_config(data_dir, args, args.architectures, workers=1)
    seconds, result = timed_run(config, run)
    board = pd.read_csv(run / "leaderboard.csv")
    fit_seconds = network_fit_seconds(run)
    selection = result.info["selection"]
    cache_dir = Path(config.data.cache_dir or run / "cache" / "composites")
    n_composites = len(pd.read_csv(run / "splits.csv"))
    summary.update({
        "inner_val_fraction": inner_val_fraction(config),
        "wall_minutes": round(seconds / 60, 1),
        "seconds_per_job": {"median": round(fit_seconds.median(), 1),
                            "min": round(fit_seconds.min(), 1),
                            "max": round(fit_seconds.max(), 1), "jobs": len(fit_seconds)},
        "best_base": headline(board, selection["best_base"]),
        "best_meta": (headline(board, selection["best_meta"]) if selection.get("best_meta")
                      else None),
        "deployed": deployed_headline(result),
        "out_of_fold_mae": {k: rounded(v) for k, v in
                            (selection.get("out_of_fold_error") or {}).items()},
        # Every composite is built once before the fits, which only read the cache.
        "composite_cache": {"composites": n_composites,
                            "files": sum(1 for _ in cache_dir.glob("*.png"))},
        "test_visits": result.info["n_samples"], "test_subjects": result.info["n_subjects"],
        "calibration": result.info.get("calibration"),
        "clear": clear_visit_summary(run),
        "responders_last_visit": [
            {k: (rounded(v) if isinstance(v, float) else v) for k, v in row.items()}
            for row in result.info["responder_agreement"]],
        "endpoints": {level: {key: [rounded(entry[part]) for part in ("value", "ci_low",
                                                                      "ci_high")]
                              for key, entry in values.items()}
                      for level, values in result.info.get("endpoints", {}).items()},
    })
    before = f"deployed before calibration: {result.info['deployed']}"
    if before in result.metrics:
        summary["deployed_before_calibration"] = {
            key: [rounded(result.metrics[before][key][part])
                  for part in ("value", "ci_low", "ci_high")] for key in SHOWN}
    write_json(args.out / "summary.json", summary)


if __name__ == "__main__":
    main()
