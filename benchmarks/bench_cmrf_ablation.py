"""TinyU-Net's two CMRF ablations as one command each, on the medseg100 CT split.

``--study pieces`` (the paper's Table 4): TinyU-Net with ``n`` pieces per CMRF block
(``model.kwargs.cmrf_n``; ``n - 1`` depthwise 3x3 convolutions in each cascade), for each
``--n``. ``--study swap`` (its Table 3): the U-Net baseline against the same U-Net with
every double convolution replaced by a CMRF block, at the same widths. Every model is
trained with the recipe and budget of ``bench_ct_multiclass.py`` (same split, seed and
evaluation), so the rows differ only in the network.

    python benchmarks/bench_cmrf_ablation.py --study pieces --n 2 4 6 8 10 --budget-minutes 5
    python benchmarks/bench_cmrf_ablation.py --study swap --budget-minutes 10

Writes ``summary.json`` in ``--out`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ct_multiclass import (  # noqa: E402
    MEDSEG,
    medseg_config,
    medseg_manifest,
    table_rows,
    train_and_score,
)

from medlite.runs import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=["pieces", "swap"], required=True)
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4, 6, 8, 10],
                        help="CMRF pieces per block (--study pieces)")
    parser.add_argument("--unet-widths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--medseg", type=Path, default=MEDSEG)
    parser.add_argument("--budget-minutes", type=float, default=5.0,
                        help="wall-clock cap per model")
    parser.add_argument("--epochs", type=int, help="epochs per model (default: sized from "
                        "a timing to fill the budget)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    out = args.out or Path(f"runs/bench-cmrf-{args.study}")
    out.mkdir(parents=True, exist_ok=True)
    manifest = medseg_manifest(args.medseg, out / "medseg_manifest.csv")
    if args.study == "pieces":
        variants = {f"TinyU-Net, n = {n}": ("tinyunet", None, {"cmrf_n": n}) for n in args.n}
    else:
        variants = {"U-Net (double 3x3 conv)": ("unet", args.unet_widths, {}),
                    "U-Net with CMRF blocks": ("unet_cmrf", args.unet_widths, {})}
    summary = {"study": args.study, "budget_minutes": args.budget_minutes, "variants": {}}
    for label, (model, widths, kwargs) in variants.items():
        config = medseg_config(manifest, model, widths, lr=args.lr, batch=args.batch,
                               seed=args.seed, kwargs=kwargs)
        folder = out / (f"{model}-n{kwargs['cmrf_n']}" if kwargs else model)
        summary["variants"][label] = train_and_score(config, folder, args.budget_minutes,
                                                     args.epochs)
        write_json(out / "summary.json", summary)
    print("| model | parameters | epochs | GGO Dice | GGO IoU | consolidation Dice "
          "| consolidation IoU | dataset Dice GGO / consolidation |")
    print("|---|---|---|---|---|---|---|---|")
    print(table_rows(summary["variants"]))


if __name__ == "__main__":
    main()
