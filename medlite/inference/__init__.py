"""Inference: the predictor every command and the web service use, its typed inputs and
outputs, the fast CPU paths and ONNX export."""

from medlite.inference.fast import optimize_for_inference
from medlite.inference.predictor import Predictor, load_run
from medlite.inference.types import (
    ClassificationOutput,
    ImageInput,
    PasiOutput,
    RecordingInput,
    SegmentationOutput,
    SlideInput,
    StressOutput,
    VisitInput,
)

__all__ = [
    "ClassificationOutput",
    "ImageInput",
    "PasiOutput",
    "Predictor",
    "RecordingInput",
    "SegmentationOutput",
    "SlideInput",
    "StressOutput",
    "VisitInput",
    "load_run",
    "optimize_for_inference",
]
