"""Training throughput of medlite's shared Lightning loop against a minimal PyTorch loop.

Same model (TinyU-Net), same synthetic 256x256 data set and the same DataLoader (the one
``medlite.training.loop.make_loaders`` builds for the loop: per-epoch seeded shuffling),
same optimizer and loss, batch 8, 2 threads, in one process. The two loops alternate (hand,
medlite, hand, medlite, ...) so that a change in machine load hits both; the score is the
ratio of the median images/s. Goal: medlite's overhead <= 5%.

medlite's side is ``medlite.training.loop.fit`` itself, one epoch per round in a fresh fit
folder (callbacks, atomic checkpoint I/O, history, progress bar); its training steps are
timed from the start of the epoch to the end of its last training batch, so the validation
pass and the checkpoints written at the end of the epoch are left out, as the hand loop has
neither.

    python benchmarks/bench_training_overhead.py --rounds 3 --steps 12 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from medlite.config import OptimizerConfig, SchedulerConfig
from medlite.models import create_model
from medlite.tasks.segmentation import SegmentationConfig
from medlite.training.loop import TrainingParts, fit, make_loaders
from medlite.training.losses import DiceCELoss
from medlite.training.module import build_optimizer

SEED = 0


class RandomSegmentation(Dataset):
    """Fixed random tensors, so data loading costs the same in both loops."""

    def __init__(self, n: int, size: int, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.masks = torch.randint(0, 2, (n, size, size), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"input": self.images[index], "target": self.masks[index]}


def hand_loop(model, loader: DataLoader, optimizer_cfg: OptimizerConfig) -> float:
    """The minimal loop: forward, loss, backward, step. Returns images/s."""
    loss_fn = DiceCELoss()
    optimizer = build_optimizer(model.parameters(), optimizer_cfg)
    model.train()
    start = time.perf_counter()
    images = 0
    for batch in loader:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(batch["input"]), batch["target"])
        loss.backward()
        optimizer.step()
        images += len(batch["input"])
    return images / (time.perf_counter() - start)


class Throughput(pl.Callback):
    """Seconds and images from the start of the training epoch to its last training batch
    (before validation and the end-of-epoch checkpoints)."""

    def on_train_epoch_start(self, trainer, module):
        self.images = 0
        self.start = self.end = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.images += len(batch["input"])
        self.end = time.perf_counter()

    def images_per_s(self) -> float:
        return self.images / (self.end - self.start)


def loop_config(args) -> SegmentationConfig:
    """The trainer, optimizer and scheduler settings both loops use (the optimizer only in
    the hand loop; the scheduler only in medlite's)."""
    config = SegmentationConfig(seed=SEED)
    config.optimizer = OptimizerConfig(name="adam", lr=1e-4)
    config.scheduler = SchedulerConfig(name="cosine")
    config.trainer.max_epochs = 1
    config.trainer.batch_size = args.batch
    config.trainer.threads = args.threads
    config.trainer.accelerator = "cpu"
    config.trainer.devices = 1
    config.trainer.early_stopping_patience = None
    return config


def medlite_loop(parts: TrainingParts, config: SegmentationConfig, fit_dir: Path) -> float:
    """One epoch of ``medlite.training.loop.fit`` (with its progress bar) in a new fit
    folder. Returns training images/s."""
    timer = Throughput()
    parts.extra_callbacks = [timer]
    fit(parts, config, fit_dir, seed=SEED, progress=True)
    return timer.images_per_s()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12, help="batches per epoch")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = loop_config(args)
    torch.manual_seed(SEED)
    model = create_model("tinyunet")
    parts = TrainingParts(model=model, loss_fn=DiceCELoss(),
                          train_data=RandomSegmentation(args.steps * args.batch, args.size),
                          val_data=RandomSegmentation(1, args.size, seed=1))
    loader, _ = make_loaders(parts, config, SEED)  # the loader fit builds from these parts
    hand_loop(model, loader, config.optimizer)  # warm-up: allocator, oneDNN primitives
    hand, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            hand.append(hand_loop(model, loader, config.optimizer))
            ours.append(medlite_loop(parts, config, Path(tmp) / f"round{round_}"))
    result = {
        "hand_images_per_s": statistics.median(hand),
        "medlite_images_per_s": statistics.median(ours),
        "overhead_percent": 100 * (statistics.median(hand) / statistics.median(ours) - 1),
        "rounds": args.rounds, "batch": args.batch, "steps": args.steps, "size": args.size,
        "threads": args.threads, "hand_all": hand, "medlite_all": ours,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
