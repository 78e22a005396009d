"""Fit plans: a task describes its training as a list of fits, one runner trains them.

A :class:`Fit` names the samples it trains and validates on, what its network starts from
(the config's initial weights, random weights, or the best weights of an earlier fit),
which parameters learn, its config overrides (epochs, learning rate...) and the fits it
waits for. Classification's stages are a chain of fits; One-Step PASI's (architecture,
head, fold) trainings are independent fits followed by a stacking fit; SONIC's CV folds are
fits followed by a final refit on every window; segmentation is one fit, or one per fold.

:func:`run_plan` trains every unfinished fit through :func:`medlite.training.jobs.run_jobs`
with the executor the config names, each in ``RUN/fits/<key>/``. Every fit is seeded from
``(config seed, fit key)`` (:func:`~medlite.training.seeding.fit_seed`), so the same config
gives the same weights whatever the order of fits, the executor, or an interruption and
``--resume``.

The fit function runs where the executor puts it (this process, a worker process, a
cluster node): it reopens the run from its folder (:class:`RunContext`: config, task,
samples, plan), so it depends on nothing but the run directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from medlite.config import apply_overrides, validate_config
from medlite.errors import ConfigError, RunDirError
from medlite.runs import (
    atomic_target,
    load_state_dict,
    read_json,
    save_torch_atomic,
    write_csv_atomic,
    write_json,
)
from medlite.training.distributed import (
    check_batches,
    fit_world_size,
    launch_fit,
    threads_per_rank,
)
from medlite.training.jobs import Job, make_executor, run_jobs
from medlite.training.loop import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    FrozenBatchNormEval,
    TrainingParts,
    fit,
    read_history,
)
from medlite.training.seeding import fit_seed, seed_everything

if TYPE_CHECKING:
    from torch import nn

    from medlite.config import BaseTaskConfig
    from medlite.tasks.base import Task

FITS_DIR = "fits"
FITS_STATUS = "fits.csv"
PLAN_FILE = "plan.json"
PREDICTIONS_FILE = "predictions.csv"
SAMPLES_FILE = "samples.csv"
START_FROM_CONFIG = "config"
START_FROM_SCRATCH = "scratch"


@dataclass(frozen=True)
class Fit:
    """One training in a run's plan.

    Attributes:
        key: unique, filesystem-safe name; the fit's folder is ``RUN/fits/<key>``.
        train, val: sample ids it trains on and chooses its best epoch on.
        predict: sample ids it predicts after training (a held-out fold), stored in its
            ``predictions.csv`` for out-of-fold metrics or stacking.
        start: ``"config"`` (the config's ``model.pretrained`` / ``model.weights_path``),
            ``"scratch"`` (random weights) or ``"fit:<key>"`` (that fit's best weights).
        trainable: ``all``, ``head`` (the classification head only) or ``all_but_first_n``
            (``freeze_first_n_layers`` layers stay frozen).
        overrides: dotted config keys set for this fit, e.g. ``{"trainer.max_epochs": 10}``.
        depends_on: keys of fits that must finish first (a ``fit:`` start is added).
        params: task-specific values (architecture, head, fold, role).
        kind: ``network`` trains with the shared loop; another kind is run by the task's
            :meth:`~medlite.tasks.base.Task.run_fit` (e.g. PASI's ``stacking``).
    """

    key: str
    train: tuple[str, ...] = ()
    val: tuple[str, ...] = ()
    predict: tuple[str, ...] = ()
    start: str = START_FROM_CONFIG
    trainable: str = "all"
    freeze_first_n_layers: int | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    kind: str = "network"

    def __post_init__(self) -> None:
        for name in ("train", "val", "predict", "depends_on"):
            object.__setattr__(self, name, tuple(str(v) for v in getattr(self, name)))
        if self.start.startswith("fit:") and self.start[4:] not in self.depends_on:
            object.__setattr__(self, "depends_on", (*self.depends_on, self.start[4:]))
        if self.start not in (START_FROM_CONFIG, START_FROM_SCRATCH) \
                and not self.start.startswith("fit:"):
            raise ValueError(f"fit {self.key}: start {self.start!r} is not config, scratch "
                             "or fit:<key>")

    def spec(self) -> dict:
        """Everything that decides what the fit trains, JSON-ready."""
        return {"key": self.key, "kind": self.kind, "start": self.start,
                "trainable": self.trainable, "freeze_first_n_layers": self.freeze_first_n_layers,
                "overrides": dict(self.overrides), "depends_on": list(self.depends_on),
                "params": dict(self.params), "train": list(self.train), "val": list(self.val),
                "predict": list(self.predict)}

    def digest(self) -> str:
        """sha256 of :meth:`spec`: a finished fit whose plan changed is refused on resume."""
        return hashlib.sha256(json.dumps(self.spec(), sort_keys=True).encode()).hexdigest()

    def summary(self) -> dict:
        """:meth:`spec` with sample counts instead of sample lists (for plan.json)."""
        spec = self.spec()
        for name in ("train", "val", "predict"):
            spec[f"n_{name}"] = len(spec.pop(name))
        return {**spec, "digest": self.digest()}


def fit_config(config: BaseTaskConfig, fit_spec: Fit) -> BaseTaskConfig:
    """``config`` with the fit's overrides applied (validated like ``--set`` keys)."""
    if not fit_spec.overrides:
        return config
    items = [f"{key}={json.dumps(value)}" for key, value in fit_spec.overrides.items()]
    raw = apply_overrides(config.model_dump(mode="json"), items, source=f"fit {fit_spec.key}")
    return validate_config(raw, type(config), f"fit {fit_spec.key}")


@dataclass
class RunContext:
    """A run as a fit sees it: the task, the resolved config, the samples with their splits
    (indexed by sample id) and the plan (by key)."""

    run_dir: Path
    task: Task
    config: BaseTaskConfig
    samples: pd.DataFrame
    fits: dict[str, Fit]

    def rows(self, sample_ids: Sequence[str]) -> pd.DataFrame:
        """The sample rows of ``sample_ids``, in that order."""
        return self.samples.loc[list(sample_ids)].reset_index(drop=True)

    def fit_dir(self, key: str) -> Path:
        return self.run_dir / FITS_DIR / key

    @classmethod
    def open(cls, run_dir: Path) -> RunContext:
        """Reopen a run from its folder (the config, samples and plan it saved)."""
        from medlite.tasks import get_task, load_run_config

        run_dir = Path(run_dir)
        config = load_run_config(run_dir)
        task = get_task(config.task)
        return cls.build(run_dir, task, config, task.load_run_samples(config, run_dir))

    @classmethod
    def build(cls, run_dir: Path, task: Task, config: BaseTaskConfig,
              samples: pd.DataFrame) -> RunContext:
        plan = task.plan(config, samples)
        check_plan(plan)
        indexed = samples.set_index("sample", drop=False).rename_axis(None)
        context = cls(Path(run_dir), task, config, indexed, {f.key: f for f in plan})
        _CONTEXTS[_context_key(run_dir)] = context
        return context


_CONTEXTS: dict[tuple, RunContext] = {}


def _context_key(run_dir: Path) -> tuple:
    """A run reopened in the same process is reused until its config or splits change."""
    run_dir = Path(run_dir).resolve()
    stamps = tuple((run_dir / name).stat().st_mtime_ns if (run_dir / name).exists() else 0
                   for name in ("config.yaml", "splits.csv"))
    return (str(run_dir), *stamps)


def open_context(run_dir: Path) -> RunContext:
    context = _CONTEXTS.get(_context_key(run_dir))
    return context if context is not None else RunContext.open(run_dir)


def check_plan(plan: Sequence[Fit]) -> None:
    keys = [f.key for f in plan]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"plan has two fits named {repeated[0]!r}")
    for item in plan:
        if item.kind == "network" and (not item.train or not item.val):
            raise ConfigError(f"fit {item.key}: no training or no validation samples; add "
                              "subjects or change the split fractions")


# -- running a plan ----------------------------------------------------------------------------

def execute_fit(run_dir: str, progress: bool, job: Job, job_dir: Path) -> dict:
    """The job function of every fit (module level, so worker processes can run it)."""
    context = open_context(Path(run_dir))
    fit_spec = context.fits.get(job.key)
    if fit_spec is None or fit_spec.digest() != job.params.get("digest"):
        raise RunDirError(f"{run_dir}: fit {job.key} is not the fit the plan holds now")
    return context.task.run_fit(context, fit_spec, Path(job_dir), progress=progress)


def run_plan(context: RunContext, *, progress: bool = True) -> dict[str, dict]:
    """Train every unfinished fit of the plan; return each fit's result by key."""
    config = context.config
    run_dir = context.run_dir
    plan = list(context.fits.values())
    write_json(run_dir / PLAN_FILE, [f.summary() for f in plan])
    jobs = [Job(f.key, {"digest": f.digest()}, f.depends_on) for f in plan]
    settings = config.executor
    executor = make_executor(settings.name, settings.workers, settings.threads_per_worker,
                             address=settings.address, cluster=settings.cluster,
                             retries=settings.retries, shared_path=run_dir,
                             resources=settings.resources_per_fit.model_dump())
    in_process = settings.name == "sequential" or (settings.name == "processes"
                                                   and settings.workers == 1)
    job_fn = functools.partial(execute_fit, str(run_dir), progress and in_process)
    keep = config.trainer.keep_checkpoints

    def cleanup(job: Job, job_dir: Path) -> None:
        if not keep:  # done.json exists now: model.pt holds the weights
            shutil.rmtree(job_dir / CHECKPOINT_DIR, ignore_errors=True)

    return run_jobs(jobs, job_fn, run_dir / FITS_DIR, executor=executor,
                    progress=progress and len(jobs) > 1, status_file=run_dir / FITS_STATUS,
                    after_done=cleanup)


def start_model(context: RunContext, fit_spec: Fit, config: BaseTaskConfig):
    """The fit's network with its starting weights."""
    task = context.task
    if fit_spec.start.startswith("fit:"):
        model = task.fit_model(config, fit_spec, for_training=False)
        source = context.fit_dir(fit_spec.start[4:]) / MODEL_FILE
        if not source.is_file():
            raise RunDirError(f"{source}: missing; fit {fit_spec.key} starts from it")
        model.load_state_dict(load_state_dict(source))
        return model
    return task.fit_model(config, fit_spec, for_training=fit_spec.start == START_FROM_CONFIG)


@dataclass
class PreparedFit:
    """A ``network`` fit ready for the loop: its config, seed, network and training parts."""

    config: BaseTaskConfig
    seed: int
    model: nn.Module
    parts: TrainingParts
    trainable: dict
    frozen_batchnorm_layers: int
    train_rows: pd.DataFrame
    val_rows: pd.DataFrame


def prepare_network(context: RunContext, fit_spec: Fit) -> PreparedFit:
    """Seed, start weights, frozen layers and the task's data and loss for one fit: the same
    in every process that trains it (each DDP rank builds its own)."""
    import torch

    from medlite.models.freezing import apply_trainable, trainable_record

    task = context.task
    config = fit_config(context.config, fit_spec)
    if config.trainer.threads:  # the same thread count in every executor: the same sums
        torch.set_num_threads(config.trainer.threads)
    seed = fit_seed(context.config.seed, fit_spec.key)
    seed_everything(seed)
    model = start_model(context, fit_spec, config)
    try:
        frozen_bn = apply_trainable(model, fit_spec.trainable, fit_spec.freeze_first_n_layers)
    except ValueError as exc:
        raise ConfigError(f"fit {fit_spec.key}: {exc}") from None
    train_rows, val_rows = context.rows(fit_spec.train), context.rows(fit_spec.val)
    parts = task.training_parts(config, train_rows, val_rows, model, fit_spec)
    if frozen_bn:
        parts.extra_callbacks.append(FrozenBatchNormEval())
    return PreparedFit(config, seed, model, parts, trainable_record(model), len(frozen_bn),
                       train_rows, val_rows)


def train_network(context: RunContext, fit_spec: Fit, fit_dir: Path, *,
                  progress: bool = False) -> dict:
    """Train one ``network`` fit with the shared loop (on ``trainer.devices`` devices with
    DDP when more than one): best weights to ``model.pt``, then the task's finishing step
    and the predictions of ``fit.predict``."""
    task = context.task
    prepared = prepare_network(context, fit_spec)
    config, model, parts = prepared.config, prepared.model, prepared.parts
    train_rows, val_rows = prepared.train_rows, prepared.val_rows
    roles = [(s, role) for role in ("train", "val", "predict") for s in getattr(fit_spec, role)]
    write_csv_atomic(pd.DataFrame(roles, columns=["sample", "role"]), fit_dir / SAMPLES_FILE)
    world_size = fit_world_size(config.trainer)
    if world_size > 1:
        check_batches(config.trainer, world_size, len(parts.train_data), len(parts.val_data))
        launch_fit(context.run_dir, fit_spec.key, fit_dir, world_size,
                   threads_per_rank(config.trainer, world_size), progress=progress)
    else:
        fit(parts, config, fit_dir, seed=prepared.seed, progress=progress)
    model.load_state_dict(load_state_dict(fit_dir / MODEL_FILE))
    if task.finish_fit(model, config, train_rows, fit_spec):
        save_torch_atomic(model.state_dict(), fit_dir / MODEL_FILE)
    history = read_history(fit_dir)
    result: dict[str, Any] = {"epochs": len(history), "n_train": len(train_rows),
                              "n_val": len(val_rows), "seed": prepared.seed,
                              **prepared.trainable,
                              "frozen_batchnorm_layers": prepared.frozen_batchnorm_layers}
    if world_size > 1:
        result["devices"] = world_size
    if parts.monitor in history and len(history):
        column = history[parts.monitor]
        result[f"best_{parts.monitor}"] = float(column.min() if parts.monitor_mode == "min"
                                                else column.max())
    if fit_spec.predict:
        table = task.fit_predictions(model.eval(), config, context.rows(fit_spec.predict))
        with atomic_target(fit_dir / PREDICTIONS_FILE) as tmp:
            table.to_csv(tmp, index=False)
        result["predictions"] = PREDICTIONS_FILE
    return result


def read_fit_predictions(context: RunContext, keys: Sequence[str]) -> pd.DataFrame:
    """The ``predictions.csv`` of fits ``keys`` one after the other, with a ``fit`` column."""
    frames = []
    for key in keys:
        path = context.fit_dir(key) / PREDICTIONS_FILE
        if not path.is_file():
            raise RunDirError(f"{path}: missing (fit {key} holds no predictions)")
        frames.append(pd.read_csv(path, dtype={"sample": str, "subject": str})
                      .assign(fit=key))
    return pd.concat(frames, ignore_index=True)


def fit_chain(context: RunContext, key: str) -> list[str]:
    """Fit ``key`` and the fits it started from, in training order."""
    chain = [key]
    while context.fits[chain[0]].start.startswith("fit:"):
        chain.insert(0, context.fits[chain[0]].start[4:])
    return chain


def chain_history(context: RunContext, key: str) -> pd.DataFrame:
    """The learning curves of fit ``key`` and the fits it started from, in training order:
    ``fit`` (key), ``fit_epoch`` and ``epoch`` counted over the whole chain."""
    frames, offset = [], 0
    for item in fit_chain(context, key):
        history = read_history(context.fit_dir(item))
        if history.empty:
            continue
        history.insert(0, "fit", item)
        history["fit_epoch"] = history["epoch"]
        history["epoch"] = history["epoch"] + offset
        offset = int(history["epoch"].max()) + 1
        frames.append(history)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def plan_records(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / PLAN_FILE
    return read_json(path) if path.is_file() else []
