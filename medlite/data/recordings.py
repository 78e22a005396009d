"""ECG recordings for stress recognition: manifests, reading, windows and spectrograms.

A set of recordings is a folder of WESAD subject pickles, a CSV manifest (columns path,
format, subject, fs, channel, labels; only path is required) or a list of such rows
(:func:`recording_specs`). :func:`load_recording` reads one and maps its labels to the
classes of a label scheme; :func:`prepare_windows` cuts every recording into quality-checked
windows (:func:`medlite.data.windows.make_windows` with :class:`WindowSettings`) and, given
a :class:`~medlite.data.spectrogram.SpectrogramCache`, stores their spectrogram images once
per recording (float16, memory-mapped by :class:`SpectrogramWindows`). Inference windows a
recording without dropping anything (:func:`inference_windows`) and computes spectrograms
a chunk at a time (:func:`spectrogram_stream`), so hour-long files never sit in memory as
images. Every problem with a file is a one-line :class:`~medlite.errors.DataError` naming it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from torch.utils.data import Dataset
from tqdm import tqdm

from medlite.config import StrictModel
from medlite.data.ecg import (
    DRIVEDB3_LABEL_NAMES,
    WESAD_LABELS,
    WESAD_LABELS_BINARY,
    Recording,
    drivedb_stress_labels,
    labels_from_intervals,
    load_signal_file,
    load_wesad,
    load_wfdb,
    read_drivedb_durations,
)
from medlite.data.io import is_file
from medlite.data.spectrogram import SpectrogramCache, SpectrogramParams, spectrogram_images
from medlite.data.windows import WindowSet, bandpass, label_windows, make_windows, window_length
from medlite.errors import DataError
from medlite.inference.types import RecordingInput
from medlite.runs import atomic_target, write_csv_atomic

RECORDING_FORMATS = ("wesad", "wfdb", "drivedb", "csv", "npy", "npz")
MANIFEST_COLUMNS = ("path", "format", "subject", "fs", "channel", "labels")
LABEL_SCHEMES = ("wesad3", "wesad2", "drivedb3", "file")
WESAD3_NAMES = ("baseline", "stress", "amusement")
WESAD2_NAMES = ("non-stress", "stress")
#: ``windows["manifest"]`` of recordings listed in the config itself.
INLINE_SOURCE = "config: data.recordings"
#: What a folder given to ``medlite predict`` contributes.
RECORDING_SUFFIXES = (".pkl", ".csv", ".npy", ".npz", ".hea")
_SUFFIX_FORMATS = {".pkl": "wesad", ".csv": "csv", ".txt": "csv", ".tsv": "csv", ".npy": "npy",
                   ".npz": "npz", ".hea": "wfdb", ".dat": "wfdb", "": "wfdb"}
# Windows turned into spectrograms at a time by inference: bounds memory on hour-long files.
_PREDICT_CHUNK = 256
_NO_FS = ("sampling rate missing: give the manifest's fs column (or data.fs; for predict, "
          "--set inference.fs=HZ)")


def scheme_class_names(label_scheme: str, class_names: Sequence[str] | None = None
                       ) -> list[str]:
    """Class names in code order: WESAD's three or two classes, or ``class_names`` (file)."""
    if label_scheme == "wesad3":
        return list(WESAD3_NAMES)
    if label_scheme == "wesad2":
        return list(WESAD2_NAMES)
    if label_scheme == "drivedb3":
        return list(DRIVEDB3_LABEL_NAMES.values())
    return list(class_names or [])


# -- manifests ---------------------------------------------------------------------------------

class RecordingEntry(StrictModel):
    """One recording listed in a config itself (the columns of a manifest row)."""

    path: Path
    format: Literal["wesad", "wfdb", "drivedb", "csv", "npy", "npz"] | None = None
    subject: str | None = None
    fs: float | None = Field(None, gt=0)
    channel: str | int | None = None
    labels: str | None = None


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


def channel_value(channel: str | int | None) -> str | int | None:
    """A channel name, or its index when it is all digits."""
    return int(channel) if isinstance(channel, str) and channel.isdigit() else channel


def _cell(value) -> str | None:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def source_id(source: Path | Sequence[RecordingEntry]) -> str:
    """How windows record where they came from: the manifest or folder path, or
    :data:`INLINE_SOURCE` for recordings listed in the config."""
    return INLINE_SOURCE if isinstance(source, list | tuple) else str(source)


def recording_specs(source: Path | Sequence[RecordingEntry]) -> list[RecordingSpec]:
    """The recordings of ``source``: a folder (every WESAD ``*.pkl`` below it, sorted), a CSV
    manifest with columns path (relative to the manifest's folder) and optionally format,
    subject, fs, channel, labels (an interval/label file, or a label column name), or a list
    of :class:`RecordingEntry` (a config's ``data.recordings``)."""
    if isinstance(source, list | tuple):
        if not source:
            raise DataError("data.recordings: the list is empty")
        return [RecordingSpec(Path(e.path), e.format or infer_format(e.path), e.subject, e.fs,
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
        try:
            fmt = _cell(row.get("format")) or infer_format(path)
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
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
        labels = _cell(row.get("labels"))
        if labels is not None and is_file(source.parent / labels):
            labels = str(source.parent / labels)
        specs.append(RecordingSpec(path, fmt, _cell(row.get("subject")), rate,
                                   channel_value(_cell(row.get("channel"))), labels, where))
    return specs


def recording_ids(specs: Sequence[RecordingSpec]) -> list[str]:
    """File stems, or ``NNN-stem`` when two recordings share a stem."""
    stems = [s.path.stem for s in specs]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i:03d}-{stem}" for i, stem in enumerate(stems)]


# -- reading -----------------------------------------------------------------------------------

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


def load_recording(spec: RecordingSpec, label_scheme: str, class_names: Sequence[str],
                   default_fs: float | None = None) -> Recording:
    """Read one recording and map its labels to the classes of ``label_scheme`` (codes
    0..C-1 named by ``class_names``, -1 for unlabelled). ``default_fs`` is the sampling
    rate of CSV/NPY files whose spec gives none. Raises DataError naming the file for
    unreadable data, a missing sampling rate, a label track of the wrong length or a label
    code that is not a class."""
    path, fmt = spec.path, spec.format
    fs = spec.fs if spec.fs is not None else default_fs
    if fmt == "wesad":
        if spec.labels is not None:
            raise DataError(f"{spec.where or path}: labels: WESAD pickles carry their own labels")
        if label_scheme in ("file", "drivedb3"):
            raise DataError(f"{path}: data.label_scheme {label_scheme} does not apply to "
                            "WESAD pickles; use wesad3 or wesad2")
        label_map = WESAD_LABELS_BINARY if label_scheme == "wesad2" else WESAD_LABELS
        return _with_subject(load_wesad(path, label_map), spec)
    if fmt == "drivedb":
        durations = read_drivedb_durations(spec.labels) if spec.labels else None
        recording = drivedb_stress_labels(path, channel=spec.channel, durations=durations,
                                          levels=3 if label_scheme == "drivedb3" else 2)
    elif fmt == "wfdb":
        recording = load_wfdb(path, channel=spec.channel, fs=None, subject=spec.subject)
        if spec.labels is not None:
            recording.labels = _wfdb_labels(Path(spec.labels), recording.signal.size,
                                            recording.fs)
    else:
        labels_is_file = spec.labels is not None and is_file(spec.labels)
        if fmt == "npy" and fs is None:
            raise DataError(f"{path}: {_NO_FS}")
        try:
            recording = load_signal_file(
                path, fs, column=spec.channel,
                labels=spec.labels if labels_is_file else None,
                label_column=spec.labels if spec.labels and not labels_is_file else "label",
                subject=spec.subject)
        except DataError as exc:
            if fs is None and "sampling rate missing" in str(exc):
                raise DataError(f"{path}: {_NO_FS}") from None
            raise
        if spec.labels and not labels_is_file and (recording.labels < 0).all():
            raise DataError(f"{spec.where or path}: labels {spec.labels!r} is neither a file "
                            f"nor a label column of {path}")
    recording.labels = _class_codes(recording, label_scheme, list(class_names))
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


# -- windows -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class WindowSettings:
    """How recordings are cut into windows (``data.*`` of a stress config)."""

    window_s: float = 5.0
    step_s: float = 2.0
    bandpass: bool = True
    low_hz: float = 0.5
    high_hz: float = 40.0
    flat_std: float = 1e-3
    clip_fraction: float = 0.01


def recording_windows(recording: Recording, settings: WindowSettings,
                      labelled: bool = True) -> WindowSet:
    """:func:`~medlite.data.windows.make_windows` with ``settings``: labelled, usable windows
    (``labelled``), or every window with its ``ok`` flag (inference). A recording shorter
    than one window is a DataError naming it."""
    band = (partial(bandpass, low_hz=settings.low_hz, high_hz=settings.high_hz)
            if settings.bandpass else None)
    try:
        return make_windows(recording.signal, recording.fs,
                            recording.labels if labelled else None, window_s=settings.window_s,
                            step_s=settings.step_s, filter=band, drop_bad=labelled,
                            flat_std=settings.flat_std, clip_fraction=settings.clip_fraction)
    except ValueError as exc:
        raise DataError(f"{recording.source}: {exc}") from None


def window_ids(recording_id: str, times_s: Sequence[float]) -> list[str]:
    """Sample ids ``<recording>@<start>s`` of windows starting at ``times_s``."""
    return [f"{recording_id}@{t:.3f}s" for t in times_s]


def _no_window_reason(counts: dict) -> str:
    labelled = counts["total"] - counts["unlabelled"] - counts["mixed"]
    if labelled == 0:
        return (f"no labelled window ({counts['total']} windows: {counts['unlabelled']} "
                f"unlabelled, {counts['mixed']} across a label change)")
    return (f"no usable window: of {labelled} labelled windows {counts['nan']} contain NaN, "
            f"{counts['flat']} are flat, {counts['clipped']} are clipped")


def _window_hashes(recording: Recording, windows: WindowSet) -> list[str]:
    """sha256 of each window's raw samples: the same stretch of signal in another file
    (or under another name) has the same hash."""
    length = window_length(recording.fs, windows.window_s)
    raw = np.ascontiguousarray(recording.signal, dtype=np.float64)
    return [hashlib.sha256(raw[s:s + length].tobytes()).hexdigest() for s in windows.starts]


def prepare_windows(source: Path | Sequence[RecordingEntry], *, label_scheme: str,
                    class_names: Sequence[str], settings: WindowSettings,
                    params: SpectrogramParams, default_fs: float | None = None,
                    cache: SpectrogramCache | None = None, progress: bool = False
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every usable window of every recording of ``source``.

    Returns:
        ``windows``: one row per window with sample (``<recording>@<start>s``), subject,
        recording, start_s, end_s, label (class code), fs, path (the recording's file),
        manifest (:func:`source_id`), window_sha256 (its raw samples) and, with a ``cache``,
        image_file and image_row (the window's spectrogram in a cached ``(W, H, W)`` float16
        stack); ``recordings``: one row per recording with its window counts (total,
        unlabelled, mixed, nan, flat, clipped, bad, kept) and per-class counts.
    """
    specs = recording_specs(source)
    names = list(class_names)
    tables, summaries = [], []
    for spec, rec_id in tqdm(list(zip(specs, recording_ids(specs), strict=True)),
                             desc="recordings", disable=not progress, leave=False):
        recording = load_recording(spec, label_scheme, names, default_fs)
        windows = recording_windows(recording, settings)
        if windows.counts["kept"] == 0:
            raise DataError(f"{recording.source}: {_no_window_reason(windows.counts)}")
        table = pd.DataFrame({
            "sample": window_ids(rec_id, windows.times_s),
            "subject": str(recording.subject), "recording": rec_id,
            "start_s": windows.times_s, "end_s": windows.times_s + settings.window_s,
            "label": windows.labels, "fs": recording.fs, "path": str(spec.path),
            "manifest": source_id(source),
            "window_sha256": _window_hashes(recording, windows)})
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


def bootstrap_groups(windows: pd.DataFrame, block_s: float) -> tuple[np.ndarray, str]:
    """Clusters resampled for CIs: subjects, or with one subject blocks of ``block_s``
    seconds of each recording (``<recording>:<block>``). Returns (group per window, the
    unit in words)."""
    subjects = windows["subject"].astype(str).to_numpy()
    if len(np.unique(subjects)) > 1:
        return subjects, "subject"
    blocks = (windows["start_s"].to_numpy() // block_s).astype(np.int64).astype(str)
    return (windows["recording"].astype(str).to_numpy() + ":" + blocks,
            f"{block_s:g} s recording block")


# -- spectrogram stacks ------------------------------------------------------------------------

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

    def images(self, positions: Sequence[int]) -> np.ndarray:
        """``(n, H, W)`` float16 images of items ``positions`` (to fit a normaliser)."""
        return np.stack([np.asarray(self.stacks[self.stack_index[i]][self.rows[i]])
                         for i in positions])


def windows_dataset(rows: pd.DataFrame) -> SpectrogramWindows:
    """The cached spectrograms of window ``rows`` (with image_file, image_row, label)."""
    stacks, stack_index = open_stacks(rows)
    return SpectrogramWindows(stacks, stack_index, rows["image_row"].to_numpy(),
                              rows["label"].to_numpy())


# -- inference ---------------------------------------------------------------------------------

def expand_recording_inputs(inputs: Sequence[Path]) -> list[Path]:
    """Files (or folders: their .pkl/.csv/.npy/.npz files and WFDB headers, sorted)."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in RECORDING_SUFFIXES)
            if not found:
                raise DataError(f"{item}: no recordings ({', '.join(RECORDING_SUFFIXES)}) "
                                "found")
            files += found
        elif item.is_file() or item.with_suffix(".hea").is_file():
            files.append(item)
        else:
            raise DataError(f"{item}: no such file or folder")
    return files


def input_recording(item: RecordingInput, label_scheme: str, class_names: Sequence[str], *,
                    default_format: str = "auto", default_fs: float | None = None,
                    default_channel: str | int | None = None) -> Recording:
    """The recording of an inference input (a file, or a Recording already in memory, whose
    labels are taken as class codes); what the input does not say comes from the defaults
    (``default_format`` auto: from the file name)."""
    if isinstance(item.source_data, Recording):
        return item.source_data
    path = Path(item.source_data)
    fmt = item.format or (infer_format(path) if default_format == "auto" else default_format)
    channel = item.channel if item.channel is not None else default_channel
    spec = RecordingSpec(path, fmt, item.subject, item.fs or default_fs, channel_value(channel),
                         item.labels, str(path))
    return load_recording(spec, label_scheme, class_names)


def inference_windows(recording: Recording, settings: WindowSettings
                      ) -> tuple[WindowSet, pd.DataFrame, np.ndarray | None]:
    """Every window of ``recording`` (failing the quality checks or not), the table of their
    start_s, end_s and ok, and the class code of each window (-1 unlabelled or across a
    label change) when the recording has labels, else None."""
    windows = recording_windows(recording, settings, labelled=False)
    table = pd.DataFrame({"start_s": windows.times_s,
                          "end_s": windows.times_s + settings.window_s, "ok": windows.ok})
    truth = None
    if (recording.labels >= 0).any():
        length = window_length(recording.fs, settings.window_s)
        truth = label_windows(recording.labels, windows.starts, length)
    return windows, table, truth


def spectrogram_stream(windows: np.ndarray, fs: float, params: SpectrogramParams
                       ) -> Iterator[torch.Tensor]:
    """float32 ``(1, H, W)`` dB spectrograms of ``windows`` ``(W, L)``, computed
    ``_PREDICT_CHUNK`` windows at a time as they are consumed."""
    for begin in range(0, len(windows), _PREDICT_CHUNK):
        images = spectrogram_images(windows[begin:begin + _PREDICT_CHUNK], fs, channels=1,
                                    size=params.size, nperseg=params.nperseg,
                                    noverlap=params.noverlap, max_freq_hz=params.max_freq_hz)
        yield from torch.from_numpy(images)


def read_window_table(path: Path, text_columns: Sequence[str] = ()) -> pd.DataFrame:
    """A window table written by a run (``RUN/windows.csv``): ids, files and
    ``text_columns`` as text, the saved ``fold`` nullable (NA: purged from every test fold)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: missing (the run's window table)")
    columns = ("sample", "subject", "recording", "split", "path", "manifest", "image_file",
               *text_columns)
    table = pd.read_csv(path, dtype={c: str for c in columns})
    if "fold" in table:
        table["fold"] = table["fold"].astype("Int64")
    return table


def probability_table(table: pd.DataFrame, ok: np.ndarray, truth: np.ndarray | None,
                      probabilities: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """The per-window result of a recording: ``table`` (start_s, end_s, ok) with
    ``p_<class>`` (``probabilities`` ``(len(ok), C)`` of the ok windows ``ok``; NaN for the
    others), ``predicted`` (empty when not ok) and, with ``truth``, ``true`` (empty for
    unlabelled windows)."""
    values = np.full((len(table), len(names)), np.nan)
    values[ok] = probabilities
    table = table.copy()
    for k, name in enumerate(names):
        table[f"p_{name}"] = values[:, k]
    table["predicted"] = [names[int(np.argmax(p))] if np.isfinite(p).all() else ""
                          for p in values]
    if truth is not None:
        table["true"] = [names[t] if t >= 0 else "" for t in truth]
    return table


def recording_inputs(rows: pd.DataFrame, default_fs: float | None = None
                     ) -> list[tuple[dict, RecordingInput]]:
    """``(info, RecordingInput)`` per recording of the window table ``rows`` (read from the
    source named in its ``manifest`` column): ``info`` holds the recording id and its
    windows (the rows) to score."""
    specs = recording_specs(Path(str(rows["manifest"].iloc[0])))
    by_id = dict(zip(recording_ids(specs), specs, strict=True))
    inputs = []
    for rec_id, group in rows.groupby("recording", sort=False):
        spec = by_id[rec_id]
        fs = spec.fs if spec.fs is not None else default_fs
        inputs.append(({"recording": rec_id, "windows": group.reset_index(drop=True)},
                       RecordingInput(spec.path, spec.format, fs, spec.channel, spec.labels,
                                      spec.subject, rec_id)))
    return inputs


def window_positions(table: pd.DataFrame, recording_id: str, samples: Sequence[str],
                     source: str) -> np.ndarray:
    """Rows of the inference ``table`` of recording ``recording_id`` holding the windows
    ``samples`` (``<recording>@<start>s``), which must be ok; DataError naming ``source``
    when the recording no longer has them."""
    position = pd.Series(np.arange(len(table)), index=window_ids(recording_id,
                                                                 table["start_s"]))
    rows = position.reindex(list(samples)).to_numpy()
    if np.isnan(rows).any() or not table["ok"].to_numpy(bool)[rows.astype(np.int64)].all():
        raise DataError(f"{source}: its windows differ from when it was read")
    return rows.astype(np.int64)
