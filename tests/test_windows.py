"""Windowing, window labels, band-pass filter and quality checks for ECG recordings."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from medlite.data.windows import (
    bandpass,
    label_windows,
    make_windows,
    window_quality,
    window_starts,
)


def test_window_starts_two_second_step_and_seven_second_alternative():
    # 10 s at 700 Hz: 5 s windows (3500 samples) starting every 2 s (1400 samples).
    np.testing.assert_array_equal(window_starts(7000, 700.0), [0, 1400, 2800])
    # The "2 s of silence between windows" reading: a 7 s step.
    np.testing.assert_array_equal(window_starts(14000, 700.0, 5.0, step_s=7.0), [0, 4900, 9800])
    # Exactly one window fits.
    np.testing.assert_array_equal(window_starts(3500, 700.0), [0])


def test_window_starts_rejects_a_recording_shorter_than_one_window():
    with pytest.raises(ValueError, match=r"shorter than one window \(4\.9 s < 5 s\)"):
        window_starts(3430, 700.0)


def test_label_windows_hand_computed():
    # fs 10 Hz: windows of 50 samples every 20 samples over 200 samples -> starts 0..140.
    labels = np.r_[np.full(100, 1), np.full(50, 2), np.full(50, -1)]
    starts = window_starts(200, 10.0)
    np.testing.assert_array_equal(starts, np.arange(0, 141, 20))
    # [0,50) [20,70) [40,90) are 1; [60,110) [80,130) cross 1->2; [100,150) is exactly 2;
    # [120,170) and [140,190) cross 2->-1.
    np.testing.assert_array_equal(label_windows(labels, starts, 50),
                                  [1, 1, 1, -1, -1, 2, -1, -1])


def test_label_windows_matches_brute_force():
    rng = np.random.default_rng(3)
    labels = np.repeat(rng.integers(-1, 3, 40), rng.integers(5, 60, 40))
    length = 25
    starts = np.arange(0, labels.size - length + 1, 7)
    expected = [labels[s] if np.all(labels[s:s + length] == labels[s]) else -1 for s in starts]
    np.testing.assert_array_equal(label_windows(labels, starts, length), expected)


def test_bandpass_keeps_the_band_and_removes_drift_and_hum():
    fs = 700.0
    t = np.arange(int(20 * fs)) / fs
    in_band = np.sin(2 * np.pi * 10 * t)
    noisy = in_band + 2.0 * np.sin(2 * np.pi * 0.05 * t) + np.sin(2 * np.pi * 100 * t)
    filtered = bandpass(noisy, fs)
    middle = slice(int(5 * fs), int(15 * fs))
    assert np.max(np.abs(filtered[middle] - in_band[middle])) < 0.02
    # A cut-off above Nyquist (25 Hz at fs 50) is clipped to 0.95 x Nyquist, not an error.
    slow = noisy[::14]
    np.testing.assert_allclose(bandpass(slow, 50.0, 0.5, 40.0), bandpass(slow, 50.0, 0.5, 23.75))


def _noisy_sine(length: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(length) / 100.0
    return np.sin(2 * np.pi * 1.3 * t) + 0.05 * rng.standard_normal(length)


def test_window_quality_flags_nan_flat_and_clipped_windows():
    clean = _noisy_sine(500, 0)
    with_nan = clean.copy()
    with_nan[17] = np.nan
    flat = np.full(500, 0.3) + 1e-5 * np.random.default_rng(1).standard_normal(500)
    clipped = np.clip(clean, -0.6, 0.6)  # about a third of the samples on the rails
    quality = window_quality(np.stack([clean, with_nan, flat, clipped]), fs=100.0)
    assert list(quality.columns) == ["nan", "flat", "clipped", "ok"]
    assert quality["nan"].tolist() == [False, True, False, False]
    assert quality["flat"].tolist() == [False, False, True, False]
    assert quality["clipped"].tolist() == [False, False, False, True]
    assert quality["ok"].tolist() == [True, False, False, False]
    # 6 of 500 samples on the top rail: 1.2% > 1% is clipped; 4 (0.8%) is not.
    for n_rail, expected in ((6, True), (4, False)):
        window = clean.copy()
        window[:n_rail] = clean.max() + 1.0
        assert window_quality(window[None], fs=100.0)["clipped"].item() is expected


def _recording(fs: float = 50.0):
    # 60 s: label 0 for 20 s, unlabelled 10 s, label 1 for 30 s.
    n = int(60 * fs)
    signal = np.concatenate([_noisy_sine(n // 2, 0), _noisy_sine(n - n // 2, 1)])
    labels = np.r_[np.full(int(20 * fs), 0), np.full(int(10 * fs), -1),
                   np.full(n - int(30 * fs), 1)]
    return signal, labels


def test_make_windows_counts_labels_and_filtered_windows():
    fs = 50.0
    signal, labels = _recording(fs)
    signal[int(40 * fs)] = np.nan  # spoils windows starting at 36, 38 and 40 s
    signal[int(50 * fs):int(56 * fs)] = 0.2  # flat from 50 to 56 s: the window at 50 s
    result = make_windows(signal, fs, labels)
    # Starts 0, 2, ..., 54 s: 28 windows. Label 0 covers [0, 20): starts 0..14 (8 windows);
    # label 1 covers [30, 60): starts 30..54 (13); unlabelled [20, 30): starts 20, 22, 24;
    # the rest (16, 18 and 26, 28) are mixed.
    counts = result.counts
    assert counts["total"] == 28
    assert counts["unlabelled"] == 3 and counts["mixed"] == 4
    assert counts["nan"] == 3 and counts["flat"] == 1 and counts["bad"] == 4
    assert counts["clipped"] == 1  # the flat window sits entirely "on its rail"
    assert counts["kept"] == 8 + 13 - 4
    assert counts["total"] == counts["unlabelled"] + counts["mixed"] + counts["bad"] + counts[
        "kept"]
    expected_times = [t for t in range(0, 15, 2)] + [t for t in range(30, 55, 2)
                                                      if t not in (36, 38, 40, 50)]
    np.testing.assert_allclose(result.times_s, expected_times)
    np.testing.assert_array_equal(result.starts, np.array(expected_times) * 50)
    np.testing.assert_array_equal(result.labels, [0] * 8 + [1] * 9)
    assert result.windows.shape == (17, 250) and result.windows.dtype == np.float32
    assert result.ok.all()
    # Windows come from the recording filtered once as a whole (NaN gap interpolated).
    filled = signal.copy()
    filled[int(40 * fs)] = (signal[int(40 * fs) - 1] + signal[int(40 * fs) + 1]) / 2
    reference = bandpass(filled, fs)
    for window, start in zip(result.windows, result.starts, strict=True):
        np.testing.assert_allclose(window, reference[start:start + 250], rtol=0, atol=1e-6)


def test_make_windows_options():
    fs = 50.0
    signal, labels = _recording(fs)
    signal[int(50 * fs):int(56 * fs)] = 0.2
    kept_bad = make_windows(signal, fs, labels, drop_bad=False, filter=None)
    assert kept_bad.counts["kept"] == 21 and (~kept_bad.ok).sum() == 1
    assert kept_bad.times_s[~kept_bad.ok].tolist() == [50.0]
    np.testing.assert_array_equal(kept_bad.windows[0], signal[:250].astype(np.float32))
    unlabelled = make_windows(signal, fs, None, step_s=7.0)
    # Starts 0, 7, ..., 49 s; the 49 s window holds 1 s of signal, so it is not flat.
    assert len(unlabelled) == 8 and (unlabelled.labels == -1).all()
    narrow = make_windows(signal, fs, labels, filter=functools.partial(bandpass, high_hz=5.0))
    assert len(narrow) == 20
    with pytest.raises(ValueError, match=r"shorter than one window \(4 s < 5 s\)"):
        make_windows(signal[:200], fs, labels[:200])
