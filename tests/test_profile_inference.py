"""profile_model's counts against hand counts, and optimize_for_inference's equivalence."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medlite.inference.fast import (
    InferenceDecoderStage,
    check_equivalence,
    optimize_for_inference,
)
from medlite.models import CMRF, TinyUNet, UNet, profile_model
from medlite.models.layers import BicubicUpsample2x, bicubic_upsample_x2, bicubic_x2_taps
from medlite.models.profile import count_flops, count_thop_flops, format_profile
from tests.test_tinyunet import randomise_batchnorm

# --- profiling --------------------------------------------------------------------------


def test_profile_counts_a_small_model_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 2, 1),
    )
    # 8x8 outputs: conv1 64 * 4 * (3 * 9) MACs, conv2 64 * 2 * 4 MACs, BN 4 * 64 elements
    conv_macs = 64 * 4 * 27 + 64 * 2 * 4
    torch.set_num_threads(1)
    result = profile_model(model.train(), (1, 3, 8, 8), threads=2, warmup=1, repeats=3)
    assert torch.get_num_threads() == 1  # restored
    torch.set_num_threads(2)
    assert model.training  # restored
    assert result["params"] == 3 * 4 * 9 + 2 * 4 + 4 * 2 + 2
    assert result["flops"] == 2 * conv_macs
    assert result["flops_thop_convention"] == 2 * (conv_macs + 4 * 4 * 64)
    assert result["latency_ms"] > 0 and result["input_size"] == (1, 3, 8, 8)
    table = format_profile(result)
    assert "parameters" in table and str(result["params"]) in table
    assert "0.000 G" in table and "1x3x8x8" in table and "2 threads" in table


def test_profile_counts_a_cmrf_block_by_hand():
    block = CMRF(8, 32)
    x = torch.randn(1, 8, 8, 8)
    pixels = 64
    pwconv1 = pixels * 4 * 8  # 8 -> 4 channels
    cascade = 7 * pixels * 2 * 9  # seven depthwise 3x3 on 2 channels
    pwconv2 = pixels * 32 * 16  # 16 -> 32 channels
    bn_elements = pixels * (4 + 7 * 2 + 32)
    assert count_flops(block, x) == 2 * (pwconv1 + cascade + pwconv2)
    assert count_thop_flops(block, x) == 2 * (pwconv1 + cascade + pwconv2 + 4 * bn_elements)


def test_profile_transposed_convolution_and_linear_by_hand():
    model = nn.Sequential(nn.ConvTranspose2d(4, 3, 2, stride=2), nn.Flatten(), nn.Linear(48, 5))
    x = torch.randn(1, 4, 2, 2)
    # each of the 16 input elements feeds 3 * 2 * 2 outputs; the Linear does 48 * 5 MACs
    assert count_thop_flops(model, x) == 2 * (16 * 12 + 48 * 5)
    assert count_flops(model, x) == 2 * (16 * 12 + 48 * 5)


def test_tinyunet_flops_match_the_paper():
    model = TinyUNet(3, 2).eval()
    x = torch.zeros(1, 3, 256, 256)
    flops = count_flops(model, x)
    thop = count_thop_flops(model, x)
    # 3.130 in the published order; the decoders' first 1x1 convolutions run before the
    # upsampling here (the upsampling itself, a depthwise convolution, now counts).
    assert f"{flops / 1e9:.3f}" == "2.827"
    assert f"{thop / 1e9:.2f}" == "3.33"  # the paper's 2 x thop MACs


# --- bicubic x2 -------------------------------------------------------------------------


def test_bicubic_taps_by_hand():
    # Keys cubic, A = -0.75, at distances 1.75, 0.75, 0.25, 1.25
    even, odd = bicubic_x2_taps()
    assert even == (-0.03515625, 0.26171875, 0.87890625, -0.10546875, 0.0)
    assert odd == tuple(reversed(even))
    assert sum(even) == 1.0


@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 4, 16, 16), (1, 2, 1, 3)])
def test_bicubic_x2_equals_interpolate(shape):
    x = torch.randn(shape) * 10
    expected = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    torch.testing.assert_close(bicubic_upsample_x2(x), expected, rtol=0, atol=2e-5)
    channels_last = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(BicubicUpsample2x()(channels_last), expected, rtol=0, atol=2e-5)


# --- optimize_for_inference -------------------------------------------------------------


def max_abs_difference(model: nn.Module, optimized: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x) - optimized(x)).abs().max().item()


@pytest.mark.parametrize(
    "build",
    [
        lambda: TinyUNet(3, 2),
        lambda: TinyUNet(1, 3, widths=(16, 32, 48, 64)),
        lambda: UNet(3, 2, widths=(8, 16, 32, 64, 128)),
        lambda: UNet(3, 2, widths=(8, 16, 32), upsample="bilinear"),
        lambda: UNet(3, 2, widths=(16, 32, 48, 64, 80), block="cmrf"),
        lambda: UNet(3, 2, widths=(16, 32, 48), block="cmrf", upsample="bilinear"),
    ],
    ids=["tinyunet", "tinyunet-small", "unet", "unet-bilinear", "unet-cmrf", "unet-cmrf-bilinear"],
)
def test_optimized_model_matches_eager(build):
    torch.manual_seed(0)
    model = randomise_batchnorm(build()).eval()
    in_channels = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    x = torch.randn(2, in_channels, 64, 64)
    optimized = optimize_for_inference(model)
    assert max_abs_difference(model, optimized, x) <= 1e-4
    assert not any(isinstance(m, nn.BatchNorm2d) for m in optimized.modules())
    output = optimized(x)
    assert output.is_contiguous() and not output.requires_grad


def test_optimize_rewrites_decoders_and_leaves_the_model_alone():
    model = randomise_batchnorm(TinyUNet(3, 2, widths=(16, 32, 48, 64))).train()
    before = copy.deepcopy(model.state_dict())
    optimized = optimize_for_inference(model, torch.randn(1, 3, 32, 32))
    assert model.training
    assert isinstance(model.decoder1.upsample, BicubicUpsample2x)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert isinstance(optimized.model.decoder1, InferenceDecoderStage)
    # Only out / 8 = 2 channels are upsampled in the last decoder instead of 32.
    seen = []
    optimized.model.decoder1.upsample.register_forward_hook(
        lambda module, inputs, output: seen.append(inputs[0].shape[1])
    )
    optimized(torch.randn(1, 3, 32, 32))
    assert seen == [2]


def test_optimize_folds_sequential_conv_batchnorm():
    model = randomise_batchnorm(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 2, 1))
    ).eval()
    optimized = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in optimized.modules())
    assert max_abs_difference(model, optimized, torch.randn(2, 3, 16, 16)) <= 1e-5


def test_equivalence_check_raises_on_a_different_model():
    model = TinyUNet(3, 2, widths=(16, 32, 48, 64)).eval()
    other = optimize_for_inference(randomise_batchnorm(copy.deepcopy(model), seed=3))
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(RuntimeError, match="outputs differ"):
        check_equivalence(model, other, x)
    assert check_equivalence(model, optimize_for_inference(model), x) <= 1e-4


def test_onnxruntime_backend_matches_eager_on_other_shapes():
    pytest.importorskip("onnxruntime")
    model = randomise_batchnorm(TinyUNet(3, 2, widths=(16, 32, 48, 64))).eval()
    optimized = optimize_for_inference(model, torch.randn(1, 3, 32, 32), backend="onnxruntime",
                                       threads=1)
    # batch, height and width stay dynamic in the exported graph
    assert max_abs_difference(model, optimized, torch.randn(2, 3, 48, 64)) <= 1e-4
    with pytest.raises(ValueError, match="example_input"):
        optimize_for_inference(model, backend="onnxruntime")


def test_int8_backend_quantizes_and_stays_close_to_fp32():
    """Weights stored as int8, activations quantized from calibration ranges; logits near
    the float model's and the same argmax on almost every pixel."""
    import onnx

    from medlite.inference.export import onnx_bytes, quantize_int8
    from medlite.inference.fast import OnnxRuntimeModel

    torch.manual_seed(0)
    model = randomise_batchnorm(TinyUNet(3, 2, widths=(16, 32, 48, 64))).eval()
    calibration = [torch.randn(1, 3, 32, 32) for _ in range(8)]
    graph = quantize_int8(onnx_bytes(model, calibration[0], dynamic_spatial=True),
                          (c.numpy() for c in calibration))
    proto = onnx.load_from_string(graph)
    operators = {node.op_type for node in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= operators
    int8_weights = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8_weights) >= 20
    quantized = OnnxRuntimeModel(graph, threads=1)
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        expected, actual = model(x), quantized(x)
    scale = expected.abs().max().item()
    assert 0 < (expected - actual).abs().max().item() <= 0.1 * scale
    assert (expected.argmax(1) == actual.argmax(1)).float().mean() >= 0.95
    with pytest.raises(ValueError, match="calibration"):
        optimize_for_inference(model, calibration[0], backend="onnxruntime-int8")


def test_openvino_int8_backend_runs_the_quantized_model_close_to_fp32():
    """The same int8 graph compiled by OpenVINO: close to the float logits, any batch."""
    pytest.importorskip("openvino")
    from medlite.models import create_model

    torch.manual_seed(0)
    model = randomise_batchnorm(create_model("mobilenet_v2", num_classes=3)).eval()
    calibration = [torch.randn(1, 3, 64, 64) for _ in range(8)]
    optimized = optimize_for_inference(model, calibration[0], backend="openvino-int8",
                                       calibration=calibration, threads=1)
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        expected, actual = model(x), optimized(x)
    assert actual.shape == expected.shape and actual.dtype == torch.float32
    scale = expected.abs().max().item()
    assert 0 < (expected - actual).abs().max().item() <= 0.2 * scale
    # outputs are copies: a second call does not change the first one's tensor
    first = optimized(x[:1]).clone()
    optimized(torch.randn(1, 3, 64, 64))
    assert torch.equal(first, optimized(x[:1]))


def _openvino_fp32_and_bf16_differences() -> dict:
    """Run in a fresh process: OpenVINO's bf16 compilation leaves threads behind that make a
    later fork of this process (DataLoader workers in other tests) crash on AMX hosts."""
    torch.manual_seed(0)
    model = randomise_batchnorm(TinyUNet(3, 2, widths=(16, 32, 48, 64))).eval()
    example = torch.randn(1, 3, 32, 32)
    exact = optimize_for_inference(model, example, backend="openvino", threads=1)
    bf16 = optimize_for_inference(model, example, backend="openvino-bf16", threads=1)
    x = torch.randn(3, 3, 48, 64)
    with torch.no_grad():
        expected = model(x)
        approximate = bf16(x)
        confident = expected.softmax(1).amax(1) > 0.6
        return {"precisions": (exact.precision, bf16.precision),
                "exact": (exact(x) - expected).abs().max().item(),
                "bf16": (approximate - expected).abs().max().item(),
                "scale": expected.abs().max().item(),
                "shape_ok": approximate.shape == expected.shape,
                "argmax_ok": torch.equal(approximate.argmax(1)[confident],
                                         expected.argmax(1)[confident])}


def test_openvino_fp32_backend_is_exact_and_bf16_close():
    """``openvino`` states fp32 (OpenVINO's default here would be bf16): TinyU-Net's outputs
    within float rounding of eager, any batch and size; ``openvino-bf16`` within bf16's."""
    pytest.importorskip("openvino")
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        result = pool.apply(_openvino_fp32_and_bf16_differences)
    assert result["precisions"] == ("f32", "bf16")
    assert result["exact"] <= 1e-4
    assert result["shape_ok"] and result["argmax_ok"]
    assert result["bf16"] <= 0.05 * result["scale"]


def test_openvino_missing_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_openvino(name, *args, **kwargs):
        if name == "openvino":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_openvino)
    from medlite.errors import ConfigError

    model = TinyUNet(3, 2, widths=(16, 32, 48, 64)).eval()
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ConfigError, match=r"pip install 'medlite\[openvino\]'"):
        optimize_for_inference(model, x, backend="openvino-int8", calibration=[x])


def test_the_cli_lists_every_fast_path_the_predictor_takes():
    import typing

    from medlite.cli import FAST_PATHS
    from medlite.inference.predictor import Fast

    assert tuple(typing.get_args(Fast)) == FAST_PATHS
