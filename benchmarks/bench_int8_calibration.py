"""How int8 calibration choices change a trained classifier, on its validation split.

For a classification run (``--run``: its ``model.pt`` and its validation images), the fp32
ONNX model and int8 versions of it (``quantize_int8`` with different calibration options)
are run on every validation image; printed per variant: accuracy, balanced accuracy,
agreement of the arg-max with fp32, and the largest logit change. Variants:

* ``64 min-max``: medlite's ``--fast int8`` (the first 64 validation inputs, min-max ranges);
* ``512 min-max``: more calibration inputs;
* ``64 class-balanced``: 64 inputs drawn evenly from the classes (seeded);
* ``256 percentile`` / ``256 entropy``: ranges clipped at the 99.999th percentile / by KL;
* ``fp32 stem and head``: the first convolution and the classifier left in fp32;
* ``per-tensor weights``: one weight scale per layer instead of per output channel.

Only the validation split is read, so choosing among these never looks at test data.

    python benchmarks/bench_int8_calibration.py --run runs/bench-dermamnist-96/run \
        --json runs/int8_calibration.json
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import onnx
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from medlite.inference.export import onnx_bytes, onnx_session, quantize_int8
from medlite.inference.fast import rewrite_for_inference
from medlite.inference.predictor import load_run
from medlite.runs import write_json


def validation_inputs(run: Path) -> tuple[object, list[np.ndarray], np.ndarray]:
    """(network in eval mode, network inputs (1, C, H, W) of the validation split, labels)."""
    predictor = load_run(run)
    task, config = predictor.task, predictor.config
    samples = task.load_run_samples(config, predictor.run_dir)
    inputs, labels = [], []
    for info, item in task.evaluation_inputs(samples[samples["split"] == "val"], config):
        for tensor in task.prepare(item, config).items:
            inputs.append(tensor[None].numpy())
            labels.append(info["label_index"])
    return predictor.network.eval(), inputs, np.array(labels)


def logits(graph: bytes, inputs: list[np.ndarray], threads: int) -> np.ndarray:
    session = onnx_session(graph, threads)
    return np.concatenate([session.run(None, {"input": x})[0] for x in inputs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, inputs, labels = validation_inputs(args.run)
    graph = onnx_bytes(rewrite_for_inference(copy.deepcopy(model)), torch.from_numpy(inputs[0]),
                       dynamic_spatial=True)
    reference = logits(graph, inputs, args.threads)
    predicted = reference.argmax(1)
    rows = [{"variant": "fp32", "accuracy": accuracy_score(labels, predicted),
             "balanced_accuracy": balanced_accuracy_score(labels, predicted),
             "agreement_with_fp32": 1.0, "max_abs_logit_change": 0.0}]
    rng = np.random.default_rng(args.seed)
    balanced = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:64 // 7 + 1]
                               for c in np.unique(labels)])
    nodes = onnx.load_from_string(graph).graph.node
    stem_and_head = ([next(n.name for n in nodes if n.op_type == "Conv")]
                     + [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")])
    variants = {
        "64 min-max": dict(inputs=inputs[:64]),
        "512 min-max": dict(inputs=inputs[:512]),
        "64 class-balanced": dict(inputs=[inputs[i] for i in balanced]),
        "256 percentile": dict(inputs=inputs[:256], method="Percentile"),
        "256 entropy": dict(inputs=inputs[:256], method="Entropy"),
        "64 min-max, fp32 stem and head": dict(inputs=inputs[:64], exclude=stem_and_head),
        "64 min-max, per-tensor weights": dict(inputs=inputs[:64], per_channel=False),
    }
    for name, variant in variants.items():
        quantized = quantize_int8(graph, variant.pop("inputs"), **variant)
        output = logits(quantized, inputs, args.threads)
        rows.append({"variant": name,
                     "accuracy": accuracy_score(labels, output.argmax(1)),
                     "balanced_accuracy": balanced_accuracy_score(labels, output.argmax(1)),
                     "agreement_with_fp32": float(np.mean(output.argmax(1) == predicted)),
                     "max_abs_logit_change": float(np.abs(output - reference).max())})
        print(json.dumps(rows[-1]), flush=True)
    result = {"run": str(args.run), "n_validation": len(labels), "variants": rows}
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
