"""Training throughput of one TinyU-Net fit on one process against DDP ranks on this CPU.

Measures images/s of training steps (forward, backward, Adam) at a fixed global batch:

* one process with all the cores (``--threads``, the baseline);
* DDP with ``--ranks`` processes of ``threads / ranks`` threads each over gloo on
  127.0.0.1, with medlite's :class:`~medlite.training.distributed.GlobalBatchNorm`
  (``trainer.sync_batchnorm: true``, the default) and with per-rank BatchNorm.

Steady-state steps only: each DDP fit also pays the start-up of its rank processes (Python,
torch and Lightning imported, the run reopened), printed separately. Run::

    python benchmarks/bench_ddp.py --size 256 --batch 8 --steps 12
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist
from torch import nn


def make_model(widths):
    from medlite.models import create_model

    torch.manual_seed(0)
    return create_model("tinyunet", task="segmentation", num_classes=2, widths=widths)


def steps_per_second(model: nn.Module, batch: int, size: int, steps: int,
                     warmup: int = 2) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(batch, 3, size, size, generator=generator)
    target = torch.randint(0, 2, (batch, size, size), generator=generator)
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        loss = nn.functional.cross_entropy(model(inputs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def rank_main(rank: int, world: int, port: int, threads: int, sync: bool, args, queue):
    from medlite.training.distributed import GlobalBatchNorm, loopback_interface

    os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        model = make_model(args.widths)
        if sync:
            model = GlobalBatchNorm.convert(model)
        ddp = nn.parallel.DistributedDataParallel(model)
        rate = steps_per_second(ddp, args.batch // world, args.size, args.steps)
        queue.put(rate)
    finally:
        dist.destroy_process_group()


def ddp_rate(args, sync: bool) -> float:
    from medlite.training.distributed import free_loopback_port

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = free_loopback_port()
    threads = max(1, args.threads // args.ranks)
    ranks = [context.Process(target=rank_main, args=(r, args.ranks, port, threads, sync, args,
                                                       queue)) for r in range(args.ranks)]
    for process in ranks:
        process.start()
    rates = [queue.get(timeout=3600) for _ in ranks]
    for process in ranks:
        process.join()
    return min(rates)  # the ranks step together; the slowest sets the pace


def rank_startup_seconds() -> float:
    """What one rank process spends before training: the imports a rank needs."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import medlite.training.plan, lightning.pytorch"],
                   check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8, help="global batch")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--widths", type=int, nargs=4, default=[16, 32, 64, 128])
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    baseline = steps_per_second(make_model(args.widths), args.batch, args.size, args.steps)
    synced = ddp_rate(args, sync=True)
    local = ddp_rate(args, sync=False)
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm)
               for m in make_model(args.widths).modules())
    print(f"TinyU-Net widths {args.widths} ({n_bn} BatchNorm layers), {args.size} px, "
          f"global batch {args.batch}, {args.threads} threads")
    print(f"1 process x {args.threads} threads: {baseline * args.batch:.2f} images/s")
    threads = max(1, args.threads // args.ranks)
    for name, rate in (("sync BatchNorm", synced), ("per-rank BatchNorm", local)):
        print(f"DDP {args.ranks} x {threads} threads, {name}: {rate * args.batch:.2f} "
              f"images/s, {rate / baseline:.2f}x")
    print(f"rank start-up (imports): {rank_startup_seconds():.1f} s per fit")


if __name__ == "__main__":
    main()
