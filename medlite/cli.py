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
from medlite.errors import MedliteError

#: The ``--fast`` inference paths (``medlite.inference.predictor.Fast``; kept here so that
#: building the parser imports no torch).
FAST_PATHS = ("none", "torch", "onnxruntime", "openvino", "openvino-bf16", "int8",
              "openvino-int8")

EPILOG = """examples:
  medlite demo segmentation --out runs/demo
  medlite data index IMAGES_DIR MASKS_DIR --out manifest.csv
  medlite train segmentation_ph2                 # a shipped config (medlite configs)
  medlite train my_config.yaml --set trainer.max_epochs=5
  medlite evaluate runs/segmentation_ph2 --data other_manifest.csv
  medlite predict runs/segmentation_ph2 photo.jpg photos/ --out masks/
  medlite export runs/segmentation_ph2 --format onnx
  medlite profile tinyunet --input-size 256 256 --json
  medlite serve runs/segmentation_ph2 runs/pasi --port 8000
"""


def headline(metrics: dict) -> dict:
    from medlite.evaluation.evaluator import headline as flat

    return flat(metrics)


def _add_inference_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="change how the trained model is applied: "
                        "keys under inference. or evaluation., e.g. --set "
                        "inference.flip_tta=true (repeatable)")


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
    demo.add_argument("--overwrite", action="store_true",
                      help="replace an existing demo folder (only one medlite made)")

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

    synthetic = data_sub.add_parser(
        "synthetic", help="write a built-in synthetic data set with its manifest",
        description="ct: axial chest CT slices with ground-glass opacity and consolidation "
        "(masks 0 background, 1 ggo, 2 consolidation; 8-bit lung window, or HU .npy with "
        "--hu). lesions: dermoscopy-like photos with binary lesion masks.")
    synthetic.add_argument("kind", choices=["ct", "lesions"])
    synthetic.add_argument("--out", type=Path, required=True, help="an empty or new folder")
    synthetic.add_argument("--subjects", type=int, default=30)
    synthetic.add_argument("--per-subject", type=int, default=2, help="images per subject")
    synthetic.add_argument("--size", type=int, default=128, help="side in pixels")
    synthetic.add_argument("--hu", action="store_true", help="ct: float32 HU .npy slices")
    synthetic.add_argument("--seed", type=int, default=0)

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
    train.add_argument("config", type=Path, nargs="?",
                       help="a YAML config, or the name of a shipped config")
    train.add_argument("--list-configs", action="store_true",
                       help="list the configs shipped with medlite and exit")
    train.add_argument("--out", type=Path, help="run directory (default: output_dir/name)")
    train.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="KEY=VALUE", help="override a config key, e.g. "
                       "--set trainer.max_epochs=5 (repeatable)")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    group = train.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its last checkpoints (the "
                       "config must be the run's; only inference.*, evaluation.* and "
                       "executor.* may differ)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace an existing run directory (only one medlite made)")

    configs = sub.add_parser("configs", help="list or print the configs shipped with medlite",
                             description="Without arguments, list the shipped configs; "
                             "`medlite configs show NAME > my.yaml` copies one to edit.")
    configs.add_argument("action", nargs="?", choices=["show"], help="show: print NAME")
    configs.add_argument("name", nargs="?", help="a shipped config's name")

    evaluate = sub.add_parser("evaluate", help="evaluate a trained run on other data",
                              description="Evaluate a trained run on other data (results in "
                              "RUN/evaluations/<data name>/), refusing data that overlaps its "
                              "training or validation data, or again on one split of its own "
                              "data (RUN/evaluations/<split>/).")
    evaluate.add_argument("run", type=Path)
    evaluate.add_argument("--data", type=Path, help="manifest CSV, image folder or "
                          "recordings (default: the run's own data)")
    evaluate.add_argument("--scores", type=Path,
                          help="pasi: the scores CSV that goes with the --data photos CSV")
    evaluate.add_argument("--split", choices=["train", "val", "test"], default="test",
                          help="without --data: which split of the run's data (default test)")
    evaluate.add_argument("--out", type=Path, help="output folder (default "
                          "RUN/evaluations/<name>)")
    evaluate.add_argument("--overwrite", action="store_true",
                          help="replace an earlier evaluation folder (only one medlite made)")
    evaluate.add_argument("--allow-overlap", action="store_true",
                          help="evaluate even when --data shares subjects or images with the "
                          "run's training or validation data (the report says so)")
    evaluate.add_argument("--fast", default="none", choices=FAST_PATHS,
                          help="evaluate through a CPU fast path (as predict --fast), e.g. "
                          "to measure what int8 quantization costs")
    _add_inference_overrides(evaluate)

    predict = sub.add_parser("predict", help="predict on new files with a trained run",
                             description="Predict with a trained run into a new folder: one "
                             "set of files per input (named so that inputs with the same stem "
                             "never overwrite each other) and predictions.csv indexing them.")
    predict.add_argument("run", type=Path, nargs="?",
                         help="a run folder (or, with --model, the first input)")
    predict.add_argument("inputs", type=Path, nargs="*", help="files or folders")
    predict.add_argument("--model", help="a model shipped with medlite instead of a run, "
                         "e.g. dermoscopy-lesion (no training needed)")
    predict.add_argument("--visit", type=Path, action="append", default=[],
                         help="pasi: a visit folder holding upper/, trunk/, lower/ (and "
                         "optionally head/) photo folders; repeat for several visits, in "
                         "time order")
    predict.add_argument("--out", type=Path, required=True, help="output folder")
    predict.add_argument("--overwrite", action="store_true",
                         help="replace an earlier predictions folder (only one medlite made)")
    predict.add_argument("--fast", nargs="?", const="torch", default="none",
                         choices=FAST_PATHS,
                         help="CPU fast path: torch (optimize_for_inference: BatchNorm "
                         "folding, channels-last) or onnxruntime, outputs within 1e-4; int8: "
                         "ONNX Runtime int8, calibrated on the run's validation images; "
                         "openvino-int8: that int8 model in OpenVINO (faster for MobileNetV2; "
                         "pip install 'medlite[openvino]')")
    _add_inference_overrides(predict)

    export = sub.add_parser("export", help="export a trained model (ONNX)",
                            description="Export a trained run's model and check ONNX Runtime "
                            "against PyTorch on a batch of three inputs.")
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

    serve = sub.add_parser(
        "serve", help="a web page and JSON API for trained runs",
        description="Serve trained runs: one page (http://HOST:PORT/) with a section per run, "
        "the JSON API under /api, its docs at /docs. Binds 127.0.0.1 unless told otherwise; "
        "any other address needs an access token.")
    serve.add_argument("runs", type=Path, nargs="+", help="finished run folders, or names of "
                       "models shipped with medlite (dermoscopy-lesion)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--token-file", type=Path,
                       help="file holding the access token (else $MEDLITE_TOKEN); required "
                       "off loopback")
    serve.add_argument("--db", type=Path, help="SQLite file of stored PASI visits (default: "
                       "medlite-visits.sqlite next to the first run)")
    serve.add_argument("--threads", type=int, default=None,
                       help="CPU threads for the models (default: all cores)")
    serve.add_argument("--concurrency", type=int, default=1,
                       help="model calls at a time; further requests wait their turn")
    serve.add_argument("--fast", default="torch", choices=FAST_PATHS,
                       help="inference path (default torch: BatchNorm folded, channels-last)")
    serve.add_argument("--max-upload-mb", type=float, default=50)
    serve.add_argument("--max-pixels", type=int, default=40_000_000,
                       help="largest image accepted, width x height")
    serve.add_argument("--confidence-target", type=float, default=0.9,
                       help="classifiers: flag predictions below the confidence at which "
                       "validation accuracy reaches this (default 0.9)")
    serve.add_argument("--cors-origin", action="append", default=[],
                       help="allow cross-origin requests from this origin (repeatable; none "
                       "by default)")

    cluster = sub.add_parser("cluster", help="batch-queue helpers for executor.name: dask")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", metavar="ACTION",
                                         required=True)
    script = cluster_sub.add_parser(
        "script", help="print the sbatch script executor.cluster would submit per worker",
        description="Print the SLURM job script that `medlite train CONFIG` with "
        "executor.name=dask and an executor.cluster section submits for each Dask worker "
        "(nothing is submitted). The scheduler address in it is a placeholder: at training "
        "time it is the scheduler medlite starts.")
    script.add_argument("config", help="a config file or a shipped config's name")
    script.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE")

    models = sub.add_parser("models", help="list registered models")
    models.add_argument("--task", help="only models for this task")
    return parser


def cmd_demo(args) -> int:
    from medlite.runs import make_output_dir
    from medlite.tasks import get_task, list_tasks
    from medlite.training.runner import train_run

    names = [args.task] if args.task else list_tasks()
    for name in names:
        get_task(name, source="demo")
    if not args.task:
        make_output_dir(args.out, "demo", overwrite=args.overwrite)
    for name in names:
        out = args.out if args.task else args.out / name
        make_output_dir(out, "run", overwrite=args.overwrite)
        config = get_task(name).demo_config(out)
        result = train_run(config, out, run_dir_ready=True)
        print(f"{name}: run in {out}; report {out / 'report.html'}")
        print(json.dumps(headline(result.metrics), indent=2))
    runs = [args.out] if args.task else [args.out / name for name in names]
    print("serve the demo runs: medlite serve " + " ".join(str(r) for r in runs))
    return 0


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
    if args.data_command == "synthetic":
        if args.subjects < 1 or args.per_subject < 1 or args.size < 16:
            raise MedliteError("data synthetic: --subjects and --per-subject must be at least "
                               f"1 and --size at least 16 (got {args.subjects}, "
                               f"{args.per_subject}, {args.size})")
        if args.kind == "ct":
            from medlite.datasets.ct import write_ct_dataset

            manifest = write_ct_dataset(args.out, args.subjects, args.per_subject, args.size,
                                        args.seed, hu=args.hu)
        else:
            from medlite.datasets.lesions import write_lesion_dataset

            manifest = write_lesion_dataset(args.out, args.subjects, args.per_subject,
                                            (args.size, args.size), args.seed)
        print(f"wrote {manifest}: {args.subjects} subjects x {args.per_subject} images")
        return 0

    table = index_segmentation(args.images_dir, args.masks_dir, args.out,
                               num_classes=args.num_classes, overwrite=args.overwrite)
    print(f"wrote {args.out}: {len(table)} image/mask pairs, "
          f"{table['subject'].nunique()} subjects")
    return 0


def cmd_train(args) -> int:
    from medlite.tasks import config_description, load_config, shipped_configs
    from medlite.training.runner import train_run

    if args.list_configs:
        for name, path in shipped_configs().items():
            print(f"{name:28s} {config_description(path)}")
        return 0
    if args.config is None:
        raise MedliteError("train: give a config file or the name of a shipped config "
                           "(medlite train --list-configs)")
    config = load_config(args.config, args.overrides)
    run_dir = args.out or (config.output_dir / config.name)
    result = train_run(config, run_dir, resume=args.resume, overwrite=args.overwrite,
                       progress=not args.no_progress)
    print(f"run: {run_dir}")
    print(json.dumps(headline(result.metrics), indent=2))
    return 0


def cmd_configs(args) -> int:
    from medlite.tasks import config_description, shipped_configs

    shipped = shipped_configs()
    if args.action is None:
        for name, path in shipped.items():
            print(f"{name:28s} {config_description(path)}")
        return 0
    if args.name not in shipped:
        raise MedliteError(f"configs show: no shipped config {args.name!r} (one of "
                           f"{', '.join(shipped)})")
    sys.stdout.write(shipped[args.name].read_text())
    return 0


def cmd_evaluate(args) -> int:
    from medlite.evaluation.evaluator import METRICS_FILE, REPORT_FILE
    from medlite.evaluation.external import evaluate_run

    result, out_dir = evaluate_run(args.run, data=args.data, scores=args.scores,
                                   split=args.split, out=args.out, overwrite=args.overwrite,
                                   allow_overlap=args.allow_overlap, overrides=args.overrides,
                                   fast=args.fast)
    print(f"wrote {out_dir / METRICS_FILE} and {out_dir / REPORT_FILE}")
    print(json.dumps(headline(result.metrics), indent=2))
    return 0


def cmd_predict(args) -> int:
    from medlite.pretrained import resolve_run, shipped_model_dir
    from medlite.runs import lock_if_inside

    run, inputs = args.run, list(args.inputs)
    if args.model is not None:
        run, inputs = shipped_model_dir(args.model), [p for p in (args.run, *inputs) if p]
    if run is None:
        raise MedliteError("predict: give a run folder (or --model NAME) and the inputs")
    if not inputs and not args.visit:
        raise MedliteError("predict: give files or folders (or --visit folders for pasi)")
    with lock_if_inside(resolve_run(run), args.out):
        return _predict(args, run, inputs)


def _predict(args, run, inputs) -> int:
    from medlite.inference.predictor import load_run
    from medlite.inference.writer import OutputWriter, unique_names

    predictor = load_run(run, overrides=args.overrides, fast=args.fast)
    task, config = predictor.task, predictor.config
    inputs = task.parse_inputs(inputs, list(args.visit), config)
    writer = OutputWriter(args.out, overwrite=args.overwrite)
    names = unique_names([item.source for item in inputs])
    count = 0
    for item, name, output in zip(inputs, names, predictor.predict(inputs), strict=True):
        files, summary = task.write_prediction(output, name, writer)
        writer.record(item.source, name, files, **summary)
        count += len(files)
    index = writer.write_index(task.prediction_table(writer.rows, predictor.postprocessing))
    print(f"wrote {count} files for {len(inputs)} inputs to {args.out} (index: {index.name})")
    return 0


def cmd_export(args) -> int:
    from medlite.inference.predictor import load_run
    from medlite.runs import lock_if_inside

    predictor = load_run(args.run)
    path = args.out or Path(args.run) / "export" / "model.onnx"
    if path.exists() and not args.overwrite:
        raise MedliteError(f"{path}: exists; pass --overwrite to replace it")
    with lock_if_inside(predictor.run_dir, path):
        path, difference = predictor.export_onnx(path)
    print(f"wrote {path}; ONNX Runtime vs PyTorch on a batch of 3: max abs difference "
          f"{difference:.2e}")
    if difference > 1e-3:
        raise MedliteError(f"{path}: ONNX output differs from PyTorch by {difference:.2e}")
    return 0


def cmd_profile(args) -> int:
    from medlite.models import create_model
    from medlite.models.profile import format_profile, profile_model

    model = create_model(args.model, num_classes=args.num_classes)
    result = profile_model(model, (args.batch, 3, *args.input_size), threads=args.threads)
    result = {"model": args.model, **result}
    print(json.dumps(result, indent=2) if args.json else format_profile(result))
    return 0


def cmd_serve(args) -> int:
    import logging

    import torch
    import uvicorn

    from medlite.serve import (
        ServeSettings,
        UploadLimits,
        create_app,
        load_served_runs,
        resolve_token,
    )

    token = resolve_token(args.host, args.token_file)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0 < args.confidence_target <= 1:
        raise MedliteError(f"--confidence-target {args.confidence_target}: outside (0, 1]")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runs = load_served_runs(args.runs, fast=args.fast, target_accuracy=args.confidence_target)
    db = args.db or Path(args.runs[0]).resolve().parent / "medlite-visits.sqlite"
    limits = UploadLimits(max_bytes=int(args.max_upload_mb * 2 ** 20),
                          max_pixels=args.max_pixels)
    app = create_app(runs, ServeSettings(db_path=db, token=token, limits=limits,
                                         concurrency=args.concurrency,
                                         cors_origins=args.cors_origin))
    print(f"medlite: serving {len(runs)} run(s) at http://{args.host}:{args.port}/ "
          f"(visits in {db})")
    # No access log: request paths can hold subject ids; the app logs route templates.
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, log_level="warning")
    return 0


def cmd_cluster(args) -> int:
    from medlite.errors import ConfigError
    from medlite.tasks import load_config
    from medlite.training.dask_executor import slurm_script

    config = load_config(args.config, args.overrides)
    if config.executor.cluster is None:
        raise ConfigError(f"{args.config}: executor.cluster: not set (e.g. --set "
                          "executor.cluster.queue=gpu)")
    print(slurm_script(config.executor.cluster), end="")
    return 0


def cmd_models(args) -> int:
    from medlite.models import list_models

    for name in list_models(task=args.task):
        print(name)
    return 0


COMMANDS = {"demo": cmd_demo, "data": cmd_data, "train": cmd_train, "configs": cmd_configs,
            "evaluate": cmd_evaluate, "predict": cmd_predict, "export": cmd_export,
            "profile": cmd_profile, "models": cmd_models, "serve": cmd_serve,
            "cluster": cmd_cluster}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        try:
            return COMMANDS[args.command](args)
        except OSError as exc:  # a write outside medlite's writers: disk full, read-only
            import errno

            from medlite.runs import write_error

            permission = exc.errno in (errno.EACCES, errno.EPERM)  # maybe a read
            error = write_error(exc, action="accessing" if permission else "writing")
            if error is None:
                raise
            raise error from exc
    except MedliteError as exc:
        print(f"medlite: error: {exc}", file=sys.stderr)
        for line in exc.problems:
            if line not in str(exc):  # the message shows it already
                print(f"  {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("medlite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
