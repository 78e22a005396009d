"""``medlite evaluate``: a trained run on other data, or again on one split of its own.

Other data is checked against what the run learned from: a sample whose subject trained or
validated the model, or whose content (sha256 of its files) equals a training or validation
sample's, would make the evaluation optimistic. Such overlap is an error naming the files,
unless ``allow_overlap``, and then ``metrics.json`` and the report say so. Nothing is written
into the run except under ``RUN/evaluations/``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medlite.data.splits import read_splits
from medlite.errors import DataError
from medlite.evaluation.evaluator import EvaluationResult, predict_table, record, summarize
from medlite.inference.predictor import load_run
from medlite.runs import lock_if_inside, make_output_dir
from medlite.tasks.base import SPLITS_FILE, with_saved_splits

EVALUATIONS_DIR = "evaluations"
_SHOWN = 5


def training_overlap(run_dir: Path, samples: pd.DataFrame, fingerprints: list[str]) -> dict:
    """Which of ``samples`` share a subject or their content with the run's training and
    validation samples: ``{"n": count, "by_subject": [...], "by_content": [...], "files":
    [...]}`` (lists of the sample ids / first files)."""
    saved = read_splits(Path(run_dir) / SPLITS_FILE)
    learned = saved[saved["split"].isin(["train", "val"])]
    subjects = set(learned["subject"].astype(str))
    hashes = set(learned["content_sha256"]) if "content_sha256" in learned else set()
    by_subject = samples["subject"].astype(str).isin(subjects).to_numpy()
    by_content = pd.Series(fingerprints).isin(hashes).to_numpy()
    overlapping = samples[by_subject | by_content]
    file_column = next((c for c in ("image", "path", "recording", "sample")
                        if c in samples.columns), "sample")
    return {"n": int(len(overlapping)),
            "by_subject": samples.loc[by_subject, "sample"].astype(str).tolist(),
            "by_content": samples.loc[by_content, "sample"].astype(str).tolist(),
            "files": list(dict.fromkeys(str(f) for f in overlapping[file_column]))}


def evaluate_run(run_dir: Path, *, data: Path | None = None, scores: Path | None = None,
                 split: str = "test", out: Path | None = None, overwrite: bool = False,
                 allow_overlap: bool = False, overrides: list[str] | None = None,
                 fast: str = "none") -> tuple[EvaluationResult, Path]:
    """Evaluate run ``run_dir`` on ``data`` (a manifest, folder or recordings), or again on
    its own ``split``, through the ``fast`` inference path; returns the evaluation and the
    folder it was written to. Writing inside the run (the default), it holds the run's lock:
    a run another process is writing is refused."""
    from medlite.pretrained import resolve_run

    run_dir = resolve_run(run_dir)
    with lock_if_inside(run_dir, out):
        return _evaluate(run_dir, data=data, scores=scores, split=split, out=out,
                         overwrite=overwrite, allow_overlap=allow_overlap, overrides=overrides,
                         fast=fast)


def _evaluate(run_dir: Path, *, data: Path | None, scores: Path | None, split: str,
              out: Path | None, overwrite: bool, allow_overlap: bool,
              overrides: list[str] | None, fast: str) -> tuple[EvaluationResult, Path]:
    predictor = load_run(run_dir, overrides=overrides, fast=fast)
    task, config = predictor.task, predictor.config
    run_dir = Path(run_dir)
    if scores is not None:
        if not hasattr(config.data, "scores"):
            raise DataError(f"--scores: only for pasi runs, not {config.task}")
        config.data.scores = Path(scores).resolve()
    note = None
    extras: dict = task.saved_extras(run_dir, config)
    if data is not None:
        samples = task.load_evaluation_samples(config, Path(data))
        overlap = training_overlap(run_dir, samples, task.fingerprints(samples))
        if overlap["n"]:
            files = ", ".join(overlap["files"][:_SHOWN])
            more = f" and {len(overlap['files']) - _SHOWN} more" if len(overlap["files"]) > \
                _SHOWN else ""
            reasons = []
            if overlap["by_subject"]:
                reasons.append(f"{len(overlap['by_subject'])} share a subject id")
            if overlap["by_content"]:
                reasons.append(f"{len(overlap['by_content'])} have the same content")
            message = (f"{data}: {overlap['n']} of {len(samples)} samples overlap the run's "
                       f"training or validation data ({'; '.join(reasons)}): {files}{more}")
            if not allow_overlap:
                raise DataError(f"{message}; remove them, or pass --allow-overlap to evaluate "
                                "anyway (the report will say so)")
            note = f"Evaluated with --allow-overlap: {message}. These metrics are optimistic."
        extras["overlap"] = overlap
        evaluated, default_name = f"other data: {data}", Path(data).stem
    else:
        samples = with_saved_splits(task.load_samples(config), run_dir)
        samples = samples[samples["split"] == split].reset_index(drop=True)
        if samples.empty:
            raise DataError(f"{run_dir}: the run has no {split} samples")
        evaluated, default_name = f"{split} split of the run's data", split
    out_dir = make_output_dir(out or run_dir / EVALUATIONS_DIR / default_name, "evaluation",
                              overwrite=overwrite)
    table = predict_table(predictor, samples, out_dir)
    result = summarize(task, config, table, out_dir, evaluated=evaluated, note=note,
                       extras=extras, samples=samples)
    result.info["inference_path"] = fast
    if "overlap" in extras:
        result.info["overlap"] = {k: extras["overlap"][k] for k in ("n", "by_subject",
                                                                     "by_content")}
    record(result, out_dir, config, run_dir=run_dir,
           title=f"medlite {config.task}: {config.name} on {out_dir.name}")
    return result, out_dir
