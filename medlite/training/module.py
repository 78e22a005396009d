"""The one LightningModule every task trains with.

A task recipe hands in the network, the loss, a function turning network outputs into the
predictions its validation metrics expect, and a ``torchmetrics.MetricCollection``. Batches
are dicts with at least ``input`` and ``target``.

The learning-rate schedule is stepped here, at the end of each training epoch and before
the epoch's checkpoint is written, and its state travels in the checkpoint: Lightning would
step it after writing ``last.ckpt``, so a run resumed from that checkpoint would repeat or
skip a step of the schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics import MeanMetric, MetricCollection

from medlite.config import OptimizerConfig, SchedulerConfig
from medlite.training.seeding import derive_seed, seed_everything


def build_optimizer(params, config: OptimizerConfig) -> torch.optim.Optimizer:
    fused = config.fused or None  # None: torch's default (foreach)
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas,
                                weight_decay=config.weight_decay, fused=fused)
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=config.betas,
                                 weight_decay=config.weight_decay, fused=fused)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def build_scheduler(optimizer, config: SchedulerConfig, max_epochs: int, mode: str):
    """An epoch-wise learning-rate scheduler, or None."""
    if config.name == "none":
        return None
    if config.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max_epochs, eta_min=config.min_lr)
    if config.name == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_size, gamma=config.factor)
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=config.factor, patience=config.patience,
        threshold=config.threshold)


class TaskModule(pl.LightningModule):
    """Wraps a network for training; knows nothing about the task beyond its parts.

    Args:
        model: the network; ``model(batch["input"])`` gives the outputs the loss takes.
        loss_fn: ``loss_fn(outputs, batch["target"]) -> scalar``.
        optimizer, scheduler: config sections.
        max_epochs: for the cosine schedule's period.
        val_metrics: updated with ``(prediction_fn(outputs), target)`` on validation batches;
            logged with a ``val_`` prefix.
        prediction_fn: outputs -> what ``val_metrics`` expect (e.g. argmax class indices).
        monitor, monitor_mode: the metric early stopping, the best checkpoint and the plateau
            scheduler follow.
        seed: the fit's seed; dropout in batch ``b`` of epoch ``e`` draws from a generator
            seeded with ``(seed, e, b)`` (see :mod:`medlite.training.seeding`).
        batch_mixer: ``(inputs, targets) -> (inputs, targets)`` applied to each training batch
            after its seed is set (mixup); validation batches are left as they are.
        channels_last: keep the network's 4-D weights and image batches in the channels-last
            memory layout, which oneDNN's CPU convolutions run faster on.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module | Callable, *,
                 optimizer: OptimizerConfig, scheduler: SchedulerConfig, max_epochs: int,
                 val_metrics: MetricCollection | None = None,
                 prediction_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 monitor: str = "val_loss", monitor_mode: str = "min", seed: int = 0,
                 batch_mixer: Callable | None = None, channels_last: bool = False):
        super().__init__()
        self.channels_last = channels_last
        self.model = model.to(memory_format=torch.channels_last) if channels_last else model
        self.loss_fn = loss_fn
        self.optimizer_config = optimizer
        self.scheduler_config = scheduler
        self.max_epochs = max_epochs
        self.val_metrics = val_metrics.clone(prefix="val_") if val_metrics is not None else None
        self.prediction_fn = prediction_fn or (lambda outputs: outputs)
        self.monitor = monitor
        self.monitor_mode = monitor_mode
        self.seed = seed
        self.batch_mixer = batch_mixer
        self.epoch_scheduler = None
        self._scheduler_state: dict | None = None
        # Means over samples, reduced as sums over every DDP rank: exactly the loss of one
        # process seeing the global batch, even when the ranks' validation shares differ.
        self.train_loss_mean = MeanMetric()
        self.val_loss_mean = MeanMetric()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(self._laid_out(inputs))

    def _laid_out(self, inputs):
        if self.channels_last and isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            return inputs.contiguous(memory_format=torch.channels_last)
        return inputs

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        position = (self.seed, self.current_epoch, batch_idx)
        if self.trainer.world_size > 1:  # each rank's dropout masks its own samples
            position = (*position, self.global_rank)
        seed_everything(derive_seed("batch", *position))
        inputs, targets = batch["input"], batch["target"]
        if self.batch_mixer is not None:
            inputs, targets = self.batch_mixer(inputs, targets)
        outputs = self(inputs)
        loss = self.loss_fn(outputs, targets)
        self.train_loss_mean.update(loss.detach(), weight=len(batch["input"]))
        self.log("train_loss", self.train_loss_mean, on_step=False, on_epoch=True,
                 prog_bar=True)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        outputs = self(batch["input"])
        loss = self.loss_fn(outputs, batch["target"])
        self.val_loss_mean.update(loss, weight=len(batch["input"]))
        self.log("val_loss", self.val_loss_mean, on_step=False, on_epoch=True, prog_bar=True)
        if self.val_metrics is not None:
            self.val_metrics.update(self.prediction_fn(outputs), batch["target"])

    def on_validation_epoch_end(self) -> None:
        if self.val_metrics is not None:
            values = self.val_metrics.compute()
            self.log_dict({k: v.float() for k, v in values.items()}, prog_bar=True)
            self.val_metrics.reset()

    def configure_optimizers(self):
        optimizer = build_optimizer(self.model.parameters(), self.optimizer_config)
        self.epoch_scheduler = build_scheduler(optimizer, self.scheduler_config,
                                               self.max_epochs, self.monitor_mode)
        if self.epoch_scheduler is not None and self._scheduler_state is not None:
            self.epoch_scheduler.load_state_dict(self._scheduler_state)
        return optimizer

    def on_train_epoch_end(self) -> None:
        scheduler = self.epoch_scheduler
        if scheduler is None:
            return
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            value = self.trainer.callback_metrics.get(self.monitor)
            if value is not None:
                scheduler.step(float(value))
        else:
            scheduler.step()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.epoch_scheduler is not None:
            checkpoint["medlite_scheduler"] = self.epoch_scheduler.state_dict()
        checkpoint["medlite_seed"] = self.seed

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._scheduler_state = checkpoint.get("medlite_scheduler")
        if self.epoch_scheduler is not None and self._scheduler_state is not None:
            self.epoch_scheduler.load_state_dict(self._scheduler_state)
