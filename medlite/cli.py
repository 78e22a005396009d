"""The ``medlite`` command line.

Every user error (bad config key, unreadable file, existing run directory...) is printed as
one line naming the file or key, with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medlite import __version__
from medlite.errors import ConfigError, MedliteError

EPILOG = """examples:
  medlite demo segmentation --out runs/demo
  medlite data index IMAGES_DIR MASKS_DIR --out manifest.csv
  medlite train configs/segmentation_ph2.yaml
  medlite evaluate runs/segmentation_ph2 --data other_manifest.csv
  medlite predict runs/segmentation_ph2 photo.jpg photos/ --out masks/
  medlite export runs/segmentation_ph2 --format onnx
  medlite profile tinyunet --input-size 256 256 --json
"""


def _add_run_dir_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its last checkpoint")
    group.add_argument("--overwrite", action="store_true",
                       help="replace an existing run directory")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlite", description="Train, evaluate and deploy lightweight models for skin "
        "images and physiological signals, on a laptop CPU first.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"medlite {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser("demo", help="train and evaluate on built-in synthetic data",
                          description="Generate built-in synthetic data, train a small model, "
                          "evaluate it and write a report. With no TASK, runs every task.")
    demo.add_argument("task", nargs="?", help="task to demo (default: all)")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"),
                      help="folder for the data and runs (default: runs/demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")

    data = sub.add_parser("data", help="index and check data sets")
    data_sub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    index = data_sub.add_parser(
        "index", help="pair images with masks into a manifest CSV",
        description="Pair images with masks by file-name stem (IMD002.jpg with "
        "IMD002_lesion.png), validate every pair, and write a manifest CSV with columns image, "
        "mask, subject. Lists every problem and writes nothing if any pair is bad.")
    index.add_argument("images_dir", type=Path)
    index.add_argument("masks_dir", type=Path)
    index.add_argument("--out", type=Path, required=True, help="manifest CSV to write")
    index.add_argument("--num-classes", type=int, default=2,
                       help="classes in the masks (2: masks are 0/255 or 0/1)")
    index.add_argument("--overwrite", action="store_true", help="replace an existing manifest")

    check = data_sub.add_parser(
        "check", help="check PASI photo and score tables",
        description="Validate a photos CSV (subject, visit, region, image) and a scores CSV "
        "(per region: subject, visit, region, erythema, induration, desquamation, "
        "area_percent or area; or per visit: subject, visit, pasi). Lists every problem, one "
        "per line, and exits 2 when there is any.")
    check.add_argument("photos", type=Path, help="photos CSV")
    check.add_argument("scores", type=Path, help="scores CSV")
    check.add_argument("--no-decode", action="store_true",
                       help="only check that photo files exist (faster than decoding them)")

    train = sub.add_parser("train", help="train a model from a YAML config",
                           description="Train from a YAML config whose top-level `task:` key "
                           "picks the recipe; evaluate on the test split; write a report.")
    train.add_argument("config", type=Path)
    train.add_argument("--out", type=Path, help="run directory (default: output_dir/name)")
    train.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a config key, e.g. "
                       "--set trainer.max_epochs=5 (repeatable)")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_run_dir_flags(train)

    evaluate = sub.add_parser("evaluate", help="evaluate a trained run on other data",
                              description="Evaluate a trained run on every row of another "
                              "manifest (results in RUN/evaluations/<manifest name>/), or "
                              "again on one split of its own data (RUN/evaluations/<split>/).")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--data", type=Path, help="manifest CSV (default: the run's own data)")
    evaluate.add_argument("--scores", type=Path,
                          help="pasi: the scores CSV that goes with the --data photos CSV")
    evaluate.add_argument("--split", choices=["train", "val", "test"], default="test",
                          help="without --data: which split of the run's data (default test)")
    evaluate.add_argument("--out", type=Path, help="output folder")
    evaluate.add_argument("--overwrite", action="store_true")
    _add_inference_overrides(evaluate)

    predict = sub.add_parser("predict", help="predict on new files with a trained run",
                             description="Predict with a trained run. Segmentation writes "
                             "<stem>_mask.png at the original resolution and <stem>_overlay.png.")
    predict.add_argument("run", type=Path)
    predict.add_argument("inputs", type=Path, nargs="*", help="files or folders")
    predict.add_argument("--visit", type=Path, action="append", default=[],
                         help="pasi: a visit folder holding upper/, trunk/, lower/ (and "
                         "optionally head/) photo folders; repeat for several visits, in "
                         "time order")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--overwrite", action="store_true")
    predict.add_argument("--fast", action="store_true",
                         help="run through optimize_for_inference (BatchNorm folding, "
                         "channels-last...; outputs within 1e-4 of the trained model)")
    _add_inference_overrides(predict)

    export = sub.add_parser("export", help="export a trained model (ONNX)",
                            description="Export a trained run's model and check ONNX Runtime "
                            "parity against PyTorch.")
    export.add_argument("run", type=Path)
    export.add_argument("--format", choices=["onnx"], default="onnx")
    export.add_argument("--out", type=Path, help="file to write (default: RUN/export/model.onnx)")
    export.add_argument("--overwrite", action="store_true")

    profile = sub.add_parser("profile", help="parameters, FLOPs and CPU latency of a model",
                             description="Count parameters and FLOPs and time CPU inference.")
    profile.add_argument("model", help="a name from `medlite models`")
    profile.add_argument("--input-size", type=int, nargs=2, default=[256, 256],
                         metavar=("H", "W"))
    profile.add_argument("--batch", type=int, default=1)
    profile.add_argument("--num-classes", type=int, default=2)
    profile.add_argument("--threads", type=int, default=2)
    profile.add_argument("--json", action="store_true", help="print JSON")

    models = sub.add_parser("models", help="list registered models")
    models.add_argument("--task", help="only models for this task")
    return parser


def cmd_demo(args) -> int:
    from medlite.runs import RUN_MARKER, prepare_run_dir, write_json
    from medlite.tasks import get_task, list_tasks
    from medlite.tasks.base import train_run

    names = [args.task] if args.task else list_tasks()
    for name in names:
        task = get_task(name, source="demo")
        out = args.out if args.task else args.out / name
        prepare_run_dir(out, overwrite=args.overwrite)
        write_json(out / RUN_MARKER, {"demo": name})  # ours, so --overwrite may replace it
        config = task.demo_config(out)
        metrics = train_run(config, out, run_dir_ready=True)
        print(f"{name}: run in {out}; report {out / 'report.html'}")
        print(json.dumps(_headline(metrics), indent=2))
    return 0


def _headline(metrics: dict) -> dict:
    flat = {}
    for group, values in metrics.items():
        if isinstance(values, dict) and "value" in values:
            flat[group] = round(values["value"], 4)
        elif isinstance(values, dict):
            for name, entry in values.items():
                flat[f"{group}.{name}"] = round(entry["value"], 4)
    return flat


def cmd_data(args) -> int:
    from medlite.data.manifest import index_segmentation

    if args.data_command == "check":
        from medlite.data.visits import read_visit_tables, visit_items

        tables = read_visit_tables(args.photos, args.scores, check_images=not args.no_decode)
        items = visit_items(tables)
        print(f"{args.photos} and {args.scores}: OK: {len(tables.photos)} photos, "
              f"{items['subject'].nunique()} subjects, "
              f"{items.groupby(['subject', 'visit']).ngroups} visits, {len(items)} composites; "
              f"scores per {tables.score_level}")
        return 0

    table = index_segmentation(args.images_dir, args.masks_dir, args.out,
                               num_classes=args.num_classes, overwrite=args.overwrite)
    print(f"wrote {args.out}: {len(table)} image/mask pairs, "
          f"{table['subject'].nunique()} subjects")
    return 0


def cmd_train(args) -> int:
    from medlite.config import load_config
    from medlite.tasks.base import train_run

    config = load_config(args.config, args.overrides)
    run_dir = args.out or (config.output_dir / config.name)
    metrics = train_run(config, run_dir, resume=args.resume, overwrite=args.overwrite,
                        progress=not args.no_progress)
    print(f"run: {run_dir}")
    print(json.dumps(_headline(metrics), indent=2))
    return 0


def _add_inference_overrides(parser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="change how the trained model is applied: "
                        "keys under inference. or evaluation., e.g. --set "
                        "inference.flip_tta=true (repeatable)")


def _load_run_with_overrides(run: Path, overrides: list[str]):
    """The trained run, its config changed by ``--set`` keys that do not touch training."""
    from medlite.config import apply_overrides, validate_config
    from medlite.tasks.base import load_trained_model

    task, config, model = load_trained_model(run)
    for item in overrides:
        if item.partition("=")[0].split(".")[0] not in ("inference", "evaluation"):
            raise ConfigError(f"--set {item}: only inference.* and evaluation.* keys can "
                              "change after training")
    if overrides:
        raw = apply_overrides(config.model_dump(mode="json"), overrides)
        config = validate_config(raw, type(config), "--set")
    return task, config, model


def _data_source(samples) -> str:
    return str(samples.attrs.get("source", "the run's data"))


def cmd_evaluate(args) -> int:
    from medlite.runs import find_run, unique_child, write_json
    from medlite.tasks.base import METRICS_FILE, with_saved_splits

    task, config, model = _load_run_with_overrides(args.run, args.overrides)
    if args.scores is not None:
        if not hasattr(config.data, "scores"):
            raise MedliteError(f"--scores: only for pasi runs, not {config.task}")
        config.data.scores = args.scores.resolve()
    if args.data is not None:
        samples = task.load_samples(config, data_path=args.data)
        source, default_name = str(args.data), args.data.stem
    else:
        samples = with_saved_splits(task.load_samples(config), find_run(args.run))
        samples = samples[samples["split"] == args.split].reset_index(drop=True)
        if samples.empty:
            raise MedliteError(f"{args.run}: the run has no {args.split} samples")
        source = f"{_data_source(samples)} ({args.split} split)"
        default_name = args.split
    parent, name = ((args.out.parent, args.out.name) if args.out
                    else (args.run / "evaluations", default_name))
    out_dir = unique_child(parent, name, args.overwrite)
    evaluation = task.evaluate(model, config, samples, out_dir)
    write_json(out_dir / METRICS_FILE, {"data": source, "n_samples": len(samples),
                                        "n_subjects": int(samples["subject"].nunique()),
                                        "metrics": evaluation.metrics, **evaluation.extra})
    task.write_report(args.run, config, evaluation, out_dir / "report.html",
                      title=f"medlite {config.task}: {config.name} on {Path(name).name}")
    print(f"wrote {out_dir / METRICS_FILE} and {out_dir / 'report.html'}")
    print(json.dumps(_headline(evaluation.metrics), indent=2))
    return 0


def cmd_predict(args) -> int:
    task, config, model = _load_run_with_overrides(args.run, args.overrides)
    inputs = [*args.inputs, *args.visit]
    if not inputs:
        raise MedliteError("predict: give files or folders (or --visit folders for pasi)")
    if args.fast:
        from medlite.models import optimize_for_inference

        model = optimize_for_inference(model, task.example_input(config))
    written = task.predict(model, config, inputs, args.out, overwrite=args.overwrite)
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def cmd_export(args) -> int:
    from medlite.export import export_onnx, onnx_parity
    from medlite.tasks.base import load_trained_model

    task, config, model = load_trained_model(args.run)
    path = args.out or args.run / "export" / "model.onnx"
    if path.exists() and not args.overwrite:
        raise MedliteError(f"{path}: exists; pass --overwrite to replace it")
    example = task.example_input(config)
    export_onnx(model, example, path)
    diff = onnx_parity(model, path, example)
    print(f"wrote {path}; ONNX Runtime vs PyTorch max abs difference {diff:.2e}")
    if diff > 1e-3:
        raise MedliteError(f"{path}: ONNX output differs from PyTorch by {diff:.2e}")
    return 0


def cmd_profile(args) -> int:
    from medlite.models import create_model
    from medlite.models.profile import format_profile, profile_model

    model = create_model(args.model, num_classes=args.num_classes)
    result = profile_model(model, (args.batch, 3, *args.input_size), threads=args.threads)
    result = {"model": args.model, **result}
    print(json.dumps(result, indent=2) if args.json else format_profile(result))
    return 0


def cmd_models(args) -> int:
    from medlite.models import list_models

    for name in list_models(task=args.task):
        print(name)
    return 0


COMMANDS = {"demo": cmd_demo, "data": cmd_data, "train": cmd_train, "evaluate": cmd_evaluate,
            "predict": cmd_predict, "export": cmd_export, "profile": cmd_profile,
            "models": cmd_models}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except MedliteError as exc:
        print(f"medlite: error: {exc}", file=sys.stderr)
        for line in exc.problems:
            if line != str(exc):
                print(f"  {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medlite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
