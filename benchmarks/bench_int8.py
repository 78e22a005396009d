"""Batch-1 CPU latency of int8 inference against the fastest fp32 paths, in one process.

For TinyU-Net and MobileNetV2 (1 x 3 x 256 x 256 unless ``--size``; 2 threads), medians of
the latency of:

* ``eager``: the PyTorch model in eval mode;
* ``torch``: ``optimize_for_inference(model)`` (BatchNorm folded, channels-last);
* ``onnxruntime``: the rewritten model in ONNX Runtime, fp32 (today's fastest path);
* ``int8``: that ONNX model statically quantized (``quantize_int8``: int8 weights per
  channel, uint8 activations, QDQ), in ONNX Runtime;
* ``openvino`` / ``openvino-bf16`` / ``openvino-int8``: the fp32 ONNX model compiled by
  OpenVINO's CPU plugin in fp32 and in bfloat16, and the int8 one (``OpenVinoModel``,
  medlite's ``--fast openvino``, ``openvino-bf16`` and ``openvino-int8``; when the
  ``openvino`` package is installed).

"Fastest fp32" is the fastest of ``torch``, ``onnxruntime`` and ``openvino`` (all exact).

Protocol: each round runs every variant for ``--block`` consecutive calls (the first
discarded), in turn; the median is over all kept calls of all rounds. A served model runs
one backend per process, and the runtimes' thread pools (ONNX Runtime's, OpenMP's, TBB's)
keep spinning for a while after each call, so timing single calls strictly interleaved
measures each runtime while the previous one's threads still hold the 2 cores; the blocks
measure each backend as it runs alone, and alternating them spreads the host's drift.

``--profile`` adds ONNX Runtime's per-kernel time of the fp32 and int8 graphs, by kind of
convolution (depthwise, 1x1, other) and by operator, to show where int8 gains and loses.

Weights come from a run (``--tinyunet-run``, ``--mobilenet-run``: its ``model.pt``, and
its validation images calibrate int8) or are random (then random normal inputs calibrate);
latency does not depend on the weights' values. Accuracy is measured separately with
``medlite evaluate RUN --fast int8`` (see BENCHMARKS.md).

    python benchmarks/bench_int8.py --rounds 10 --profile --json runs/int8.json
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import onnx
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


def openvino_runner(graph: bytes, threads: int, precision: str = "f32"):
    """``OpenVinoModel`` of ``graph`` (ONNX bytes), or None without the openvino package."""
    try:
        return OpenVinoModel(graph, threads, precision)
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
    for label, onnx_model, precision in (("openvino", graph, "f32"),
                                         ("openvino-bf16", graph, "bf16"),
                                         ("openvino-int8", int8_graph, "f32")):
        runner = openvino_runner(onnx_model, args.threads, precision)
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
                block = [time_once(fn, x) for _ in range(args.block)]
                times[label].extend(block[1:])
    fastest_fp32 = min(statistics.median(times[k]) for k in ("torch", "onnxruntime", "openvino")
                       if k in times)
    result = {"model": name, "input": list(size), "weights": str(run) if run else "random",
              "variants": {label: {"median_ms": round(statistics.median(values), 2),
                                   "speedup_vs_fastest_fp32": round(
                                       fastest_fp32 / statistics.median(values), 3),
                                   "max_abs_diff_vs_eager": differences[label]}
                           for label, values in times.items()}}
    if args.profile:
        result["kernel_ms"] = {label: kernel_profile(graph_bytes, x.numpy(), args.threads)
                               for label, graph_bytes in (("fp32", graph), ("int8", int8_graph))}
    return result


def convolution_kinds(optimized: onnx.ModelProto) -> dict[str, str]:
    """Node name -> "depthwise", "1x1" or "other" for the (QLinear)Conv nodes of a graph."""
    shapes = {tensor.name: list(tensor.dims) for tensor in optimized.graph.initializer}
    kinds = {}
    for node in optimized.graph.node:
        if node.op_type not in ("Conv", "QLinearConv", "FusedConv"):
            continue
        weight = shapes.get(node.input[3 if node.op_type == "QLinearConv" else 1])
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("group", 1) > 1 and weight is not None and weight[1] == 1:
            kinds[node.name] = "depthwise"
        elif list(attributes.get("kernel_shape", [])) == [1, 1]:
            kinds[node.name] = "1x1"
        else:
            kinds[node.name] = "other"
    return kinds


def kernel_profile(graph: bytes, x, threads: int, calls: int = 20) -> dict[str, float]:
    """ONNX Runtime's kernel time per call (ms) of ``graph`` on ``x``, summed by kind of
    convolution ("conv depthwise", "conv 1x1", "conv other") and by other operator."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="medlite-profile-") as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling = True
        options.profile_file_prefix = f"{tmp}/profile"
        options.optimized_model_filepath = f"{tmp}/optimized.onnx"
        session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(calls):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
        kinds = convolution_kinds(onnx.load(f"{tmp}/optimized.onnx"))
    totals: dict[str, float] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            node = event["name"].removesuffix("_kernel_time")
            kind = kinds.get(node)
            totals[f"conv {kind}" if kind else event["args"]["op_name"]] += event["dur"]
    return {key: round(micros / calls / 1000, 2) for key, micros in
            sorted(totals.items(), key=lambda item: -item[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=6,
                        help="consecutive calls of one variant per round (the first discarded)")
    parser.add_argument("--profile", action="store_true")
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
    result = {"threads": args.threads, "rounds": args.rounds, "block": args.block,
              "cases": cases}
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
