"""Export trained networks to ONNX, with a parity check against PyTorch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medlite.errors import MedliteError
from medlite.runs import atomic_target


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: Path, *,
                opset: int = 18, dynamic_batch: bool = True) -> Path:
    """Write ``model`` (eval mode) as ONNX to ``path`` atomically; input ``input``, output
    ``output``, with a dynamic batch axis."""
    path = Path(path)
    model = model.eval()
    with atomic_target(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example_input,), tmp, input_names=["input"], output_names=["output"],
            opset_version=opset, dynamo=False,
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}
            if dynamic_batch else None,
        )
    return path


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_parity(model: nn.Module, path: Path, example_input: torch.Tensor) -> float:
    """Max absolute difference between PyTorch (eval) and ONNX Runtime outputs."""
    session = onnx_session(path)
    with torch.no_grad():
        expected = model.eval()(example_input).numpy()
    actual = session.run(None, {"input": example_input.numpy()})[0]
    if actual.shape != expected.shape:
        raise MedliteError(f"{path}: ONNX output shape {actual.shape} != PyTorch {expected.shape}")
    return float(np.abs(actual - expected).max())
