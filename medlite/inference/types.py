"""What a trained run takes and gives: one typed input and one typed output per kind of task.

Inputs name their source (a file) or carry the data itself (an array, a recording), so the
same predictor serves the command line, a notebook and the web service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from medlite.data.ecg import Recording


def _describe(value) -> str:
    return str(value) if isinstance(value, str | Path) else f"<{type(value).__name__}>"


@dataclass(frozen=True)
class ImageInput:
    """One image: a file path, or a uint8 ``(H, W, 3)`` array.

    ``name`` labels the outputs (default: the file stem)."""

    image: Path | np.ndarray
    name: str | None = None

    def load(self) -> np.ndarray:
        """uint8 ``(H, W, 3)`` RGB."""
        from medlite.data.io import read_image

        if isinstance(self.image, np.ndarray):
            return self.image
        return read_image(self.image)

    @property
    def source(self) -> str:
        return _describe(self.image)


@dataclass(frozen=True)
class SlideInput:
    """One whole-slide image file (SVS, NDPI, pyramidal TIFF...), read as the run's
    ``data.slides`` says; ``tiles``: its tiles already read (uint8 ``(h, w, 3)`` each);
    ``name``: the slide's own file name when ``path`` is a copy (an upload), which fixes
    its tile subsample."""

    path: Path
    tiles: Sequence[np.ndarray] | None = None
    name: str | None = None

    @property
    def source(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class VisitInput:
    """The photos of one PASI visit by body region (``head`` optional, ``upper``, ``trunk``,
    ``lower``; at most four each), as file paths or uint8 ``(H, W, 3)`` arrays."""

    photos: Mapping[str, Sequence[Path | np.ndarray]]
    subject: str | None = None
    visit: str | None = None
    name: str | None = None

    @property
    def source(self) -> str:
        return self.name or f"visit {self.visit or ''} of {self.subject or 'unknown subject'}"


@dataclass(frozen=True)
class RecordingInput:
    """One ECG recording: a file (WESAD pickle, WFDB record, CSV, NumPy) with how to read it,
    or a :class:`~medlite.data.ecg.Recording` already in memory."""

    source_data: Path | Recording
    format: str | None = None
    fs: float | None = None
    channel: str | int | None = None
    labels: str | None = None
    subject: str | None = None
    name: str | None = None

    @property
    def source(self) -> str:
        if isinstance(self.source_data, Recording):
            return str(self.source_data.source)
        return str(self.source_data)


@dataclass
class SegmentationOutput:
    """A mask at the image's own resolution.

    Attributes:
        mask: int64 ``(H, W)`` class indices (post-processed as the run's inference says).
        probabilities: float32 ``(C, H, W)`` softmax probabilities before post-processing.
        class_names: ``C`` names.
        image: the uint8 ``(H, W, 3)`` image the mask belongs to (for overlays).
    """

    mask: np.ndarray
    probabilities: np.ndarray
    class_names: list[str]
    source: str = ""
    image: np.ndarray | None = None

    def area_pixels(self, class_index: int = 1) -> int:
        return int((self.mask == class_index).sum())


@dataclass
class ClassificationOutput:
    """Class probabilities of one image: float64 ``(C,)`` summing to 1; ``image`` is the
    uint8 ``(h, w, 3)`` view the network saw."""

    probabilities: np.ndarray
    class_names: list[str]
    source: str = ""
    image: np.ndarray | None = None
    #: Split-conformal prediction set at ``coverage`` (None: the run has no calibration).
    prediction_set: list[str] | None = None
    coverage: float | None = None
    #: ``p(flag_class)`` at or above the run's validation-chosen operating point (None: the
    #: run reads no class at a fixed specificity; ``evaluation.positive_class``).
    flagged: bool | None = None
    flag_class: str | None = None
    #: ``(C,)`` weights of the run's prior-balanced decision, ``predicted`` being
    #: ``argmax(probabilities * decision_weights)`` (None: the plain arg-max;
    #: ``evaluation.decision``).
    decision_weights: np.ndarray | None = None
    #: Tiles a slide's probabilities aggregate (None: an image, or a whole-mode slide).
    tiles: int | None = None

    @property
    def predicted_index(self) -> int:
        weights = 1.0 if self.decision_weights is None else self.decision_weights
        return int(np.argmax(self.probabilities * weights))

    @property
    def predicted(self) -> str:
        return self.class_names[self.predicted_index]

    @property
    def confidence(self) -> float:
        """The probability of the predicted class."""
        return float(self.probabilities[self.predicted_index])


@dataclass
class PasiOutput:
    """PASI of one visit from the deployed ensemble.

    Attributes:
        pasi: 0-72 by Equation 2 over the regions photographed.
        regional: region -> regional score (E + I + S) x A, 0-72.
        components: region -> {erythema, induration, desquamation (0-4), area (0-6)} from
            the ensemble's components heads, or None when it has none.
        severity: the severity category of ``pasi``.
        members: every base and meta learner's PASI for the visit (the deployed one under
            ``"deployed"``).
        interval: split-conformal ``(low, high)`` PASI interval at ``coverage`` (None: the
            run has no calibration).
        uncalibrated: the deployed learner's PASI before the run's visit calibration (None:
            the run has none, ``pasi`` is the raw prediction).
        clear_probability: the share of the most similar out-of-fold training visits that
            the physician scored clear (PASI <= 0.5); None without a calibration.
    """

    pasi: float
    regional: dict[str, float]
    components: dict[str, dict[str, float]] | None
    severity: str
    members: dict[str, float] = field(default_factory=dict)
    subject: str | None = None
    visit: str | None = None
    source: str = ""
    composites: dict[str, np.ndarray] = field(default_factory=dict)
    interval: tuple[float, float] | None = None
    coverage: float | None = None
    uncalibrated: float | None = None
    clear_probability: float | None = None


@dataclass
class StressOutput:
    """Stress over time for one recording.

    Attributes:
        windows: one row per window: ``start_s``, ``end_s``, ``ok`` (passed the quality
            checks), ``p_<class>`` per class (NaN when not ok), ``predicted``, and ``true``
            when the recording has labels.
        features: float32 ``(n_ok, F)`` penultimate features of the ok windows, or None (fast
            inference paths do not expose them).
    """

    windows: pd.DataFrame
    class_names: list[str]
    features: np.ndarray | None = None
    source: str = ""
