"""Throughput of ``medlite predict`` on a folder of dermoscopy JPEGs against the model's own
batch-1 latency: do decoding, resizing and writing dominate?

Runs in one process on the 200 PH2 JPEGs (about 765x572; ``--images``) with the shipped
``dermoscopy-lesion`` model (or ``--run``), 2 threads:

1. the network alone: median batch-1 forward at the network's input size through the same
   fast path (``--fast``) and the task's own forward (so with the run's flip TTA, four
   passes), times the number of images: the floor;
2. decoding alone: ``read_image`` of every file;
3. ``medlite predict`` end to end (the CLI's own function: decode, resize, batch, forward,
   resize the probabilities back, argmax, write mask, overlay PNGs and predictions.csv).

Each is measured with the run's inference settings and again with flip TTA off
(``--set inference.flip_tta=false``), in the same process.

    python benchmarks/bench_predict_throughput.py --json runs/predict_throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medlite.cli import main as medlite_main
from medlite.data.io import image_files, read_image
from medlite.inference.predictor import load_run
from medlite.runs import write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "ph2" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=SHARED)
    parser.add_argument("--run", default="dermoscopy-lesion")
    parser.add_argument("--fast", default="torch", choices=["none", "torch", "onnxruntime"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = image_files([args.images])
    n = len(files)
    start = time.perf_counter()
    for path in files:
        read_image(path)
    decode_s = time.perf_counter() - start
    result = {"images": n, "image_folder": str(args.images), "run": str(args.run),
              "fast": args.fast, "threads": args.threads,
              "decode_only_images_per_s": round(n / decode_s, 2), "settings": {}}
    predictor = load_run(args.run, fast=args.fast)
    shipped_tta = bool(getattr(predictor.config.inference, "flip_tta", False))
    for tta in dict.fromkeys([shipped_tta, False]):
        predictor.config.inference.flip_tta = tta
        example = predictor.task.example_input(predictor.config)
        with torch.no_grad():
            for _ in range(3):
                predictor.task.forward(predictor.model, example, predictor.config)
            forward = []
            for _ in range(20):
                start = time.perf_counter()
                predictor.task.forward(predictor.model, example, predictor.config)
                forward.append(time.perf_counter() - start)
        forward_s = statistics.median(forward)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            medlite_main(["predict", str(args.run), str(args.images), "--out",
                          str(Path(tmp) / "o"), "--fast", args.fast,
                          "--set", f"inference.flip_tta={str(tta).lower()}"])
            predict_s = time.perf_counter() - start
        result["settings"][f"flip_tta={tta}"] = {
            "network_input": list(example.shape),
            "network_batch1_ms": round(1000 * forward_s, 1),
            "network_only_images_per_s": round(1 / forward_s, 2),
            "predict_images_per_s": round(n / predict_s, 2),
            "predict_seconds": round(predict_s, 1),
            "network_share_of_predict": round(n * forward_s / predict_s, 3),
            "decode_share_of_predict": round(decode_s / predict_s, 3),
            "rest_share_of_predict": round(1 - (n * forward_s + decode_s) / predict_s, 3)}
    print(json.dumps(result, indent=2))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
