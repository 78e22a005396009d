"""Fixed-length windows over a 1-D physiological signal (ECG), with labels and quality checks.

SONIC (Phukan et al. 2024) cuts WESAD chest ECG (700 Hz) into 5-second windows "with a
2-second gap". We read the gap as a **2 s step between window starts**: consecutive windows
overlap by 3 s, i.e. share 60% of their samples (see :func:`medlite.data.cv.overlap_fraction`),
and a recording of T seconds gives about ``(T - 5) / 2 + 1`` windows. The other reading, 2 s
of signal skipped between the end of one window and the start of the next, is a 7 s step:
pass ``step_s=window_s + 2.0``. Because overlapping windows share samples, a random k-fold
over windows puts the same samples in training and test; :mod:`medlite.data.cv` offers
subject-wise and time-blocked alternatives.

All functions take plain numpy arrays: ``signal`` ``(N,)`` float, ``labels`` ``(N,)`` int with
-1 for unlabelled samples, ``fs`` the sampling rate in Hz. Window start indices are in
samples; times are in seconds from the first sample.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import signal as sp_signal

UNLABELLED = -1


def window_length(fs: float, window_s: float) -> int:
    """Samples in a ``window_s``-second window at ``fs`` Hz (rounded to the nearest sample)."""
    if fs <= 0:
        raise ValueError(f"fs must be > 0 Hz, got {fs}")
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0 s, got {window_s}")
    length = int(round(window_s * fs))
    if length < 1:
        raise ValueError(f"a {window_s} s window at {fs} Hz holds no sample")
    return length


def window_starts(n_samples: int, fs: float, window_s: float = 5.0,
                  step_s: float = 2.0) -> np.ndarray:
    """Start indices of every complete window, in samples.

    Windows are ``round(window_s * fs)`` samples long and start every ``round(step_s * fs)``
    samples from sample 0; a trailing partial window is left out. ``step_s < window_s`` gives
    overlapping windows (the default 5 s / 2 s shares 60% of the samples between neighbours);
    ``step_s = window_s + gap`` leaves ``gap`` seconds unused between windows.

    Returns:
        ``int64`` array ``(W,)``, ascending; ``starts[i] + window_length <= n_samples``.

    Raises:
        ValueError: ``n_samples`` is shorter than one window (the message gives both lengths
            in seconds), or a non-positive ``fs``, ``window_s`` or ``step_s``.
    """
    length = window_length(fs, window_s)
    if step_s <= 0:
        raise ValueError(f"step_s must be > 0 s, got {step_s}")
    step = max(1, int(round(step_s * fs)))
    if n_samples < length:
        raise ValueError(
            f"recording is shorter than one window ({n_samples / fs:.3g} s < {window_s:g} s)"
        )
    return np.arange(0, n_samples - length + 1, step, dtype=np.int64)


def _label_changes(labels: np.ndarray) -> np.ndarray:
    # Indices i where labels[i] != labels[i - 1]: the first sample of each new run.
    return np.flatnonzero(labels[1:] != labels[:-1]) + 1


def _changes_inside(changes: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    # Number of label changes strictly inside each window [start, start + length).
    return (np.searchsorted(changes, starts + length, side="left")
            - np.searchsorted(changes, starts, side="right"))


def label_windows(labels: np.ndarray, starts: np.ndarray, window_len: int) -> np.ndarray:
    """One label per window: the label of its samples when a single label covers the whole
    window, else -1 (mixed windows, e.g. across a baseline/stress boundary, are dropped later).

    Args:
        labels: ``(N,)`` int, -1 for unlabelled samples.
        starts: ``(W,)`` window start indices (see :func:`window_starts`).
        window_len: samples per window.

    Returns:
        ``int64`` ``(W,)``; -1 for windows that are mixed or entirely unlabelled.
    """
    labels = np.asarray(labels)
    starts = np.asarray(starts, dtype=np.int64)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {labels.shape}")
    if starts.size and (starts.min() < 0 or starts.max() + window_len > labels.size):
        raise ValueError(f"windows of {window_len} samples run past the {labels.size} labels")
    mixed = _changes_inside(_label_changes(labels), starts, window_len) > 0
    window_labels = labels[starts].astype(np.int64)
    window_labels[mixed] = UNLABELLED
    return window_labels


def bandpass(signal: np.ndarray, fs: float, low_hz: float | None = 0.5,
             high_hz: float | None = 40.0, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth band-pass filter (``scipy.signal.butter`` in second-order
    sections, applied forwards and backwards by ``sosfiltfilt``, so the effective order is
    ``2 * order`` and R peaks are not shifted in time).

    The defaults keep 0.5-40 Hz: below 0.5 Hz is baseline wander (breathing, movement), above
    40 Hz mostly mains hum and muscle noise. ``high_hz`` at or above the Nyquist frequency is
    clipped to 0.95 x Nyquist; ``low_hz=None`` gives a low-pass, ``high_hz=None`` a high-pass.
    NaN samples make the whole output NaN (``make_windows`` interpolates them first).

    Args:
        signal: ``(N,)`` (or ``(..., N)``, filtered along the last axis).
        fs: sampling rate in Hz.

    Returns:
        float64 array of the input's shape.
    """
    if fs <= 0:
        raise ValueError(f"fs must be > 0 Hz, got {fs}")
    nyquist = fs / 2.0
    if high_hz is not None and high_hz >= nyquist:
        high_hz = 0.95 * nyquist
    if low_hz is not None and low_hz <= 0:
        low_hz = None
    if low_hz is not None and high_hz is not None:
        if low_hz >= high_hz:
            raise ValueError(f"band-pass needs low_hz < high_hz, got {low_hz} >= {high_hz}")
        cutoff, btype = [low_hz, high_hz], "bandpass"
    elif low_hz is not None:
        cutoff, btype = low_hz, "highpass"
    elif high_hz is not None:
        cutoff, btype = high_hz, "lowpass"
    else:
        return np.asarray(signal, dtype=np.float64).copy()
    sos = sp_signal.butter(order, cutoff, btype=btype, fs=fs, output="sos")
    return sp_signal.sosfiltfilt(sos, np.asarray(signal, dtype=np.float64), axis=-1)


def window_quality(windows: np.ndarray, fs: float, flat_std: float = 1e-3,
                   clip_fraction: float = 0.01) -> pd.DataFrame:
    """Flag unusable windows.

    - ``nan``: the window holds at least one NaN (or infinite) sample.
    - ``flat``: standard deviation below ``flat_std`` (signal units, e.g. mV): a lead off or a
      disconnected sensor.
    - ``clipped``: more than ``clip_fraction`` of the samples sit exactly at the window's
      maximum, or exactly at its minimum: the amplifier hit its rail. A clean ECG window
      reaches its extremes at one or a few samples (about 0.06% of a 5 s window at 700 Hz).
      Check raw windows: filtering smooths the plateaus away.
    - ``ok``: none of the above.

    ``fs`` is accepted for symmetry with the other functions; the checks do not depend on it.

    Args:
        windows: ``(W, L)`` float.

    Returns:
        DataFrame with ``W`` rows and boolean columns ``nan``, ``flat``, ``clipped``, ``ok``.
    """
    windows = np.asarray(windows, dtype=np.float64)
    if windows.ndim != 2:
        raise ValueError(f"windows must be (W, L), got shape {windows.shape}")
    length = windows.shape[1]
    has_nan = ~np.isfinite(windows).all(axis=1)
    with warnings.catch_warnings():
        # All-NaN windows give NaN statistics; they are flagged by `nan` already.
        warnings.simplefilter("ignore", RuntimeWarning)
        std = np.nanstd(windows, axis=1)
        top = np.nanmax(windows, axis=1, keepdims=True)
        bottom = np.nanmin(windows, axis=1, keepdims=True)
    flat = std < flat_std
    at_top = (windows == top).sum(axis=1) / max(length, 1)
    at_bottom = (windows == bottom).sum(axis=1) / max(length, 1)
    clipped = np.maximum(at_top, at_bottom) > clip_fraction
    return pd.DataFrame({
        "nan": has_nan,
        "flat": flat,
        "clipped": clipped,
        "ok": ~(has_nan | flat | clipped),
    })


@dataclass
class WindowSet:
    """Windows cut from one recording, with their labels and bookkeeping.

    Attributes:
        windows: ``(W, L)`` float32, filtered signal.
        labels: ``(W,)`` int64 (-1 only when the recording had no labels).
        starts: ``(W,)`` int64 start index of each window in the recording, in samples.
        times_s: ``(W,)`` float64 start time of each window in seconds (``starts / fs``).
        ok: ``(W,)`` bool, the window passed :func:`window_quality` (all True with
            ``drop_bad=True``).
        fs, window_s, step_s: the sampling rate (Hz) and window length / step (seconds).
        counts: ``total`` windows that fit the recording; ``unlabelled`` (entirely -1) and
            ``mixed`` (more than one label) windows, dropped; ``nan`` / ``flat`` / ``clipped``
            among the remaining labelled windows (a window can be both flat and clipped);
            ``bad`` labelled windows failing any check (dropped when ``drop_bad``); ``kept``.
    """

    windows: np.ndarray
    labels: np.ndarray
    starts: np.ndarray
    times_s: np.ndarray
    ok: np.ndarray
    fs: float
    window_s: float
    step_s: float
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def _fill_nan(signal: np.ndarray) -> np.ndarray:
    # Linear interpolation over NaN gaps, so one dropout does not turn the whole recording NaN
    # under the zero-phase filter; windows containing the gap are still flagged as `nan`.
    finite = np.isfinite(signal)
    if finite.all() or not finite.any():
        return signal
    positions = np.arange(signal.size)
    filled = signal.copy()
    filled[~finite] = np.interp(positions[~finite], positions[finite], signal[finite])
    return filled


def make_windows(
    signal: np.ndarray,
    fs: float,
    labels: np.ndarray | None = None,
    window_s: float = 5.0,
    step_s: float = 2.0,
    filter: Callable[[np.ndarray, float], np.ndarray] | None = bandpass,
    drop_bad: bool = True,
    flat_std: float = 1e-3,
    clip_fraction: float = 0.01,
) -> WindowSet:
    """Cut one recording into labelled, quality-checked windows.

    Steps: (1) window starts every ``step_s`` seconds (:func:`window_starts`); (2) window labels
    (:func:`label_windows`), dropping unlabelled and mixed windows; (3) quality checks on the
    *raw* windows (:func:`window_quality`), dropping bad ones when ``drop_bad``; (4) the whole
    recording is filtered once with ``filter(signal, fs)`` (default :func:`bandpass`
    0.5-40 Hz; NaN gaps interpolated first) and the kept windows are cut from the filtered
    signal, so no window carries filter edge transients.

    Args:
        signal: ``(N,)`` float, e.g. ECG in mV.
        fs: sampling rate in Hz.
        labels: ``(N,)`` int, -1 unlabelled; None keeps every window with label -1 (inference).
        filter: ``f(signal, fs) -> filtered`` or None for the raw signal; use
            ``functools.partial(bandpass, low_hz=..., high_hz=...)`` for other bands.
        drop_bad: drop windows failing the quality checks (else keep them, ``ok`` False).

    Raises:
        ValueError: the recording is shorter than one window ("shorter than one window
            (X s < 5 s)"), or ``labels`` does not match ``signal`` in length.
    """
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim != 1:
        raise ValueError(f"signal must be 1-D (N,), got shape {signal.shape}")
    length = window_length(fs, window_s)
    starts = window_starts(signal.size, fs, window_s, step_s)
    counts = {"total": int(starts.size)}
    if labels is None:
        window_labels = np.full(starts.size, UNLABELLED, dtype=np.int64)
        counts["unlabelled"] = counts["mixed"] = 0
        keep = np.ones(starts.size, dtype=bool)
    else:
        labels = np.asarray(labels)
        if labels.shape != signal.shape:
            raise ValueError(f"labels {labels.shape} and signal {signal.shape} differ in length")
        window_labels = label_windows(labels, starts, length)
        mixed = _changes_inside(_label_changes(labels), starts, length) > 0
        counts["mixed"] = int(mixed.sum())
        counts["unlabelled"] = int(((window_labels == UNLABELLED) & ~mixed).sum())
        keep = window_labels != UNLABELLED

    raw = np.lib.stride_tricks.sliding_window_view(signal, length)
    quality = window_quality(raw[starts[keep]], fs, flat_std=flat_std,
                             clip_fraction=clip_fraction)
    for column in ("nan", "flat", "clipped"):
        counts[column] = int(quality[column].sum())
    counts["bad"] = int((~quality["ok"]).sum())
    ok = np.ones(starts.size, dtype=bool)
    ok[keep] = quality["ok"].to_numpy()
    if drop_bad:
        keep &= ok
    counts["kept"] = int(keep.sum())

    filtered = signal if filter is None else np.asarray(filter(_fill_nan(signal), fs))
    kept_starts = starts[keep]
    windows = np.lib.stride_tricks.sliding_window_view(filtered, length)[kept_starts]
    windows = windows.astype(np.float32)
    # Keep raw NaN where the recording had them, so downstream code cannot mistake the
    # interpolated gap for a measured signal.
    windows[~np.isfinite(raw[kept_starts])] = np.nan
    return WindowSet(
        windows=windows,
        labels=window_labels[keep],
        starts=kept_starts,
        times_s=kept_starts / float(fs),
        ok=ok[keep],
        fs=float(fs),
        window_s=float(window_s),
        step_s=float(step_s),
        counts=counts,
    )
