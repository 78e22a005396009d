"""Synthetic ECG with controllable heart rate, heart rate variability and morphology.

``medlite demo stress`` and the tests need ECG with known stress labels and no data
files. Each beat is a sum of five Gaussian waves (P, Q, R, S, T) placed around its R peak,
as in McSharry et al.'s ECGSYN (IEEE TBME 2003), but written directly in time rather than
integrated as an ODE, so that a whole recording is a few vectorised numpy operations:

- RR intervals: mean ``60 / heart_rate_bpm`` plus a unit-variance modulation scaled to
  ``hrv_std_ms``. The modulation mixes ECGSYN's two spectral peaks: a Mayer-wave (LF)
  component, Gaussian band-limited noise around 0.1 Hz, and respiratory sinus arrhythmia
  (HF), a sinusoid at the breathing rate; ``lf_hf_ratio`` is their power ratio.
- Morphology: QRS widths fixed; the P wave and the T wave move with the RR interval the
  way PR and QT do (QT ~ sqrt(RR), Bazett). Breathing modulates R amplitude by a few per
  cent, and each beat's amplitudes jitter a little.
- Baseline wander (breathing plus slow drift) and white noise.

:func:`make_ecg_study` strings baseline, stress and amusement blocks together
per subject. Stress raises heart rate, lowers variability and shifts sympatho-vagal
balance (more LF, faster breathing), flattens the T wave a little and adds noise from
muscle activity; amusement differs mildly from baseline. All randomness comes from the
seed, so a seed fixes every sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medlite.data.ecg import WESAD_LABEL_NAMES, Recording

__all__ = ["EcgCondition", "ecg_profile", "make_ecg", "make_ecg_study"]

# Wave order P, Q, R, S, T: amplitude (mV), centre relative to the R peak at RR = 1 s (s),
# width (standard deviation, s). Amplitudes and timing of a lead II ECG at 60 bpm.
_WAVE_AMPLITUDE_MV = np.array([0.15, -0.12, 1.2, -0.3, 0.3])
_WAVE_CENTRE_S = np.array([-0.17, -0.035, 0.0, 0.035, 0.28])
_WAVE_WIDTH_S = np.array([0.025, 0.010, 0.011, 0.012, 0.055])
# How each centre moves with RR: offset = centre * RR ** exponent (PR barely, QT as sqrt).
_WAVE_RR_EXPONENT = np.array([0.25, 0.0, 0.0, 0.0, 0.5])
# Samples this far around each R peak receive its waves (T tail included at 40 bpm).
_BEAT_SPAN_S = (-0.4, 0.75)
_GRID_HZ = 4.0  # rate of the RR modulation process (RR series are band-limited below 0.5 Hz)


@dataclass(frozen=True)
class EcgCondition:
    """Physiology of one stretch of synthetic ECG.

    Attributes:
        heart_rate_bpm: mean heart rate.
        hrv_std_ms: standard deviation of RR intervals (SDNN) in ms.
        noise_std: white noise standard deviation in mV.
        respiration_hz: breathing rate (HF peak of the RR spectrum, baseline wander).
        lf_hf_ratio: power of the 0.1 Hz (LF) modulation over the respiratory (HF) one.
        qrs_scale: factor on Q, R and S amplitudes.
        t_scale: factor on the T wave amplitude.
        baseline_wander_mv: amplitude of baseline wander.
    """

    heart_rate_bpm: float = 70.0
    hrv_std_ms: float = 50.0
    noise_std: float = 0.02
    respiration_hz: float = 0.25
    lf_hf_ratio: float = 1.0
    qrs_scale: float = 1.0
    t_scale: float = 1.0
    baseline_wander_mv: float = 0.08

    def __post_init__(self) -> None:
        if not 20 <= self.heart_rate_bpm <= 220:
            raise ValueError(f"heart_rate_bpm must be in 20-220, got {self.heart_rate_bpm}")
        if self.hrv_std_ms < 0 or self.noise_std < 0 or self.baseline_wander_mv < 0:
            raise ValueError("hrv_std_ms, noise_std and baseline_wander_mv must be >= 0")
        # RR must stay positive and beats distinct: three standard deviations below the mean.
        if 3 * self.hrv_std_ms / 1000 >= 0.8 * 60 / self.heart_rate_bpm:
            raise ValueError(
                f"hrv_std_ms={self.hrv_std_ms} is too large for {self.heart_rate_bpm} bpm"
            )
        if not 0.05 <= self.respiration_hz <= 1.0 or self.lf_hf_ratio < 0:
            raise ValueError("respiration_hz must be in 0.05-1 Hz and lf_hf_ratio >= 0")


def _as_rng(seed: int | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _unit(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation (unchanged when constant)."""
    std = x.std()
    return (x - x.mean()) / std if std > 0 else x - x.mean()


def _band_noise(n: int, rate_hz: float, centre_hz: float, width_hz: float, rng) -> np.ndarray:
    """(n,) Gaussian noise with a Gaussian power spectrum around ``centre_hz``, unit std."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / rate_hz)
    spectrum *= np.exp(-((freqs - centre_hz) ** 2) / (4 * width_hz**2))
    return _unit(np.fft.irfft(spectrum, n))


def ecg_profile(
    duration_s: float,
    fs: float,
    segments: Sequence[tuple[float, EcgCondition]],
    seed: int | np.random.Generator = 0,
    *,
    morphology_scale: Sequence[float] = (1.0, 1.0, 1.0, 1.0, 1.0),
) -> np.ndarray:
    """Synthetic ECG whose physiology changes over time.

    Args:
        duration_s: length in seconds.
        fs: sampling rate in Hz.
        segments: (start time in s, condition) in ascending order; the first starts at 0.
            Heart rate and variability change smoothly over about 4 s at each start;
            morphology and noise switch at the first beat after it.
        seed: integer seed or generator.
        morphology_scale: factors on the P, Q, R, S, T amplitudes (a subject's own ECG).

    Returns:
        (round(duration_s * fs),) float64 ECG in mV.
    """
    if duration_s <= 0 or fs <= 0:
        raise ValueError("duration_s and fs must be positive")
    starts = np.array([start for start, _ in segments], dtype=float)
    if not segments or starts[0] != 0 or np.any(np.diff(starts) <= 0):
        raise ValueError("segments must start at 0 s and be in ascending order")
    conditions = [condition for _, condition in segments]
    rng = _as_rng(seed)
    n = int(round(duration_s * fs))

    # Physiology on a 4 Hz grid, one extra second either side for the first and last beats.
    grid_t = np.arange(-2.0, duration_s + 2.0, 1.0 / _GRID_HZ)
    segment_of = np.clip(np.searchsorted(starts, grid_t, side="right") - 1, 0, None)

    def track(name: str, smooth: bool = True) -> np.ndarray:
        values = np.array([getattr(c, name) for c in conditions])[segment_of]
        if not smooth:
            return values
        kernel = np.ones(int(4 * _GRID_HZ)) / int(4 * _GRID_HZ)
        return np.convolve(np.pad(values, kernel.size, mode="edge"), kernel, "same")[
            kernel.size : -kernel.size
        ]

    mean_rr = 60.0 / track("heart_rate_bpm")
    breathing_phase = 2 * np.pi * np.cumsum(track("respiration_hz")) / _GRID_HZ
    breathing_phase += rng.uniform(0, 2 * np.pi)
    lf_share = track("lf_hf_ratio") / (1 + track("lf_hf_ratio"))
    # Slight breath-to-breath depth changes keep RSA from being a pure tone.
    depth = 1 + 0.2 * _band_noise(grid_t.size, _GRID_HZ, 0.02, 0.02, rng)
    modulation = np.sqrt(lf_share) * _band_noise(grid_t.size, _GRID_HZ, 0.1, 0.02, rng)
    modulation += np.sqrt(1 - lf_share) * np.sqrt(2) * depth * np.sin(breathing_phase)
    # The floor only matters beyond 4 standard deviations; it keeps beats apart.
    rr_track = np.maximum(mean_rr + track("hrv_std_ms") / 1000 * modulation, 0.3 * mean_rr)

    # Beats: each RR interval is the track's value at the beat that opens it.
    peaks = [grid_t[0] + rng.uniform(0, 1) * rr_track[0]]
    while peaks[-1] < duration_s + 1.0:
        peaks.append(peaks[-1] + float(np.interp(peaks[-1], grid_t, rr_track)))
    r_peaks = np.array(peaks)
    rr = np.diff(r_peaks, append=r_peaks[-1] + np.interp(r_peaks[-1], grid_t, rr_track))

    # Per-beat wave amplitudes, centres and widths: (beats, 5).
    beat_condition = [
        conditions[i] for i in np.clip(np.searchsorted(starts, r_peaks, side="right") - 1, 0, None)
    ]
    condition_scale = np.array(
        [[1.0, c.qrs_scale, c.qrs_scale, c.qrs_scale, c.t_scale] for c in beat_condition]
    )
    breathing_at_beat = np.sin(np.interp(r_peaks, grid_t, breathing_phase))
    amplitude = _WAVE_AMPLITUDE_MV * np.asarray(morphology_scale) * condition_scale
    amplitude = amplitude * (1 + rng.normal(0, 0.03, amplitude.shape))
    amplitude[:, 2] *= 1 + 0.05 * breathing_at_beat
    centre = _WAVE_CENTRE_S * np.clip(rr, 0.25, 2.0)[:, None] ** _WAVE_RR_EXPONENT
    width = _WAVE_WIDTH_S * np.ones_like(centre)
    width[:, 4] *= np.sqrt(np.clip(rr, 0.25, 2.0))  # T widens with QT

    # Each beat paints the samples within its span: (beats, span) index and time grids,
    # a few hundred beats at a time to bound memory on long recordings.
    offsets = np.arange(int(np.floor(_BEAT_SPAN_S[0] * fs)), int(np.ceil(_BEAT_SPAN_S[1] * fs)))
    ecg = np.zeros(n)
    for chunk in np.array_split(np.arange(r_peaks.size), max(1, r_peaks.size // 256)):
        index = np.floor(r_peaks[chunk] * fs).astype(np.int64)[:, None] + offsets
        dt = index / fs - r_peaks[chunk, None]
        waves = amplitude[chunk, None, :] * np.exp(
            -((dt[:, :, None] - centre[chunk, None, :]) ** 2) / (2 * width[chunk, None, :] ** 2)
        )
        inside = (index >= 0) & (index < n)
        ecg += np.bincount(index[inside], weights=waves.sum(axis=2)[inside], minlength=n)

    t = np.arange(n) / fs
    wander = np.interp(
        t, grid_t, np.sin(breathing_phase) + _band_noise(grid_t.size, _GRID_HZ, 0.0, 0.03, rng)
    )
    ecg += np.interp(t, grid_t, track("baseline_wander_mv", smooth=False)) * wander / 2
    ecg += np.interp(t, grid_t, track("noise_std", smooth=False)) * rng.standard_normal(n)
    return ecg


def make_ecg(
    duration_s: float,
    fs: float,
    heart_rate_bpm: float = 70.0,
    hrv_std_ms: float = 50.0,
    noise_std: float = 0.02,
    seed: int | np.random.Generator = 0,
    **condition: float,
) -> np.ndarray:
    """Synthetic ECG at a steady physiological state.

    Args:
        duration_s: length in seconds.
        fs: sampling rate in Hz.
        heart_rate_bpm: mean heart rate.
        hrv_std_ms: standard deviation of the RR intervals in ms.
        noise_std: white noise standard deviation in mV.
        seed: integer seed or generator.
        **condition: further :class:`EcgCondition` fields (respiration_hz, lf_hf_ratio,
            qrs_scale, t_scale, baseline_wander_mv).

    Returns:
        (round(duration_s * fs),) float64 ECG in mV, R peaks about 1.2 mV.
    """
    state = EcgCondition(heart_rate_bpm, hrv_std_ms, noise_std, **condition)
    return ecg_profile(duration_s, fs, [(0.0, state)], seed)


# Per-condition changes from a subject's baseline (ranges drawn per subject): stress is
# sympathetic activation (faster heart, less variability, more LF, faster breathing,
# flatter T, muscle noise); amusement is close to baseline.
_CONDITION_CODES = {"baseline": 0, "stress": 1, "amusement": 2}


def _subject_conditions(rng: np.random.Generator) -> dict[str, EcgCondition]:
    rest_hr = float(np.clip(rng.normal(70, 7), 55, 88))
    rest_hrv = float(rng.uniform(40, 75))
    rest_noise = float(rng.uniform(0.01, 0.03))
    rest_breath = float(rng.uniform(0.2, 0.3))
    baseline = EcgCondition(
        heart_rate_bpm=rest_hr,
        hrv_std_ms=rest_hrv,
        noise_std=rest_noise,
        respiration_hz=rest_breath,
        lf_hf_ratio=float(rng.uniform(0.6, 1.2)),
    )
    stress = EcgCondition(
        heart_rate_bpm=rest_hr + float(rng.uniform(12, 25)),
        hrv_std_ms=rest_hrv * float(rng.uniform(0.35, 0.55)),
        noise_std=rest_noise * float(rng.uniform(1.5, 2.5)),
        respiration_hz=rest_breath * float(rng.uniform(1.2, 1.5)),
        lf_hf_ratio=float(rng.uniform(2.0, 4.0)),
        qrs_scale=float(rng.uniform(0.85, 0.95)),
        t_scale=float(rng.uniform(0.65, 0.85)),
        baseline_wander_mv=0.12,
    )
    amusement = EcgCondition(
        heart_rate_bpm=rest_hr + float(rng.uniform(-2, 5)),
        hrv_std_ms=rest_hrv * float(rng.uniform(0.9, 1.15)),
        noise_std=rest_noise * float(rng.uniform(1.0, 1.4)),
        respiration_hz=rest_breath * float(rng.uniform(0.9, 1.2)),
        lf_hf_ratio=float(rng.uniform(0.8, 1.5)),
        t_scale=float(rng.uniform(0.95, 1.05)),
    )
    return {"baseline": baseline, "stress": stress, "amusement": amusement}


def make_ecg_study(
    n_subjects: int = 6,
    minutes_per_condition: Sequence[float] = (2.0, 1.0, 1.0),
    fs: float = 256.0,
    seed: int = 0,
) -> list[Recording]:
    """A small WESAD-like stress study: baseline, stress and amusement ECG per subject.

    Each subject has their own resting heart rate (about 70 +- 7 bpm), variability (SDNN
    40-75 ms), breathing rate, noise level and beat shape. Blocks: baseline first, then
    stress and amusement in an order drawn per subject (WESAD counterbalanced them).

    Args:
        n_subjects: number of subjects ("synth01", "synth02", ...).
        minutes_per_condition: minutes of baseline, stress and amusement.
        fs: sampling rate in Hz.
        seed: fixes every sample of every subject.

    Returns:
        One :class:`Recording` per subject with labels per sample: 0 baseline, 1 stress,
        2 amusement (the codes of :data:`~medlite.data.ecg.WESAD_LABELS`).
    """
    if len(minutes_per_condition) != 3 or min(minutes_per_condition) <= 0:
        raise ValueError(
            "minutes_per_condition must be 3 positive numbers (baseline, stress, amusement)"
        )
    recordings = []
    for child, number in zip(
        np.random.SeedSequence(seed).spawn(n_subjects), range(1, n_subjects + 1), strict=True
    ):
        rng = np.random.default_rng(child)
        conditions = _subject_conditions(rng)
        minutes = dict(zip(_CONDITION_CODES, minutes_per_condition, strict=True))
        order = ["baseline", *rng.permutation(["stress", "amusement"]).tolist()]
        block_starts = np.concatenate([[0.0], np.cumsum([60 * minutes[c] for c in order])])
        n = int(round(block_starts[-1] * fs))
        labels = np.empty(n, dtype=np.int64)
        for name, start, end in zip(order, block_starts[:-1], block_starts[1:], strict=True):
            labels[int(round(start * fs)) : int(round(end * fs))] = _CONDITION_CODES[name]
        morphology = rng.uniform(0.7, 1.3, 5)
        ecg = ecg_profile(
            block_starts[-1],
            fs,
            [(float(s), conditions[c]) for s, c in zip(block_starts[:-1], order, strict=True)],
            rng,
            morphology_scale=morphology,
        )
        subject = f"synth{number:02d}"
        recordings.append(
            Recording(
                signal=ecg,
                fs=fs,
                labels=labels,
                subject=subject,
                source=f"make_ecg_study(seed={seed})/{subject}",
                label_names=dict(WESAD_LABEL_NAMES),
            )
        )
    return recordings
