"""Spectrogram images, their normalisation and the on-disk cache."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal as sp_signal

from medlite.data.spectrogram import (
    SpectrogramCache,
    SpectrogramNormalizer,
    SpectrogramParams,
    log_spectrogram,
    spectrogram_image,
    spectrogram_images,
)


def _windows(n: int = 4, fs: float = 100.0, seconds: float = 5.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(fs * seconds)) / fs
    tones = rng.uniform(3, 30, size=(n, 1))
    return np.sin(2 * np.pi * tones * t) + 0.1 * rng.standard_normal((n, t.size))


def test_log_spectrogram_equals_scipy_called_directly():
    fs = 700.0
    window = _windows(1, fs)[0]
    freqs, times, power_db = log_spectrogram(window, fs)
    # Defaults: nperseg = fs / 2 = 350, noverlap = 7 * 350 // 8 = 306, cut at 50 Hz (2 Hz bins).
    ref_f, ref_t, ref_p = sp_signal.spectrogram(window, fs=fs, nperseg=350, noverlap=306)
    keep = ref_f <= 50.0
    np.testing.assert_array_equal(freqs, ref_f[keep])
    np.testing.assert_array_equal(times, ref_t)
    np.testing.assert_array_equal(power_db, 10 * np.log10(ref_p[keep] + 1e-10))
    # 0..50 Hz in 2 Hz steps: 26 rows; (3500 - 350) // 44 + 1 = 72 segments.
    assert power_db.shape == (26, 72)
    # Explicit parameters, no cut, linear power.
    _, _, power = log_spectrogram(window, fs, nperseg=256, noverlap=128, max_freq_hz=None,
                                  log=False)
    np.testing.assert_array_equal(
        power, sp_signal.spectrogram(window, fs=fs, nperseg=256, noverlap=128)[2])


def test_spectrogram_image_is_the_resized_matrix_on_three_channels():
    fs = 100.0
    window = _windows(1, fs)[0]
    freqs, times, power_db = log_spectrogram(window, fs)
    # Resizing to the matrix's own size is the identity: rows are frequencies from 0 Hz.
    same = spectrogram_image(window, fs, size=power_db.shape)
    assert same.shape == (3, *power_db.shape) and same.dtype == np.float32
    np.testing.assert_allclose(same[0], power_db.astype(np.float32), rtol=0, atol=1e-4)
    image = spectrogram_image(window, fs, size=(40, 48))
    assert image.shape == (3, 40, 48) and image.dtype == np.float32
    np.testing.assert_array_equal(image[0], image[1])
    np.testing.assert_array_equal(image[0], image[2])
    # The tone's frequency is the brightest row, at the same relative height.
    tone_row = np.argmax(power_db.mean(axis=1)) / (len(freqs) - 1)
    assert abs(np.argmax(image[0].mean(axis=1)) / 39 - tone_row) < 0.1


def test_spectrogram_images_batch_matches_single_windows():
    fs = 100.0
    windows = _windows(3, fs)
    batch = spectrogram_images(windows, fs, size=(32, 32))
    assert batch.shape == (3, 3, 32, 32)
    for i, window in enumerate(windows):
        np.testing.assert_allclose(batch[i], spectrogram_image(window, fs, size=(32, 32)),
                                   rtol=0, atol=1e-5)


def test_global_normaliser_uses_training_statistics_only():
    rng = np.random.default_rng(1)
    train = rng.normal(-40, 12, size=(10, 3, 8, 8)).astype(np.float32)
    test = rng.normal(5, 1, size=(4, 3, 8, 8)).astype(np.float32)
    normalizer = SpectrogramNormalizer("global").fit(train)
    assert normalizer.mean == pytest.approx(train.astype(np.float64).mean(), abs=1e-9)
    assert normalizer.std == pytest.approx(train.astype(np.float64).std(), abs=1e-9)
    scaled_train = normalizer.transform(train)
    assert scaled_train.mean() == pytest.approx(0, abs=1e-5)
    assert scaled_train.std() == pytest.approx(1, abs=1e-4)
    expected_test = (test - train.astype(np.float64).mean()) / train.astype(np.float64).std()
    np.testing.assert_allclose(normalizer.transform(test), expected_test, rtol=1e-5, atol=1e-5)
    # Chunked accumulation over a float16 stack gives the same statistics.
    half = train.astype(np.float16)
    chunked = SpectrogramNormalizer("global").fit(half, chunk=3)
    assert chunked.mean == pytest.approx(half.astype(np.float64).mean(), abs=1e-9)
    assert chunked.std == pytest.approx(half.astype(np.float64).std(), abs=1e-9)


def test_per_frequency_normaliser_and_round_trip():
    rng = np.random.default_rng(2)
    rows = np.linspace(-60, 0, 6)[None, None, :, None]  # power falls with frequency
    train = (rows + rng.normal(0, 3, size=(7, 3, 6, 5))).astype(np.float32)
    normalizer = SpectrogramNormalizer("per_frequency").fit(train, chunk=2)
    np.testing.assert_allclose(normalizer.mean.ravel(),
                               train.astype(np.float64).mean(axis=(0, 1, 3)), atol=1e-9)
    scaled = normalizer.transform(train)
    np.testing.assert_allclose(scaled.mean(axis=(0, 1, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(scaled.std(axis=(0, 1, 3)), 1, atol=1e-4)
    restored = SpectrogramNormalizer.from_dict(normalizer.to_dict())
    np.testing.assert_array_equal(restored.transform(train), scaled)
    # Single-channel stacks (N, H, W) work the same way.
    single = SpectrogramNormalizer("per_frequency").fit(train[:, 0])
    np.testing.assert_allclose(single.transform(train[:, 0]).mean(axis=(0, 2)), 0, atol=1e-5)
    with pytest.raises(RuntimeError, match="not fitted"):
        SpectrogramNormalizer("global").transform(train)


def test_per_window_normalisers():
    rng = np.random.default_rng(3)
    images = rng.normal(-20, 5, size=(3, 3, 6, 6)) * np.array([1, 2, 3])[:, None, None, None]
    zscored = SpectrogramNormalizer("window_zscore").fit(images).transform(images)
    np.testing.assert_allclose(zscored.mean(axis=(1, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(zscored.std(axis=(1, 2, 3)), 1, atol=1e-4)
    scaled = SpectrogramNormalizer("window_minmax").transform(images)
    np.testing.assert_allclose(scaled.min(axis=(1, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(scaled.max(axis=(1, 2, 3)), 1, atol=1e-6)


def test_cache_hits_misses_and_keys(tmp_path):
    fs = 100.0
    windows = _windows(3, fs)
    params = {"size": (24, 24), "max_freq_hz": 40.0}
    cache = SpectrogramCache(tmp_path / "cache")
    first = cache.images_for(windows, fs, params)
    assert (cache.hits, cache.misses) == (0, 1)
    assert first.shape == (3, 3, 24, 24) and first.dtype == np.float16
    assert not first.flags.writeable
    expected = spectrogram_images(windows, fs, size=(24, 24), max_freq_hz=40.0)
    np.testing.assert_allclose(first.astype(np.float32), expected, rtol=2e-3, atol=2e-2)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 1

    again = cache.images_for(windows, fs, SpectrogramParams(size=(24, 24), max_freq_hz=40.0))
    assert (cache.hits, cache.misses) == (1, 1)
    np.testing.assert_array_equal(again, first)
    # Another parameter, another window or another fs misses.
    cache.images_for(windows, fs, {"size": (24, 24), "max_freq_hz": 30.0})
    changed = windows.copy()
    changed[1, 7] += 0.5
    cache.images_for(changed, fs, params)
    cache.images_for(windows, 120.0, params)
    full = cache.images_for(windows, fs, params, dtype=np.float32, mmap=False)
    assert (cache.hits, cache.misses) == (1, 5)
    np.testing.assert_allclose(full, expected, rtol=0, atol=1e-6)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 5
