"""Stress recognition from ECG spectrograms (SONIC, Phukan et al. 2024) as a task recipe.

The paper: WESAD chest ECG (700 Hz) cut into 5 s windows every 2 s; each window becomes a
``scipy.signal.spectrogram`` image resized to 224 x 224, replicated to 3 channels and
normalised; ImageNet backbones (VGG19, ResNet50, EfficientNet-B0, ViT-B/32, not frozen) each
end in global average pooling, a 128-unit layer and logits; SONIC concatenates the logits of
two backbones, then a 12-unit layer and the classes (2: stress vs non-stress; 3: baseline,
stress, amusement). Adam 1e-3, 20 epochs, batch 32, cross-entropy, 5-fold CV over windows,
accuracy and macro F1, confusion matrices and a t-SNE of the penultimate (fused) layer.

What this recipe adds, and why:

- **Cross-validation that does not leak.** Windows of 5 s every 2 s share 60% of their
  samples with each neighbour (:func:`medlite.data.cv.overlap_fraction`), so the paper's
  window-level folds test on samples the model trained on. The default ``cv.scheme:
  subject`` keeps every window of a subject in one fold (leave-one-subject-out when the
  folds equal the subjects); ``time`` cuts each recording into contiguous blocks and purges
  the windows that would share samples across a block boundary (one subject, e.g. drivedb);
  ``window`` is the paper's protocol. ``cv.compare_window_cv: true`` trains the same model
  under both and reports them side by side (``leakage.csv``).
- **Validation carved from the training folds** (``cv.val_fraction``), for the learning
  curves and for keeping the best epoch's weights: whole subjects when the training folds
  hold enough of them (round(val_fraction x subjects) >= 1), otherwise the last
  ``val_fraction`` of each (recording, class) stretch in time, with training windows that
  would share samples with it purged; random windows under the leaky ``window`` scheme. The
  held-out fold never chooses anything. Early stopping is off (the paper's fixed 20 epochs)
  unless ``trainer.early_stopping_patience`` is set.
- **Normalisation fitted on the training windows of each fold only**
  (:class:`~medlite.data.spectrogram.SpectrogramNormalizer`) and stored inside the network
  (:class:`StressNet`), so ``predict`` and the ONNX export take raw dB spectrograms.
- **A deployable model**: after the CV folds, the same procedure is trained once more on
  every window (job ``final``); that is ``model.pt``. The CV metrics estimate how well this
  procedure does on new subjects (or later time), the usual reading of cross-validation;
  keeping one fold's model instead would discard a fifth of the data for no gain.

Each fold (and the final model) is an independent, resumable job
(:mod:`medlite.training.jobs`) trained with the shared :func:`~medlite.training.loop.fit`.
Spectrograms are computed once per recording into a cache (``data.cache_dir``, default
``RUN/spectrograms``; float16, memory-mapped by the jobs).
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from sklearn.metrics import accuracy_score, f1_score
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score
from tqdm import tqdm

from medlite.config import (
    BaseTaskConfig,
    EvaluationConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    SplitConfig,
    StrictModel,
    TrainerConfig,
)
from medlite.data.cv import overlap_fraction, subject_kfold, time_blocked_kfold, window_kfold
from medlite.data.ecg import (
    WESAD_LABELS,
    WESAD_LABELS_BINARY,
    Recording,
    drivedb_stress_labels,
    labels_from_intervals,
    load_signal_file,
    load_wesad,
    load_wfdb,
)
from medlite.data.manifest import write_csv_atomic
from medlite.data.spectrogram import (
    NORMALIZER_MODES,
    SpectrogramCache,
    SpectrogramNormalizer,
    SpectrogramParams,
    spectrogram_images,
)
from medlite.data.splits import assign_splits, write_splits
from medlite.data.windows import bandpass, label_windows, make_windows, window_length
from medlite.errors import ConfigError, DataError
from medlite.metrics import classification_metrics, confusion, metrics_with_ci
from medlite.models import create_model
from medlite.models.sonic import LogitHeadBackbone, SonicFusion
from medlite.reports.classification_figures import CLASS_COLOURS, plot_confusion_matrix
from medlite.reports.embedding import plot_tsne, tsne_embedding
from medlite.reports.html import write_standard_report
from medlite.runs import atomic_target, load_state_dict, save_torch_atomic
from medlite.tasks.base import (
    SPLITS_FILE,
    Evaluation,
    Task,
    load_run_config,
    record_results,
    resolve_relative,
    with_saved_splits,
)
from medlite.training.jobs import Job, make_executor, run_jobs
from medlite.training.loop import HISTORY_FILE, MODEL_FILE, TrainingParts, fit

JOBS_DIR = "jobs"
WINDOWS_FILE = "windows.csv"
RECORDINGS_FILE = "recordings.csv"
FOLDS_FILE = "folds.csv"
LEAKAGE_FILE = "leakage.csv"
PREDICTIONS_FILE = "predictions.npz"
FINAL_JOB = "final"
RECORDING_FORMATS = ("wesad", "wfdb", "drivedb", "csv", "npy", "npz")
MANIFEST_COLUMNS = ("path", "format", "subject", "fs", "channel", "labels")
WESAD3_NAMES = ("baseline", "stress", "amusement")
WESAD2_NAMES = ("non-stress", "stress")
_SUFFIX_FORMATS = {".pkl": "wesad", ".csv": "csv", ".txt": "csv", ".tsv": "csv", ".npy": "npy",
                   ".npz": "npz", ".hea": "wfdb", ".dat": "wfdb", "": "wfdb"}
# Windows turned into spectrograms at a time by predict: bounds memory on hour-long files.
_PREDICT_CHUNK = 256


# -- configuration -----------------------------------------------------------------------------

class RecordingEntry(StrictModel):
    """One recording listed in the config itself (the columns of a manifest row)."""

    path: Path
    format: Literal["wesad", "wfdb", "drivedb", "csv", "npy", "npz"] | None = None
    subject: str | None = None
    fs: float | None = Field(None, gt=0)
    channel: str | int | None = None
    labels: str | None = None


class StressDataConfig(StrictModel):
    recordings: Path | list[RecordingEntry] | None = Field(
        None, description="CSV manifest (path, format, subject, fs, channel, labels; only path "
        "is required), a folder of WESAD subject pickles (every *.pkl below it), or a list of "
        "such rows in the config.")
    label_scheme: Literal["wesad3", "wesad2", "file"] = Field(
        "wesad3", description="wesad3: baseline, stress, amusement; wesad2: non-stress "
        "(baseline + amusement), stress; file: the files' codes 0..C-1 named by class_names.")
    class_names: list[str] | None = Field(None, description="Names of codes 0..C-1 (only "
                                          "with label_scheme: file).")
    fs: float | None = Field(None, gt=0, description="Sampling rate (Hz) of CSV/NPY recordings "
                             "whose manifest row gives none.")
    window_s: float = Field(5.0, gt=0)
    step_s: float = Field(2.0, gt=0, description="Seconds between window starts (the "
                          "paper's 2 s gap).")
    bandpass: bool = Field(True, description="Zero-phase Butterworth band-pass before "
                           "windowing.")
    low_hz: float = Field(0.5, ge=0)
    high_hz: float = Field(40.0, gt=0)
    flat_std: float = Field(1e-3, ge=0, description="Windows with a smaller standard "
                            "deviation (signal units) are dropped as flat.")
    clip_fraction: float = Field(0.01, gt=0, le=1, description="Windows with more of their "
                                 "samples at the maximum or minimum are dropped as clipped.")
    cache_dir: Path | None = Field(None, description="Spectrogram cache (default "
                                   "RUN/spectrograms).")

    @model_validator(mode="after")
    def _check(self):
        if self.label_scheme == "file":
            if not self.class_names or len(self.class_names) < 2:
                raise ValueError("label_scheme file needs class_names (at least 2), the names "
                                 "of the codes 0, 1, ... in the label tracks")
            if len(set(self.class_names)) != len(self.class_names):
                raise ValueError("class_names must be unique")
        elif self.class_names is not None:
            raise ValueError(f"class_names: only with label_scheme file ({self.label_scheme} "
                             "names its own classes)")
        if self.bandpass and self.low_hz >= self.high_hz:
            raise ValueError(f"low_hz ({self.low_hz}) must be below high_hz ({self.high_hz})")
        return self


class StressSpectrogramConfig(StrictModel):
    image_size: int = Field(224, ge=16, description="Square image side in pixels.")
    nperseg: int | None = Field(None, ge=8, description="Segment length (default fs / 2).")
    noverlap: int | None = Field(None, ge=0, description="Default 7/8 of nperseg.")
    max_freq_hz: float | None = Field(50.0, gt=0)
    normalization: Literal[NORMALIZER_MODES] = Field(
        "global", description="global / per_frequency: statistics of each fold's training "
        "windows; window_zscore / window_minmax: each image on its own.")
    normalizer_max_windows: int = Field(2048, ge=1, description="Training windows drawn to "
                                        "fit the normaliser.")

    def params(self) -> SpectrogramParams:
        return SpectrogramParams(size=(self.image_size, self.image_size), nperseg=self.nperseg,
                                 noverlap=self.noverlap, max_freq_hz=self.max_freq_hz)


class StressCVConfig(StrictModel):
    scheme: Literal["subject", "time", "window"] = Field(
        "subject", description="subject: grouped folds (leave-one-subject-out when folds = "
        "subjects); time: contiguous purged blocks of each recording; window: the paper's "
        "shuffled windows (leaky).")
    folds: int | None = Field(5, ge=2, description="null: one fold per subject (subject only).")
    val_fraction: float = Field(0.15, gt=0, lt=0.5, description="Share of the training folds "
                                "held out for validation (monitoring, best epoch).")
    compare_window_cv: bool = Field(False, description="Also train under window-level CV (or, "
                                    "for scheme window, subject/time CV) for the leakage "
                                    "report.")
    workers: int = Field(1, ge=1, description="Fold jobs trained at the same time.")

    @model_validator(mode="after")
    def _check(self):
        if self.folds is None and self.scheme != "subject":
            raise ValueError("folds: null (leave-one-subject-out) needs scheme subject")
        return self


class StressEvaluationConfig(EvaluationConfig):
    block_s: float = Field(60.0, gt=0, description="With a single subject, CIs resample "
                           "blocks of this many seconds of each recording.")
    tsne_max_points: int = Field(2000, ge=4)


class StressInferenceConfig(StrictModel):
    """How ``medlite predict`` reads a recording (``--set inference.fs=256``)."""

    fs: float | None = Field(None, gt=0, description="Sampling rate of CSV/NPY inputs "
                             "(default data.fs).")
    channel: str | None = Field(None, description="Signal column or WFDB channel.")
    format: Literal["auto", "wesad", "wfdb", "drivedb", "csv", "npy", "npz"] = "auto"
    batch_size: int = Field(64, ge=1)


class StressConfig(BaseTaskConfig):
    task: Literal["stress"] = "stress"
    data: StressDataConfig = Field(default_factory=StressDataConfig)
    spectrogram: StressSpectrogramConfig = Field(default_factory=StressSpectrogramConfig)
    cv: StressCVConfig = Field(default_factory=StressCVConfig)
    evaluation: StressEvaluationConfig = Field(default_factory=StressEvaluationConfig)
    inference: StressInferenceConfig = Field(default_factory=StressInferenceConfig)
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(
        name="sonic", pretrained=True, kwargs={"backbones": ["resnet50", "efficientnet_b0"]}))
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3))
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig(name="none"))
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(
        max_epochs=20, batch_size=32, early_stopping_patience=None))

    @field_validator("split")
    @classmethod
    def _split_unused(cls, split: SplitConfig) -> SplitConfig:
        if split != SplitConfig():
            raise ValueError("not used by task stress; its folds are set by cv.scheme, "
                             "cv.folds and cv.val_fraction")
        return split


def class_names(config: StressConfig) -> list[str]:
    """Class names in code order for the config's label scheme."""
    scheme = config.data.label_scheme
    if scheme == "wesad3":
        return list(WESAD3_NAMES)
    if scheme == "wesad2":
        return list(WESAD2_NAMES)
    return list(config.data.class_names or [])


# -- recordings -------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecordingSpec:
    """One recording to read: a manifest row (or a file given to predict)."""

    path: Path
    format: str
    subject: str | None = None
    fs: float | None = None
    channel: str | int | None = None
    labels: str | None = None
    where: str = ""


def infer_format(path: Path) -> str:
    """Recording format from the file name: .pkl WESAD, .csv/.npy/.npz plain files,
    .hea/.dat or no suffix a WFDB record (drivedb must be named explicitly)."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIX_FORMATS:
        raise DataError(f"{path}: cannot tell the recording format from {suffix!r}; give "
                        f"format ({', '.join(RECORDING_FORMATS)})")
    return _SUFFIX_FORMATS[suffix]


def _cell(value) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


INLINE_SOURCE = "config: data.recordings"


def source_id(source: Path | list[RecordingEntry]) -> str:
    """How windows record where they came from: the manifest or folder path, or
    :data:`INLINE_SOURCE` for recordings listed in the config."""
    return INLINE_SOURCE if isinstance(source, list) else str(source)


def recording_specs(source: Path | list[RecordingEntry]) -> list[RecordingSpec]:
    """The recordings of ``data.recordings``: a folder (every WESAD ``*.pkl`` below it, sorted),
    a CSV manifest with columns path (relative to the manifest's folder) and optionally
    format, subject, fs, channel, labels (an interval/label file, or a label column name),
    or a list of :class:`RecordingEntry` (paths resolved against the config's folder)."""
    if isinstance(source, list):
        if not source:
            raise DataError("data.recordings: the list is empty")
        return [RecordingSpec(e.path, e.format or infer_format(e.path), e.subject, e.fs,
                              e.channel, e.labels, f"data.recordings[{i}]")
                for i, e in enumerate(source)]
    source = Path(source)
    if source.is_dir():
        pickles = sorted(source.rglob("*.pkl"))
        if not pickles:
            raise DataError(f"{source}: no WESAD subject pickles (*.pkl) in this folder")
        return [RecordingSpec(p, "wesad", where=str(p)) for p in pickles]
    if not source.is_file():
        raise DataError(f"{source}: data.recordings not found")
    try:
        table = pd.read_csv(source, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{source}: not a readable CSV ({' '.join(str(exc).split())})") from None
    table.columns = [str(c).strip() for c in table.columns]
    unknown = [c for c in table.columns if c not in MANIFEST_COLUMNS]
    if unknown:
        raise DataError(f"{source}: unknown column {unknown[0]!r} (columns: "
                        f"{', '.join(MANIFEST_COLUMNS)})")
    if "path" not in table.columns:
        raise DataError(f"{source}: column path missing (columns: {', '.join(MANIFEST_COLUMNS)})")
    if table.empty:
        raise DataError(f"{source}: no recordings listed")
    specs = []
    for line, row in zip(range(2, len(table) + 2), table.to_dict("records"), strict=True):
        where = f"{source} line {line}"
        raw_path = _cell(row.get("path"))
        if raw_path is None:
            raise DataError(f"{where}: path is empty")
        path = Path(raw_path) if Path(raw_path).is_absolute() else source.parent / raw_path
        fmt = _cell(row.get("format")) or infer_format(path)
        if fmt not in RECORDING_FORMATS:
            raise DataError(f"{where}: format {fmt!r} unknown (one of "
                            f"{', '.join(RECORDING_FORMATS)})")
        fs = _cell(row.get("fs"))
        try:
            rate = None if fs is None else float(fs)
        except ValueError:
            raise DataError(f"{where}: fs {fs!r} is not a number of Hz") from None
        if rate is not None and not (np.isfinite(rate) and rate > 0):
            raise DataError(f"{where}: fs must be a positive number of Hz, got {fs}")
        channel = _cell(row.get("channel"))
        labels = _cell(row.get("labels"))
        if labels is not None and (source.parent / labels).is_file():
            labels = str(source.parent / labels)
        specs.append(RecordingSpec(path, fmt, _cell(row.get("subject")), rate,
                                   int(channel) if channel and channel.isdigit() else channel,
                                   labels, where))
    return specs


def _wfdb_labels(path: Path, n_samples: int, fs: float) -> np.ndarray:
    """Per-sample codes for a WFDB record from a CSV of intervals (start_s, end_s, label)."""
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable label CSV ({exc})") from None
    try:
        return labels_from_intervals(n_samples, fs, table)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def load_recording(spec: RecordingSpec, config: StressConfig, default_fs: float | None = None
                   ) -> Recording:
    """Read one recording and map its labels to the config's classes (codes 0..C-1, -1 for
    unlabelled). Raises DataError naming the file for unreadable data, a missing sampling
    rate, a label track of the wrong length or a label code that is not a class."""
    scheme = config.data.label_scheme
    path, fmt = spec.path, spec.format
    fs = spec.fs if spec.fs is not None else default_fs
    if fmt == "wesad":
        if spec.labels is not None:
            raise DataError(f"{spec.where or path}: labels: WESAD pickles carry their own labels")
        if scheme == "file":
            raise DataError(f"{path}: data.label_scheme file does not apply to WESAD pickles; "
                            "use wesad3 or wesad2")
        label_map = WESAD_LABELS_BINARY if scheme == "wesad2" else WESAD_LABELS
        recording = load_wesad(path, label_map)
        return _with_subject(recording, spec)
    if fmt == "drivedb":
        recording = drivedb_stress_labels(path, channel=spec.channel)
    elif fmt == "wfdb":
        recording = load_wfdb(path, channel=spec.channel, fs=None, subject=spec.subject)
        if spec.labels is not None:
            recording.labels = _wfdb_labels(Path(spec.labels), recording.signal.size,
                                            recording.fs)
    else:
        labels_is_file = spec.labels is not None and Path(spec.labels).is_file()
        if fmt == "npy" and fs is None:
            raise DataError(f"{path}: sampling rate missing: give the manifest's fs column "
                            "(or data.fs; for predict, --set inference.fs=HZ)")
        try:
            recording = load_signal_file(
                path, fs, column=spec.channel,
                labels=spec.labels if labels_is_file else None,
                label_column=spec.labels if spec.labels and not labels_is_file else "label",
                subject=spec.subject)
        except DataError as exc:
            if fs is None and "sampling rate missing" in str(exc):
                raise DataError(f"{path}: sampling rate missing: give the manifest's fs column "
                                "(or data.fs; for predict, --set inference.fs=HZ)") from None
            raise
        if spec.labels and not labels_is_file and (recording.labels < 0).all():
            raise DataError(f"{spec.where or path}: labels {spec.labels!r} is neither a file "
                            f"nor a label column of {path}")
    recording.labels = _class_codes(recording, scheme, class_names(config))
    return _with_subject(recording, spec)


def _with_subject(recording: Recording, spec: RecordingSpec) -> Recording:
    if spec.subject is not None:
        recording.subject = spec.subject
    return recording


def _class_codes(recording: Recording, scheme: str, names: list[str]) -> np.ndarray:
    """File codes -> class codes. Under wesad3/wesad2 a plain file holds the three WESAD
    classes (0 baseline, 1 stress, 2 amusement; wesad2 merges amusement into non-stress);
    under file, codes 0..C-1 as they are. Any other code is an error naming the file."""
    codes = recording.labels.copy()
    allowed = 3 if scheme in ("wesad3", "wesad2") else len(names)
    bad = np.unique(codes[(codes >= allowed)])
    if bad.size:
        meaning = ("0 baseline, 1 stress, 2 amusement" if allowed == 3 and scheme != "file"
                   else ", ".join(f"{i} {n}" for i, n in enumerate(names)))
        raise DataError(f"{recording.source}: label code {bad[0]} is not a class of "
                        f"label_scheme {scheme} ({meaning}; -1 or blank for unlabelled)")
    if scheme == "wesad2":
        codes[codes == 2] = 0
    return codes


def write_recordings(recordings: Sequence[Recording], folder: Path) -> Path:
    """Write recordings as CSV files (columns ecg in mV, label) plus a manifest
    ``recordings.csv`` (path, format, subject, fs) in ``folder``; returns the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for recording in recordings:
        name = f"{recording.subject}.csv"
        table = pd.DataFrame({"ecg": recording.signal, "label": recording.labels})
        with atomic_target(folder / name) as tmp:
            table.to_csv(tmp, index=False, float_format="%.5f")
        rows.append({"path": name, "format": "csv", "subject": recording.subject,
                     "fs": recording.fs})
    return write_csv_atomic(pd.DataFrame(rows), folder / "recordings.csv")


# -- windows and spectrograms ------------------------------------------------------------------

def _filter(config: StressConfig):
    data = config.data
    return partial(bandpass, low_hz=data.low_hz, high_hz=data.high_hz) if data.bandpass else None


def recording_windows(recording: Recording, config: StressConfig, labelled: bool = True):
    """:func:`~medlite.data.windows.make_windows` with the config's settings; a recording
    shorter than one window is a DataError naming it."""
    data = config.data
    try:
        return make_windows(recording.signal, recording.fs,
                            recording.labels if labelled else None, window_s=data.window_s,
                            step_s=data.step_s, filter=_filter(config), drop_bad=labelled,
                            flat_std=data.flat_std, clip_fraction=data.clip_fraction)
    except ValueError as exc:
        raise DataError(f"{recording.source}: {exc}") from None


def _no_window_reason(counts: dict) -> str:
    labelled = counts["total"] - counts["unlabelled"] - counts["mixed"]
    if labelled == 0:
        return (f"no labelled window ({counts['total']} windows: {counts['unlabelled']} "
                f"unlabelled, {counts['mixed']} across a label change)")
    return (f"no usable window: of {labelled} labelled windows {counts['nan']} contain NaN, "
            f"{counts['flat']} are flat, {counts['clipped']} are clipped")


def _recording_ids(specs: Sequence[RecordingSpec]) -> list[str]:
    stems = [s.path.stem for s in specs]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i:03d}-{stem}" for i, stem in enumerate(stems)]


def prepare_windows(config: StressConfig, source: Path | list[RecordingEntry],
                    cache: SpectrogramCache | None = None,
                    progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every usable window of every recording of ``source``.

    Returns:
        ``windows``: one row per window with sample (``<recording>@<start>s``), subject,
        recording, start_s, end_s, label (class code), fs and, with a ``cache``, image_file
        and image_row (the window's spectrogram in a cached ``(W, H, W)`` float16 stack);
        ``recordings``: one row per recording with its window counts (total, unlabelled,
        mixed, nan, flat, clipped, bad, kept) and per-class counts.
    """
    specs = recording_specs(source)
    names = class_names(config)
    params = config.spectrogram.params()
    tables, summaries = [], []
    for spec, rec_id in tqdm(list(zip(specs, _recording_ids(specs), strict=True)),
                             desc="recordings", disable=not progress, leave=False):
        recording = load_recording(spec, config, config.data.fs)
        windows = recording_windows(recording, config)
        if windows.counts["kept"] == 0:
            raise DataError(f"{recording.source}: {_no_window_reason(windows.counts)}")
        table = pd.DataFrame({
            "sample": [f"{rec_id}@{t:.3f}s" for t in windows.times_s],
            "subject": str(recording.subject), "recording": rec_id,
            "start_s": windows.times_s, "end_s": windows.times_s + config.data.window_s,
            "label": windows.labels, "fs": recording.fs, "manifest": source_id(source)})
        if cache is not None:
            cache.images_for(windows.windows, recording.fs, params)
            table["image_file"] = str(cache.path_for(cache.key(windows.windows, recording.fs,
                                                               params)))
            table["image_row"] = np.arange(len(table))
        tables.append(table)
        summary = {"recording": rec_id, "subject": str(recording.subject),
                   "source": str(recording.source), "fs": recording.fs,
                   "duration_s": round(recording.duration_s, 2), **windows.counts}
        for code, name in enumerate(names):
            summary[f"windows_{name}"] = int((windows.labels == code).sum())
        summaries.append(summary)
    windows_table = pd.concat(tables, ignore_index=True)
    windows_table.attrs["source"] = source_id(source)
    return windows_table, pd.DataFrame(summaries)


def open_stacks(windows: pd.DataFrame) -> tuple[list[np.ndarray], np.ndarray]:
    """Memory-mapped image stacks of ``windows`` and each window's stack index ``(N,)``."""
    files = list(dict.fromkeys(windows["image_file"]))
    stacks = []
    for file in files:
        if not Path(file).is_file():
            raise DataError(f"{file}: spectrogram cache file missing; run training again with "
                            "--resume to rebuild it")
        stacks.append(np.load(file, mmap_mode="r"))
    index = {file: i for i, file in enumerate(files)}
    return stacks, windows["image_file"].map(index).to_numpy(dtype=np.int64)


class SpectrogramWindows(Dataset):
    """Spectrogram images of windows as ``{"input": (1, H, W) float32 dB, "target": int64}``."""

    def __init__(self, stacks: list[np.ndarray], stack_index: np.ndarray, rows: np.ndarray,
                 labels: np.ndarray):
        self.stacks = stacks
        self.stack_index = np.asarray(stack_index)
        self.rows = np.asarray(rows)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        image = np.asarray(self.stacks[self.stack_index[i]][self.rows[i]], dtype=np.float32)
        return {"input": torch.from_numpy(image)[None], "target": torch.tensor(self.labels[i])}


def _dataset(windows: pd.DataFrame, stacks, stack_index, positions: np.ndarray):
    positions = np.asarray(positions, dtype=np.int64)
    return SpectrogramWindows(stacks, stack_index[positions],
                              windows["image_row"].to_numpy()[positions],
                              windows["label"].to_numpy()[positions])


def gather_images(dataset: SpectrogramWindows, positions: np.ndarray) -> np.ndarray:
    """``(n, H, W)`` float16 images of dataset items ``positions`` (to fit a normaliser)."""
    return np.stack([np.asarray(dataset.stacks[dataset.stack_index[i]][dataset.rows[i]])
                     for i in positions])


# -- the network -------------------------------------------------------------------------------

class SpectrogramStandardize(nn.Module):
    """:class:`~medlite.data.spectrogram.SpectrogramNormalizer`'s transform as a module, so the
    statistics travel with the weights. ``(B, 1, H, W)`` -> same shape, float.

    Buffers ``mean`` and ``std`` are ``(1, 1, H, 1)`` (one value per frequency row; the
    global mode repeats its scalar); the window modes use no buffers."""

    def __init__(self, mode: str, height: int, eps: float = 1e-6):
        super().__init__()
        if mode not in NORMALIZER_MODES:
            raise ConfigError(f"spectrogram.normalization: one of {NORMALIZER_MODES}, not "
                              f"{mode!r}")
        self.mode = mode
        self.eps = eps
        self.register_buffer("mean", torch.zeros(1, 1, height, 1))
        self.register_buffer("std", torch.ones(1, 1, height, 1))

    def set_statistics(self, normalizer: SpectrogramNormalizer) -> None:
        """Copy a fitted normaliser's statistics (a scalar, or one per frequency row)."""
        if not normalizer.needs_fit:
            return
        for name in ("mean", "std"):
            values = torch.as_tensor(np.ravel(getattr(normalizer, name)), dtype=torch.float32)
            buffer = getattr(self, name)
            buffer.copy_(values.reshape(1, 1, -1, 1).expand_as(buffer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "window_zscore":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False)
            return (x - mean) / (std + self.eps)
        if self.mode == "window_minmax":
            low = x.amin(dim=(1, 2, 3), keepdim=True)
            high = x.amax(dim=(1, 2, 3), keepdim=True)
            return (x - low) / torch.clamp(high - low, min=self.eps)
        return (x - self.mean) / (self.std + self.eps)


class StressNet(nn.Module):
    """Normalisation, 3-channel replication and the classifier in one module.

    ``forward(x (B, 1, H, W) float dB spectrograms) -> logits (B, C)``; with
    ``return_features=True`` also the penultimate features used for t-SNE: SONIC's fused
    12-unit layer, a ``logit_backbone``'s 128-unit layer, else the logits."""

    def __init__(self, network: nn.Module, normalize: SpectrogramStandardize, channels: int = 3):
        super().__init__()
        self.network = network
        self.normalize = normalize
        self.channels = channels

    def forward(self, x: torch.Tensor, return_features: bool = False):
        images = self.normalize(x).expand(-1, self.channels, -1, -1)
        if not return_features:
            return self.network(images)
        network = self.network
        if isinstance(network, SonicFusion):
            return network(images, return_features=True)
        if isinstance(network, LogitHeadBackbone):
            hidden = network.head[:-1](network.backbone(images))
            return network.head[-1](hidden), hidden
        logits = network(images)
        return logits, logits


def build_network(config: StressConfig, for_training: bool = True) -> StressNet:
    kwargs = dict(config.model.kwargs)
    name = config.model.name
    if name in ("sonic", "logit_backbone"):
        kwargs.setdefault("image_size", config.spectrogram.image_size)
    if not for_training:
        kwargs.pop("backbone_weights", None)  # the trained weights replace them
    network = create_model(name, task="classification", num_classes=len(class_names(config)),
                           in_channels=3, pretrained=config.model.pretrained and for_training,
                           weights_path=config.model.weights_path if for_training else None,
                           **kwargs)
    normalize = SpectrogramStandardize(config.spectrogram.normalization,
                                       config.spectrogram.image_size)
    return StressNet(network, normalize)


def inference_device(config: StressConfig) -> torch.device:
    """The GPU when training may use one (``trainer.accelerator`` auto/gpu/cuda) and one is
    present, else the CPU: scoring thousands of held-out 224 px windows on a CPU is slow."""
    wants_gpu = config.trainer.accelerator in ("auto", "gpu", "cuda")
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict_dataset(model: StressNet, dataset: Dataset, batch_size: int,
                    device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities ``(N, C)`` float64 and penultimate features ``(N, F)`` float32;
    ``model`` is left on the CPU."""
    model.eval().to(device)
    probabilities, features = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size):
            logits, feats = model(batch["input"].to(device), return_features=True)
            probabilities.append(logits.softmax(dim=1).double().cpu())
            features.append(feats.float().cpu())
    finally:
        model.cpu()
    return torch.cat(probabilities).numpy(), torch.cat(features).numpy()


# -- cross-validation folds ------------------------------------------------------------------

def cv_folds(windows: pd.DataFrame, scheme: str, config: StressConfig) -> np.ndarray:
    """Fold ``(N,)`` int64 of every window under ``scheme`` (-1: purged, in no test fold)."""
    subjects = windows["subject"].astype(str).to_numpy()
    n_subjects = len(np.unique(subjects))
    folds = config.cv.folds
    if scheme == "subject":
        n_folds = n_subjects if folds is None else folds
        if n_subjects < 2:
            raise DataError(f"{windows.attrs.get('source', 'data')}: one subject cannot make "
                            "subject folds; use cv.scheme: time")
        if n_folds > n_subjects:
            raise DataError(f"cv.folds: {n_folds} subject folds need at least {n_folds} "
                            f"subjects, the data has {n_subjects} (use fewer folds, cv.folds: "
                            "null for leave-one-subject-out, or cv.scheme: time)")
        return subject_kfold(subjects, n_folds, seed=config.seed)
    n_folds = folds if folds is not None else n_subjects
    try:
        if scheme == "time":
            return time_blocked_kfold(windows["start_s"].to_numpy(), n_folds,
                                      gap_s=config.data.window_s,
                                      recordings=windows["recording"].to_numpy())
        return window_kfold(len(windows), n_folds, seed=config.seed,
                            labels=windows["label"].to_numpy())
    except ValueError as exc:
        raise DataError(f"cv.folds: {exc}") from None


def comparison_scheme(config: StressConfig, windows: pd.DataFrame) -> str:
    """The scheme trained beside the main one for the leakage report."""
    if config.cv.scheme != "window":
        return "window"
    n_subjects = windows["subject"].nunique()
    return "subject" if n_subjects >= (config.cv.folds or n_subjects) and n_subjects > 1 \
        else "time"


def check_folds_subject_disjoint(windows: pd.DataFrame, folds: np.ndarray, source: str) -> None:
    """No subject may have windows in the test fold and the training folds of any fold."""
    subjects = windows["subject"].astype(str).to_numpy()
    for fold in np.unique(folds[folds >= 0]):
        test = set(subjects[folds == fold])
        train = set(subjects[(folds >= 0) & (folds != fold)])
        shared = sorted(test & train)
        if shared:
            raise DataError(f"{source}: subject {shared[0]!r} is in the test fold {fold} and "
                            "in its training folds")


def _purge_near(times: np.ndarray, keep: np.ndarray, held: np.ndarray, gap_s: float
                ) -> np.ndarray:
    """``keep`` without the windows starting less than ``gap_s`` from a ``held`` window."""
    held_times = np.sort(times[held])
    if held_times.size == 0:
        return keep
    candidates = times[keep]
    right = np.searchsorted(held_times, candidates)
    nearest = np.full(candidates.size, np.inf)
    has_right = right < held_times.size
    nearest[has_right] = held_times[right[has_right]] - candidates[has_right]
    has_left = right > 0
    nearest[has_left] = np.minimum(nearest[has_left],
                                   candidates[has_left] - held_times[right[has_left] - 1])
    return keep[nearest >= gap_s]


def carve_validation(windows: pd.DataFrame, train: np.ndarray, scheme: str,
                     val_fraction: float, gap_s: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray, str]:
    """Split training positions into (fit, validation, how).

    ``how`` is ``subject`` (whole subjects, when round(val_fraction x subjects) >= 1 under the
    subject scheme), ``window`` (random windows, the window scheme) or ``time``: the last
    ``val_fraction`` of each (recording, class) stretch, training windows starting less than
    ``gap_s`` from a validation window purged.
    """
    train = np.asarray(train, dtype=np.int64)
    rng = np.random.default_rng(seed)
    subjects = windows["subject"].astype(str).to_numpy()[train]
    n_subjects = len(np.unique(subjects))
    if scheme == "window":
        order = rng.permutation(train)
        n_val = max(1, int(round(val_fraction * train.size)))
        return np.sort(order[n_val:]), np.sort(order[:n_val]), "window"
    if scheme == "subject" and int(np.floor(val_fraction * n_subjects + 0.5)) >= 1 \
            and n_subjects >= 2:
        splits = assign_splits(subjects, val_fraction=val_fraction, test_fraction=0.0, seed=seed)
        return train[splits == "train"], train[splits == "val"], "subject"
    times = windows["start_s"].to_numpy()
    recordings = windows["recording"].to_numpy()
    labels = windows["label"].to_numpy()
    fit_parts, val_parts = [], []
    for recording in np.unique(recordings[train]):
        members = train[recordings[train] == recording]
        held = []
        for label in np.unique(labels[members]):
            stretch = members[labels[members] == label]
            stretch = stretch[np.argsort(times[stretch], kind="stable")]
            n_val = int(np.ceil(val_fraction * stretch.size)) if stretch.size >= 4 else 0
            held.append(stretch[stretch.size - n_val:])
        held = np.concatenate(held)
        rest = np.setdiff1d(members, held)
        fit_parts.append(_purge_near(times, rest, held, gap_s))
        val_parts.append(held)
    fit_rows, val_rows = np.sort(np.concatenate(fit_parts)), np.sort(np.concatenate(val_parts))
    if val_rows.size == 0 or fit_rows.size == 0:
        raise DataError(f"{train.size} training windows are too few to hold out a validation "
                        "part; add data or lower cv.folds")
    return fit_rows, val_rows, "time"


def train_test_overlap(windows: pd.DataFrame, folds: np.ndarray, window_s: float
                       ) -> tuple[float, float]:
    """How much of a test window's samples a training window of its fold shares: the mean
    over tested windows of the largest shared fraction, and the share of tested windows
    sharing any sample with a training window (same recording, time overlap)."""
    times = windows["start_s"].to_numpy()
    recordings = windows["recording"].to_numpy()
    largest = np.zeros(len(windows))
    tested = folds >= 0
    for fold in np.unique(folds[tested]):
        test = folds == fold
        train = tested & ~test
        for recording in np.unique(recordings[test]):
            in_rec = recordings == recording
            train_times = np.sort(times[train & in_rec])
            rows = np.flatnonzero(test & in_rec)
            if train_times.size == 0:
                continue
            right = np.searchsorted(train_times, times[rows])
            gaps = np.full(rows.size, np.inf)
            ok = right < train_times.size
            gaps[ok] = train_times[right[ok]] - times[rows][ok]
            ok = right > 0
            gaps[ok] = np.minimum(gaps[ok], times[rows][ok] - train_times[right[ok] - 1])
            largest[rows] = np.clip(1.0 - gaps / window_s, 0.0, 1.0)
    values = largest[tested]
    return float(values.mean()), float((values > 0).mean())


# -- training jobs -----------------------------------------------------------------------------

def _fold_numbers(folds: pd.Series) -> list[int]:
    return sorted(int(k) for k in np.unique(folds[folds >= 0]))


def _job_key(scheme: str, fold: int | None) -> str:
    return FINAL_JOB if fold is None else f"{scheme}-fold{fold}"


def read_windows(run_dir: Path) -> pd.DataFrame:
    path = Path(run_dir) / WINDOWS_FILE
    if not path.is_file():
        raise DataError(f"{path}: missing (the run's window table)")
    return pd.read_csv(path, dtype={"sample": str, "subject": str, "recording": str})


def train_stress_job(job: Job, job_dir: Path) -> dict:
    """Train one fold (or the final model on every window) and predict its held-out windows.

    Module-level so worker processes can run it; reads everything from the run directory
    (``windows.csv``, the cached spectrograms, the resolved config). Writes
    ``predictions.npz`` (sample ids, probabilities, penultimate features of the held-out
    windows) and ``model.pt``; removes its Lightning checkpoints once done."""
    import lightning.pytorch as pl

    from medlite.tasks import get_task

    job_dir = Path(job_dir)
    run_dir = job_dir.resolve().parents[1]  # RUN/jobs/KEY: the run can be moved
    config: StressConfig = load_run_config(run_dir)
    task: StressTask = get_task("stress")
    windows = read_windows(run_dir)
    scheme, fold = job.params["scheme"], job.params["fold"]
    if fold is None:
        train, test = np.arange(len(windows)), np.zeros(0, dtype=np.int64)
        carve_scheme = config.cv.scheme
    else:
        folds = windows[f"fold_{scheme}"].to_numpy()
        train, test = np.flatnonzero((folds >= 0) & (folds != fold)), np.flatnonzero(folds == fold)
        carve_scheme = scheme
    seed = config.seed + (0 if fold is None else fold + 1)
    pl.seed_everything(seed, verbose=False)
    fit_rows, val_rows, how = carve_validation(windows, train, carve_scheme,
                                               config.cv.val_fraction, config.data.window_s, seed)
    stacks, stack_index = open_stacks(windows)
    train_set = _dataset(windows, stacks, stack_index, fit_rows)
    val_set = _dataset(windows, stacks, stack_index, val_rows)

    model = task.build_model(config, for_training=True)
    drawn = np.random.default_rng(seed).permutation(len(train_set))
    normalizer = SpectrogramNormalizer(config.spectrogram.normalization).fit(
        gather_images(train_set, np.sort(drawn[:config.spectrogram.normalizer_max_windows])))
    model.normalize.set_statistics(normalizer)
    num_classes = len(class_names(config))
    batch = config.trainer.batch_size
    workers = config.trainer.num_workers
    parts = TrainingParts(
        model=model, loss_fn=nn.CrossEntropyLoss(),
        train_loader=DataLoader(train_set, batch_size=batch, shuffle=True,
                                drop_last=len(train_set) > batch, num_workers=workers),
        val_loader=DataLoader(val_set, batch_size=batch, num_workers=workers),
        val_metrics=MetricCollection({
            "accuracy": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "macro_f1": MulticlassF1Score(num_classes=num_classes, average="macro")}),
        prediction_fn=lambda logits: logits.argmax(dim=1),
        monitor="val_loss", monitor_mode="min")
    fit(parts, config, job_dir, resume=(job_dir / "checkpoints" / "last.ckpt").is_file(),
        progress=False)
    model.load_state_dict(load_state_dict(job_dir / MODEL_FILE))
    result = {"n_fit": int(fit_rows.size), "n_val": int(val_rows.size),
              "n_test": int(test.size), "validation": how}
    if test.size:
        probabilities, features = predict_dataset(
            model, _dataset(windows, stacks, stack_index, test), batch, inference_device(config))
        with atomic_target(job_dir / PREDICTIONS_FILE) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, sample=windows["sample"].to_numpy()[test].astype(str),
                     probabilities=probabilities, features=features)
    history = pd.read_csv(job_dir / HISTORY_FILE) if (job_dir / HISTORY_FILE).is_file() \
        else pd.DataFrame()
    result["epochs"] = len(history)
    result["best_val_loss"] = float(history["val_loss"].min()) if "val_loss" in history else None
    shutil.rmtree(job_dir / "checkpoints", ignore_errors=True)  # model.pt holds the weights
    return result


# -- metrics and figures -----------------------------------------------------------------------

def bootstrap_groups(windows: pd.DataFrame, block_s: float) -> tuple[np.ndarray, str]:
    """Clusters resampled for CIs: subjects, or with one subject blocks of ``block_s``
    seconds of each recording. Returns (group per window, description)."""
    subjects = windows["subject"].astype(str).to_numpy()
    if len(np.unique(subjects)) > 1:
        return subjects, "subjects"
    blocks = (windows["start_s"].to_numpy() // block_s).astype(np.int64).astype(str)
    return windows["recording"].astype(str).to_numpy() + ":" + blocks, \
        f"{block_s:g} s blocks of each recording (one subject)"


def scored_metrics(labels: np.ndarray, probabilities: np.ndarray, names: list[str],
                   groups: np.ndarray, evaluation: StressEvaluationConfig, seed: int) -> dict:
    """classification_metrics with percentile bootstrap CIs over ``groups``."""
    def statistic(index: np.ndarray) -> dict[str, float]:
        return classification_metrics(labels[index], probabilities[index], names)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if evaluation.bootstrap_resamples == 0:
            return {k: {"value": v} for k, v in statistic(np.arange(len(labels))).items()}
        return metrics_with_ci(statistic, list(groups), n_resamples=evaluation.bootstrap_resamples,
                               confidence=evaluation.confidence, seed=seed)


def prediction_table(windows: pd.DataFrame, probabilities: np.ndarray, names: list[str]
                     ) -> pd.DataFrame:
    """Per-window table: the identifying columns, true and predicted class, probabilities."""
    columns = [c for c in ("sample", "subject", "recording", "start_s", "end_s", "fold")
               if c in windows]
    table = windows[columns].reset_index(drop=True).copy()
    labels = windows["label"].to_numpy()
    predicted = probabilities.argmax(axis=1)
    table["true"] = [names[i] for i in labels]
    table["predicted"] = [names[i] for i in predicted]
    for k, name in enumerate(names):
        table[f"p_{name}"] = probabilities[:, k]
    return table


def per_fold_table(windows: pd.DataFrame, probabilities: np.ndarray, folds: np.ndarray,
                   results: dict, scheme: str, names: list[str]) -> pd.DataFrame:
    """One row per fold: sizes, accuracy and macro F1 over the classes present in the fold,
    and the test classes no training window of the fold has (time blocks of a protocol that
    runs its conditions in sequence can hold out a whole class)."""
    rows = []
    labels = windows["label"].to_numpy()
    predicted = probabilities.argmax(axis=1)
    for fold in sorted(np.unique(folds[folds >= 0])):
        mask = folds == fold
        result = results[_job_key(scheme, int(fold))]
        trained = set(labels[(folds >= 0) & ~mask])
        untrained = [names[c] for c in sorted(set(labels[mask]) - trained)]
        rows.append({
            "scheme": scheme, "fold": int(fold), "test_windows": int(mask.sum()),
            "test_subjects": int(windows["subject"][mask].nunique()),
            "fit_windows": result["n_fit"], "val_windows": result["n_val"],
            "validation": result["validation"],
            "accuracy": float(accuracy_score(labels[mask], predicted[mask])),
            "macro_f1": float(f1_score(labels[mask], predicted[mask], average="macro",
                                       zero_division=0.0)),
            "epochs": result["epochs"], "best_val_loss": result["best_val_loss"],
            "untrained_classes": "+".join(untrained)})
    return pd.DataFrame(rows)


def _load_fold_predictions(run_dir: Path, windows: pd.DataFrame, folds: np.ndarray,
                           scheme: str) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Out-of-fold probabilities aligned with ``windows`` (rows of untested windows NaN) and
    the penultimate features of each fold's held-out windows (in window order)."""
    position = pd.Series(np.arange(len(windows)), index=windows["sample"].to_numpy())
    probabilities = None
    features = {}
    for fold in sorted(np.unique(folds[folds >= 0])):
        path = Path(run_dir) / JOBS_DIR / _job_key(scheme, int(fold)) / PREDICTIONS_FILE
        with np.load(path, allow_pickle=False) as stored:
            rows = position.loc[stored["sample"]].to_numpy()
            if probabilities is None:
                probabilities = np.full((len(windows), stored["probabilities"].shape[1]), np.nan)
            probabilities[rows] = stored["probabilities"]
            order = np.argsort(rows)
            features[int(fold)] = stored["features"][order]
    return probabilities, features


def tsne_figure(features: np.ndarray, labels: np.ndarray, names: list[str], path: Path,
                title: str, max_points: int, seed: int) -> Path | None:
    """t-SNE scatter of ``features`` (at most ``max_points`` drawn at random), or None when
    fewer than 4 points."""
    if len(features) < 4:
        return None
    chosen = np.arange(len(features))
    if len(chosen) > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, max_points, replace=False))
    embedding = tsne_embedding(features[chosen], seed=seed)
    return plot_tsne(embedding, labels[chosen], names, path, title=title)


# -- the recipe --------------------------------------------------------------------------------

class StressTask(Task):
    name = "stress"
    config_class = StressConfig

    def resolve_paths(self, config: StressConfig, base_dir: Path) -> StressConfig:
        config = super().resolve_paths(config, base_dir)
        data = config.data
        resolve_relative(data, ("cache_dir",), base_dir)
        if isinstance(data.recordings, list):
            for entry in data.recordings:
                if not entry.path.is_absolute():
                    entry.path = (base_dir / entry.path).resolve()
                if entry.labels and (base_dir / entry.labels).is_file():
                    entry.labels = str((base_dir / entry.labels).resolve())
        elif data.recordings is not None and not data.recordings.is_absolute():
            data.recordings = (base_dir / data.recordings).resolve()
        weights = config.model.kwargs.get("backbone_weights")
        if isinstance(weights, list):
            config.model.kwargs = {**config.model.kwargs, "backbone_weights": [
                str((base_dir / w).resolve()) if w and not Path(w).is_absolute() else w
                for w in weights]}
        return config

    def demo_config(self, out_dir: Path) -> StressConfig:
        from medlite.datasets.ecg import make_ecg_study

        recordings = make_ecg_study(n_subjects=6, minutes_per_condition=(1.5, 1.5, 1.5),
                                    fs=128.0, seed=0)
        manifest = write_recordings(recordings, Path(out_dir) / "data")
        config = StressConfig(
            name="demo-stress",
            data=StressDataConfig(recordings=manifest, label_scheme="wesad2", fs=128.0),
            spectrogram=StressSpectrogramConfig(image_size=32),
            model=ModelConfig(name="sonic", pretrained=False,
                              kwargs={"backbones": ["squeezenet1_1", "shufflenet_v2_x0_5"]}),
            cv=StressCVConfig(scheme="subject", folds=3, compare_window_cv=True),
        )
        config.trainer.max_epochs = 8
        # Tiny images leave little for a second thread to do, and on a shared machine two
        # threads stall each other (several times slower than one).
        config.trainer.threads = 1
        config.evaluation.bootstrap_resamples = 500
        return config

    # -- data ------------------------------------------------------------------------------
    def _source(self, config: StressConfig, data_path: Path | None
                ) -> Path | list[RecordingEntry]:
        source = data_path or config.data.recordings
        if source is None:
            raise DataError("data.recordings: required (a CSV manifest of recordings with "
                            "columns path, format, subject, fs, channel, labels, a folder "
                            "of WESAD pickles, or a list of such rows)")
        return source if isinstance(source, list) else Path(source)

    def load_samples(self, config: StressConfig, data_path: Path | None = None) -> pd.DataFrame:
        windows, _ = prepare_windows(config, self._source(config, data_path))
        return windows

    # -- model -----------------------------------------------------------------------------
    def build_model(self, config: StressConfig, for_training: bool = True) -> StressNet:
        return build_network(config, for_training)

    def example_input(self, config: StressConfig) -> torch.Tensor:
        side = config.spectrogram.image_size
        return torch.randn(1, 1, side, side) * 10.0 - 40.0

    # -- the pipeline ----------------------------------------------------------------------
    def run_training(self, config: StressConfig, run_dir: Path, *, resume: bool,
                     progress: bool) -> dict:
        run_dir = Path(run_dir)
        source = self._source(config, None)
        cache = SpectrogramCache(config.data.cache_dir or run_dir / "spectrograms")
        windows, recordings = prepare_windows(config, source, cache, progress)
        present = np.unique(windows["label"])
        if present.size < 2:
            raise DataError(f"{source_id(source)}: every usable window is of class "
                            f"{class_names(config)[int(present[0])]}; training needs two classes")
        main = config.cv.scheme
        if resume and (run_dir / SPLITS_FILE).is_file():
            saved = with_saved_splits(windows, run_dir)
            windows[f"fold_{main}"] = saved["fold"].fillna(-1).to_numpy(dtype=np.int64)
        else:
            windows[f"fold_{main}"] = cv_folds(windows, main, config)
        schemes = [main]
        if config.cv.compare_window_cv:
            other = comparison_scheme(config, windows)
            windows[f"fold_{other}"] = cv_folds(windows, other, config)
            schemes.append(other)
        for scheme in schemes:
            if scheme == "subject":
                check_folds_subject_disjoint(windows, windows[f"fold_{scheme}"].to_numpy(),
                                             str(run_dir / SPLITS_FILE))
        # Every window trains (the final model, and the folds that do not hold it out); fold
        # says which fold tests it, empty for windows purged from every test fold.
        folds = windows[f"fold_{main}"].to_numpy()
        write_splits(run_dir / SPLITS_FILE, windows["sample"], windows["subject"],
                     np.full(len(windows), "train"), pd.Series(folds).where(folds >= 0))
        write_csv_atomic(windows, run_dir / WINDOWS_FILE)
        write_csv_atomic(recordings, run_dir / RECORDINGS_FILE)
        check_model_input(self.build_model(config, for_training=True), config)

        jobs = [Job(_job_key(scheme, fold), {"scheme": scheme, "fold": fold})
                for scheme in schemes for fold in _fold_numbers(windows[f"fold_{scheme}"])]
        jobs.append(Job(FINAL_JOB, {"scheme": main, "fold": None}))
        results = run_jobs(jobs, train_stress_job, run_dir / JOBS_DIR,
                           executor=make_executor(config.cv.workers), progress=progress)
        final_dir = run_dir / JOBS_DIR / FINAL_JOB
        save_torch_atomic(load_state_dict(final_dir / MODEL_FILE), run_dir / MODEL_FILE)
        if (final_dir / HISTORY_FILE).is_file():
            shutil.copyfile(final_dir / HISTORY_FILE, run_dir / HISTORY_FILE)

        evaluation = self.cross_validation_results(config, run_dir, windows, recordings,
                                                   schemes, results)
        return record_results(self, config, evaluation, run_dir, {
            "split": f"out-of-fold ({main} CV)", "n_samples": len(evaluation.per_sample),
            "n_subjects": int(windows["subject"].nunique())})

    def cross_validation_results(self, config: StressConfig, run_dir: Path,
                                 windows: pd.DataFrame, recordings: pd.DataFrame,
                                 schemes: list[str], results: dict) -> Evaluation:
        """Out-of-fold metrics with CIs for every scheme trained, the per-fold table, the
        leakage table, confusion matrices and the t-SNE of the main scheme's fold 0."""
        names = class_names(config)
        figure_dir = run_dir / "figures"
        figure_dir.mkdir(parents=True, exist_ok=True)
        metrics, figures, fold_tables, leakage_rows = {}, {}, [], []
        per_sample = None
        for role, scheme in zip(("main", "comparison"), schemes, strict=False):
            folds = windows[f"fold_{scheme}"].to_numpy()
            probabilities, features = _load_fold_predictions(run_dir, windows, folds, scheme)
            tested = folds >= 0
            rows = windows[tested].reset_index(drop=True)
            labels = rows["label"].to_numpy()
            groups, grouping = bootstrap_groups(rows, config.evaluation.block_s)
            scored = scored_metrics(labels, probabilities[tested], names, groups,
                                    config.evaluation, config.seed)
            metrics[f"{scheme}_cv"] = scored
            fold_tables.append(per_fold_table(windows, probabilities, folds, results, scheme,
                                              names))
            mean_overlap, share_overlapping = train_test_overlap(windows, folds,
                                                                 config.data.window_s)
            leakage_rows.append({
                "scheme": scheme, "role": role, "folds": int(len(np.unique(folds[tested]))),
                "tested_windows": int(tested.sum()),
                **{f"{metric}{suffix}": scored[metric].get(key)
                   for metric in ("accuracy", "macro_f1", "balanced_accuracy")
                   for suffix, key in (("", "value"), ("_ci_low", "ci_low"),
                                       ("_ci_high", "ci_high"))},
                "mean_shared_with_training": round(mean_overlap, 4),
                "share_of_test_windows_sharing_samples": round(share_overlapping, 4)})
            matrix = confusion(labels, probabilities[tested].argmax(axis=1), len(names))
            figures[f"confusion_matrix_{scheme}-level_cv"] = plot_confusion_matrix(
                matrix, names, figure_dir / f"confusion_{scheme}_cv.png",
                title=f"{scheme}-level CV, out-of-fold windows")
            if role == "main":
                per_sample = prediction_table(rows.assign(fold=folds[tested]),
                                              probabilities[tested], names)
                first = min(features)
                fold_rows = windows[folds == first]
                figures["t-sne_of_the_fused_features"] = tsne_figure(
                    features[first], fold_rows["label"].to_numpy(), names,
                    figure_dir / "tsne.png",
                    f"t-SNE of the fused features, held-out windows of fold {first} "
                    f"(n={len(fold_rows)})", config.evaluation.tsne_max_points, config.seed)
                main_grouping = grouping
        (run_dir / "predictions").mkdir(exist_ok=True)
        write_csv_atomic(per_sample, run_dir / "predictions" / "out_of_fold.csv")
        folds_table = pd.concat(fold_tables, ignore_index=True)
        write_csv_atomic(folds_table, run_dir / FOLDS_FILE)
        leakage = pd.DataFrame(leakage_rows)
        write_csv_atomic(leakage, run_dir / LEAKAGE_FILE)
        validation = sorted({r["validation"] for r in results.values()})
        return Evaluation(
            metrics=metrics, per_sample=per_sample, figures=figures,
            extra={"aggregation": f"Out-of-fold predictions: every window scored by the model "
                   f"of the fold that held it out ({schemes[0]}-level CV), pooled over folds; "
                   f"CIs resample {main_grouping}. The deployed model.pt was trained on every "
                   "window afterwards.",
                   "class_names": names, "cv": {"scheme": schemes[0], "schemes": schemes,
                                                "validation": validation,
                                                "val_fraction": config.cv.val_fraction},
                   "windows": _window_totals(recordings),
                   "recordings": recordings.to_dict(orient="records"),
                   "per_fold": folds_table.to_dict(orient="records"),
                   "leakage": leakage.to_dict(orient="records")})

    # -- evaluation on other data -------------------------------------------------------------
    def evaluate(self, model: StressNet, config: StressConfig, samples: pd.DataFrame,
                 out_dir: Path) -> Evaluation:
        """The deployed model on other recordings (``medlite evaluate RUN --data m.csv``)."""
        if samples.empty:
            raise DataError("evaluate: no windows to evaluate")
        source = str(samples["manifest"].iloc[0])
        own = config.data.recordings
        if source == INLINE_SOURCE or (own is not None and not isinstance(own, list)
                                       and Path(source).resolve() == Path(own).resolve()):
            raise DataError(f"{source}: the deployed model was trained on every window of the "
                            "run's data; its cross-validated metrics are in the run's "
                            "metrics.json. Pass --data with other recordings")
        source = Path(source)
        out_dir = Path(out_dir)
        names = class_names(config)
        with tempfile.TemporaryDirectory(prefix="medlite-spectrograms-") as scratch:
            cache = SpectrogramCache(config.data.cache_dir or scratch)
            windows, recordings = prepare_windows(config, source, cache)
            windows = windows[windows["sample"].isin(set(samples["sample"]))].reset_index(
                drop=True)
            stacks, stack_index = open_stacks(windows)
            probabilities, features = predict_dataset(
                model, _dataset(windows, stacks, stack_index, np.arange(len(windows))),
                config.inference.batch_size, inference_device(config))
            del stacks
        labels = windows["label"].to_numpy()
        groups, grouping = bootstrap_groups(windows, config.evaluation.block_s)
        metrics = {"deployed_model": scored_metrics(labels, probabilities, names, groups,
                                                    config.evaluation, config.seed)}
        figure_dir = out_dir / "figures"
        figure_dir.mkdir(parents=True, exist_ok=True)
        figures = {
            "confusion": plot_confusion_matrix(
                confusion(labels, probabilities.argmax(axis=1), len(names)), names,
                figure_dir / "confusion.png", title="deployed model"),
            "t-sne_of_the_fused_features": tsne_figure(
                features, labels, names, figure_dir / "tsne.png",
                f"t-SNE of the fused features (n={len(windows)})",
                config.evaluation.tsne_max_points, config.seed)}
        per_sample = prediction_table(windows, probabilities, names)
        (out_dir / "predictions").mkdir(exist_ok=True)
        write_csv_atomic(per_sample, out_dir / "predictions" / "windows.csv")
        return Evaluation(metrics=metrics, per_sample=per_sample, figures=figures,
                          extra={"aggregation": f"every window of {source}; CIs resample "
                                 f"{grouping}", "class_names": names,
                                 "windows": _window_totals(recordings),
                                 "recordings": recordings.to_dict(orient="records")})

    def write_report(self, run_dir, config, evaluation, out_path, title):
        extra = evaluation.extra
        sections = []
        if "recordings" in extra:
            sections.append(("Windows per recording (dropped: unlabelled, across a label "
                             "change, NaN, flat, clipped)",
                             pd.DataFrame(extra["recordings"]).to_html(index=False)))
        if "per_fold" in extra:
            sections.append(("Per-fold metrics (macro F1 over the classes present in the fold)",
                             pd.DataFrame(extra["per_fold"]).to_html(index=False,
                                                                     float_format="%.3f")))
        if "leakage" in extra:
            sections.append(("Leakage: window-level vs subject-wise / time-blocked CV",
                             leakage_explanation(config, pd.DataFrame(extra["leakage"]))))
        return write_standard_report(run_dir, config, evaluation, out_path, title,
                                     monitor="val_loss", extra_sections=sections)

    # -- prediction --------------------------------------------------------------------------
    def predict(self, model: StressNet, config: StressConfig, inputs: list[Path],
                out_dir: Path, overwrite: bool = False) -> list[Path]:
        """Per-window class probabilities over time for each recording file: writes
        ``<stem>_stress.csv`` (start_s, end_s, ok, p_<class>..., predicted, and true when the
        file has labels) and ``<stem>_stress.png``. Windows failing the quality checks (NaN,
        flat, clipped) get ok false and no prediction."""
        files = _expand_recording_inputs(inputs)
        out_dir = Path(out_dir)
        targets = [out_dir / f"{p.stem}_stress{ext}" for p in files for ext in (".csv", ".png")]
        existing = [str(t) for t in targets if t.exists()]
        if existing and not overwrite:
            raise DataError(f"{existing[0]}: exists (and {len(existing) - 1} more); pass "
                            "--overwrite to replace predictions")
        out_dir.mkdir(parents=True, exist_ok=True)
        names = class_names(config)
        written = []
        model.eval()
        for path in tqdm(files, desc="predict", leave=False):
            inference = config.inference
            fmt = infer_format(path) if inference.format == "auto" else inference.format
            channel = inference.channel
            spec = RecordingSpec(path, fmt, fs=inference.fs or config.data.fs,
                                 channel=int(channel) if channel and channel.isdigit()
                                 else channel, where=str(path))
            recording = load_recording(spec, config, None)
            table = predict_recording(model, config, recording)
            csv_path = write_csv_atomic(table, out_dir / f"{path.stem}_stress.csv")
            png_path = plot_probability_over_time(table, names, out_dir / f"{path.stem}_stress.png",
                                                  title=f"{path.name}")
            written += [csv_path, png_path]
        return written


def check_model_input(model: StressNet, config: StressConfig) -> None:
    """Fail before any job when the network cannot take the configured image size."""
    side = config.spectrogram.image_size
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, 1, side, side))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"spectrogram.image_size: {config.model.name} cannot take {side}x{side} "
                          f"spectrograms ({first}); use larger images or other backbones") from None


def _window_totals(recordings: pd.DataFrame) -> dict:
    columns = [c for c in ("total", "unlabelled", "mixed", "nan", "flat", "clipped", "bad",
                           "kept") if c in recordings]
    return {c: int(recordings[c].sum()) for c in columns}


def leakage_explanation(config: StressConfig, leakage: pd.DataFrame) -> str:
    """HTML: why window-level CV leaks, and the side-by-side table."""
    import html

    data = config.data
    shared = overlap_fraction(data.window_s, data.step_s)
    text = (f"Windows of {data.window_s:g} s start every {data.step_s:g} s, so neighbouring "
            f"windows share {shared:.0%} of their samples. Under window-level CV (the paper's "
            "protocol) a test window's neighbours sit in the training folds, and the same "
            "person's other windows train the model: the test set is partly the training set. "
            "Subject-wise CV tests on people the model never saw; time-blocked CV tests on "
            "later or earlier stretches of a recording, with windows that would share samples "
            "across a block boundary purged. The columns mean_shared_with_training and "
            "share_of_test_windows_sharing_samples measure the overlap directly; the gap in "
            "accuracy and macro F1 between the rows is the optimism of window-level CV.")
    if len(leakage) < 2:
        text += (" This run trained one scheme only; set cv.compare_window_cv: true to train "
                 "the same model under both and compare.")
    return (f"<p class='note'>{html.escape(text)}</p>"
            + leakage.to_html(index=False, float_format="%.3f"))


def _expand_recording_inputs(inputs: list[Path]) -> list[Path]:
    """Files (or folders: their .pkl/.csv/.npy/.npz files and WFDB headers, sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir()
                           if p.suffix.lower() in {".pkl", ".csv", ".npy", ".npz", ".hea"})
            if not found:
                raise DataError(f"{item}: no recordings (.pkl, .csv, .npy, .npz, .hea) found")
            files += found
        elif item.is_file() or item.with_suffix(".hea").is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return files


def predict_recording(model: StressNet, config: StressConfig, recording: Recording
                      ) -> pd.DataFrame:
    """Per-window probabilities of one recording: columns start_s, end_s, ok, p_<class>,
    predicted (empty for windows failing the quality checks), and true when labelled."""
    names = class_names(config)
    windows = recording_windows(recording, config, labelled=False)
    probabilities = np.full((len(windows), len(names)), np.nan)
    ok = np.flatnonzero(windows.ok)
    params = config.spectrogram.params()
    with torch.no_grad():
        for begin in range(0, ok.size, _PREDICT_CHUNK):
            chunk = ok[begin:begin + _PREDICT_CHUNK]
            images = spectrogram_images(windows.windows[chunk], recording.fs, channels=1,
                                        size=params.size, nperseg=params.nperseg,
                                        noverlap=params.noverlap,
                                        max_freq_hz=params.max_freq_hz)
            for start in range(0, len(chunk), config.inference.batch_size):
                batch = torch.from_numpy(images[start:start + config.inference.batch_size])
                rows = chunk[start:start + config.inference.batch_size]
                probabilities[rows] = model(batch).softmax(dim=1).double().numpy()
    table = pd.DataFrame({"start_s": windows.times_s,
                          "end_s": windows.times_s + config.data.window_s,
                          "ok": windows.ok})
    for k, name in enumerate(names):
        table[f"p_{name}"] = probabilities[:, k]
    table["predicted"] = [names[int(np.argmax(p))] if np.isfinite(p).all() else ""
                          for p in probabilities]
    if (recording.labels >= 0).any():
        length = window_length(recording.fs, config.data.window_s)
        truth = label_windows(recording.labels, windows.starts, length)
        table["true"] = [names[t] if t >= 0 else "" for t in truth]
    return table


def plot_probability_over_time(table: pd.DataFrame, names: list[str], path: Path,
                               title: str = "") -> Path:
    """Class probabilities of each window against its centre time (minutes); true classes,
    when known, as coloured bands along the bottom."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medlite.reports.longitudinal import PAPER_STYLE, _save

    centre_min = (table["start_s"] + table["end_s"]) / 120.0
    with plt.rc_context(PAPER_STYLE):
        fig, ax = plt.subplots(figsize=(8.0, 3.2))
        shown = [n for n in names if n == "stress"] or names
        for k, name in enumerate(names):
            if len(names) == 2 and name not in shown:
                continue
            ax.plot(centre_min, table[f"p_{name}"], color=CLASS_COLOURS[k % len(CLASS_COLOURS)],
                    linewidth=1.2, label=f"p({name})")
        if "true" in table:
            for k, name in enumerate(names):
                inside = (table["true"] == name).to_numpy()
                ax.fill_between(centre_min, -0.08, -0.02, where=inside, step="mid",
                                color=CLASS_COLOURS[k % len(CLASS_COLOURS)], alpha=0.6,
                                linewidth=0, label=f"true {name}")
        ax.set_ylim(-0.1, 1.02)
        ax.set_xlabel("time (min, window centre)")
        ax.set_ylabel("probability")
        if title:
            ax.set_title(title)
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _save(fig, path)
