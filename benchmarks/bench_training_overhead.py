"""Training throughput of medlite's shared Lightning loop against a minimal PyTorch loop.

Same model (TinyU-Net), same synthetic 256x256 data set and DataLoader, same optimizer and
loss, batch 8, 2 threads, in one process. The two loops alternate (hand, medlite, hand,
medlite, ...) so that a change in machine load hits both; the score is the ratio of the
median images/s. Goal: medlite's overhead <= 5%.

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
from medlite.training.checkpoint import AtomicCheckpointIO
from medlite.training.losses import DiceCELoss
from medlite.training.module import TaskModule, build_optimizer


class RandomSegmentation(Dataset):
    """Fixed random tensors, so data loading costs the same in both loops."""

    def __init__(self, n: int, size: int):
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.masks = torch.randint(0, 2, (n, size, size), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"input": self.images[index], "target": self.masks[index]}


def hand_loop(model, loader, optimizer_cfg) -> float:
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
    def on_train_epoch_start(self, trainer, module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.start


def medlite_loop(model, loader, optimizer_cfg, run_dir: Path) -> float:
    """medlite's TaskModule in a Trainer configured as ``medlite.training.loop.fit`` does
    (progress bar, atomic checkpoint I/O, epoch-level logging), one epoch. Returns images/s."""
    module = TaskModule(model, DiceCELoss(), optimizer=optimizer_cfg,
                        scheduler=SchedulerConfig(name="cosine"), max_epochs=1)
    timer = Throughput()
    trainer = pl.Trainer(default_root_dir=run_dir, max_epochs=1, accelerator="cpu",
                         callbacks=[timer], plugins=[AtomicCheckpointIO()], logger=False,
                         enable_progress_bar=True, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0,
                         limit_val_batches=0)
    trainer.fit(module, loader)
    return len(loader.dataset) / timer.seconds


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
    dataset = RandomSegmentation(args.steps * args.batch, args.size)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True)
    optimizer_cfg = OptimizerConfig(name="adam", lr=1e-4)
    torch.manual_seed(0)
    model = create_model("tinyunet")
    hand_loop(model, loader, optimizer_cfg)  # warm-up: allocator, oneDNN primitives
    hand, ours = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            hand.append(hand_loop(model, loader, optimizer_cfg))
            ours.append(medlite_loop(model, loader, optimizer_cfg, Path(tmp)))
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
