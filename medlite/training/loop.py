"""The shared training loop: Lightning's Trainer with medlite's callbacks and run layout."""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import lightning.pytorch as pl
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from medlite.config import BaseTaskConfig
from medlite.runs import save_torch_atomic, write_text_atomic
from medlite.training.checkpoint import AtomicCheckpointIO, model_state_from_checkpoint
from medlite.training.module import TaskModule

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
MODEL_FILE = "model.pt"
HISTORY_FILE = "history.csv"


@dataclass
class TrainingParts:
    """What a task recipe plugs into the loop."""

    model: nn.Module
    loss_fn: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader
    val_metrics: object | None = None
    prediction_fn: object | None = None
    monitor: str = "val_loss"
    monitor_mode: str = "min"
    extra_callbacks: list[Callback] = field(default_factory=list)


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


def configure_threads(threads: int | None) -> int:
    """Use ``threads`` torch CPU threads (default: every core) and return the number."""
    count = threads or os.cpu_count() or 1
    torch.set_num_threads(count)
    return count


def fit(parts: TrainingParts, config: BaseTaskConfig, run_dir: Path, *,
        resume: bool = False, progress: bool = True) -> Path:
    """Train ``parts`` with the config's trainer settings; return the best weights file.

    Checkpoints go to ``run_dir/checkpoints`` (``last.ckpt`` every epoch, ``best.ckpt`` on
    improvement of ``parts.monitor``); with ``resume`` training continues from
    ``last.ckpt`` (epoch, optimizer, scheduler, early-stopping and history state included).
    The best weights are also saved as a plain ``state_dict`` in ``run_dir/model.pt``.
    """
    run_dir = Path(run_dir)
    trainer_cfg = config.trainer
    checkpoint_dir = run_dir / CHECKPOINT_DIR
    module = TaskModule(
        parts.model, parts.loss_fn, optimizer=config.optimizer, scheduler=config.scheduler,
        max_epochs=trainer_cfg.max_epochs, val_metrics=parts.val_metrics,
        prediction_fn=parts.prediction_fn, monitor=parts.monitor,
        monitor_mode=parts.monitor_mode,
    )
    callbacks: list[Callback] = [
        ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor=parts.monitor,
                        mode=parts.monitor_mode, save_top_k=1, save_last=True,
                        enable_version_counter=False),
        HistoryCallback(run_dir / HISTORY_FILE),
        *parts.extra_callbacks,
    ]
    if trainer_cfg.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=parts.monitor, mode=parts.monitor_mode,
                                       patience=trainer_cfg.early_stopping_patience))
    max_time = (timedelta(minutes=trainer_cfg.max_time_minutes)
                if trainer_cfg.max_time_minutes else None)
    last = checkpoint_dir / LAST_CHECKPOINT
    ckpt_path = last if resume and last.is_file() else None
    with warnings.catch_warnings(), _quiet_lightning(not progress):
        # Lightning nags about worker counts and small logging intervals on laptops.
        warnings.filterwarnings("ignore", ".*isinstance.treespec, LeafSpec.*")
        trainer = pl.Trainer(
            default_root_dir=run_dir,
            max_epochs=trainer_cfg.max_epochs,
            max_time=max_time,
            accelerator=trainer_cfg.accelerator,
            devices=trainer_cfg.devices,
            precision=trainer_cfg.precision,
            deterministic=trainer_cfg.deterministic,
            limit_train_batches=trainer_cfg.limit_train_batches,
            callbacks=callbacks,
            plugins=[AtomicCheckpointIO()],
            logger=False,
            enable_progress_bar=progress,
            enable_model_summary=False,
            log_every_n_steps=max(1, min(50, len(parts.train_loader))),
            num_sanity_val_steps=0,
        )
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*number of training batches.*")
        trainer.fit(module, parts.train_loader, parts.val_loader, ckpt_path=ckpt_path,
                    weights_only=True)
    best = checkpoint_dir / BEST_CHECKPOINT
    source = best if best.is_file() else last
    state = model_state_from_checkpoint(source)
    save_torch_atomic(state, run_dir / MODEL_FILE)
    return run_dir / MODEL_FILE


@contextmanager
def _quiet_lightning(quiet: bool):
    """Without progress bars (ensembles of many jobs), also hide Lightning's per-fit banner
    (accelerator, tips); warnings still show."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    if quiet:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def read_history(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path)

