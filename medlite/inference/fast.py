"""Faster CPU inference, exact up to float rounding (the ``--fast`` paths).

:func:`optimize_for_inference` rewrites a trained model into an equivalent one for
inference on the CPU. See its docstring for what it does and what each step buys.
"""

from __future__ import annotations

import copy
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medlite.errors import ConfigError
from medlite.inference.export import onnx_bytes, onnx_session, quantize_int8
from medlite.models.layers import BicubicUpsample2x, ConvBNAct, is_bicubic_x2
from medlite.models.tinyunet import CMRF, DecoderStage
from medlite.models.unet import UpStage


class ConvAct(nn.Module):
    """A convolution with its BatchNorm folded in, then the original activation."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module):
        super().__init__()
        self.conv = conv
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x))


def fold_conv_bn_act(block: ConvBNAct) -> ConvAct:
    """Fold an eval-mode :class:`ConvBNAct` into a biased convolution plus its activation."""
    return ConvAct(fuse_conv_bn_eval(block.conv.eval(), block.bn.eval()), block.act)


def fold_sequential(sequential: nn.Sequential) -> nn.Sequential | None:
    """A copy of ``sequential`` with each ``Conv2d -> BatchNorm2d`` pair folded into one
    convolution, or None when it has no such pair."""
    layers = list(sequential)
    folded, changed, i = [], False, 0
    while i < len(layers):
        layer = layers[i]
        following = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Conv2d) and isinstance(following, nn.BatchNorm2d):
            folded.append(fuse_conv_bn_eval(layer.eval(), following.eval()))
            changed, i = True, i + 2
        else:
            folded.append(layer)
            i += 1
    return nn.Sequential(*folded) if changed else None


def _conv1x1(weight: Tensor, bias: Tensor | None) -> nn.Conv2d:
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, bias=bias is not None)
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    return conv


def _parity_sorted_pwconv1(cmrf: CMRF) -> tuple[Tensor, Tensor]:
    """Folded ``pwconv1`` weight (C_red, C_in, 1, 1) and bias with output channels reordered
    to [even indices..., odd indices...]."""
    conv = fuse_conv_bn_eval(cmrf.pwconv1.conv.eval(), cmrf.pwconv1.bn.eval())
    reduced = conv.out_channels
    order = torch.cat([torch.arange(0, reduced, 2), torch.arange(1, reduced, 2)])
    return conv.weight.detach()[order], conv.bias.detach()[order]


class CMRFExpand(nn.Module):
    """The part of a :class:`CMRF` after ``pwconv1``, BatchNorm folded.

    Takes ``pwconv1``'s activated output with channels ordered [even..., odd...]. The
    ``even + odd`` sum is folded into ``pwconv2``: its weight columns for the sum are
    repeated for both halves, so ``pwconv2(cat[even + odd, d1, ...]) ==
    pwconv2'(cat[even, odd, d1, ...])`` and the add disappears.

    Shapes: (N, out / n, H, W) -> (N, out, H, W).
    """

    def __init__(self, cmrf: CMRF):
        super().__init__()
        self.half = cmrf.pwconv1.conv.out_channels // 2
        self.cascade = nn.ModuleList(
            fuse_conv_bn_eval(block.conv.eval(), block.bn.eval()) for block in cmrf.m
        )
        pwconv2 = fuse_conv_bn_eval(cmrf.pwconv2.conv.eval(), cmrf.pwconv2.bn.eval())
        weight = pwconv2.weight.detach()
        self.pwconv2 = _conv1x1(torch.cat([weight[:, : self.half], weight], dim=1),
                                pwconv2.bias.detach())
        self.act = cmrf.pwconv2.act

    def forward(self, reduced: Tensor) -> Tensor:
        pieces = [reduced]
        branch = reduced[:, self.half:]
        for depthwise in self.cascade:
            branch = depthwise(branch)
            pieces.append(branch)
        return self.act(self.pwconv2(torch.cat(pieces, dim=1)))


class InferenceCMRF(nn.Module):
    """A :class:`CMRF` with BatchNorm folded, ``pwconv1``'s outputs sorted by parity (the
    even/odd split becomes two contiguous slices) and the sum folded into ``pwconv2``.

    Shapes as :class:`CMRF`.
    """

    def __init__(self, cmrf: CMRF):
        super().__init__()
        self.pwconv1 = _conv1x1(*_parity_sorted_pwconv1(cmrf))
        self.act = cmrf.pwconv1.act
        self.expand = CMRFExpand(cmrf)
        self.add_residual = cmrf.add_residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(self.act(self.pwconv1(x)))
        return x + out if self.add_residual else out


def _fold_1x1_into_transposed(up: nn.ConvTranspose2d, weight: Tensor) -> nn.ConvTranspose2d:
    """``conv1x1(weight) o up`` as one transposed convolution with ``weight.shape[0]``
    output channels (the 1x1 convolution has no bias)."""
    mixed = nn.ConvTranspose2d(up.in_channels, weight.shape[0], up.kernel_size, up.stride,
                               up.padding, up.output_padding, bias=up.bias is not None,
                               dilation=up.dilation)
    mix = weight[:, :, 0, 0]
    mixed.weight.data.copy_(torch.einsum("iokl,ro->irkl", up.weight.detach(), mix))
    if up.bias is not None:
        mixed.bias.data.copy_(mix @ up.bias.detach())
    return mixed


class InferenceDecoderStage(nn.Module):
    """``block(cat[upsample(x), skip])`` with a CMRF block, upsampling moved after ``pwconv1``.

    Upsampling (interpolation, or a transposed convolution) is linear and a 1x1 convolution
    mixes channels only, so ``pwconv1(cat[up(x), skip]) == up'(W_x x) + W_skip skip + b``:
    for interpolation ``up' = up`` applied to ``W_x x``; a transposed convolution absorbs
    ``W_x``. The stage then upsamples ``out / 8`` channels instead of all of ``x`` (8 instead
    of 128 in TinyU-Net's last decoder) and never builds the full-resolution concatenation.

    Shapes: (N, C_x, H, W), (N, skip_channels, 2H, 2W) -> (N, out_channels, 2H, 2W).
    """

    def __init__(self, upsample: nn.Module, cmrf: CMRF, upsampled_channels: int):
        super().__init__()
        weight, bias = _parity_sorted_pwconv1(cmrf)
        x_weight = weight[:, :upsampled_channels]
        if isinstance(upsample, nn.ConvTranspose2d):
            self.reduce_x = _fold_1x1_into_transposed(upsample, x_weight)
            self.upsample = nn.Identity()
        else:
            self.reduce_x = _conv1x1(x_weight, None)
            if is_bicubic_x2(upsample):
                upsample = BicubicUpsample2x(x_weight.shape[0])
            self.upsample = upsample
        self.reduce_skip = _conv1x1(weight[:, upsampled_channels:], bias)
        self.act = cmrf.pwconv1.act
        self.expand = CMRFExpand(cmrf)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        reduced = self.reduce_skip(skip) + self.upsample(self.reduce_x(x))
        return self.expand(self.act(reduced))


def _decoder_parts(stage: nn.Module) -> tuple[nn.Module, CMRF, int] | None:
    """(upsample, CMRF block, upsampled channels) of a decoder stage that can be commuted."""
    if isinstance(stage, DecoderStage):
        upsample, block = stage.upsample, stage.cmrf
    elif isinstance(stage, UpStage):
        upsample, block = stage.upsample, stage.block
    else:
        return None
    if not isinstance(block, CMRF) or block.add_residual:
        return None
    if isinstance(upsample, nn.ConvTranspose2d) and upsample.groups == 1:
        return upsample, block, stage.upsampled_channels
    if isinstance(upsample, nn.Upsample | BicubicUpsample2x):
        return upsample, block, stage.upsampled_channels
    return None


def _inference_form(module: nn.Module) -> nn.Module | None:
    """The inference replacement of ``module``, or None to recurse into its children."""
    parts = _decoder_parts(module)
    if parts is not None:
        return InferenceDecoderStage(*parts)
    if isinstance(module, CMRF):
        return InferenceCMRF(module)
    if isinstance(module, ConvBNAct):
        return fold_conv_bn_act(module)
    if is_bicubic_x2(module) and not isinstance(module, BicubicUpsample2x):
        return BicubicUpsample2x()
    if isinstance(module, nn.Sequential):
        return fold_sequential(module)
    return None


def rewrite_for_inference(module: nn.Module) -> nn.Module:
    """``module`` with every sub-module that has a faster inference form replaced, the root
    included (see :func:`optimize_for_inference`). Works in place on the children; give it
    an eval-mode copy."""
    replacement = _inference_form(module)
    if replacement is not None:
        module = replacement
    for name, child in module.named_children():
        setattr(module, name, rewrite_for_inference(child))
    return module


class InferenceModel(nn.Module):
    """Runs the rewritten model under ``no_grad`` with channels-last activations.

    Input (N, C, H, W) float in any memory format; output in the default contiguous format,
    like the original model.
    """

    def __init__(self, model: nn.Module, channels_last: bool = True):
        super().__init__()
        self.model = model
        self.channels_last = channels_last

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            return self.model(x).contiguous()


class OnnxRuntimeModel(nn.Module):
    """An ONNX Runtime CPU session behind the ``nn.Module`` interface.

    Input: a float32 CPU tensor (N, C, H, W) of any shape the exported graph allows; output:
    a float32 CPU tensor. ``threads`` ONNX Runtime intra-op threads, fixed at creation.
    """

    def __init__(self, onnx_model: bytes, threads: int):
        super().__init__()
        self.threads = threads
        self.session = onnx_session(onnx_model, threads)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def require_openvino():
    """The ``openvino`` module; ConfigError with the install command when it is missing."""
    try:
        import openvino
    except ImportError:
        raise ConfigError("the OpenVINO paths need OpenVINO: pip install "
                          "'medlite[openvino]' (or choose onnxruntime or int8, ONNX Runtime)"
                          ) from None
    return openvino


class OpenVinoModel(nn.Module):
    """An ONNX model compiled by OpenVINO's CPU plugin, behind the ``nn.Module`` interface.

    Input: a float32 CPU tensor (N, C, H, W) of any shape the exported graph allows; output:
    a float32 CPU tensor. ``threads`` inference threads, latency hint (batch 1 first). One
    inference at a time (an OpenVINO infer request is not re-entrant).

    ``precision`` is the plugin's inference precision for the float parts of the graph:
    ``"f32"`` (exact up to float rounding) or ``"bf16"``. It is always stated because
    OpenVINO's own default on CPUs with AVX-512 BF16 or AMX is bf16, which changes the
    numerics silently (TinyU-Net probabilities by up to 0.12, BENCHMARKS.md).

    Raises:
        ConfigError: the ``openvino`` package is not installed.
    """

    def __init__(self, onnx_model: bytes, threads: int, precision: str = "f32"):
        super().__init__()
        core = require_openvino().Core()
        with tempfile.TemporaryDirectory(prefix="medlite-openvino-") as tmp:
            path = Path(tmp) / "model.onnx"
            path.write_bytes(onnx_model)
            model = core.read_model(str(path))
        self.threads = threads
        self.precision = precision
        self.compiled = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision})
        self.request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def forward(self, x: Tensor) -> Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        with self._lock:
            # copied: the request reuses its output buffer on the next call
            output = np.array(self.request.infer([array])[0], dtype=np.float32, copy=True)
        return torch.from_numpy(output)


BACKENDS = ("torch", "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-int8",
            "openvino-int8")


def optimize_for_inference(model: nn.Module, example_input: Tensor | None = None, *,
                           backend: str = "torch", channels_last: bool = True,
                           threads: int | None = None, atol: float = 1e-4,
                           calibration: Iterable[Tensor] | None = None) -> nn.Module:
    """A faster equivalent of ``model`` (eval mode) for CPU inference; ``model`` is untouched.

    What it does, all exact up to float rounding (max abs logit difference ~1e-7):

    * folds every BatchNorm into the convolution before it (``ConvBNAct`` blocks and
      ``Conv2d -> BatchNorm2d`` pairs in ``nn.Sequential``), with PyTorch's
      ``fuse_conv_bn_eval``;
    * CMRF blocks: sorts ``pwconv1``'s outputs by parity so the even/odd split is two
      contiguous slices, and folds the ``even + odd`` sum into ``pwconv2``;
    * decoder stages with a CMRF block (TinyU-Net, ``unet_cmrf``): moves the upsampling after
      ``pwconv1`` (both are linear), so only ``out / 8`` channels are upsampled and the
      full-resolution concatenation is never built;
    * the bicubic x2 upsampling left is a depthwise convolution giving the four output
      phases plus ``pixel_shuffle`` (:func:`bicubic_upsample_x2`);
    * ``backend="torch"``: channels-last memory format, which oneDNN runs faster for 1x1 and
      depthwise convolutions and max-pooling; runs under ``no_grad`` (outputs do not require
      grad);
    * ``backend="onnxruntime"``: the rewritten model exported to ONNX (dynamic batch, H, W)
      and run by an ONNX Runtime CPU session with ``threads`` threads.
    * ``backend="openvino"``: that ONNX model compiled by OpenVINO's CPU plugin in fp32
      (:class:`OpenVinoModel`, needs the ``openvino`` package), exact like the others; the
      fastest fp32 path for TinyU-Net at 256 px on the 2-core AVX-512 machine (BENCHMARKS.md).
    * ``backend="openvino-bf16"``: the same in bfloat16 (oneDNN's AVX-512 BF16 and AMX
      kernels where the CPU has them). Not exact: its accuracy is measured in BENCHMARKS.md
      and not checked against ``atol`` here.
    * ``backend="onnxruntime-int8"``: that ONNX model quantized to int8 weights and uint8
      activations (:func:`~medlite.inference.export.quantize_int8`), activation ranges from
      ``calibration`` (input batches from the data). Not exact: its accuracy is measured in
      BENCHMARKS.md and not checked against ``atol`` here.
    * ``backend="openvino-int8"``: the same int8 model compiled by OpenVINO's CPU plugin
      (:class:`OpenVinoModel`, needs the ``openvino`` package), whose int8 kernels are
      faster than ONNX Runtime's for MobileNetV2 (1.67x the fastest fp32 path at 256 px)
      but slower than fp32 for TinyU-Net (BENCHMARKS.md).

    Measured with ``benchmarks/bench_inference.py`` (TinyU-Net, 1x3x256x256, 2 threads of an
    AMD EPYC with AVX-512, torch 2.14, median of 30 interleaved rounds): eager 258 ms;
    ``backend="torch"`` 62 ms (4.2x); ``backend="onnxruntime"`` 46 ms (5.6x, plus ~6 s to
    export); a plain ONNX Runtime export of the eager model 1,160 ms (its bicubic Resize and
    depthwise convolutions are slow). Of the torch gains, the decoder rewrite removes the
    full-width bicubic upsampling (~100 ms eager) and concatenations, channels-last makes
    the 1x1 convolutions and max-pooling several times faster, and BatchNorm folding removes
    ~220 kernel launches. On a CPU shared with other busy processes ONNX Runtime degrades far
    less than PyTorch's OpenMP threads. ``torch.jit.freeze`` gained ~20 % more but TorchScript
    is deprecated; ``torch.compile`` took ~60 s to compile; neither is used.

    Args:
        model: a TinyUNet, UNet or other module; other layers are kept as they are.
        example_input: when given, the optimized model is checked against ``model`` in eval
            mode on it and a RuntimeError is raised when the max abs difference exceeds
            ``atol``. Required for ``backend="onnxruntime"`` (it drives the export).
        backend: one of :data:`BACKENDS`.
        channels_last: use the channels-last memory format (torch backend).
        threads: ONNX Runtime threads; default ``torch.get_num_threads()``.

    Returns an ``nn.Module`` taking and returning what ``model`` does.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    rewritten = rewrite_for_inference(copy.deepcopy(model).eval())
    if backend.endswith("int8") and calibration is None:
        raise ValueError(f"backend={backend!r} needs calibration inputs")
    threads = threads or torch.get_num_threads()
    if backend.startswith("openvino"):
        require_openvino()  # before the export and quantization, which take seconds
    if backend != "torch":
        if example_input is None:
            raise ValueError(f"backend={backend!r} needs an example_input to export with")
        graph = onnx_bytes(rewritten, example_input, dynamic_spatial=True)
        if backend.endswith("int8"):
            graph = quantize_int8(graph, (batch.detach().cpu().numpy() for batch in calibration))
            runtime = OpenVinoModel if backend == "openvino-int8" else OnnxRuntimeModel
            return runtime(graph, threads)
        if backend == "openvino-bf16":
            return OpenVinoModel(graph, threads, precision="bf16")
        optimized = (OpenVinoModel(graph, threads) if backend == "openvino"
                     else OnnxRuntimeModel(graph, threads))
    else:
        if channels_last:
            rewritten = rewritten.to(memory_format=torch.channels_last)
        optimized = InferenceModel(rewritten, channels_last).eval()
    if example_input is not None:
        check_equivalence(model, optimized, example_input, atol)
    return optimized


def check_equivalence(model: nn.Module, optimized: nn.Module, example_input: Tensor,
                      atol: float = 1e-4) -> float:
    """Max abs difference between ``model`` (run in eval mode, its training flag restored)
    and ``optimized`` on ``example_input``; raises RuntimeError above ``atol``."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(example_input)
            actual = optimized(example_input)
    finally:
        model.train(was_training)
    difference = (expected - actual).abs().max().item()
    if not difference <= atol:
        raise RuntimeError(
            f"optimize_for_inference: outputs differ by {difference:.3g} (> atol {atol:g})"
        )
    return difference
