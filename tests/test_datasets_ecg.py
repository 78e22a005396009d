"""Synthetic ECG: heart rate and variability as requested, stress study blocks, determinism."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy.signal import butter, find_peaks, sosfiltfilt

from medlite.datasets.ecg import (
    EcgCondition,
    ecg_profile,
    make_ecg,
    make_ecg_study,
)


def r_peaks(ecg: np.ndarray, fs: float) -> np.ndarray:
    """R peak indices: 5-30 Hz band-pass (removes wander and T waves), then scipy peaks."""
    band = sosfiltfilt(butter(2, [5, 30], "bandpass", fs=fs, output="sos"), ecg)
    peaks, _ = find_peaks(band, distance=int(0.25 * fs), height=0.4 * np.percentile(band, 99))
    return peaks


@pytest.mark.parametrize(
    ("heart_rate", "hrv_ms", "fs"), [(50, 60, 250), (72, 45, 256), (95, 25, 360), (130, 12, 500)]
)
def test_heart_rate_and_rr_variability_as_requested(heart_rate, hrv_ms, fs) -> None:
    ecg = make_ecg(180, fs, heart_rate, hrv_ms, noise_std=0.03, seed=3)
    assert ecg.shape == (180 * fs,) and ecg.dtype == np.float64
    rr = np.diff(r_peaks(ecg, fs)) / fs
    assert 60 / rr.mean() == pytest.approx(heart_rate, abs=2.0)
    assert 1000 * rr.std() == pytest.approx(hrv_ms, rel=0.25)
    # Beats are where they should be: as many as the duration allows.
    assert rr.size + 1 == pytest.approx(180 * heart_rate / 60, abs=3)


def test_beat_morphology_in_mv() -> None:
    fs = 500
    ecg = make_ecg(60, fs, 60, 0.0, noise_std=0.0, seed=0, baseline_wander_mv=0.0)
    peaks = r_peaks(ecg, fs)[1:-1]
    beats = np.stack([ecg[p - fs // 2 : p + fs // 2] for p in peaks])
    mean_beat = beats.mean(axis=0)
    t = (np.arange(fs) - fs // 2) / fs
    assert mean_beat[fs // 2] == pytest.approx(1.2, abs=0.1)  # R about 1.2 mV
    t_wave = (t > 0.15) & (t < 0.45)
    assert t[t_wave][np.argmax(mean_beat[t_wave])] == pytest.approx(0.28, abs=0.02)
    p_wave = (t > -0.3) & (t < -0.08)
    assert t[p_wave][np.argmax(mean_beat[p_wave])] == pytest.approx(-0.17, abs=0.02)
    assert mean_beat[(t > -0.06) & (t < 0.06)].min() < -0.2  # S wave below the baseline


def test_t_wave_and_qrs_scales_change_only_their_waves() -> None:
    kwargs = dict(duration_s=30, fs=256, heart_rate_bpm=70, hrv_std_ms=30, noise_std=0.0, seed=5)
    plain = make_ecg(**kwargs, baseline_wander_mv=0.0)
    flat_t = make_ecg(**kwargs, baseline_wander_mv=0.0, t_scale=0.5)
    small_qrs = make_ecg(**kwargs, baseline_wander_mv=0.0, qrs_scale=0.8)
    peaks = r_peaks(plain, 256)
    np.testing.assert_array_equal(r_peaks(flat_t, 256), peaks)  # same beats
    # At the R peaks only QRS counts; 0.26 s later (QT at 70 bpm) only the T wave.
    np.testing.assert_allclose(flat_t[peaks], plain[peaks], atol=0.01)
    assert np.median(small_qrs[peaks] / plain[peaks]) == pytest.approx(0.8, abs=0.01)
    t_peaks = peaks[peaks + 66 < plain.size] + 66
    assert np.median(flat_t[t_peaks] / plain[t_peaks]) == pytest.approx(0.5, abs=0.03)
    np.testing.assert_allclose(small_qrs[t_peaks], plain[t_peaks], atol=0.01)


def test_same_seed_same_signal() -> None:
    a = make_ecg(20, 256, 75, 40, 0.02, seed=11)
    np.testing.assert_array_equal(a, make_ecg(20, 256, 75, 40, 0.02, seed=11))
    assert not np.allclose(a, make_ecg(20, 256, 75, 40, 0.02, seed=12))


def test_invalid_conditions_are_refused() -> None:
    with pytest.raises(ValueError, match="too large"):
        EcgCondition(heart_rate_bpm=150, hrv_std_ms=120)
    with pytest.raises(ValueError, match="heart_rate_bpm"):
        EcgCondition(heart_rate_bpm=300)
    with pytest.raises(ValueError, match="start at 0 s"):
        ecg_profile(10, 100, [(1.0, EcgCondition())])


@pytest.fixture(scope="module")
def study():
    start = time.perf_counter()
    recordings = make_ecg_study(n_subjects=6, minutes_per_condition=(2.0, 1.0, 1.0))
    return recordings, time.perf_counter() - start


def test_study_layout_and_speed(study) -> None:
    recordings, seconds = study
    assert seconds < 2.0  # 6 subjects x 4 min at 256 Hz
    assert [r.subject for r in recordings] == [f"synth0{i}" for i in range(1, 7)]
    orders = set()
    for rec in recordings:
        assert rec.fs == 256.0 and rec.signal.size == 4 * 60 * 256
        assert np.bincount(rec.labels).tolist() == [2 * 60 * 256, 60 * 256, 60 * 256]
        assert rec.label_names == {0: "baseline", 1: "stress", 2: "amusement"}
        # Labels come in three contiguous blocks, baseline first.
        changes = np.flatnonzero(np.diff(rec.labels)) + 1
        assert changes.tolist() == [2 * 60 * 256, 3 * 60 * 256] and rec.labels[0] == 0
        orders.add(int(rec.labels[-1]))
    assert orders == {1, 2}  # stress is sometimes second, sometimes last


def _block_stats(rec, code: int) -> tuple[float, float]:
    """Heart rate (bpm) and RR standard deviation (ms) within one block, away from its edges."""
    peaks = r_peaks(rec.signal, rec.fs)
    inside = np.flatnonzero(rec.labels == code)
    start, end = inside[0] + 10 * rec.fs, inside[-1] - 2 * rec.fs
    block = peaks[(peaks >= start) & (peaks <= end)]
    rr = np.diff(block) / rec.fs
    return 60 / rr.mean(), 1000 * rr.std()


def test_stress_raises_heart_rate_and_lowers_variability(study) -> None:
    recordings, _ = study
    resting = []
    for rec in recordings:
        base_hr, base_sd = _block_stats(rec, 0)
        stress_hr, stress_sd = _block_stats(rec, 1)
        fun_hr, fun_sd = _block_stats(rec, 2)
        assert stress_hr > base_hr + 8, rec.subject
        assert stress_sd < 0.8 * base_sd, rec.subject
        assert abs(fun_hr - base_hr) < 8, rec.subject
        assert fun_sd > stress_sd, rec.subject
        resting.append(base_hr)
    assert min(resting) >= 55 and max(resting) <= 90
    assert np.ptp(resting) > 5  # subjects differ


def test_study_is_deterministic(study) -> None:
    recordings, _ = study
    again = make_ecg_study(n_subjects=2, minutes_per_condition=(2.0, 1.0, 1.0))
    np.testing.assert_array_equal(again[1].signal, recordings[1].signal)
    other = make_ecg_study(n_subjects=1, minutes_per_condition=(0.5, 0.5, 0.5), seed=1)
    assert other[0].signal.size == int(1.5 * 60 * 256)
    assert not np.allclose(other[0].signal[:1000], recordings[0].signal[:1000])
