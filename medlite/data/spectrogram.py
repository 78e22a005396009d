"""Spectrogram images of signal windows, their normalisation, and an on-disk cache.

SONIC (Phukan et al. 2024) turns each 5 s ECG window into a spectrogram
(``scipy.signal.spectrogram``), resizes it to 224 x 224, replicates it to 3 channels and
normalises it before an ImageNet CNN / ViT.

Spectrogram defaults here (scipy's own defaults are ``nperseg=256``, ``noverlap=nperseg // 8``,
a Tukey(0.25) window, constant detrend, one-sided PSD): ``nperseg = round(fs / 2)`` (0.5 s
segments, 2 Hz frequency bins, the same in seconds at any fs) with ``noverlap = 7/8 nperseg``
(a hop of 44 samples, 63 ms, at 700 Hz). A 5 s window at 700 Hz then gives 176 frequency
bins x 72 time columns before the frequency cut: fine enough in time to resolve single
heartbeats (QRS complexes show as broadband vertical stripes), while the 2 Hz bins separate
the heart-rate band from QRS energy. Frequencies above ``max_freq_hz`` (default 50 Hz, above
the 0.5-40 Hz band-pass of :func:`medlite.data.windows.bandpass`) are cut, leaving 26 bins,
so the image is not mostly filtered-out band. Power is in dB, ``10 log10(PSD + eps)``. Rows
of the image are frequencies ascending from 0 Hz (row 0), columns are time.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import signal as sp_signal

from medlite.runs import atomic_target

CACHE_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SpectrogramParams:
    """Everything that determines a spectrogram image besides the window and ``fs``.

    ``nperseg`` / ``noverlap`` None mean the module defaults (``round(fs / 2)`` and
    ``7 * nperseg // 8``); ``max_freq_hz`` None keeps every frequency up to Nyquist.
    """

    size: tuple[int, int] = (224, 224)
    nperseg: int | None = None
    noverlap: int | None = None
    max_freq_hz: float | None = 50.0
    log: bool = True
    eps: float = 1e-10

    @classmethod
    def from_any(cls, params: SpectrogramParams | Mapping | None) -> SpectrogramParams:
        if params is None:
            return cls()
        if isinstance(params, SpectrogramParams):
            return params
        values = dict(params)
        if "size" in values:
            values["size"] = tuple(int(v) for v in values["size"])
        return cls(**values)


def default_nperseg(fs: float) -> int:
    """Segment length used when ``nperseg`` is None: half a second of samples (at least 8)."""
    return max(8, int(round(fs / 2)))


def _segment_sizes(n_samples: int, fs: float, nperseg: int | None,
                   noverlap: int | None) -> tuple[int, int]:
    nperseg = default_nperseg(fs) if nperseg is None else int(nperseg)
    nperseg = min(nperseg, n_samples)
    noverlap = (7 * nperseg) // 8 if noverlap is None else int(noverlap)
    if not 0 <= noverlap < nperseg:
        raise ValueError(f"noverlap must be in [0, nperseg={nperseg}), got {noverlap}")
    return nperseg, noverlap


def log_spectrogram(window: np.ndarray, fs: float, nperseg: int | None = None,
                    noverlap: int | None = None, max_freq_hz: float | None = 50.0,
                    log: bool = True, eps: float = 1e-10
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The spectrogram matrix behind :func:`spectrogram_image`, before resizing.

    ``scipy.signal.spectrogram(window, fs=fs, nperseg=nperseg, noverlap=noverlap)`` with scipy's
    other defaults (Tukey(0.25) window, constant detrend, one-sided PSD in units^2/Hz), rows
    with frequency above ``max_freq_hz`` removed, and ``10 * log10(power + eps)`` when ``log``.
    ``nperseg`` is clipped to the window length.

    Args:
        window: ``(L,)`` or a batch ``(W, L)`` (transformed along the last axis).
        fs: sampling rate in Hz.

    Returns:
        ``freqs`` ``(F,)`` Hz, ``times`` ``(T,)`` s (segment centres), ``power`` ``(F, T)`` or
        ``(W, F, T)`` float64, in dB when ``log``.
    """
    window = np.asarray(window, dtype=np.float64)
    nperseg, noverlap = _segment_sizes(window.shape[-1], fs, nperseg, noverlap)
    freqs, times, power = sp_signal.spectrogram(window, fs=fs, nperseg=nperseg,
                                                noverlap=noverlap, axis=-1)
    if max_freq_hz is not None:
        keep = freqs <= max_freq_hz
        freqs, power = freqs[keep], power[..., keep, :]
    if log:
        power = 10.0 * np.log10(power + eps)
    return freqs, times, power


def spectrogram_images(windows: np.ndarray, fs: float, size: tuple[int, int] = (224, 224),
                       nperseg: int | None = None, noverlap: int | None = None,
                       max_freq_hz: float | None = 50.0, log: bool = True, eps: float = 1e-10,
                       channels: int = 3) -> np.ndarray:
    """Spectrogram images of a batch of windows.

    Each ``(F, T)`` matrix of :func:`log_spectrogram` is resized to ``size`` = (height, width)
    by bilinear interpolation with antialiasing (``torch.nn.functional.interpolate``,
    ``align_corners=False``) and repeated over ``channels`` identical channels (3 for ImageNet
    backbones; ``channels=1`` saves memory, the copies can be made later).

    Args:
        windows: ``(W, L)`` float.

    Returns:
        float32 ``(W, channels, H, W_img)``, not normalised (see :class:`SpectrogramNormalizer`).
    """
    windows = np.asarray(windows)
    if windows.ndim != 2:
        raise ValueError(f"windows must be (W, L), got shape {windows.shape}")
    _, _, power = log_spectrogram(windows, fs, nperseg, noverlap, max_freq_hz, log, eps)
    if power.shape[-2] == 0:
        raise ValueError(f"no frequency bin at or below max_freq_hz={max_freq_hz}")
    resized = F.interpolate(torch.from_numpy(power.astype(np.float32))[:, None],
                            size=tuple(size), mode="bilinear", align_corners=False,
                            antialias=True)
    return resized.expand(-1, channels, -1, -1).contiguous().numpy()


def spectrogram_image(window: np.ndarray, fs: float, size: tuple[int, int] = (224, 224),
                      nperseg: int | None = None, noverlap: int | None = None,
                      max_freq_hz: float | None = 50.0, log: bool = True,
                      eps: float = 1e-10) -> np.ndarray:
    """Spectrogram image of one window ``(L,)``: float32 ``(3, H, W)`` (see
    :func:`spectrogram_images` and the module docstring for the defaults)."""
    window = np.asarray(window)
    if window.ndim != 1:
        raise ValueError(f"window must be 1-D (L,), got shape {window.shape}")
    return spectrogram_images(window[None], fs, size, nperseg, noverlap, max_freq_hz, log,
                              eps)[0]


NORMALIZER_MODES = ("global", "per_frequency", "window_zscore", "window_minmax")


class SpectrogramNormalizer:
    """Normalise spectrogram images ``(N, C, H, W)`` (or ``(N, H, W)``).

    Modes:
        ``global``: subtract the mean and divide by the std of every pixel of the training
        images (one scalar each). ``per_frequency``: one mean/std per image row (frequency bin),
        over training images, channels and time columns; this removes the ECG's steep fall of
        power with frequency. ``window_zscore`` / ``window_minmax``: each image on its own
        (zero mean and unit std, or scaled to [0, 1]); nothing is fitted.

    Why fit on training windows only: the statistics are part of the model. Computing them on
    test windows lets the test set shape the input scaling the model was trained with (and
    with overlapping windows, test samples also sit in training windows), which inflates
    cross-validated scores. Fit once per fold on that fold's training windows, then transform
    training, validation and test windows with the same statistics.
    """

    def __init__(self, mode: str = "global", eps: float = 1e-6):
        if mode not in NORMALIZER_MODES:
            raise ValueError(f"mode must be one of {NORMALIZER_MODES}, got {mode!r}")
        self.mode = mode
        self.eps = eps
        self.mean: np.ndarray | None = None
        self.std: np.ndarray | None = None

    @property
    def needs_fit(self) -> bool:
        return self.mode in ("global", "per_frequency")

    def fit(self, images: np.ndarray, chunk: int = 256) -> SpectrogramNormalizer:
        """Statistics of ``images`` (training windows only), accumulated ``chunk`` images at a
        time in float64 around a shift, so float16 / memory-mapped stacks need no full copy."""
        if not self.needs_fit:
            return self
        images = np.asarray(images)  # no copy for arrays, memory maps and broadcast views
        if images.ndim not in (3, 4) or len(images) == 0:
            raise ValueError(f"images must be a non-empty (N, [C,] H, W), got {images.shape}")
        height_axis = images.ndim - 2
        # Reduce over every axis except the frequency rows (per_frequency) or over all.
        axes = tuple(a for a in range(images.ndim) if a != height_axis or self.mode == "global")
        shift = np.asarray(images[:1], dtype=np.float64).mean(axis=axes, keepdims=True)
        total = np.zeros_like(shift)
        total_sq = np.zeros_like(shift)
        count = 0
        for begin in range(0, len(images), chunk):
            block = np.asarray(images[begin:begin + chunk], dtype=np.float64) - shift
            total += block.sum(axis=axes, keepdims=True)
            total_sq += (block**2).sum(axis=axes, keepdims=True)
            count += block.size // total.size
        mean_shifted = total / count
        variance = np.maximum(total_sq / count - mean_shifted**2, 0.0)
        # Stored without the batch axis: (1, H, 1) / (H, 1) per frequency, () globally.
        self.mean = np.squeeze(mean_shifted + shift, axis=0)
        self.std = np.squeeze(np.sqrt(variance), axis=0)
        if self.mode == "global":
            self.mean, self.std = self.mean.reshape(()), self.std.reshape(())
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of ``images`` (same shape)."""
        images = np.asarray(images, dtype=np.float32)
        if self.mode == "window_zscore":
            axes = tuple(range(1, images.ndim))
            mean = images.mean(axis=axes, keepdims=True)
            std = images.std(axis=axes, keepdims=True)
            return (images - mean) / (std + self.eps)
        if self.mode == "window_minmax":
            axes = tuple(range(1, images.ndim))
            low = images.min(axis=axes, keepdims=True)
            high = images.max(axis=axes, keepdims=True)
            return (images - low) / np.maximum(high - low, self.eps)
        if self.mean is None or self.std is None:
            raise RuntimeError(f"SpectrogramNormalizer(mode={self.mode!r}) is not fitted")
        mean = self.mean.astype(np.float32)
        std = self.std.astype(np.float32)
        if self.mode == "per_frequency":
            # Stored as (C or 1, H, 1) for 4-D fits or (H, 1) for 3-D ones; broadcast by rows.
            mean = mean.reshape(-1, 1) if images.ndim == 3 else mean.reshape(1, -1, 1)
            std = std.reshape(-1, 1) if images.ndim == 3 else std.reshape(1, -1, 1)
        return (images - mean) / (std + self.eps)

    def fit_transform(self, images: np.ndarray) -> np.ndarray:
        return self.fit(images).transform(images)

    def to_dict(self) -> dict:
        """JSON-ready state, to store beside a trained model."""
        return {
            "mode": self.mode,
            "eps": self.eps,
            "mean": None if self.mean is None else np.ravel(self.mean).tolist(),
            "std": None if self.std is None else np.ravel(self.std).tolist(),
        }

    @classmethod
    def from_dict(cls, state: Mapping) -> SpectrogramNormalizer:
        normalizer = cls(state["mode"], state.get("eps", 1e-6))
        if state.get("mean") is not None:
            mean = np.asarray(state["mean"], dtype=np.float64)
            std = np.asarray(state["std"], dtype=np.float64)
            if normalizer.mode == "global":
                mean, std = mean.reshape(()), std.reshape(())
            normalizer.mean, normalizer.std = mean, std
        return normalizer


class SpectrogramCache:
    """Spectrogram image stacks cached on disk as ``.npy``, one file per stack of windows.

    The key is a SHA-256 of the windows' bytes (as float32, with their shape), ``fs``, the
    :class:`SpectrogramParams`, the stored dtype and a format version, so any change to the
    signal processing or the parameters misses and recomputes; stale files are never reused.
    Files hold one channel ``(W, H, W_img)``: the 3 channels are identical, so
    :meth:`images_for` returns a read-only ``(W, 3, H, W_img)`` broadcast view of it instead of
    storing (or holding in memory) three copies. ``hits`` / ``misses`` count lookups.
    """

    def __init__(self, cache_dir: str | Path):
        self.cache_dir = Path(cache_dir)
        self.hits = 0
        self.misses = 0

    def key(self, windows: np.ndarray, fs: float, params: SpectrogramParams | Mapping | None,
            dtype: np.dtype | type = np.float16) -> str:
        """Hex digest identifying the image stack of ``windows`` under ``params``."""
        params = SpectrogramParams.from_any(params)
        windows = np.ascontiguousarray(windows, dtype=np.float32)
        digest = hashlib.sha256()
        header = {"version": CACHE_FORMAT_VERSION, "shape": list(windows.shape),
                  "fs": float(fs), "params": asdict(params), "dtype": np.dtype(dtype).str}
        digest.update(json.dumps(header, sort_keys=True).encode())
        digest.update(windows.tobytes())
        return digest.hexdigest()

    def path_for(self, key: str) -> Path:
        return self.cache_dir / f"spectrogram-{key[:32]}.npy"

    def images_for(self, windows: np.ndarray, fs: float,
                   params: SpectrogramParams | Mapping | None = None,
                   dtype: np.dtype | type = np.float16, channels: int = 3,
                   mmap: bool = True) -> np.ndarray:
        """Images of ``windows`` ``(W, L)``: from the cache when present, else computed with
        :func:`spectrogram_images` and stored (atomically, so a crash leaves no partial file).

        Returns:
            ``(W, channels, H, W_img)`` of ``dtype`` (float16 halves disk and memory; dB values
            keep about 3 significant digits), a read-only view: copy a batch before modifying
            it. With ``mmap`` the file is memory-mapped rather than read into memory.
        """
        params = SpectrogramParams.from_any(params)
        path = self.path_for(self.key(windows, fs, params, dtype))
        if path.is_file():
            self.hits += 1
            stack = np.load(path, mmap_mode="r" if mmap else None)
        else:
            self.misses += 1
            stack = spectrogram_images(np.asarray(windows), fs, channels=1,
                                       **asdict(params))[:, 0].astype(dtype)
            with atomic_target(path) as tmp, open(tmp, "wb") as handle:
                np.save(handle, stack)
        return np.broadcast_to(stack[:, None], (stack.shape[0], channels, *stack.shape[1:]))
