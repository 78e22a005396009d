"""Model size, compute and CPU latency: the numbers segmentation papers report.

Two FLOP conventions are given because papers mix them:

* ``flops``: :class:`torch.utils.flop_counter.FlopCounterMode`, which counts every matrix
  multiply and convolution at 2 FLOPs per multiply-accumulate (MAC) and nothing else.
* ``flops_thop_convention``: what the TinyU-Net paper reports, ``thop.profile`` MACs times 2.
  thop counts convolutions (no bias), Linear layers and BatchNorm (4 ops per output element
  when affine, 2 otherwise) and, as in the reference code where upsampling is a plain
  ``F.interpolate`` call, no upsampling. It is reproduced here with forward hooks, so thop
  is not needed. TinyU-Net's decoders compute their first 1x1 convolution in a cheaper
  order (:class:`~medlite.models.tinyunet.DecoderStage`); it is counted as the reference
  code computes it, on the full-resolution concatenation.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from medlite.models.tinyunet import DecoderStage

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED_CONVS = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


def _macs_of(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> int:
    if isinstance(module, _CONVS):
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        return output.numel() * per_output
    if isinstance(module, _TRANSPOSED_CONVS):
        # Every input element is scattered through the kernel to out_channels / groups maps.
        per_input = module.out_channels // module.groups * math.prod(module.kernel_size)
        return inputs[0].numel() * per_input
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, _BATCHNORMS):
        return output.numel() * (4 if module.affine else 2)
    if isinstance(module, DecoderStage):
        conv = module.cmrf.pwconv1.conv
        return inputs[1].shape[0] * math.prod(inputs[1].shape[2:]) * conv.out_channels \
            * conv.in_channels
    return 0


def count_thop_flops(model: nn.Module, example_input: Tensor) -> int:
    """``2 x`` thop-style MACs of one forward of ``model`` on ``example_input``.

    MACs = convolution and Linear multiply-accumulates (bias ignored) + 4 per BatchNorm
    output element (2 without affine). Runs the model once under ``no_grad`` in its current
    mode.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        total += _macs_of(module, inputs, output)

    counted = (*_CONVS, *_TRANSPOSED_CONVS, nn.Linear, *_BATCHNORMS, DecoderStage)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, counted)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    return 2 * total


def count_flops(model: nn.Module, example_input: Tensor) -> int:
    """FLOPs of one forward as counted by :class:`~torch.utils.flop_counter.FlopCounterMode`."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example_input)
    return int(counter.get_total_flops())


def measure_latency_ms(model: nn.Module, example_input: Tensor, threads: int = 2,
                       warmup: int = 3, repeats: int = 10) -> float:
    """Median wall-clock milliseconds of one forward under ``no_grad`` with ``threads`` torch
    threads (the previous thread count is restored)."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(example_input)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(example_input)
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous_threads)
    return 1000 * statistics.median(times)


def profile_model(model: nn.Module, input_size: Sequence[int] = (1, 3, 256, 256),
                  threads: int = 2, warmup: int = 3, repeats: int = 10) -> dict:
    """Parameters, FLOPs (two conventions) and median CPU latency of ``model``.

    The model runs in eval mode on a seeded standard-normal input of ``input_size``
    (float32, on the model's device) and gets its training flag back afterwards.

    Returns a dict: ``params`` (int), ``flops`` (int, FlopCounterMode), ``flops_thop_convention``
    (int, see the module docstring), ``latency_ms`` (float, median of ``repeats`` forwards
    after ``warmup``), ``threads`` (int) and ``input_size`` (tuple).
    """
    input_size = tuple(int(s) for s in input_size)
    device = next(model.parameters(), torch.empty(0)).device
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(input_size, generator=generator).to(device)
    was_training = model.training
    model.eval()
    try:
        result = {
            "params": count_parameters(model),
            "flops": count_flops(model, example),
            "flops_thop_convention": count_thop_flops(model, example),
            "latency_ms": measure_latency_ms(model, example, threads, warmup, repeats),
            "threads": int(threads),
            "input_size": input_size,
        }
    finally:
        model.train(was_training)
    return result


def format_profile(profile: dict) -> str:
    """A small two-column text table of a :func:`profile_model` result."""
    size = "x".join(str(s) for s in profile["input_size"])
    rows = [
        ("parameters", f"{profile['params']:,}"),
        ("FLOPs (FlopCounterMode)", f"{profile['flops'] / 1e9:.3f} G"),
        ("FLOPs (thop x 2, paper)", f"{profile['flops_thop_convention'] / 1e9:.3f} G"),
        (f"CPU latency ({profile.get('threads', '?')} threads)",
         f"{profile['latency_ms']:.1f} ms"),
        ("input", size),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
