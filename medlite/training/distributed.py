"""One fit on several devices: Lightning's DDP, with processes medlite starts itself.

With ``trainer.devices: N`` (N > 1) a fit runs as N rank processes, one per device (a GPU
each, or on a CPU-only machine N processes that split the cores), that talk over
127.0.0.1 (gloo on a CPU, NCCL on GPUs). Each rank reopens the run from its folder,
builds the same network and data, and trains its share of every batch; DDP averages the
gradients. Rank 0 writes the checkpoints, the history and ``model.pt``; the process that
launched the ranks (the executor's) waits for them and then finishes the fit as usual
(predictions, finishing step).

Why medlite launches the ranks instead of Lightning: Lightning's own launcher re-runs the
command line (``sys.argv``) for every rank, which would re-run a whole ``medlite train``
plan, a test session or a Dask worker; its spawn launcher pickles the trainer and the data.
Here a rank is ``python -m medlite.training.distributed RUN FIT RANK WORLD THREADS``, which
depends only on the run directory, like any fit of the plan. Lightning sees ``LOCAL_RANK``
and leaves the launching to us.

``trainer.batch_size`` stays the *global* batch: each rank takes ``batch_size / N`` of the
same sample order the single-process loop uses (:class:`~medlite.training.seeding.
EpochShuffleSampler` with a rank), BatchNorm statistics are synchronised over the ranks and
the losses and validation metrics are reduced exactly (sums over every sample), so N
devices follow the loss curve of one up to float rounding.

A rank whose launcher dies (the driver killed) stops itself, so an interrupted run leaves
no orphan training in the background, and ``--resume`` continues from ``last.ckpt``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from medlite.config import TrainerConfig
from medlite.errors import ConfigError, MedliteError

LOG_DIR = "ddp"


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) that autograd sees through: the gradient of a sum over ranks is the
    sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the global batch of a DDP fit.

    torch's ``SyncBatchNorm`` refuses CPU modules, so a CPU fit of several processes would
    normalise each rank's share on its own statistics and drift from the single-process
    loop. Here every rank adds its per-channel sums, sums of squares and counts in one
    all-reduce that autograd sees through, so the forward and the gradients are those of one
    process normalising the whole batch. Eval mode and frozen layers use the running
    statistics and need no communication. The state dict is a plain BatchNorm's.

    Shapes: input ``(N, C, *)`` with C = ``num_features``; output the same.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        batch_statistics = self.training or not self.track_running_stats
        if not batch_statistics or not dist.is_available() or not dist.is_initialized() \
                or dist.get_world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = (1, channels) + (1,) * (input.dim() - 2)
        # Sums in the input's precision, around the running mean (the same on every rank)
        # so that E[x^2] - E[x]^2 does not cancel; combined over ranks in float64.
        centre = (self.running_mean.detach() if self.running_mean is not None
                  else input.new_zeros(channels))
        shifted = input - centre.to(input.dtype).view(shape)
        count = torch.full((1,), input.numel() / channels, dtype=torch.float64,
                           device=input.device)
        totals = _SumOverRanks.apply(torch.cat([
            shifted.sum(dims).double(), (shifted * shifted).sum(dims).double(), count]))
        n = totals[-1]
        offset = totals[:channels] / n
        mean = centre.double() + offset
        var = (totals[channels:2 * channels] / n - offset * offset).clamp_min(0)
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * n / max(n - 1, 1))
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight
            shift = shift * self.weight + self.bias
        return input * scale.to(input.dtype).view(shape) + shift.to(input.dtype).view(shape)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        momentum = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                    else self.momentum)
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """``module`` with every BatchNorm layer replaced by a :class:`GlobalBatchNorm`
        holding the same parameters, buffers, trainability and mode."""
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
                module, (cls, nn.SyncBatchNorm)):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
            converted.load_state_dict(module.state_dict())
            if module.affine:
                converted.weight.requires_grad_(module.weight.requires_grad)
                converted.bias.requires_grad_(module.bias.requires_grad)
            converted.train(module.training)
            return converted
        for name, child in module.named_children():
            module.add_module(name, cls.convert(child))
        return module


@dataclass(frozen=True)
class Rank:
    """Where this process is in a DDP fit: ``rank`` of ``world_size`` (one node)."""

    rank: int
    world_size: int


def fit_world_size(trainer: TrainerConfig) -> int:
    """How many devices (rank processes) one fit of ``trainer`` trains on."""
    if trainer.devices != "auto":
        return int(trainer.devices)
    if trainer.strategy != "ddp":
        return 1
    gpus = torch.cuda.device_count() if trainer.accelerator in ("auto", "gpu", "cuda") else 0
    if gpus < 1:
        raise ConfigError("trainer.devices: strategy ddp without GPUs needs the number of CPU "
                          "processes, e.g. trainer.devices=2")
    return gpus


def threads_per_rank(trainer: TrainerConfig, world_size: int) -> int:
    """torch CPU threads of each rank: ``trainer.threads``, else the cores split evenly."""
    return trainer.threads or max(1, (os.cpu_count() or 1) // world_size)


def check_batches(trainer: TrainerConfig, world_size: int, n_train: int, n_val: int) -> int:
    """The per-rank batch size; refuses what DDP cannot split evenly."""
    batch = trainer.batch_size
    if batch % world_size:
        raise ConfigError(f"trainer.batch_size: the global batch {batch} does not split "
                          f"evenly over {world_size} devices")
    if n_train < batch:
        raise ConfigError(f"trainer.batch_size: {n_train} training samples are fewer than "
                          f"one global batch of {batch} on {world_size} devices")
    if n_val < world_size:
        raise ConfigError(f"trainer.devices: {n_val} validation samples cannot be shared by "
                          f"{world_size} devices")
    return batch // world_size


def loopback_interface() -> str:
    """The name of the loopback network interface (``lo`` on Linux, ``lo0`` on macOS)."""
    names = [name for _, name in socket.if_nameindex()]
    return next((name for name in names if name.startswith("lo")), "lo")


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_environment(rank: int, world_size: int, port: int, threads: int) -> dict[str, str]:
    """The environment of one rank process: Lightning's variables for processes launched
    outside it, and every collective bound to the loopback interface."""
    interface = loopback_interface()
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world_size), "NODE_RANK": "0", "LOCAL_RANK": str(rank),
            "GLOO_SOCKET_IFNAME": interface, "NCCL_SOCKET_IFNAME": interface,
            "OMP_NUM_THREADS": str(threads)}


def launch_fit(run_dir: Path, fit_key: str, fit_dir: Path, world_size: int, threads: int,
               *, progress: bool = False, poll_seconds: float = 0.2) -> None:
    """Train fit ``fit_key`` of the run in ``run_dir`` as ``world_size`` rank processes and
    wait for them. Each rank's output goes to ``fit_dir/ddp/rank<r>.log`` (rank 0's to the
    terminal with ``progress``). A rank that fails stops the others.

    Raises:
        MedliteError: a rank exited with an error (its log named).
    """
    log_dir = Path(fit_dir) / LOG_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_loopback_port()
    ranks: list[tuple[subprocess.Popen, Path]] = []
    try:
        for rank in range(world_size):
            log_path = log_dir / f"rank{rank}.log"
            show = progress and rank == 0
            command = [sys.executable, "-m", "medlite.training.distributed", str(run_dir),
                       fit_key, str(rank), str(world_size), str(threads)]
            if show:
                command.append("--progress")
            with open(log_path, "w") as log:
                process = subprocess.Popen(command, env=rank_environment(
                    rank, world_size, port, threads), stdin=subprocess.DEVNULL,
                    stdout=None if show else log, stderr=None if show else subprocess.STDOUT)
            ranks.append((process, log_path))
        # Until all have exited, or one has failed (the others would wait for it forever).
        while any(process.poll() is None for process, _ in ranks) and not any(
                process.returncode not in (None, 0) for process, _ in ranks):
            time.sleep(poll_seconds)
    finally:
        for process, _ in ranks:
            if process.poll() is None:
                process.kill()
            process.wait()
    for rank, (process, log_path) in enumerate(ranks):
        if process.returncode != 0:
            raise MedliteError(f"fit {fit_key}: DDP rank {rank} of {world_size} exited with "
                               f"code {process.returncode}: {last_line(log_path)} "
                               f"(log: {log_path})")


def last_line(path: Path) -> str:
    lines = [line for line in Path(path).read_text(errors="replace").splitlines()
             if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _stop_with_parent(poll_seconds: float = 1.0) -> None:
    """Exit this rank when the process that launched it is gone (killed driver)."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_seconds)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="medlite-parent-watch", daemon=True).start()


def _main(argv: list[str]) -> int:
    from medlite.training.loop import fit
    from medlite.training.plan import open_context, prepare_network

    run_dir, fit_key, rank, world_size, threads = argv[:5]
    progress = "--progress" in argv[5:]
    _stop_with_parent()
    torch.set_num_threads(int(threads))
    context = open_context(Path(run_dir))
    prepared = prepare_network(context, context.fits[fit_key])
    fit(prepared.parts, prepared.config, context.fit_dir(fit_key), seed=prepared.seed,
        progress=progress, rank=Rank(int(rank), int(world_size)))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
