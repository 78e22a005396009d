"""CPU inference speed of TinyU-Net: eager vs optimize_for_inference vs plain ONNX Runtime.

All variants run in one process, interleaved round by round so that load from other
processes hits them alike. For each: median and minimum milliseconds per forward, the ratio
of medians against eager, and the max abs difference of its logits from eager.

    python benchmarks/bench_inference.py --threads 2 --size 256 --json results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medlite.inference.export import onnx_bytes
from medlite.inference.fast import OnnxRuntimeModel, optimize_for_inference
from medlite.models import TinyUNet


def time_interleaved(variants: dict[str, Callable], example: torch.Tensor, warmup: int,
                     repeats: int) -> dict[str, list[float]]:
    """Milliseconds per forward of each variant, ``repeats`` rounds of one call each."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for run in variants.values():
            for _ in range(warmup):
                run(example)
        for _ in range(repeats):
            for name, run in variants.items():
                start = time.perf_counter()
                run(example)
                times[name].append(1000 * (time.perf_counter() - start))
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="image height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--weights", type=Path, help="optional TinyU-Net state_dict")
    parser.add_argument("--skip-onnx", action="store_true", help="leave out ONNX Runtime")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model = TinyUNet(3, 2)
    if args.weights is not None:
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    model.eval()
    example = torch.randn(args.batch, 3, args.size, args.size)

    builders: dict[str, Callable[[], Callable]] = {
        "eager": lambda: model,
        "optimize_for_inference": lambda: optimize_for_inference(model),
    }
    if not args.skip_onnx:
        builders["optimize (onnxruntime)"] = lambda: optimize_for_inference(
            model, example, backend="onnxruntime", threads=args.threads)
        # The eager model as torch.onnx.export (dynamo) writes it, bicubic Resize included.
        builders["onnxruntime (plain export)"] = lambda: OnnxRuntimeModel(
            onnx_bytes(model, example, dynamic_spatial=True), args.threads)
    variants: dict[str, Callable] = {}
    setup_s: dict[str, float] = {}
    for name, build in builders.items():
        start = time.perf_counter()
        variants[name] = build()
        setup_s[name] = time.perf_counter() - start

    with torch.no_grad():
        reference = model(example)
        differences = {name: float((run(example) - reference).abs().max())
                       for name, run in variants.items()}
    times = time_interleaved(variants, example, args.warmup, args.repeats)
    eager_median = statistics.median(times["eager"])
    rows = {
        name: {
            "median_ms": statistics.median(values),
            "min_ms": min(values),
            "speedup_vs_eager": eager_median / statistics.median(values),
            "max_abs_diff": differences[name],
            "setup_s": setup_s[name],
        }
        for name, values in times.items()
    }
    result = {
        "model": "TinyUNet(3, 2)",
        "input_size": [args.batch, 3, args.size, args.size],
        "threads": args.threads,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "processor": platform.processor() or platform.machine(),
        "results": rows,
    }
    print(f"TinyU-Net {args.batch}x3x{args.size}x{args.size}, {args.threads} threads, "
          f"{args.repeats} interleaved rounds")
    print(f"{'variant':<28}{'median ms':>10}{'min ms':>9}{'x eager':>9}{'max |diff|':>12}"
          f"{'setup s':>9}")
    for name, row in rows.items():
        print(f"{name:<28}{row['median_ms']:>10.1f}{row['min_ms']:>9.1f}"
              f"{row['speedup_vs_eager']:>9.2f}{row['max_abs_diff']:>12.2e}{row['setup_s']:>9.1f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
