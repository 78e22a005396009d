"""ONNX export, one exporter for every use: ``medlite export`` and the ONNX Runtime fast path.

The graph is traced by torch's ``dynamo`` exporter (the maintained one) with the batch axis
dynamic, and the spatial axes too when asked (fully convolutional networks); the input is
named ``input`` and the output ``output``. :func:`onnx_parity` compares ONNX Runtime with
PyTorch on a batch, so a graph that only works for one image is caught.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medlite.errors import MedliteError
from medlite.runs import atomic_target


def onnx_bytes(model: nn.Module, example_input: torch.Tensor, *,
               dynamic_spatial: bool = False) -> bytes:
    """``model`` (put in eval mode) as a serialised ONNX model.

    Args:
        model: any traceable module taking one tensor.
        example_input: ``(B, C, H, W)`` (or ``(B, ...)``) example the trace runs on.
        dynamic_spatial: leave axes 2 and 3 dynamic as well as the batch axis.
    """
    auto = torch.export.Dim.AUTO
    axes = {0: auto, 2: auto, 3: auto} if dynamic_spatial else {0: auto}
    model = model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        # The exporter reports its progress through warnings and prints.
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example_input,), dynamo=True, verbose=False,
                                    input_names=["input"], output_names=["output"],
                                    dynamic_shapes=(axes,))
    return program.model_proto.SerializeToString()


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: Path, *,
                dynamic_spatial: bool = False) -> Path:
    """Write ``model`` as ONNX to ``path`` atomically (see :func:`onnx_bytes`)."""
    data = onnx_bytes(model, example_input, dynamic_spatial=dynamic_spatial)
    with atomic_target(Path(path)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def onnx_session(source: Path | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session of a file or serialised model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    model = str(source) if isinstance(source, Path) else source
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def onnx_parity(model: nn.Module, source: Path | bytes, inputs: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch (eval mode) and ONNX Runtime on
    ``inputs`` (use a batch of several to check the dynamic batch axis)."""
    session = onnx_session(source)
    with torch.no_grad():
        expected = model.eval()(inputs).numpy()
    actual = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    if actual.shape != expected.shape:
        raise MedliteError(f"{source if isinstance(source, Path) else 'ONNX model'}: output "
                           f"shape {actual.shape} differs from PyTorch's {expected.shape}")
    return float(np.abs(actual - expected).max())


class _Batches:
    """ONNX Runtime's calibration reader over float32 arrays (N, C, H, W)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.input_name = input_name
        self.batches = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: np.ascontiguousarray(
            batch, dtype=np.float32)}


def quantize_int8(onnx_model: bytes, calibration: Iterable[np.ndarray], *,
                  per_channel: bool = True, method: str = "MinMax",
                  exclude: Iterable[str] = ()) -> bytes:
    """Static post-training int8 quantization of a float ONNX model (ONNX Runtime).

    Weights become int8 (per output channel with ``per_channel``) and activations uint8,
    with scales from the activations over ``calibration`` (float32 batches shaped as the
    model's input: real, preprocessed images of the data, e.g. the run's validation split),
    in the QDQ format, which ONNX Runtime's CPU provider fuses into int8 kernels (VNNI on
    AVX-512 CPUs). ``method`` is ONNX Runtime's range estimate (``"MinMax"``,
    ``"Percentile"`` or ``"Entropy"``); the nodes named in ``exclude`` stay float.
    """
    import onnx  # here, not at the top: every fit process imports this module, few quantize
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load_from_string(onnx_model)
    input_name = model.graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="medlite-int8-") as tmp:
        source, prepared, quantized = (Path(tmp) / name for name in
                                       ("float.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(onnx_model)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), _Batches(input_name, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod[method],
                        nodes_to_exclude=list(exclude))
        return quantized.read_bytes()
