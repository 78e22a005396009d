"""TinyU-Net's two CMRF ablations as one command each, on the medseg100 CT split.

``--study pieces`` (the paper's Table 4): TinyU-Net with ``n`` pieces per CMRF block
(``model.kwargs.cmrf_n``; ``n - 1`` depthwise 3x3 convolutions in each cascade), for each
``--n``. ``--study swap`` (its Table 3): the U-Net baseline against the same U-Net with
every double convolution replaced by a CMRF block, at the same widths. Every model is
trained with the recipe and budget of ``bench_ct_multiclass.py`` (same split, seed and
evaluation), so the rows differ only in the network. ``--dataset ph2`` runs the same study
on PH2's binary lesion masks instead (the split and recipe of ``bench_ph2_segmentation.py``
at ``--size``, 128 px by default): one large class gives a steadier signal than CT's two
small ones on 40 training slices.

    python benchmarks/bench_cmrf_ablation.py --study pieces --n 2 4 6 8 10 --epochs 12
    python benchmarks/bench_cmrf_ablation.py --study pieces --dataset ph2 --epochs 15
    python benchmarks/bench_cmrf_ablation.py --study swap --epochs 30

Writes ``summary.json`` in ``--out`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ct_multiclass import (  # noqa: E402
    CLASS_NAMES,
    MEDSEG,
    medseg_config,
    medseg_manifest,
    table_rows,
    train_and_score,
)
from bench_ph2_segmentation import SHARED as PH2  # noqa: E402
from bench_ph2_segmentation import make_config as ph2_config  # noqa: E402

from medlite.data.manifest import index_segmentation  # noqa: E402
from medlite.runs import write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", choices=["pieces", "swap"], required=True)
    parser.add_argument("--n", type=int, nargs="+", default=[2, 4, 6, 8, 10],
                        help="CMRF pieces per block (--study pieces)")
    parser.add_argument("--unet-widths", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dataset", choices=["medseg", "ph2"], default="medseg")
    parser.add_argument("--medseg", type=Path, default=MEDSEG)
    parser.add_argument("--ph2", type=Path, default=PH2)
    parser.add_argument("--size", type=int, default=128, help="--dataset ph2: input side")
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
    if args.dataset == "medseg":
        manifest = medseg_manifest(args.medseg, out / "medseg_manifest.csv")
        classes, counts = CLASS_NAMES[1:], {"n_train": 40, "n_val": 10}
    else:
        manifest = out / "ph2_manifest.csv"
        if not manifest.exists():
            index_segmentation(args.ph2 / "images", args.ph2 / "masks", manifest)
        classes, counts = ["lesion"], {"n_train": 140, "n_val": 30}
    shown = [f"{kind}_{c}" for c in classes for kind in ("dice", "iou")]

    def config_of(model, widths, kwargs):
        if args.dataset == "medseg":
            return medseg_config(manifest, model, widths, lr=args.lr, batch=args.batch,
                                 seed=args.seed, kwargs=kwargs)
        return ph2_config(manifest, model, args.lr, args.batch, args.seed, overrides=[
            f"data.image_size=[{args.size},{args.size}]",
            f"model.kwargs={dict(kwargs, **({'widths': widths} if widths else {}))}"])

    if args.study == "pieces":
        variants = {f"TinyU-Net, n = {n}": ("tinyunet", None, {"cmrf_n": n}) for n in args.n}
    else:
        variants = {"U-Net (double 3x3 conv)": ("unet", args.unet_widths, {}),
                    "U-Net with CMRF blocks": ("unet_cmrf", args.unet_widths, {})}
    summary = {"study": args.study, "dataset": args.dataset,
               "budget_minutes": args.budget_minutes, "variants": {}}
    for label, (model, widths, kwargs) in variants.items():
        config = config_of(model, widths, kwargs)
        folder = out / (f"{model}-n{kwargs['cmrf_n']}" if kwargs else model)
        summary["variants"][label] = train_and_score(config, folder, args.budget_minutes,
                                                     args.epochs, shown=shown, **counts)
        write_json(out / "summary.json", summary)
    header = " | ".join(f"{c} Dice | {c} IoU" for c in classes)
    print(f"| model | parameters | epochs | {header} | dataset Dice {' / '.join(classes)} |")
    print("|---" * (4 + 2 * len(classes)) + "|")
    print(table_rows(summary["variants"], classes))


if __name__ == "__main__":
    main()
