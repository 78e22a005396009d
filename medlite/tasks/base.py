"""The task recipe interface and the shared pipeline every task runs through.

``train_run`` is the whole of ``medlite train``: seed and threads, run directory, splits,
the shared Lightning loop, test evaluation with bootstrap CIs, report. A recipe only fills
in the task-specific hooks of :class:`Task`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from torch import nn

from medlite.config import BaseTaskConfig, dump_config, read_yaml, validate_config
from medlite.data.splits import (
    assign_folds,
    assign_splits,
    check_subject_disjoint,
    read_splits,
    write_splits,
)
from medlite.errors import DataError
from medlite.runs import (
    environment_record,
    find_run,
    load_state_dict,
    prepare_run_dir,
    read_json,
    write_json,
    write_text_atomic,
)
from medlite.training.loop import MODEL_FILE, TrainingParts, configure_threads, fit

CONFIG_FILE = "config.yaml"
SPLITS_FILE = "splits.csv"
METRICS_FILE = "metrics.json"


@dataclass
class Evaluation:
    """What a recipe's ``evaluate`` returns: metrics with CIs, plus per-sample details."""

    metrics: dict[str, dict[str, float]]
    per_sample: pd.DataFrame
    figures: dict[str, Path]
    extra: dict[str, Any]


class Task:
    """A task recipe. Subclasses set ``name`` and ``config_class`` and fill in the hooks."""

    name: str = ""
    config_class: type[BaseTaskConfig] = BaseTaskConfig

    # -- configuration -------------------------------------------------------------------
    def resolve_paths(self, config: BaseTaskConfig, base_dir: Path) -> BaseTaskConfig:
        """Make relative data paths in the config relative to the config file's folder."""
        if config.model.weights_path is not None and not config.model.weights_path.is_absolute():
            config.model.weights_path = (base_dir / config.model.weights_path).resolve()
        return config

    def demo_config(self, out_dir: Path) -> BaseTaskConfig:
        """Generate built-in synthetic data under ``out_dir`` and a quick config for it."""
        raise NotImplementedError

    # -- data ----------------------------------------------------------------------------
    def load_samples(self, config: BaseTaskConfig, data_path: Path | None = None) -> pd.DataFrame:
        """One row per sample with at least ``sample`` and ``subject`` (and ``split`` when the
        data fixes it). ``data_path`` overrides the config's data source (for evaluate)."""
        raise NotImplementedError

    def stratify_labels(self, samples: pd.DataFrame) -> np.ndarray | None:
        """Per-sample labels to stratify subject folds by, or None."""
        return None

    # -- model and training --------------------------------------------------------------
    def build_model(self, config: BaseTaskConfig, for_training: bool = True) -> nn.Module:
        raise NotImplementedError

    def training_parts(self, config: BaseTaskConfig, samples: pd.DataFrame) -> TrainingParts:
        raise NotImplementedError

    # -- evaluation, prediction, export ---------------------------------------------------
    def evaluate(self, model: nn.Module, config: BaseTaskConfig, samples: pd.DataFrame,
                 out_dir: Path) -> Evaluation:
        raise NotImplementedError

    def predict(self, model: nn.Module, config: BaseTaskConfig, inputs: list[Path],
                out_dir: Path, overwrite: bool = False) -> list[Path]:
        raise NotImplementedError

    def example_input(self, config: BaseTaskConfig) -> torch.Tensor:
        raise NotImplementedError

    def write_report(self, run_dir: Path, config: BaseTaskConfig, evaluation: Evaluation,
                     out_path: Path, title: str) -> Path:
        raise NotImplementedError

    # -- the pipeline ---------------------------------------------------------------------
    def run_training(self, config: BaseTaskConfig, run_dir: Path, *, resume: bool,
                     progress: bool) -> dict:
        """Splits, training, test evaluation and report inside a prepared run directory;
        returns the test metrics. This default trains one model with the shared loop; a
        recipe that trains many (an ensemble) overrides it."""
        task = self
        run_dir = Path(run_dir)
        samples = task.load_samples(config)
        if resume and (run_dir / SPLITS_FILE).is_file():
            samples = with_saved_splits(samples, run_dir)
        else:
            samples = split_samples(samples, config, task, source=str(run_dir / SPLITS_FILE))
            write_splits(run_dir / SPLITS_FILE, samples["sample"], samples["subject"],
                         samples["split"], samples.get("fold"))

        parts = task.training_parts(config, samples)
        fit(parts, config, run_dir, resume=resume, progress=progress)

        model = task.build_model(config, for_training=False)
        model.load_state_dict(load_state_dict(run_dir / MODEL_FILE))
        return evaluate_test_split(task, model, config, samples, run_dir)


# -- the shared pipeline ------------------------------------------------------------------

def split_samples(samples: pd.DataFrame, config: BaseTaskConfig, task: Task,
                  source: str) -> pd.DataFrame:
    """Add ``split`` (train/val/test) and, for k-fold, ``fold``; subjects never straddle."""
    source = samples.attrs.get("source", source)
    samples = samples.copy()
    subjects = samples["subject"].astype(str).to_numpy()
    fixed = samples["split"].tolist() if "split" in samples else None
    if fixed is not None:
        given = [s for s in fixed if isinstance(s, str) and s]
        check_subject_disjoint(subjects[[isinstance(s, str) and bool(s) for s in fixed]],
                               np.asarray(given), source)
    split_cfg = config.split
    if split_cfg.folds:
        if split_cfg.fold >= split_cfg.folds:
            raise DataError(f"split.fold: {split_cfg.fold} is not below split.folds "
                            f"({split_cfg.folds})")
        folds = assign_folds(subjects, split_cfg.folds, seed=config.seed,
                             stratify=task.stratify_labels(samples))
        samples["fold"] = folds
        is_test = folds == split_cfg.fold
        rest = assign_splits(subjects[~is_test], val_fraction=split_cfg.val_fraction
                             / max(1e-9, 1 - 1 / split_cfg.folds),
                             test_fraction=0.0, seed=config.seed)
        splits = np.full(len(samples), "test", dtype=object)
        splits[~is_test] = rest
    else:
        splits = assign_splits(subjects, val_fraction=split_cfg.val_fraction,
                               test_fraction=split_cfg.test_fraction, seed=config.seed,
                               fixed=fixed)
    samples["split"] = splits
    check_subject_disjoint(subjects, samples["split"].to_numpy(), source)
    for needed in ("train", "val"):
        if not (samples["split"] == needed).any():
            raise DataError(f"{source}: no subject in the {needed} split; add subjects or "
                            f"change split.val_fraction / split.test_fraction")
    return samples


def save_config(config: BaseTaskConfig, run_dir: Path) -> None:
    write_text_atomic(Path(run_dir) / CONFIG_FILE, dump_config(config))


def load_run_config(run_dir: Path) -> BaseTaskConfig:
    from medlite.tasks import get_task

    path = Path(run_dir) / CONFIG_FILE
    raw = read_yaml(path)
    task = get_task(str(raw.get("task")), source=f"{path}: task")
    return validate_config(raw, task.config_class, str(path))


def load_trained_model(run_dir: Path) -> tuple[Task, BaseTaskConfig, nn.Module]:
    """The task, config and best weights of a finished run, ready for inference."""
    from medlite.tasks import get_task

    run_dir = find_run(run_dir)
    config = load_run_config(run_dir)
    task = get_task(config.task)
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        raise DataError(f"{weights}: no trained weights (did training finish?)")
    model = task.build_model(config, for_training=False)
    model.load_state_dict(load_state_dict(weights))
    return task, config, model.eval()


def resolve_relative(section: Any, fields: tuple[str, ...], base_dir: Path) -> None:
    """Make the relative paths in ``section``'s ``fields`` relative to ``base_dir``."""
    for name in fields:
        value = getattr(section, name)
        if value is not None and not Path(value).is_absolute():
            setattr(section, name, (Path(base_dir) / value).resolve())


def record_results(task: Task, config: BaseTaskConfig, evaluation: Evaluation, run_dir: Path,
                   summary: dict) -> dict:
    """Write ``metrics.json`` (``summary``, the metrics and the evaluation's extras) and
    ``report.html`` into the run; return the metrics."""
    write_json(Path(run_dir) / METRICS_FILE,
               {**summary, "metrics": evaluation.metrics, **evaluation.extra})
    task.write_report(run_dir, config, evaluation, Path(run_dir) / "report.html",
                      title=f"medlite {config.task}: {config.name}")
    return evaluation.metrics


def evaluate_test_split(task: Task, model: nn.Module, config: BaseTaskConfig,
                        samples: pd.DataFrame, run_dir: Path) -> dict:
    """Evaluate the trained ``model`` on the test split (the validation split when there is
    no test split), then record metrics and report."""
    test = samples[samples["split"] == "test"]
    if test.empty:
        test = samples[samples["split"] == "val"]
    evaluation = task.evaluate(model.eval(), config, test, run_dir)
    return record_results(task, config, evaluation, run_dir, {
        "split": str(test["split"].iloc[0]), "n_samples": len(test),
        "n_subjects": int(test["subject"].nunique())})


def with_saved_splits(samples: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """``samples`` with the ``split`` (and ``fold``) columns the run saved in splits.csv."""
    path = Path(run_dir) / SPLITS_FILE
    saved = read_splits(path).set_index("sample")
    missing = sorted(set(samples["sample"]) - set(saved.index))
    if missing:
        raise DataError(f"{path}: sample {missing[0]} of the data is not in the run's split "
                        f"file ({len(missing)} missing); was the manifest changed?")
    samples = samples.copy()
    samples["split"] = saved.loc[samples["sample"], "split"].to_numpy()
    if "fold" in saved:
        samples["fold"] = saved.loc[samples["sample"], "fold"].to_numpy()
    return samples


def train_run(config: BaseTaskConfig, run_dir: Path, *, resume: bool = False,
              overwrite: bool = False, progress: bool = True,
              run_dir_ready: bool = False) -> dict:
    """``medlite train``: returns the test metrics (also in ``run_dir/metrics.json``).

    ``run_dir_ready`` says the caller already made the run directory (the demo puts its
    generated data inside it first)."""
    from medlite.tasks import get_task

    task = get_task(config.task)
    if not run_dir_ready:
        run_dir = prepare_run_dir(Path(run_dir), resume=resume, overwrite=overwrite)
    if resume:
        config = load_run_config(run_dir)
    threads = configure_threads(config.trainer.threads)
    pl.seed_everything(config.seed, workers=True, verbose=False)
    if not resume:
        save_config(config, run_dir)
        write_json(run_dir / "run.json",
                   environment_record(config.seed, {"task": config.task, "threads": threads}))

    metrics = task.run_training(config, run_dir, resume=resume, progress=progress)
    run_info = read_json(run_dir / "run.json")
    run_info["finished"] = pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")
    write_json(run_dir / "run.json", run_info)
    return metrics
