"""``medlite train``: one pipeline for every task.

Run folder, config and environment record; the data and its subject-disjoint splits (saved
with a content hash per sample); the task's plan of fits, run by the executor; the deployed
model; one evaluation (the test split, out-of-fold predictions when the run
cross-validates, or the validation split, flagged as a stand-in); metrics, figures and the
report. ``resume`` continues an interrupted run and refuses a config that would change it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from medlite.config import dump_config, read_yaml, validate_config
from medlite.data.splits import write_splits
from medlite.evaluation.evaluator import EvaluationResult, predict_table, record, summarize
from medlite.inference.predictor import Predictor
from medlite.runs import (
    CONFIG_FILE,
    MUTABLE_AFTER_TRAINING,
    MUTABLE_KEYS,
    RUN_RECORD,
    check_resume_config,
    environment_record,
    prepare_run_dir,
    read_json,
    run_lock,
    save_torch_atomic,
    write_csv_atomic,
    write_json,
    write_text_atomic,
)
from medlite.tasks.base import SPLITS_FILE, with_saved_splits
from medlite.training.loop import HISTORY_FILE, MODEL_FILE, configure_threads
from medlite.training.plan import RunContext, chain_history, read_fit_predictions, run_plan

if TYPE_CHECKING:
    from torch import nn

    from medlite.config import BaseTaskConfig
    from medlite.tasks.base import Task

STANDIN_NOTE = ("This run has no test split: the validation split, which chose the best "
                "epoch, stands in for it, so these metrics are optimistic.")


def train_run(config: BaseTaskConfig, run_dir: Path, *, resume: bool = False,
              overwrite: bool = False, progress: bool = True,
              run_dir_ready: bool = False) -> EvaluationResult:
    """Train, evaluate and report one run; returns the evaluation (also in
    ``run_dir/metrics.json``).

    ``run_dir_ready`` says the caller already made the run directory (the demo puts its
    generated data inside it first). The run's lock (``run_dir/.lock``) is held throughout:
    a run another process is writing is refused before anything in it changes.
    """
    with run_lock(run_dir):
        return _train_run(config, Path(run_dir), resume=resume, overwrite=overwrite,
                          progress=progress, run_dir_ready=run_dir_ready)


def _train_run(config: BaseTaskConfig, run_dir: Path, *, resume: bool, overwrite: bool,
               progress: bool, run_dir_ready: bool) -> EvaluationResult:
    from medlite.tasks import get_task

    task = get_task(config.task)
    if resume:
        run_dir = prepare_run_dir(run_dir, resume=True)
        config = resumed_config(task, config, run_dir)
    elif not run_dir_ready:
        run_dir = prepare_run_dir(run_dir, overwrite=overwrite)
    threads = configure_threads(config.trainer.threads)

    samples = task.load_samples(config)
    if resume and (run_dir / SPLITS_FILE).is_file():
        samples = with_saved_splits(samples, run_dir)
    else:
        config = task.complete_config(config, samples, run_dir)
        save_config(config, run_dir)
        write_json(run_dir / RUN_RECORD,
                   environment_record(config.seed, {"task": config.task, "threads": threads}))
        samples = task.split(samples, config)
        write_splits(run_dir / SPLITS_FILE, samples["sample"], samples["subject"],
                     samples["split"], samples.get("fold"),
                     extra={"content_sha256": task.fingerprints(samples)})
    samples = task.prepare_training(config, samples, run_dir, progress)
    context = RunContext.build(run_dir, task, config, samples)
    results = run_plan(context, progress=progress)

    model = task.deploy(context, results)
    save_torch_atomic(model.state_dict(), run_dir / MODEL_FILE)
    calibration = task.conformal_calibration(context, model, results)
    if calibration is not None:
        calibration.save(run_dir)
    history = deployed_history(task, context)
    if not history.empty:
        write_csv_atomic(history, run_dir / HISTORY_FILE)
    result = evaluate_training(task, context, model, results)
    record(result, run_dir, config, run_dir=run_dir, title=f"medlite {config.task}: {config.name}",
           history=history, monitor=task.monitor,
           markers=stage_markers(history))
    run_info = read_json(run_dir / RUN_RECORD)
    run_info["finished"] = pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")
    write_json(run_dir / RUN_RECORD, run_info)
    return result


def resumed_config(task: Task, given: BaseTaskConfig, run_dir: Path) -> BaseTaskConfig:
    """The run's saved config, with the sections that may change after training taken
    from ``given``; any other difference is an error naming the keys."""
    path = run_dir / CONFIG_FILE
    saved_raw = read_yaml(path)
    given_raw = given.model_dump(mode="json")
    check_resume_config(saved_raw, given_raw, str(path), derived=task.derived_keys)
    merged = {**saved_raw, **{k: given_raw[k] for k in MUTABLE_AFTER_TRAINING
                              if k in given_raw}}
    for key in MUTABLE_KEYS:
        section, name = key.split(".")
        merged[section] = {**merged[section], name: given_raw[section][name]}
    config = validate_config(merged, task.config_class, str(path))
    if merged != saved_raw:
        save_config(config, run_dir)
        record_info = read_json(run_dir / RUN_RECORD)
        record_info.setdefault("resumed", []).append(
            {"at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
             "changed": _flat_changes(saved_raw, merged)})
        write_json(run_dir / RUN_RECORD, record_info)
    return config


def _flat_changes(before: dict, after: dict) -> list[str]:
    from medlite.runs import flatten

    a, b = flatten(before), flatten(after)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def save_config(config: BaseTaskConfig, run_dir: Path) -> None:
    write_text_atomic(Path(run_dir) / CONFIG_FILE, dump_config(config))


def deployed_history(task: Task, context: RunContext) -> pd.DataFrame:
    """Learning curves of the deployed fit and the fits it started from."""
    try:
        key = task.deployed_fit(context)
    except (KeyError, IndexError):
        return pd.DataFrame()
    if key not in context.fits or context.fits[key].kind != "network":
        return pd.DataFrame()
    return chain_history(context, key)


def stage_markers(history: pd.DataFrame) -> dict[str, int]:
    """``{"start <fit>": first epoch}`` for every fit after the first (plot markers)."""
    if history.empty or "fit" not in history:
        return {}
    firsts = history.groupby("fit", sort=False)["epoch"].min()
    return {f"start {name}": int(epoch) for name, epoch in list(firsts.items())[1:]}


def evaluate_training(task: Task, context: RunContext, model: nn.Module,
                      results: dict[str, dict]) -> EvaluationResult:
    """The run's one evaluation: the deployed model on the test split; or, when the run
    cross-validates, the fits' out-of-fold predictions pooled; or the validation split,
    flagged as a stand-in."""
    config, run_dir = context.config, context.run_dir
    extras = task.evaluation_extras(context, results)
    samples = context.samples.reset_index(drop=True)
    test = samples[samples["split"] == "test"]
    oof_keys = task.out_of_fold_fits(context)
    if test.empty and oof_keys:
        table = read_fit_predictions(context, oof_keys)
        folds = len(oof_keys)
        return summarize(task, config, table, run_dir,
                         evaluated=f"out-of-fold predictions ({folds} folds): every sample "
                         "scored by the fit that did not train on it", extras=extras,
                         samples=samples)
    rows, evaluated, note = test, "test split", None
    if test.empty:
        rows, evaluated, note = samples[samples["split"] == "val"], "validation split", \
            STANDIN_NOTE
    predictor = Predictor(task, config, model, run_dir=run_dir)
    table = predict_table(predictor, rows, run_dir)
    return summarize(task, config, table, run_dir, evaluated=evaluated, note=note,
                     extras=extras, samples=samples)
