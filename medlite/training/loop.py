"""The shared training loop: Lightning's Trainer with medlite's data loaders, callbacks and
fit folder.

A fit folder holds::

    fit_dir/
      checkpoints/last.ckpt   the end of the latest epoch (weights, optimizer, schedule,
                              early stopping, history): what --resume continues from
      checkpoints/best.ckpt   the epoch with the best monitored validation metric
      history.csv             one row per epoch: losses, validation metrics, learning rate
      model.pt                the best weights as a plain state_dict
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
)
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medlite.config import BaseTaskConfig
from medlite.errors import ConfigError, RunDirError
from medlite.runs import save_torch_atomic, write_text_atomic
from medlite.training.checkpoint import (
    LAST_CHECKPOINT,
    SAVED_MARKER,
    AtomicCheckpointIO,
    model_state_from_checkpoint,
)
from medlite.training.distributed import GlobalBatchNorm, Rank, check_batches
from medlite.training.module import TaskModule
from medlite.training.seeding import EpochShuffleSampler, SeededItems, ShardSampler

CHECKPOINT_DIR = "checkpoints"
BEST_CHECKPOINT = "best.ckpt"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.csv"


@dataclass
class TrainingParts:
    """What a task recipe plugs into the loop.

    Attributes:
        model: the network to train.
        loss_fn: ``loss_fn(outputs, target) -> scalar``.
        train_data, val_data: datasets of ``{"input", "target"}`` dicts; the loop builds the
            loaders (shuffling and augmentation seeded per epoch and item).
        sample_weights: ``(len(train_data),)`` sampling weights for a class-balanced sampler
            (drawn with replacement); None shuffles.
        val_metrics, prediction_fn: see :class:`~medlite.training.module.TaskModule`.
        monitor, monitor_mode: the validation metric choosing the best epoch.
        keep: ``best`` keeps the weights of the epoch with the best monitored metric;
            ``last`` keeps the last epoch's and lets validation choose nothing (when the
            validation samples must stay unseen, e.g. a held-out fold scored afterwards).
        extra_callbacks: more Lightning callbacks (e.g. frozen BatchNorm layers kept in eval).
        channels_last: the recipe's choice for ``trainer.channels_last: auto``.
        batch_mixer: ``(inputs, targets) -> (inputs, targets)`` applied to training batches
            only, after the batch's seed is set (e.g. :func:`~medlite.training.mixup.mixup`).
    """

    model: nn.Module
    loss_fn: nn.Module
    train_data: Dataset
    val_data: Dataset
    sample_weights: np.ndarray | None = None
    val_metrics: object | None = None
    prediction_fn: object | None = None
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    keep: str = "best"
    extra_callbacks: list[Callback] = field(default_factory=list)
    channels_last: bool = True
    batch_mixer: Callable | None = None


class HistoryCallback(Callback):
    """Keeps one row of logged metrics per epoch and writes ``history.csv``.

    The rows are part of the checkpoint state, so a resumed run continues the same history
    instead of duplicating or losing epochs.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            row[key] = float(value)
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        if trainer.is_global_zero:
            write_text_atomic(self.path, pd.DataFrame(self.rows).to_csv(index=False))

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rows = list(state_dict.get("rows", []))


class FrozenBatchNormEval(Callback):
    """Keeps frozen BatchNorm layers in eval mode during training, so their running
    statistics (part of the pretrained weights) do not drift with the new data."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from medlite.models.freezing import set_frozen_batchnorm_eval

        set_frozen_batchnorm_eval(pl_module)


def configure_threads(threads: int | None) -> int:
    """Use ``threads`` torch CPU threads (default: every core) and return the number."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


def make_loaders(parts: TrainingParts, config: BaseTaskConfig, seed: int,
                 rank: Rank | None = None) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders. Training order and augmentation depend only on
    ``(seed, epoch, position)``, so they are the same whatever the number of workers and
    after a resume (see :mod:`medlite.training.seeding`). Under DDP (``rank``) each rank
    loads its share of every global batch and of the validation set."""
    batch, workers = config.trainer.batch_size, config.trainer.num_workers
    n_train, n_val = len(parts.train_data), len(parts.val_data)
    if rank is None or rank.world_size == 1:
        share, drop_last, val_sampler = batch, n_train > batch, None
        sampler = EpochShuffleSampler(n_train, seed, parts.sample_weights)
    else:  # the sampler drops the incomplete global batch itself
        share, drop_last = check_batches(config.trainer, rank.world_size, n_train, n_val), False
        sampler = EpochShuffleSampler(n_train, seed, parts.sample_weights, rank=rank.rank,
                                      world_size=rank.world_size, global_batch=batch)
        val_sampler = ShardSampler(n_val, rank.rank, rank.world_size)
    train = DataLoader(SeededItems(parts.train_data), batch_size=share, sampler=sampler,
                       drop_last=drop_last, num_workers=workers,
                       persistent_workers=workers > 0)
    val = DataLoader(parts.val_data, batch_size=share, sampler=val_sampler,
                     num_workers=workers, persistent_workers=workers > 0)
    return train, val


def fit(parts: TrainingParts, config: BaseTaskConfig, fit_dir: Path, *, seed: int,
        progress: bool = True, rank: Rank | None = None) -> Path:
    """Train ``parts`` with the config's trainer settings in ``fit_dir``; return the file of
    the best weights (``fit_dir/model.pt``).

    With ``rank`` this process is one rank of a DDP fit whose processes were started by
    :func:`medlite.training.distributed.launch_fit`; rank 0 writes the files.

    ``checkpoints/last.ckpt`` is written at the end of every epoch and training continues
    from it when it exists (an interrupted fit). A fit that was checkpointed but whose
    ``last.ckpt`` has gone is an error: starting again silently would discard its epochs.
    """
    fit_dir = Path(fit_dir)
    trainer_cfg = config.trainer
    checkpoint_dir = fit_dir / CHECKPOINT_DIR
    last = checkpoint_dir / LAST_CHECKPOINT
    history_path = fit_dir / HISTORY_FILE
    if not last.is_file() and (checkpoint_dir / SAVED_MARKER).is_file():
        raise RunDirError(f"{fit_dir}: the fit was checkpointed but {last} is missing, so "
                          f"it cannot continue; delete {fit_dir} to train it again from the "
                          "start")
    module = TaskModule(
        parts.model, parts.loss_fn, optimizer=config.optimizer, scheduler=config.scheduler,
        max_epochs=trainer_cfg.max_epochs, val_metrics=parts.val_metrics,
        prediction_fn=parts.prediction_fn, monitor=parts.monitor,
        monitor_mode=parts.monitor_mode, seed=seed, batch_mixer=parts.batch_mixer,
        channels_last=(parts.channels_last if trainer_cfg.channels_last == "auto"
                       else trainer_cfg.channels_last),
    )
    if parts.keep == "last" and (trainer_cfg.early_stopping_patience
                                 or config.scheduler.name == "plateau"):
        raise ConfigError("trainer.early_stopping_patience / scheduler.name: this fit keeps "
                          "its last epoch so that its validation samples choose nothing; "
                          "early stopping and the plateau scheduler would watch them")
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=checkpoint_dir, filename="last", monitor=None, save_top_k=1,
                        every_n_epochs=1, save_on_train_epoch_end=True,
                        enable_version_counter=False),
        HistoryCallback(history_path),
        *parts.extra_callbacks,
    ]
    if parts.keep == "best":
        callbacks.insert(0, ModelCheckpoint(
            dirpath=checkpoint_dir, filename="best", monitor=parts.monitor,
            mode=parts.monitor_mode, save_top_k=1, save_last=False,
            save_on_train_epoch_end=True, enable_version_counter=False))
    if trainer_cfg.ema_decay is not None:
        callbacks.append(EMAWeightAveraging(decay=trainer_cfg.ema_decay))
    if trainer_cfg.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=parts.monitor, mode=parts.monitor_mode,
                                       patience=trainer_cfg.early_stopping_patience,
                                       check_on_train_epoch_end=True))
    max_time = (timedelta(minutes=trainer_cfg.max_time_minutes)
                if trainer_cfg.max_time_minutes else None)
    train_loader, val_loader = make_loaders(parts, config, seed, rank)
    distributed = rank is not None and rank.world_size > 1
    if distributed and trainer_cfg.sync_batchnorm:
        module.model = GlobalBatchNorm.convert(module.model)
    with warnings.catch_warnings(), _quiet_lightning(not progress):
        warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*number of training batches.*")
        warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
        trainer = pl.Trainer(
            default_root_dir=fit_dir,
            max_epochs=trainer_cfg.max_epochs,
            max_time=max_time,
            accelerator=trainer_cfg.accelerator,
            **(_ddp_settings(rank) if distributed else {"devices": 1}),
            precision=trainer_cfg.precision,
            deterministic=trainer_cfg.deterministic,
            limit_train_batches=trainer_cfg.limit_train_batches,
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO(), *([LightningEnvironment()] if distributed else [])],
            logger=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            log_every_n_steps=max(1, min(50, len(train_loader))),
            num_sanity_val_steps=0,
        )
        trainer.fit(module, train_loader, val_loader,
                    ckpt_path=last if last.is_file() else None, weights_only=True)
    if not trainer.is_global_zero:
        return fit_dir / MODEL_FILE
    best = checkpoint_dir / BEST_CHECKPOINT
    state = model_state_from_checkpoint(best if parts.keep == "best" and best.is_file()
                                        else last)
    save_torch_atomic(state, fit_dir / MODEL_FILE)
    return fit_dir / MODEL_FILE


def _ddp_settings(rank: Rank) -> dict:
    """Trainer arguments of one rank: processes started outside Lightning (it reads
    ``LOCAL_RANK``) and medlite's own samplers (Lightning's would replace the seeded
    order). With ``trainer.sync_batchnorm`` BatchNorm layers become
    :class:`GlobalBatchNorm` in :func:`fit`."""
    return {"devices": rank.world_size, "num_nodes": 1,
            "strategy": DDPStrategy(),
            "use_distributed_sampler": False}


@contextmanager
def _quiet_lightning(quiet: bool):
    """Without progress bars (plans of many fits), also hide Lightning's per-fit banner
    (accelerator, tips); warnings still show."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_history(fit_dir: Path) -> pd.DataFrame:
    path = Path(fit_dir) / HISTORY_FILE
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path)
