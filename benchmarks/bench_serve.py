"""Latency and concurrency of `medlite serve` against `medlite predict --fast` in one process.

A TinyU-Net run at 256 px (one epoch on synthetic lesions: speed does not depend on the
weights) is served by `medlite serve` in a subprocess on 127.0.0.1. This process times, in
interleaved rounds so that machine load hits both alike:

* **direct**: the run's predictor (`load_run(run, fast="torch")`) on the image file, what
  `medlite predict --fast` does per image;
* **http**: the same image posted to `/api/runs/{run}/segment` over loopback, end to end
  (upload, decode, model, PNG encoding of mask and overlay, JSON).

Then N concurrent requests (all sent at once from an asyncio client): errors, p50/p95
latency, throughput, and the server's resident memory after each of several bursts.

    python benchmarks/bench_serve.py --out runs/bench-serve --rounds 30 --concurrent 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from medlite.datasets.lesions import write_lesion_dataset
from medlite.inference import ImageInput, load_run
from medlite.tasks.segmentation import SegmentationConfig, SegmentationDataConfig
from medlite.training.runner import train_run

SHARED = Path(__file__).resolve().parents[2] / "shared"


def trained_run(out: Path, size: int, threads: int) -> Path:
    run = out / "tinyunet-256"
    if (run / "model.pt").is_file():
        return run
    manifest = write_lesion_dataset(out / "data", n_subjects=8, images_per_subject=1,
                                    size=(size, size), seed=0)
    config = SegmentationConfig(name="tinyunet-256", data=SegmentationDataConfig(
        manifest=manifest, image_size=(size, size)))
    config.trainer.max_epochs = 1
    config.trainer.threads = threads
    config.evaluation.bootstrap_resamples = 0
    train_run(config, run, progress=False)
    return run


def test_image(out: Path) -> Path:
    """A real 765x574 PH2 JPEG when ../shared has one, else a synthetic one of that size."""
    real = sorted((SHARED / "data" / "ph2" / "images").glob("*.jpg"))
    if real:
        return real[0]
    path = out / "lesion.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (574, 765, 3), dtype=np.uint8)).save(path,
                                                                             quality=90)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def burst(url: str, image: bytes, n: int) -> tuple[list[float], list[int], float]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        async def one() -> tuple[float, int]:
            start = time.perf_counter()
            response = await client.post(url, files={"file": ("lesion.jpg", image)})
            return 1000 * (time.perf_counter() - start), response.status_code

        start = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - start
    return [r[0] for r in results], [r[1] for r in results], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-serve"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--bursts", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    run = trained_run(args.out, args.size, args.threads)
    image_path = test_image(args.out)
    image = image_path.read_bytes()

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "medlite.cli", "serve", str(run), "--host", "127.0.0.1",
         "--port", str(port), "--threads", str(args.threads), "--db",
         str(args.out / "visits.sqlite")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    url = f"{base}/api/runs/{run.name}/segment"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start: {server.stderr.read().decode()}")
            time.sleep(0.5)
        predictor = load_run(run, fast="torch")
        direct_times, http_times = [], []
        with httpx.Client(timeout=120) as client:
            for _ in range(3):  # warm-up both paths
                predictor.predict_one(ImageInput(image_path))
                client.post(url, files={"file": ("lesion.jpg", image)}).raise_for_status()
            for _ in range(args.rounds):
                start = time.perf_counter()
                predictor.predict_one(ImageInput(image_path))
                direct_times.append(1000 * (time.perf_counter() - start))
                start = time.perf_counter()
                reply = client.post(url, files={"file": ("lesion.jpg", image)})
                http_times.append(1000 * (time.perf_counter() - start))
                reply.raise_for_status()
        memory = [rss_mib(server.pid)]
        bursts = []
        for _ in range(args.bursts):
            latencies, statuses, wall = asyncio.run(burst(url, image, args.concurrent))
            memory.append(rss_mib(server.pid))
            bursts.append({"requests": args.concurrent,
                           "errors": sum(s != 200 for s in statuses),
                           "p50_ms": percentile(latencies, 50), "p95_ms": percentile(latencies, 95),
                           "wall_s": wall, "images_per_s": args.concurrent / wall})
    finally:
        server.terminate()
        server.wait(timeout=30)
    direct, http = statistics.median(direct_times), statistics.median(http_times)
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "threads": args.threads, "image": image_path.name,
        "image_size": Image.open(image_path).size, "model_input": args.size,
        "rounds": args.rounds,
        "direct_ms": {"median": direct, "p95": percentile(direct_times, 95)},
        "http_ms": {"median": http, "p95": percentile(http_times, 95)},
        "http_over_direct": http / direct,
        "bursts": bursts, "server_rss_mib": memory,
    }
    (args.out / "summary.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
