"""The config of the SONIC stress recognition from ECG spectrograms (Phukan et al. 2024) recipe;
every default is the paper's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

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
from medlite.data import recordings as rec
from medlite.data import spectrogram as spectra

WINDOWS_FILE = "windows.csv"
RECORDINGS_FILE = "recordings.csv"
FOLDS_FILE = "folds.csv"
LEAKAGE_FILE = "leakage.csv"


# -- configuration -----------------------------------------------------------------------------

class StressDataConfig(StrictModel):
    recordings: Path | list[rec.RecordingEntry] | None = Field(
        None, description="CSV manifest (path, format, subject, fs, channel, labels; only path "
        "is required), a folder of WESAD subject pickles (every *.pkl below it), or a list of "
        "such rows in the config.")
    label_scheme: Literal["wesad3", "wesad2", "drivedb3", "file"] = Field(
        "wesad3", description="wesad3: baseline, stress, amusement; wesad2: non-stress "
        "(baseline + amusement), stress; drivedb3: rest, highway, city (drivedb records, "
        "Healey and Picard's low, medium and high stress); file: the files' codes 0..C-1 "
        "named by class_names (drivedb records: 0 rest, 1 driving).")
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

    def names(self) -> list[str]:
        """Class names in code order for the label scheme."""
        return rec.scheme_class_names(self.label_scheme, self.class_names)

    def windows(self) -> rec.WindowSettings:
        return rec.WindowSettings(self.window_s, self.step_s, self.bandpass, self.low_hz,
                                  self.high_hz, self.flat_std, self.clip_fraction)


class StressSpectrogramConfig(StrictModel):
    image_size: int = Field(224, ge=16, description="Square image side in pixels.")
    nperseg: int | None = Field(None, ge=8, description="Segment length (default fs / 2).")
    noverlap: int | None = Field(None, ge=0, description="Default 7/8 of nperseg.")
    max_freq_hz: float | None = Field(50.0, gt=0)
    normalization: Literal[spectra.NORMALIZER_MODES] = Field(
        "global", description="global / per_frequency: statistics of each fold's training "
        "windows; window_zscore / window_minmax: each image on its own.")
    normalizer_max_windows: int = Field(2048, ge=1, description="Training windows drawn to "
                                        "fit the normaliser.")

    def params(self) -> spectra.SpectrogramParams:
        return spectra.SpectrogramParams(size=(self.image_size, self.image_size),
                                         nperseg=self.nperseg, noverlap=self.noverlap,
                                         max_freq_hz=self.max_freq_hz)


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

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        if isinstance(data, dict) and "workers" in data:
            raise ValueError("workers: moved to executor.workers (executor: {name: processes, "
                             "workers: N} trains N fits at a time)")
        return data

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
    batch_size: int = Field(64, ge=1, description="Windows per forward pass in predict, "
                            "evaluate and when fits score their held-out windows.")


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
