"""CPU training throughput: medlite's training mode against the hand-written fp32 loop.

Two models, in one process, each variant timed in interleaved rounds so that a change of
machine load hits all of them:

* TinyU-Net, 256x256, batch 8, Dice + CE, Adam.
* MobileNetV2 (ImageNet layout, 7 classes), 64 and 128 px, batch 64, cross-entropy, Adam.

The baseline is a minimal PyTorch loop (forward, loss, backward, step) in float32 with the
default contiguous layout and, for TinyU-Net, the published operation order of the decoders
(bicubic upsampling, concatenation, CMRF). Variants, each alone and combined:

* ``decoder-order``: TinyU-Net's decoders as medlite computes them (1x1 convolution before
  the upsampling, upsampling as a depthwise convolution; the same function).
* ``channels-last``: weights and batches in channels-last layout (``trainer.channels_last``).
* ``bf16``: ``torch.autocast("cpu", torch.bfloat16)`` (``trainer.precision: bf16-mixed``).
* ``fused-adam``: ``torch.optim.Adam(fused=True)``.
* ``compile``: ``torch.compile`` of the network (first steps excluded: compilation).
* ``medlite``: ``medlite.training.loop.fit`` with its defaults (one epoch per round).

    python benchmarks/bench_training_speed.py --rounds 3 --json runs/training_speed.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medlite.models import create_model
from medlite.models.tinyunet import DecoderStage
from medlite.runs import write_json
from medlite.training.loop import TrainingParts, fit
from medlite.training.losses import DiceCELoss

sys.path.insert(0, str(Path(__file__).parent))
from bench_training_overhead import loop_config  # noqa: E402

SEED = 0


class PublishedOrderDecoder(nn.Module):
    """A TinyU-Net decoder computed as published: upsample, concatenate, CMRF."""

    def __init__(self, stage: DecoderStage):
        super().__init__()
        self.cmrf = stage.cmrf

    def forward(self, x, skip):
        upsampled = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
        return self.cmrf(torch.cat([upsampled, skip], dim=1))


def published_order(model: nn.Module) -> nn.Module:
    for name in ("decoder4", "decoder3", "decoder2", "decoder1"):
        setattr(model, name, PublishedOrderDecoder(getattr(model, name)))
    return model


class RandomData(Dataset):
    """Fixed random images and targets (masks, or class labels when ``classes``)."""

    def __init__(self, n: int, size: int, classes: int | None = None):
        generator = torch.Generator().manual_seed(SEED)
        self.images = torch.randn(n, 3, size, size, generator=generator)
        self.targets = (torch.randint(0, classes, (n,), generator=generator) if classes
                        else torch.randint(0, 2, (n, size, size), generator=generator))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"input": self.images[index], "target": self.targets[index]}


def build(model_name: str, *, reference: bool) -> nn.Module:
    torch.manual_seed(SEED)
    if model_name == "tinyunet":
        model = create_model("tinyunet")
        return published_order(model) if reference else model
    return create_model("mobilenet_v2", num_classes=7)


def hand_loop(model: nn.Module, loader: DataLoader, loss_fn, *, channels_last: bool,
              bf16: bool, fused: bool, compiled: bool, warmup: int) -> float:
    """Forward, loss, backward, step; images/s after ``warmup`` steps."""
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=fused or None)
    network = torch.compile(model) if compiled else model
    model.train()
    images, start = 0, None
    for step, batch in enumerate(loader):
        if step == warmup:
            images, start = 0, time.perf_counter()
        inputs = batch["input"]
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with autocast:
            outputs = network(inputs)
        loss = loss_fn(outputs.float(), batch["target"])
        loss.backward()
        optimizer.step()
        images += len(inputs)
    return images / (time.perf_counter() - start)


HAND_VARIANTS = {
    # name: (reference decoders, channels_last, bf16, fused, compiled)
    "fp32 baseline": (True, False, False, False, False),
    "decoder-order": (False, False, False, False, False),
    "channels-last": (True, True, False, False, False),
    "decoder-order + channels-last": (False, True, False, False, False),
    "decoder-order + channels-last + fused-adam": (False, True, False, True, False),
    "decoder-order + channels-last + bf16": (False, True, True, False, False),
    "decoder-order + compile": (False, False, False, False, True),
}
MOBILENET_VARIANTS = ("fp32 baseline", "channels-last", "decoder-order + channels-last + bf16",
                      "decoder-order + channels-last + fused-adam", "decoder-order + compile")


class WarmThroughput(pl.Callback):
    """Training images/s after the first ``warmup`` batches of the epoch."""

    def __init__(self, warmup: int):
        self.warmup = warmup

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx + 1 == self.warmup:
            self.images, self.start = 0, time.perf_counter()
        elif batch_idx + 1 > self.warmup:
            self.images += len(batch["input"])
            self.end = time.perf_counter()

    def images_per_s(self) -> float:
        return self.images / (self.end - self.start)


def medlite_images_per_s(model_name: str, data: Dataset, batch: int, args, loss_fn,
                         fit_dir: Path) -> float:
    config = loop_config(argparse.Namespace(batch=batch, threads=args.threads))
    timer = WarmThroughput(args.warmup)
    parts = TrainingParts(model=build(model_name, reference=False), loss_fn=loss_fn,
                          train_data=data, val_data=RandomData(1, data.images.shape[-1]),
                          extra_callbacks=[timer])
    if model_name != "tinyunet":
        parts.val_data = RandomData(1, data.images.shape[-1], classes=7)
    fit(parts, config, fit_dir, seed=SEED, progress=False)
    return timer.images_per_s()


def run_case(model_name: str, size: int, batch: int, args, tmp: Path) -> dict:
    classes = None if model_name == "tinyunet" else 7
    steps = args.steps + args.warmup
    data = RandomData(steps * batch, size, classes)
    loader = DataLoader(data, batch_size=batch, shuffle=False)
    loss_fn = DiceCELoss() if model_name == "tinyunet" else nn.CrossEntropyLoss()
    names = list(HAND_VARIANTS) if model_name == "tinyunet" else list(MOBILENET_VARIANTS)
    results: dict[str, list[float]] = {name: [] for name in [*names, "medlite"]}
    for round_ in range(args.rounds):
        for name in names:
            if round_ and name in args.once:
                continue
            reference, channels_last, bf16, fused, compiled = HAND_VARIANTS[name]
            try:
                value = hand_loop(build(model_name, reference=reference), loader, loss_fn,
                                  channels_last=channels_last, bf16=bf16, fused=fused,
                                  compiled=compiled, warmup=args.warmup + 2 * compiled)
            except Exception as error:  # torch.compile fails on some CPU graphs: record it
                results[name] = [f"failed: {type(error).__name__}: {str(error)[:120]}"]
                continue
            results[name].append(value)
            print(f"{model_name} {size}px round {round_} {name}: {value:.2f} images/s",
                  flush=True)
        value = medlite_images_per_s(model_name, data, batch, args, loss_fn,
                                     tmp / f"{model_name}-{size}-{round_}")
        results["medlite"].append(value)
        print(f"{model_name} {size}px round {round_} medlite: {value:.2f} images/s", flush=True)
    baseline = statistics.median(results["fp32 baseline"])
    table = {}
    for name, values in results.items():
        numbers = [v for v in values if isinstance(v, float)]
        if not numbers:
            table[name] = {"error": values[0] if values else "not run"}
            continue
        median = statistics.median(numbers)
        table[name] = {"images_per_s": round(median, 3), "speedup": round(median / baseline, 3),
                       "all": [round(v, 3) for v in numbers]}
    return {"model": model_name, "size": size, "batch": batch, "variants": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed batches per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=["tinyunet:256:8", "mobilenet_v2:64:64",
                                                        "mobilenet_v2:128:64"])
    parser.add_argument("--once", nargs="*", default=[
        "decoder-order + channels-last + bf16", "decoder-order + compile"],
        help="variants timed in the first round only (the slow rejections)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.models:
            name, size, batch = spec.split(":")
            cases.append(run_case(name, int(size), int(batch), args, Path(tmp)))
    result = {"threads": args.threads, "rounds": args.rounds, "steps": args.steps,
              "torch": torch.__version__, "cases": cases}
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
