"""Batch-1 CPU latency of int8 inference against the fastest fp32 paths, in one process.

For TinyU-Net and MobileNetV2 (1 x 3 x 256 x 256 unless ``--size``; 2 threads), medians of
interleaved rounds of:

* ``eager``: the PyTorch model in eval mode;
* ``torch``: ``optimize_for_inference(model)`` (BatchNorm folded, channels-last);
* ``onnxruntime``: the rewritten model in ONNX Runtime, fp32 (today's fastest path);
* ``int8``: that ONNX model statically quantized (``quantize_int8``: int8 weights per
  channel, uint8 activations, QDQ), in ONNX Runtime;
* ``openvino`` / ``openvino-int8``: the same two ONNX models compiled by OpenVINO's CPU
  plugin (``OpenVinoModel``, medlite's ``--fast openvino-int8``; when the ``openvino``
  package is installed).

Weights come from a run (``--tinyunet-run``, ``--mobilenet-run``: its ``model.pt``, and
its validation images calibrate int8) or are random (then random normal inputs calibrate);
latency does not depend on the weights' values. Accuracy is measured separately with
``medlite evaluate RUN --fast int8`` (see BENCHMARKS.md).

    python benchmarks/bench_int8.py --rounds 30 --json runs/int8.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from medlite.errors import ConfigError
from medlite.inference.export import onnx_bytes, quantize_int8
from medlite.inference.fast import (
    OnnxRuntimeModel,
    OpenVinoModel,
    optimize_for_inference,
    rewrite_for_inference,
)
from medlite.inference.predictor import load_run
from medlite.models import create_model
from medlite.runs import write_json


def openvino_runner(graph: bytes, threads: int):
    """``OpenVinoModel`` of ``graph`` (ONNX bytes), or None without the openvino package."""
    try:
        return OpenVinoModel(graph, threads)
    except ConfigError:
        return None


def build(name: str, run: Path | None, size: int, calibration_count: int):
    """(model in eval mode, calibration inputs) for one benchmarked model."""
    if run is not None:
        predictor = load_run(run)
        model = predictor.network.eval()
        calibration = predictor._validation_inputs(calibration_count)
        return model, calibration
    torch.manual_seed(0)
    model = (create_model("tinyunet") if name == "tinyunet"
             else create_model("mobilenet_v2", num_classes=7)).eval()
    generator = torch.Generator().manual_seed(1)
    calibration = [torch.randn(1, 3, size, size, generator=generator)
                   for _ in range(calibration_count)]
    return model, calibration


def time_once(fn, x) -> float:
    start = time.perf_counter()
    fn(x)
    return 1000 * (time.perf_counter() - start)


def run_case(name: str, run: Path | None, args) -> dict:
    model, calibration = build(name, run, args.size, args.calibration)
    x = calibration[0].clone()
    size = tuple(x.shape)
    rewritten = rewrite_for_inference(copy.deepcopy(model))
    graph = onnx_bytes(rewritten, x, dynamic_spatial=True)
    int8_graph = quantize_int8(graph, (c.numpy() for c in calibration))
    variants = {
        "eager": lambda t: model(t),
        "torch": optimize_for_inference(model),
        "onnxruntime": OnnxRuntimeModel(graph, args.threads),
        "int8": OnnxRuntimeModel(int8_graph, args.threads),
    }
    for label, onnx_model in (("openvino", graph), ("openvino-int8", int8_graph)):
        runner = openvino_runner(onnx_model, args.threads)
        if runner is not None:
            variants[label] = runner
    with torch.no_grad():
        reference = model(x)
        differences = {}
        for label, fn in variants.items():
            differences[label] = float((fn(x) - reference).abs().max())
        for fn in variants.values():  # warm-up
            for _ in range(3):
                fn(x)
        times: dict[str, list[float]] = {label: [] for label in variants}
        for _ in range(args.rounds):
            for label, fn in variants.items():
                times[label].append(time_once(fn, x))
    fastest_fp32 = min(statistics.median(times[k]) for k in ("torch", "onnxruntime"))
    return {"model": name, "input": list(size), "weights": str(run) if run else "random",
            "variants": {label: {"median_ms": round(statistics.median(values), 2),
                                 "speedup_vs_fastest_fp32": round(
                                     fastest_fp32 / statistics.median(values), 3),
                                 "max_abs_diff_vs_eager": differences[label]}
                         for label, values in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--tinyunet-run", type=Path)
    parser.add_argument("--mobilenet-run", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [run_case("tinyunet", args.tinyunet_run, args),
             run_case("mobilenet_v2", args.mobilenet_run, args)]
    result = {"threads": args.threads, "rounds": args.rounds, "cases": cases}
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
