"""ECG recordings: one lead with per-sample labels, read from WESAD, WFDB or plain files.

Every loader returns a :class:`Recording`: one ECG lead as float64 in physical units (mV
when the source says so), its sampling rate, and one integer label code per sample, with
``-1`` (:data:`UNLABELLED`) for samples that belong to no class (transients, unknown
protocol phases). Windowing, quality checks and spectrograms come later and work on any
``Recording`` alike.

NaN samples are allowed: WFDB marks invalid samples that way, and a CSV may have gaps. The
loaders keep them; the windowing step drops windows that contain them.

Sources:

- :func:`load_wesad`: a WESAD subject pickle (chest ECG at 700 Hz, protocol labels).
- :func:`load_wfdb`: any PhysioNet WFDB record, including multi-frequency ones (drivedb).
- :func:`load_signal_file`: a CSV, ``.npy`` or ``.npz`` file, with labels per sample or as
  labelled time intervals (:func:`labels_from_intervals`).
- :func:`drivedb_stress_labels`: the rest/driving labelling of the "Stress Recognition in
  Automobile Drivers" records (PhysioNet drivedb) from their marker channel.
"""

from __future__ import annotations

import math
import numbers
import os
import pickle
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage, signal

from medlite.data.arrays import load_npy, load_npz
from medlite.errors import DataError

__all__ = [
    "DRIVEDB_LABEL_NAMES",
    "DRIVEDB_PHASE_CODES",
    "DRIVEDB_RECORD_PHASES",
    "UNLABELLED",
    "WESAD_LABEL_NAMES",
    "WESAD_LABELS",
    "WESAD_LABELS_BINARY",
    "WESAD_PROTOCOL",
    "Recording",
    "drivedb_marker_events",
    "drivedb_protocol_phases",
    "drivedb_stress_labels",
    "read_drivedb_durations",
    "find_ecg_channel",
    "labels_from_intervals",
    "load_signal_file",
    "load_wesad",
    "load_wfdb",
    "resample_recording",
]

#: Label code of samples that belong to no class.
UNLABELLED = -1


@dataclass(eq=False)
class Recording:
    """One ECG lead with a label code per sample.

    Attributes:
        signal: (N,) float64, physical units given by ``units`` (mV when the source says
            so); may contain NaN where the source marks invalid samples or has gaps.
        fs: sampling rate of ``signal`` and ``labels`` in Hz.
        labels: (N,) int64 label codes, ``-1`` for unlabelled samples.
        subject: who was recorded; windows of one subject never straddle data splits.
        source: where it came from (a file path, or a description for synthetic data).
        label_names: code -> class name for the codes used in ``labels`` (never -1).
        units: physical units of ``signal`` ("mV" unless the source gives other units).
    """

    signal: np.ndarray
    fs: float
    labels: np.ndarray
    subject: str
    source: str
    label_names: dict[int, str] = field(default_factory=dict)
    units: str = "mV"

    def __post_init__(self) -> None:
        self.signal = np.asarray(self.signal, dtype=np.float64)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.fs = float(self.fs)
        if self.signal.ndim != 1:
            raise ValueError(f"signal must be 1-D, got shape {self.signal.shape}")
        if self.labels.shape != self.signal.shape:
            raise ValueError(
                f"labels shape {self.labels.shape} differs from signal shape {self.signal.shape}"
            )
        if not (np.isfinite(self.fs) and self.fs > 0):
            raise ValueError(f"fs must be a positive number of Hz, got {self.fs}")
        if self.labels.size and self.labels.min() < UNLABELLED:
            raise ValueError(f"label codes must be >= {UNLABELLED}, got {self.labels.min()}")

    @property
    def duration_s(self) -> float:
        """Length in seconds (number of samples / fs)."""
        return self.signal.size / self.fs


# ---------------------------------------------------------------------------------------
# WESAD

#: The WESAD study protocol's label codes (Schmidt et al., ICMI 2018, readme of the set).
WESAD_PROTOCOL: dict[int, str] = {
    0: "transient",
    1: "baseline",
    2: "stress",
    3: "amusement",
    4: "meditation",
    5: "ignore",
    6: "ignore",
    7: "ignore",
}
#: Three classes: baseline 0, stress 1, amusement 2; everything else unlabelled.
WESAD_LABELS: dict[int, int | None] = {
    0: None, 1: 0, 2: 1, 3: 2, 4: None, 5: None, 6: None, 7: None,
}  # fmt: skip
#: Two classes: non-stress (baseline and amusement) 0, stress 1; everything else unlabelled.
WESAD_LABELS_BINARY: dict[int, int | None] = {
    0: None, 1: 0, 2: 1, 3: 0, 4: None, 5: None, 6: None, 7: None,
}  # fmt: skip
#: Class names of :data:`WESAD_LABELS`'s codes.
WESAD_LABEL_NAMES: dict[int, str] = {0: "baseline", 1: "stress", 2: "amusement"}

WESAD_FS = 700.0

# Globals a WESAD pickle may name: numpy arrays and dtypes (Python 2 pickles name
# numpy.core, numpy 2 writes numpy._core). Anything else is refused, so a crafted file
# cannot run code while we read it.
_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        # numpy 2 renamed numpy.core to numpy._core; mapping it avoids a deprecation warning.
        module = re.sub(r"^numpy\.core\b", "numpy._core", module)
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refers to {module}.{name}, not a numpy array")
        return super().find_class(module, name)


def _mapped_label_names(label_map: Mapping[int, int | None]) -> dict[int, str]:
    """Name of each target code: the WESAD phases mapped to it, joined by '+'."""
    if dict(label_map) == WESAD_LABELS:
        return dict(WESAD_LABEL_NAMES)
    if dict(label_map) == WESAD_LABELS_BINARY:
        return {0: "non-stress", 1: "stress"}
    names: dict[int, list[str]] = {}
    for source in sorted(label_map):
        target = label_map[source]
        if target is not None:
            names.setdefault(int(target), []).append(WESAD_PROTOCOL.get(source, str(source)))
    return {code: "+".join(dict.fromkeys(parts)) for code, parts in sorted(names.items())}


def load_wesad(
    path: str | os.PathLike, label_map: Mapping[int, int | None] = WESAD_LABELS
) -> Recording:
    """Read the chest ECG and the protocol labels of one WESAD subject pickle.

    The file is the set's ``SX/SX.pkl``: ``{'signal': {'chest': {'ECG': (N, 1), ...},
    'wrist': {...}}, 'label': (N,), 'subject': 'SX'}``, chest signals and labels at 700 Hz,
    ECG in mV. Only numpy arrays are unpickled (a file naming any other class is refused).

    Args:
        path: the subject's ``.pkl`` file.
        label_map: WESAD protocol code (0-7, see :data:`WESAD_PROTOCOL`) -> class code, or
            None for samples to leave unlabelled. Codes absent from the map are unlabelled.
            :data:`WESAD_LABELS` (default) keeps baseline 0, stress 1, amusement 2;
            :data:`WESAD_LABELS_BINARY` gives non-stress 0 vs stress 1.

    Returns:
        A :class:`Recording` at 700 Hz; ``subject`` from the pickle's ``subject`` field
        (the file name's stem when the field is missing).

    Raises:
        DataError: the file is not a pickle, lacks ``signal.chest.ECG`` or ``label``, the
            label track's length differs from the ECG's, or a label code is outside 0-7.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            data = _NumpyOnlyUnpickler(handle, encoding="latin1").load()
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError,
            IndexError, TypeError) as exc:  # fmt: skip
        raise DataError(f"{path}: not a WESAD pickle ({exc})") from exc

    def field_of(container: object, key: str, dotted: str) -> object:
        if not isinstance(container, Mapping) or key not in container:
            raise DataError(f"{path}: field {dotted} missing (not a WESAD subject pickle?)")
        return container[key]

    chest = field_of(field_of(data, "signal", "signal"), "chest", "signal.chest")
    try:
        ecg = np.asarray(field_of(chest, "ECG", "signal.chest.ECG"), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: field signal.chest.ECG is not numeric ({exc})") from exc
    raw_labels = np.asarray(field_of(data, "label", "label"))
    if raw_labels.dtype.kind not in "iuf":
        raise DataError(f"{path}: field label is not numeric (dtype {raw_labels.dtype})")
    if ecg.ndim == 2 and ecg.shape[1] == 1:
        ecg = ecg[:, 0]
    if ecg.ndim != 1:
        raise DataError(f"{path}: field signal.chest.ECG has shape {ecg.shape}, expected (N, 1)")
    if raw_labels.shape != ecg.shape:
        raise DataError(
            f"{path}: field label has {raw_labels.size} samples but signal.chest.ECG has {ecg.size}"
        )
    unknown = np.setdiff1d(np.unique(raw_labels), np.arange(8))
    if unknown.size:
        shown = ", ".join(str(v) for v in unknown[:5])
        raise DataError(f"{path}: field label has unknown codes {shown} (WESAD uses 0-7)")
    lookup = np.full(8, UNLABELLED, dtype=np.int64)
    for source, target in label_map.items():
        if 0 <= int(source) <= 7 and target is not None:
            lookup[int(source)] = int(target)
    subject = data.get("subject", path.stem) if isinstance(data, Mapping) else path.stem
    return Recording(
        signal=ecg,
        fs=WESAD_FS,
        labels=lookup[raw_labels.astype(np.int64)],
        subject=str(subject),
        source=str(path),
        label_names=_mapped_label_names(label_map),
    )


# ---------------------------------------------------------------------------------------
# WFDB

# Lead names used by PhysioNet sets: limb leads (i, ii, iii, avr...), precordial (v, v1-v6),
# modified limb leads of mitdb (MLII), Frank leads are not ECG leads for our purpose.
_LEAD_NAME = re.compile(r"^(ml)?(i{1,3}|v[1-6]?|av[rlf])$", re.IGNORECASE)
_UNIT_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "v": 1e3}


def find_ecg_channel(names: Sequence[str]) -> int | None:
    """Index of the ECG channel among ``names``, or None when none looks like one.

    The first name containing "ECG" (any case) wins; then lead II (II or mitdb's MLII,
    where R waves are usually tallest); then the first other standard lead name: I, III,
    aVR, aVL, aVF, V, V1-V6, or a modified lead (MLI, MLIII...).
    """
    tests = (
        lambda name: "ecg" in name.lower(),
        lambda name: name.strip().lower() in {"ii", "mlii"},
        lambda name: _LEAD_NAME.match(name.strip()) is not None,
    )
    for test in tests:
        for index, name in enumerate(names):
            if test(name):
                return index
    return None


def _wfdb_base(record_path: Path) -> Path:
    """The record's path without extension; a folder holding one record stands for it."""
    if record_path.is_dir():
        headers = sorted(record_path.glob("*.hea"))
        if len(headers) != 1:
            raise DataError(
                f"{record_path}: folder holds {len(headers)} WFDB headers (.hea); "
                "name the record, e.g. folder/100"
            )
        return headers[0].with_suffix("")
    if record_path.suffix.lower() in {".hea", ".dat", ".mat", ".atr"}:
        return record_path.with_suffix("")
    return record_path


@contextmanager
def _quiet_wfdb() -> Iterator[None]:
    """Silence pandas deprecation warnings raised inside wfdb (4.3) that users cannot act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The inplace keyword", category=DeprecationWarning
        )
        yield


#: Most samples (all channels together) a WFDB header may declare: 2**30, 8 GiB as float64
#: (a 24-hour 12-lead Holter recording at 1 kHz has 1.04e9).
MAX_WFDB_SAMPLES = 1 << 30
# Bytes per sample of the uncompressed WFDB signal formats (FLAC ones, 5xx, are not checked).
_WFDB_BYTES_PER_SAMPLE = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2,
                          "212": 1.5, "310": 4 / 3, "311": 4 / 3}


def _wfdb_call(read, base: Path, header: Path):
    """``read(str(base))`` with wfdb's errors (of every kind on a malformed header or signal
    file: TypeError, IndexError, ...) as one DataError naming the header."""
    try:
        with _quiet_wfdb():
            return read(str(base))
    except Exception as exc:  # noqa: BLE001 - nothing but wfdb runs inside
        raise DataError(f"{header}: not a readable WFDB record "
                        f"({' '.join(str(exc).split()) or type(exc).__name__})") from None


def _check_wfdb_header(meta, folder: Path, header: Path) -> None:
    """Refuse a header whose rate is not positive or whose declared length is more than
    :data:`MAX_WFDB_SAMPLES` or than its signal files hold, before wfdb allocates for it."""
    fs = meta.fs
    if not (isinstance(fs, numbers.Real) and math.isfinite(fs) and fs > 0):
        raise DataError(f"{header}: sampling frequency {fs} must be a positive number of Hz")
    per_frame = list(getattr(meta, "samps_per_frame", None) or [1] * (meta.n_sig or 0))
    if any(not isinstance(n, numbers.Integral) or n < 1 for n in per_frame):
        raise DataError(f"{header}: samples per frame {per_frame} must be 1 or more")
    if meta.sig_len is None:
        return  # wfdb takes the length from the signal file's size
    if meta.sig_len * max(1, sum(per_frame)) > MAX_WFDB_SAMPLES:
        raise DataError(f"{header}: declares {meta.sig_len:,} samples per channel, more than "
                        f"the {MAX_WFDB_SAMPLES:,} samples allowed in all")
    needed: dict[str, float] = {}
    for i, name in enumerate(getattr(meta, "file_name", None) or []):
        fmt = (meta.fmt or [None] * (i + 1))[i]
        if fmt in _WFDB_BYTES_PER_SAMPLE and name and i < len(per_frame):
            needed[name] = needed.get(name, 0) + per_frame[i] * _WFDB_BYTES_PER_SAMPLE[fmt]
    for name, frame_bytes in needed.items():
        try:
            size = (folder / name).stat().st_size
        except (OSError, ValueError):
            continue  # no such signal file: wfdb says so
        if meta.sig_len * frame_bytes > size + 4:
            raise DataError(f"{header}: declares {meta.sig_len:,} samples per channel, "
                            f"{meta.sig_len * frame_bytes:,.0f} bytes of {name}, which holds "
                            f"{size:,}")


def _read_wfdb(record_path: str | os.PathLike):
    """(header path, wfdb.Record read with every channel at its own rate)."""
    with _quiet_wfdb():
        import wfdb  # imported here: only WFDB users pay for its import

    base = _wfdb_base(Path(record_path))
    header = base.with_suffix(".hea")
    if not header.is_file():
        raise DataError(f"{header}: WFDB header not found")
    _check_wfdb_header(_wfdb_call(wfdb.rdheader, base, header), base.parent, header)
    # smooth_frames=False keeps channels with several samples per frame (drivedb's ECG at 32
    # per frame) at their own rate instead of averaging them down.
    record = _wfdb_call(partial(wfdb.rdrecord, smooth_frames=False), base, header)
    return header, record


def _channel_names(record) -> list[str]:
    """The record's channel names; a channel the header leaves unnamed is ""."""
    return [str(name) if name is not None else "" for name in record.sig_name or []]


def _channel_index(names: Sequence[str], channel: str | int | None, where: Path) -> int:
    listed = ", ".join(names)
    if channel is None:
        index = find_ecg_channel(names)
        if index is None:
            raise DataError(f"{where}: no ECG channel among {listed}: pass channel")
        return index
    if isinstance(channel, (int, np.integer)):
        if not 0 <= channel < len(names):
            raise DataError(f"{where}: channel {channel} out of range, it has {len(names)}")
        return int(channel)
    exact = [i for i, name in enumerate(names) if name == channel]
    loose = [i for i, name in enumerate(names) if name.strip().lower() == channel.lower()]
    if exact or loose:
        return (exact or loose)[0]
    raise DataError(f"{where}: no channel named {channel!r}; it has {listed}")


def _channel_recording(header: Path, record, index: int, subject: str | None) -> Recording:
    samples = np.asarray(record.e_p_signal[index], dtype=np.float64)
    fs = float(record.fs) * int(record.samps_per_frame[index])
    units = (record.units[index] or "mV").strip()
    scale = _UNIT_TO_MV.get(units.lower())
    if scale is not None:
        samples = samples * scale
        units = "mV"
    return Recording(
        signal=samples,
        fs=fs,
        labels=np.full(samples.size, UNLABELLED, dtype=np.int64),
        subject=subject if subject is not None else str(record.record_name),
        source=str(header.with_suffix("")),
        label_names={},
        units=units,
    )


def load_wfdb(
    record_path: str | os.PathLike,
    channel: str | int | None = None,
    fs: float | None = None,
    *,
    subject: str | None = None,
) -> Recording:
    """Read one ECG channel of a WFDB record (PhysioNet format), unlabelled.

    Multi-frequency records are read at each channel's own rate: drivedb's ECG has 32
    samples per 15 Hz frame (480 Hz) while its marker has 1. Header line endings (LF or
    CRLF) do not matter. Values are converted to mV when the header gives uV or V.

    Args:
        record_path: the record without extension (``.../100``), its ``.hea`` file, or a
            folder holding exactly one record.
        channel: channel name (exact, else case-insensitive) or index; None picks the
            first channel named like "ECG", else the first standard lead name (II, MLII,
            i, V5...; see :func:`find_ecg_channel`).
        fs: when given, resample to this rate (Hz) with :func:`resample_recording`.
        subject: defaults to the record name.

    Returns:
        A :class:`Recording` with every label -1 (add labels with ``dataclasses.replace``).
        ``units`` is "mV", or the header's units when they are not a voltage.

    Raises:
        DataError: the header is missing or unreadable, or the channel is not found.
    """
    header, record = _read_wfdb(record_path)
    index = _channel_index(_channel_names(record), channel, header)
    recording = _channel_recording(header, record, index, subject)
    return recording if fs is None else resample_recording(recording, fs)


def resample_recording(recording: Recording, fs: float) -> Recording:
    """Resample to ``fs`` Hz (polyphase, anti-aliased); labels follow the nearest sample.

    The rate ratio is made a fraction up/down with denominator at most 10,000 (exact for
    the usual rates: 700 -> 256 is 64/175); the result's ``fs`` is the source rate times
    that fraction. A NaN sample spreads over the filter's length (a few dozen samples).

    Returns:
        A new :class:`Recording`; the input is returned unchanged when ``fs`` equals its rate.
    """
    if not (np.isfinite(fs) and fs > 0):
        raise ValueError(f"fs must be a positive number of Hz, got {fs}")
    if fs == recording.fs:
        return recording
    ratio = Fraction(fs / recording.fs).limit_denominator(10_000)
    up, down = ratio.numerator, ratio.denominator
    new_fs = recording.fs * up / down
    resampled = signal.resample_poly(recording.signal, up, down)
    positions = np.rint(np.arange(resampled.size) * (recording.fs / new_fs)).astype(np.int64)
    positions = np.clip(positions, 0, recording.signal.size - 1)
    return Recording(
        signal=resampled,
        fs=fs if abs(new_fs - fs) <= 1e-9 * fs else new_fs,
        labels=recording.labels[positions],
        subject=recording.subject,
        source=recording.source,
        label_names=dict(recording.label_names),
        units=recording.units,
    )


# ---------------------------------------------------------------------------------------
# Plain files and label intervals

_TIME_COLUMNS = ("time_s", "time", "t")
_INTERVAL_COLUMNS = ("start_s", "end_s", "label")


def _label_codes(
    values: np.ndarray | pd.Series, label_names: Mapping[int, str] | None, where: str
) -> np.ndarray:
    """Integer codes of a label track: ints as they are, names through ``label_names``,
    blanks -1."""
    series = pd.Series(np.asarray(values, dtype=object).ravel())
    blank = series.isna() | (series.astype(str).str.strip() == "")
    numeric = pd.to_numeric(series.where(~blank), errors="coerce")
    if numeric.dtype.kind == "c":
        raise DataError(f"{where}: labels must be integer codes, found complex numbers")
    if not (numeric.notna() | blank).all():
        by_name = {str(name): int(code) for code, name in (label_names or {}).items()}
        text = series.astype(str).str.strip()
        unknown = sorted(set(text[~blank & numeric.isna()]) - set(by_name))
        if unknown:
            hint = "" if label_names else " (pass label_names to map class names to codes)"
            raise DataError(f"{where}: unknown label {unknown[0]!r}{hint}")
        numeric = numeric.where(numeric.notna() | blank, text.map(by_name))
    fractional = ~blank & (np.mod(numeric, 1) != 0)
    if fractional.any():
        raise DataError(
            f"{where}: labels must be integer codes, found {numeric[fractional].iloc[0]}"
        )
    codes = numeric.fillna(UNLABELLED).to_numpy(dtype=np.int64)
    if codes.size and codes.min() < UNLABELLED:
        raise DataError(f"{where}: label codes must be >= -1, found {codes.min()}")
    return codes


def labels_from_intervals(n_samples: int, fs: float, intervals: pd.DataFrame) -> np.ndarray:
    """Per-sample label codes from labelled time intervals.

    Sample ``i`` (at time ``i / fs``) gets the label of the interval with
    ``start_s <= i / fs < end_s``; samples in no interval get -1. Intervals running past the
    end are cut at the end.

    Args:
        n_samples: length of the signal.
        fs: its sampling rate in Hz.
        intervals: columns ``start_s``, ``end_s`` (seconds from the first sample) and
            ``label`` (integer code >= 0).

    Returns:
        (n_samples,) int64 label codes.

    Raises:
        DataError: a column is missing, an interval is empty or reversed, starts after the
            signal's end, has a negative label, or overlaps another interval.
    """
    missing = [c for c in _INTERVAL_COLUMNS if c not in intervals.columns]
    if missing:
        raise DataError(
            f"label intervals: column {missing[0]} missing (need start_s, end_s, label)"
        )
    labels = np.full(n_samples, UNLABELLED, dtype=np.int64)
    duration = n_samples / fs
    table = intervals.sort_values("start_s", kind="stable").reset_index(drop=True)
    starts = pd.to_numeric(table["start_s"], errors="coerce").to_numpy(dtype=float)
    ends = pd.to_numeric(table["end_s"], errors="coerce").to_numpy(dtype=float)
    codes = _label_codes(table["label"], None, "label intervals")
    for i, (start, end, code) in enumerate(zip(starts, ends, codes, strict=True)):
        span = f"label interval {start:g}-{end:g} s"
        if not (np.isfinite(start) and np.isfinite(end) and 0 <= start < end):
            raise DataError(f"{span}: need 0 <= start_s < end_s")
        if start >= duration:
            raise DataError(f"{span}: starts after the signal's end at {duration:g} s")
        if code < 0:
            raise DataError(f"{span}: label must be a code >= 0, got {code}")
        if i > 0 and start < ends[i - 1]:
            raise DataError(f"{span}: overlaps {starts[i - 1]:g}-{ends[i - 1]:g} s")
        first, stop = int(np.ceil(start * fs - 1e-9)), int(np.ceil(end * fs - 1e-9))
        labels[first : min(stop, n_samples)] = code
    return labels


def _read_table(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, encoding="utf-8-sig", skipinitialspace=True)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: file not found") from exc
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({' '.join(str(exc).split())})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    if table.columns.duplicated().any():
        repeated = table.columns[table.columns.duplicated()][0]
        raise DataError(f"{path}: column {repeated!r} appears more than once in the header")
    return table


def _numeric_column(table: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    """Column as float64; blank cells become NaN, text is an error naming its line."""
    values = table[column]
    numeric = pd.to_numeric(values, errors="coerce")
    bad = numeric.isna() & values.notna() & (values.astype(str).str.strip() != "")
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(
            f"{path} line {row + 2}: column {column} is not a number ({values.iloc[row]!r})"
        )
    return numeric.to_numpy(dtype=np.float64)


def _fs_from_times(times: np.ndarray, where: str) -> float:
    steps = np.diff(times)
    step = float(np.median(steps)) if steps.size else 0.0
    if not step > 0 or np.max(np.abs(steps - step)) > 0.01 * step:
        raise DataError(f"{where}: time column is not regularly sampled: pass fs")
    return 1.0 / step


def _pick_signal_column(
    candidates: Sequence[str], column: str | int | None, where: str
) -> str | int:
    if column is not None:
        if column not in candidates:
            raise DataError(
                f"{where}: no column {column!r}; it has {', '.join(map(str, candidates))}"
            )
        return column
    ecg_like = [c for c in candidates if "ecg" in str(c).lower()]
    if len(ecg_like) == 1 or len(candidates) == 1:
        return (ecg_like or list(candidates))[0]
    raise DataError(
        f"{where}: several possible signal columns ({', '.join(map(str, candidates))}): pass column"
    )


def _real_values(array: np.ndarray, where: str) -> np.ndarray:
    """A float64 copy of a numeric array; text, structured or complex arrays are errors."""
    if array.dtype.kind not in "biuf":
        raise DataError(f"{where}: holds {array.dtype} values, expected numbers")
    return array.astype(np.float64)


def _stored_fs(value: np.ndarray, path: Path) -> float:
    """The sampling rate an ``.npz`` stores as its ``fs`` array: one real number."""
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise DataError(f"{path}: array 'fs' must be one number of Hz, got {value.dtype} "
                        f"{value.shape}")
    return float(value.reshape(-1)[0])


def _read_signal_and_labels(
    path: Path, column: str | int | None, label_column: str
) -> tuple[np.ndarray, np.ndarray | pd.Series | None, float | None]:
    """(signal, per-sample labels or None, sampling rate stored in the file or None)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = load_npy(path)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim == 2 and isinstance(column, (int, np.integer)):
            array = array[:, column]
        if array.ndim != 1:
            raise DataError(
                f"{path}: array of shape {array.shape}; expected (N,), or pass column as an index"
            )
        return _real_values(array, str(path)), None, None
    if suffix == ".npz":
        archive = load_npz(path)
        stored_fs = _stored_fs(archive.pop("fs"), path) if "fs" in archive else None
        labels = archive.pop(label_column, archive.pop("labels", None))
        key = _pick_signal_column(list(archive), column, str(path))
        return _real_values(archive[key], f"{path} array {key!r}").ravel(), labels, stored_fs
    if suffix in {".csv", ".txt", ".tsv"}:
        table = _read_table(path)
        time_column = next((c for c in _TIME_COLUMNS if c in table.columns), None)
        candidates = [c for c in table.columns if c not in {label_column, time_column}]
        key = _pick_signal_column(candidates, column, str(path))
        stored_fs = None
        if time_column is not None:
            stored_fs = _fs_from_times(_numeric_column(table, time_column, path), str(path))
        labels = table[label_column] if label_column in table.columns else None
        return _numeric_column(table, str(key), path), labels, stored_fs
    raise DataError(f"{path}: unsupported signal file type {suffix!r} (use .csv, .npy or .npz)")


def load_signal_file(
    path: str | os.PathLike,
    fs: float | None,
    column: str | int | None = None,
    labels: np.ndarray | pd.DataFrame | str | os.PathLike | None = None,
    *,
    label_column: str = "label",
    label_names: Mapping[int, str] | None = None,
    subject: str | None = None,
) -> Recording:
    """Read one ECG lead from a CSV, ``.npy`` or ``.npz`` file, with optional labels.

    File layouts:

    - CSV: a header row; the signal column (``column``, else the one whose name contains
      "ecg", else the only column besides ``label_column`` and a time column
      ``time_s``/``time``/``t``); optional per-sample ``label_column``. A regular time
      column gives the sampling rate when ``fs`` is None.
    - ``.npy``: a (N,) array (or (N, K) with ``column`` an index).
    - ``.npz``: arrays named by ``column`` (else "ecg"-like or the only one), optional
      ``label``/``labels`` per sample and an optional scalar ``fs``.

    Blank or NaN samples are kept as NaN (a later quality check drops windows with them).

    Args:
        path: the signal file.
        fs: sampling rate in Hz; None only when the file itself gives it.
        column: name (or index for 2-D ``.npy``) of the signal column.
        labels: overrides labels stored in the file: a (N,) array of codes, a DataFrame of
            intervals (``start_s, end_s, label``), or a path to a CSV holding either such
            intervals or one column of per-sample labels, or to a ``.npy`` of codes.
        label_column: name of the per-sample label column in the file.
        label_names: code -> class name; also maps labels given as names to codes. Default:
            each code's own text.
        subject: defaults to the file's stem.

    Returns:
        A :class:`Recording` (units "mV": plain files carry none; the caller knows better).

    Raises:
        DataError: unreadable file, ambiguous or missing signal column, sampling rate
            missing ("...: sampling rate missing: pass fs") or contradicting the file's,
            label track of another length than the signal, or bad label codes/intervals.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    values, stored_labels, stored_fs = _read_signal_and_labels(path, column, label_column)
    if fs is None and stored_fs is None:
        raise DataError(f"{path}: sampling rate missing: pass fs")
    if fs is not None and stored_fs is not None and abs(fs - stored_fs) > 1e-3 * fs:
        raise DataError(f"{path}: fs={fs:g} Hz given but the file says {stored_fs:g} Hz")
    rate = float(fs if fs is not None else stored_fs)
    if not (np.isfinite(rate) and rate > 0):
        raise DataError(f"{path}: sampling rate must be a positive number of Hz, got {rate}")

    where = str(path)
    if labels is None:
        track = stored_labels
    elif isinstance(labels, pd.DataFrame):
        track = labels_from_intervals(values.size, rate, labels)
    elif isinstance(labels, (str, os.PathLike)):
        where = str(labels)
        track = _read_label_file(Path(labels), values.size, rate, label_names)
    else:
        track = np.asarray(labels)
        where = f"{path} (labels argument)"
    if track is None:
        codes = np.full(values.size, UNLABELLED, dtype=np.int64)
    else:
        codes = _label_codes(track, label_names, where)
        if codes.size != values.size:
            raise DataError(
                f"{where}: label track has {codes.size} samples but the signal in {path} has "
                f"{values.size}"
            )
    names = {int(code): str(name) for code, name in (label_names or {}).items()}
    names.update({int(c): str(c) for c in np.unique(codes) if c >= 0 and int(c) not in names})
    return Recording(
        signal=values,
        fs=rate,
        labels=codes,
        subject=subject if subject is not None else path.stem,
        source=str(path),
        label_names=dict(sorted(names.items())),
    )


def _read_label_file(
    path: Path, n_samples: int, fs: float, label_names: Mapping[int, str] | None
) -> np.ndarray | pd.Series:
    if path.suffix.lower() == ".npy":
        return load_npy(path).ravel()
    table = _read_table(path)
    if {"start_s", "end_s"} <= set(table.columns):
        if "label" in table.columns:
            table = table.assign(label=_label_codes(table["label"], label_names, str(path)))
        try:
            return labels_from_intervals(n_samples, fs, table)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc
    if len(table.columns) == 1:
        return table.iloc[:, 0]
    raise DataError(
        f"{path}: expected columns start_s, end_s, label (intervals) or one label column"
    )


# ---------------------------------------------------------------------------------------
# drivedb: Stress Recognition in Automobile Drivers (Healey and Picard, PhysioNet)

#: Class names of drivedb labels.
DRIVEDB_LABEL_NAMES: dict[int, str] = {0: "rest", 1: "driving"}
#: Protocol phase -> label code; "none" leaves the segment unlabelled.
DRIVEDB_PHASE_CODES: dict[str, int] = {
    "rest": 0, "driving": 1, "city": 1, "highway": 1, "none": UNLABELLED,
}  # fmt: skip
#: The three stress levels of Healey and Picard: rest low, highway medium, city high.
DRIVEDB3_LABEL_NAMES: dict[int, str] = {0: "rest", 1: "highway", 2: "city"}
#: Phase -> code of the three levels; driving that is not known to be city or highway
#: (drive17's) stays unlabelled.
DRIVEDB3_PHASE_CODES: dict[str, int] = {
    "rest": 0, "highway": 1, "city": 2, "driving": UNLABELLED, "none": UNLABELLED,
}  # fmt: skip
#: Label levels -> (phase codes, class names).
_DRIVEDB_LEVELS = {2: (DRIVEDB_PHASE_CODES, DRIVEDB_LABEL_NAMES),
                   3: (DRIVEDB3_PHASE_CODES, DRIVEDB3_LABEL_NAMES)}
#: Phases between the marker events of records whose marker was studied by hand.
DRIVEDB_RECORD_PHASES: dict[str, tuple[str, ...]] = {
    "drive17a": ("none", "rest", "driving"),
    "drive17b": ("driving", "rest", "none"),
}
# The full protocol of drives 05-16 (published segment durations, file
# drivedb_time_intervals_drives05-16.csv of the shared data).
_FULL_PROTOCOL = ("rest", "city", "highway", "city", "highway", "city", "rest")
# A marker event this close to the record's start or end marks the protocol's start or end.
_EDGE_EVENT_S = 60.0


def drivedb_marker_events(
    marker: np.ndarray, fs: float, *, min_rise: float = 5.0, merge_s: float = 30.0
) -> np.ndarray:
    """Times (s) of the protocol transitions flagged by a drivedb marker channel.

    The marker sits at a slowly drifting level (about 10 in the header's units) and
    jumps for a few samples at each transition, usually after some seconds of smaller
    fluctuations (the button being handled). A 3-sample median filter removes
    single-sample glitches (drive17b has two, 5.7 above the level, at 0.0 s and 21.4 s);
    peaks rising at least ``min_rise`` above a 61 s running median are kept, and peaks
    closer than ``merge_s`` are one event, timed at its highest peak.

    Args:
        marker: (M,) the marker channel.
        fs: its sampling rate in Hz (15 or 15.5 in drivedb).
        min_rise: least height above the running level of a transition spike.
        merge_s: peaks closer than this belong to one transition.

    Returns:
        (E,) float64 event times in seconds from the first sample, ascending.
    """
    marker = np.asarray(marker, dtype=np.float64)
    if marker.size == 0:
        return np.zeros(0)
    filled = np.where(np.isfinite(marker), marker, np.nanmedian(marker))
    despiked = ndimage.median_filter(filled, size=3, mode="nearest")
    level = ndimage.median_filter(despiked, size=max(3, int(round(61 * fs)) | 1), mode="nearest")
    rise = despiked - level
    peaks, _ = signal.find_peaks(np.pad(rise, 1, constant_values=-np.inf), height=min_rise)
    peaks = peaks - 1
    events: list[int] = []
    group: list[int] = []
    for peak in peaks:
        if group and (peak - group[-1]) / fs > merge_s:
            events.append(max(group, key=lambda i: rise[i]))
            group = []
        group.append(int(peak))
    if group:
        events.append(max(group, key=lambda i: rise[i]))
    return np.asarray(events, dtype=np.float64) / fs


def _default_phases(name: str, events: np.ndarray, duration_s: float, header: Path) -> tuple:
    if name in DRIVEDB_RECORD_PHASES:
        return DRIVEDB_RECORD_PHASES[name]
    inner = list(events)
    head = ["none"] if inner and inner[0] <= _EDGE_EVENT_S else []
    tail = ["none"] if inner and duration_s - inner[-1] <= _EDGE_EVENT_S else []
    n_transitions = len(inner) - len(head) - len(tail)
    if n_transitions == len(_FULL_PROTOCOL) - 1:
        return (*head, *_FULL_PROTOCOL, *tail)
    times = ", ".join(f"{t:.1f}" for t in events)
    raise DataError(
        f"{header}: {len(events)} marker events (at {times} s) do not match the full protocol "
        f"(6 transitions between rest, city, highway, city, highway, city, rest): pass "
        f"phases, one name per segment ({len(events) + 1} names)"
    )


def read_drivedb_durations(path: str | os.PathLike) -> dict[str, tuple[float, ...]]:
    """The published segment durations of drivedb drives (PhysioNet's
    ``drivedb_time_intervals_drives05-16.csv``): record name (``"drive05"``) -> the minutes
    of initial rest, city, highway, city, highway, city, final rest (NaN when not given)."""
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable drivedb durations CSV ({error})") from None
    columns = ["Initial Rest", "City 1", "Highway", "City 2", "Highway 2", "City 3",
               "Final Rest"]
    missing = [c for c in ["Drive No", *columns] if c not in table.columns]
    if missing:
        raise DataError(f"{path}: no column {missing[0]!r} (expected Drive No, "
                        f"{', '.join(columns)})")
    durations = {}
    for _, row in table.iterrows():
        values = pd.to_numeric(row[columns], errors="coerce")
        durations[str(row["Drive No"]).strip().lower()] = tuple(float(v) for v in values)
    return durations


def drivedb_protocol_phases(events: np.ndarray, durations_min: Sequence[float], *,
                            tolerance_s: float = 60.0) -> tuple[str, ...]:
    """Name the segments between marker events by the drive's published durations.

    The protocol starts at the first event from which the next six events (the ends of the
    initial rest and of the five driving segments) each fall within ``tolerance_s`` of
    the published transition times; segments before it and after the final rest are
    ``"none"``. The final rest ends at the next event or at the record's end (unlabelled
    when its duration is not published).

    Args:
        events: ``(E,)`` marker event times in seconds (:func:`drivedb_marker_events`).
        durations_min: the 7 published durations in minutes (see
            :func:`read_drivedb_durations`).
        tolerance_s: how far an event may lie from its published time.

    Returns:
        ``E + 1`` phase names, one per segment.

    Raises:
        DataError: no run of events matches the durations.
    """
    events = np.asarray(events, dtype=np.float64)
    offsets = 60.0 * np.cumsum(np.asarray(durations_min[:6], dtype=np.float64))
    for start in range(events.size - 6):
        found = events[start + 1:start + 7] - events[start]
        if np.all(np.abs(found - offsets) <= tolerance_s):
            final = "rest" if np.isfinite(durations_min[6]) else "none"
            tail = events.size - (start + 7)
            return ("none",) * (start + 1) + _FULL_PROTOCOL[:-1] + (final,) + \
                ("none",) * tail
    times = ", ".join(f"{t / 60:.2f}" for t in events)
    raise DataError(f"marker events at {times} min match no run of the published segment "
                    f"durations ({', '.join(f'{d:g}' for d in durations_min)} min, within "
                    f"{tolerance_s:g} s)")


def drivedb_stress_labels(
    record_path: str | os.PathLike,
    phases: Sequence[str] | None = None,
    *,
    channel: str | int | None = None,
    margin_s: float = 0.0,
    durations: dict[str, tuple[float, ...]] | None = None,
    levels: int = 2,
) -> Recording:
    """ECG of a drivedb record labelled rest (0) or driving (1) from its marker channel.

    What the marker shows (studied on drive17a and drive17b, 15 and 15.5 Hz marker):

    - drive17a (29.0 min): spikes at 26.8 s (peak 35.3, after handling from 22.5 s) and at
      956.9 s (peak 34.3); nothing after. Between them 15.5 min pass, as the published
      initial rests (15.0-15.7 min); hand GSR and heart rate rise about 10 s after
      956.9 s. So: setup until 26.8 s, initial rest until 956.9 s, driving to the end.
    - drive17b (25.4 min, the same drive resumed): single-sample glitches at 0.0 and 21.4 s
      (removed), handling at 598-606 s, a spike at 610.4 s (peak 17.3) and at 1510.2 s
      (peak 76.8). GSR is high and active until about 610 s and then decays; 1510.2 -
      610.4 s = 15.0 min, the published final rest. So: driving until 610.4 s, final rest
      until 1510.2 s, then the end of the protocol (unlabelled).
    - No spike lies within the driving parts, so city and highway cannot be told apart
      in these records; both are "driving".

    - drive05 and drive06 (84 and 81 min) show all eight events of the full protocol
      (its start, six transitions, its end); their gaps match the published durations
      within 10 s, so ``durations`` names them.

    Rule: marker events (see :func:`drivedb_marker_events`) split the record into
    segments; ``phases`` names each segment in order ("rest", "driving", "city",
    "highway", or "none" for unlabelled). With ``levels=2`` rest is 0 (no stress) and every
    driving phase 1 (stress); with ``levels=3`` rest is 0, highway 1 and city 2 (low, medium
    and high stress, as Healey and Picard), and driving not known to be either is
    unlabelled. When ``phases`` is None: a drive in ``durations`` (published segment
    durations, :func:`read_drivedb_durations`) is named by
    :func:`drivedb_protocol_phases`; the drive17 records use
    :data:`DRIVEDB_RECORD_PHASES`; any other record must show the full protocol: 6
    transitions between rest, city, highway, city, highway, city, rest, plus optional
    events within 60 s of the record's start or end (protocol start/end, unlabelled
    before/after).

    Args:
        record_path: the drivedb record (see :func:`load_wfdb`).
        phases: one phase name per segment (number of events + 1).
        channel: ECG channel; default the one named "ECG".
        margin_s: samples closer than this to an event are left unlabelled (the body
            takes a while to follow a transition).
        durations: published segment durations by record name, to name the segments.
        levels: 2 (rest / driving) or 3 (rest / highway / city).

    Returns:
        The ECG :class:`Recording` (480 or 496 Hz in drive17) with labels, subject the
        drive without the record's part letter ("drive17" for 17a and 17b).

    Raises:
        DataError: no marker channel, unknown phase names, or a number of phases that
            does not fit the events found.
    """
    header, record = _read_wfdb(record_path)
    names = _channel_names(record)
    ecg = _channel_recording(header, record, _channel_index(names, channel, header), None)
    marker_index = next((i for i, n in enumerate(names) if n.strip().lower() == "marker"), None)
    if marker_index is None:
        raise DataError(f"{header}: no channel named 'marker' among {', '.join(names)}")
    marker = np.asarray(record.e_p_signal[marker_index], dtype=np.float64)
    marker_fs = float(record.fs) * int(record.samps_per_frame[marker_index])
    events = drivedb_marker_events(marker, marker_fs)
    name = str(record.record_name)
    if levels not in _DRIVEDB_LEVELS:
        raise ValueError(f"levels must be 2 or 3, got {levels}")
    codes, label_names = _DRIVEDB_LEVELS[levels]
    if phases is None and durations and name.lower() in durations:
        try:
            phases = drivedb_protocol_phases(events, durations[name.lower()])
        except DataError as error:
            raise DataError(f"{header}: {error}") from None
    elif phases is None:
        phases = _default_phases(name, events, marker.size / marker_fs, header)
    unknown = [p for p in phases if p not in DRIVEDB_PHASE_CODES]
    if unknown:
        raise DataError(
            f"{header}: unknown phase {unknown[0]!r}; use {', '.join(DRIVEDB_PHASE_CODES)}"
        )
    if len(phases) != events.size + 1:
        times = ", ".join(f"{t:.1f}" for t in events)
        raise DataError(
            f"{header}: {events.size} marker events (at {times} s) make {events.size + 1} "
            f"segments but phases names {len(phases)}"
        )
    bounds = np.concatenate([[0.0], events, [ecg.duration_s]])
    rows = [
        (start, end, codes[phase])
        for start, end, phase in zip(bounds[:-1], bounds[1:], phases, strict=True)
        if codes[phase] != UNLABELLED and end > start
    ]
    intervals = pd.DataFrame(rows, columns=list(_INTERVAL_COLUMNS))
    labels = labels_from_intervals(ecg.signal.size, ecg.fs, intervals)
    if margin_s > 0:
        times = np.arange(labels.size) / ecg.fs
        for event in events:
            labels[np.abs(times - event) < margin_s] = UNLABELLED
    match = re.fullmatch(r"(drive\d+)[a-z]?", name)
    ecg.labels = labels
    ecg.subject = match.group(1) if match else name
    ecg.label_names = dict(label_names)
    return ecg
