"""Peak memory of reading a whole-slide image downsampled, against holding its level.

On the larger shared slide (``tcga-cr-7395-01a-01-ts1.svs``, a two-level JPEG 2000 pyramid
of 4443x3567 and 2221x1783), in one process: the peak of Python and NumPy allocations
(``tracemalloc``) and the growth of the resident set (``psutil``, which also sees
OpenSlide's own buffers) while ``read_slide_image`` reduces level 0 to 128x128 strip by strip,
against the size of that level as one RGB array, and the same for the tissue-box crop and
the tile grid.

    python benchmarks/bench_slide_memory.py --json runs/slide_memory.json
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import psutil

from medlite.data.slides import Slide, read_slide_image, tile_grid
from medlite.runs import write_json

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "wsi"


def measure(label: str, fn) -> dict:
    process = psutil.Process()
    rss_before = process.memory_info().rss
    tracemalloc.start()
    start = time.perf_counter()
    fn()
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"case": label, "seconds": round(seconds, 2),
            "tracemalloc_peak_mb": round(peak / 2**20, 1),
            "rss_growth_mb": round((process.memory_info().rss - rss_before) / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=SHARED / "tcga-cr-7395-01a-01-ts1.svs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with Slide(args.slide) as slide:
        width, height = slide.dimensions[0]
    rows = [
        measure("level 0 -> 128x128", lambda: read_slide_image(args.slide, (128, 128),
                                                               level=0)),
        measure("tissue box of level 0 -> 128x128",
                lambda: read_slide_image(args.slide, (128, 128), level=0,
                                         crop_to_tissue=True)),
        measure("tile grid, 256 px at level 0", lambda: tile_grid(Slide(args.slide), 256,
                                                                  level=0)),
    ]
    result = {"slide": str(args.slide), "level0": [width, height],
              "level0_as_rgb_array_mb": round(width * height * 3 / 2**20, 1), "cases": rows}
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
