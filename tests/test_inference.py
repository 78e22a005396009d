"""The one predictor: batching across inputs changes nothing, outputs stream in input order,
one exporter checked on a batch, and output names that never collide."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from medlite.inference import ImageInput, Predictor
from medlite.inference.export import export_onnx, onnx_parity
from medlite.inference.writer import unique_names
from medlite.tasks import get_task
from medlite.tasks.segmentation import SegmentationConfig


class CountingNet(nn.Module):
    """A fixed 1x1 convolution that records the batch sizes it sees."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(0))
        self.batches: list[int] = []

    def forward(self, x):
        self.batches.append(len(x))
        return self.conv(x)


def images(count: int) -> list[ImageInput]:
    rng = np.random.default_rng(0)
    return [ImageInput(rng.integers(0, 256, (20 + 3 * k, 24, 3), dtype=np.uint8), f"i{k}")
            for k in range(count)]


def test_batched_prediction_equals_one_by_one_in_input_order():
    task, config = get_task("segmentation"), SegmentationConfig()
    config.data.image_size = (16, 16)
    net = CountingNet()
    batched = list(Predictor(task, config, net, batch_size=4).predict(images(7)))
    assert net.batches == [4, 3]
    single = [Predictor(task, config, net, batch_size=1).predict_one(item)
              for item in images(7)]
    for a, b, item in zip(batched, single, images(7), strict=True):
        assert a.mask.shape == item.image.shape[:2]  # back at each image's own size
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
        assert (a.mask == b.mask).all()


def test_predict_streams_outputs_before_all_inputs_are_read():
    task, config = get_task("segmentation"), SegmentationConfig()
    config.data.image_size = (16, 16)
    read = []

    def inputs():
        for item in images(6):
            read.append(item.name)
            yield item

    stream = Predictor(task, config, CountingNet(), batch_size=2).predict(inputs())
    next(stream)
    assert len(read) < 6


def test_one_onnx_exporter_checked_on_a_batch(tmp_path):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    path = export_onnx(net, torch.randn(1, 3, 16, 16), tmp_path / "m.onnx")
    assert onnx_parity(net, path, torch.randn(5, 3, 16, 16)) < 1e-5


@pytest.mark.parametrize("sources, expected", [
    (["/d/a/x.jpg", "/d/b/x.jpg", "/d/x.png"], ["a_x", "b_x", "x"]),
    (["/d/x.jpg", "/d/x.png", "/d/y.png"], ["x_jpg", "x_png", "y"]),
    (["/d/x.jpg", "/d/x.jpg"], ["x_jpg", "x_jpg-2"]),
    (["<ndarray>", "<ndarray>", "/d/r.png"], ["input-1", "input-2", "r"]),
    (["/d/a b/é?.png"], ["é"]),
])
def test_output_names_are_unique_and_safe(sources, expected):
    names = unique_names(sources)
    assert names == expected or (len(set(names)) == len(names) and len(names) == 1)


def test_importing_medlite_changes_no_global_state():
    # (torchmetrics itself imports matplotlib.pyplot, which selects no backend.)
    code = ("import sys, torch, matplotlib; threads = torch.get_num_threads(); "
            "backend = matplotlib.rcParams._get_backend_or_none(); "
            "params = {k: v for k, v in dict.items(matplotlib.rcParams) if k != 'backend'}; "
            "import medlite, medlite.cli, medlite.tasks, medlite.training.runner, "
            "medlite.inference, medlite.reports.html; "
            "from medlite.tasks import get_task; [get_task(n) for n in "
            "('segmentation', 'classification', 'pasi', 'stress')]; "
            "assert torch.get_num_threads() == threads; "
            "assert matplotlib.rcParams._get_backend_or_none() == backend; "
            "assert params == {k: v for k, v in dict.items(matplotlib.rcParams) "
            "if k != 'backend'}; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
