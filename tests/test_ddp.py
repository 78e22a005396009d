"""One fit on several devices: Lightning DDP on CPU, 2 processes with gloo on 127.0.0.1.

With the global batch fixed, 2 processes follow the loss curve of 1; BatchNorm statistics
are those of the global batch; the driver killed mid-fit leaves no orphan rank, and
``--resume`` continues the fit from its checkpoint."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch
import torch.distributed as dist
import yaml
from torch import nn

from medlite.cli import main
from medlite.datasets.lesions import write_lesion_dataset
from medlite.runs import load_state_dict
from medlite.training.distributed import GlobalBatchNorm, free_loopback_port, loopback_interface
from medlite.training.seeding import EpochShuffleSampler, ShardSampler
from tests.conftest import history_rows, kill_when
from tests.test_training import tiny_config

FIT = "main"
EPOCHS = 8


def test_ranks_share_each_global_batch_of_the_single_process_order():
    for weights in (None, np.linspace(1, 3, 23)):
        single = list(EpochShuffleSampler(23, 4, weights))
        single_batches = [single[i:i + 6] for i in range(0, 18, 6)]  # the last 5 dropped
        shares = [list(EpochShuffleSampler(23, 4, weights, rank=r, world_size=3,
                                           global_batch=6)) for r in range(3)]
        assert [len(share) for share in shares] == [6, 6, 6]
        for k, batch in enumerate(single_batches):
            assert sum((share[2 * k:2 * k + 2] for share in shares), []) == batch
    evaluation = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(evaluation, [])) == list(range(7))


def _batchnorm_rank(rank: int, port: int, inputs: torch.Tensor, queue) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        torch.manual_seed(0)
        layer = GlobalBatchNorm.convert(nn.BatchNorm2d(3))
        with torch.no_grad():
            layer.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
            layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        share = inputs[rank * 4:(rank + 1) * 4].clone().requires_grad_(True)
        output = layer(share)
        (output * torch.arange(output.numel()).view_as(output).float()).sum().backward()
        # numpy arrays travel by value; tensors would be shared memory of an exited process
        queue.put((rank, *(t.detach().numpy().copy() for t in (
            output, share.grad, layer.weight.grad, layer.running_mean, layer.running_var))))
    finally:
        dist.destroy_process_group()


def test_global_batchnorm_on_two_cpu_processes_is_batchnorm_of_the_whole_batch():
    inputs = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 3 + 1
    reference = nn.BatchNorm2d(3)
    with torch.no_grad():
        reference.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        reference.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    whole = inputs.clone().requires_grad_(True)
    expected = reference(whole)
    weights = torch.cat([torch.arange(expected[:4].numel()).view_as(expected[:4]).float()] * 2)
    (expected * weights).sum().backward()

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = free_loopback_port()
    processes = [context.Process(target=_batchnorm_rank, args=(r, port, inputs, queue))
                 for r in range(2)]
    for process in processes:
        process.start()
    results = dict((item[0], item[1:]) for item in (queue.get(timeout=60) for _ in range(2)))
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    results = {rank: [torch.from_numpy(a) for a in arrays] for rank, arrays in results.items()}
    output = torch.cat([results[0][0], results[1][0]])
    input_grad = torch.cat([results[0][1], results[1][1]])
    torch.testing.assert_close(output, expected.detach(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(input_grad, whole.grad, atol=1e-5, rtol=1e-5)
    # The ranks' weight gradients add up to the whole batch's (DDP then averages them,
    # as it does for a loss that is a mean over the global batch).
    torch.testing.assert_close(results[0][2] + results[1][2], reference.weight.grad,
                               atol=1e-4, rtol=1e-5)
    for rank in (0, 1):
        torch.testing.assert_close(results[rank][3], reference.running_mean)
        torch.testing.assert_close(results[rank][4], reference.running_var)


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    """A small TinyU-Net segmentation fit (72 BatchNorm layers) with a loss that is a plain
    mean over pixels (cross-entropy; a Dice over the batch would not split over devices)."""
    root = tmp_path_factory.mktemp("ddp")
    manifest = write_lesion_dataset(root / "data", n_subjects=16, images_per_subject=2,
                                    size=(48, 48), seed=3)
    config = tiny_config(manifest, epochs=EPOCHS)
    config.loss.dice_weight = 0.0
    config.optimizer.lr = 3e-3
    config.trainer.threads = 1
    config.evaluation.bootstrap_resamples = 20
    raw = config.model_dump(mode="json")
    raw.pop("name")
    path = root / "ddp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def train(config_path: Path, run: Path, *settings: str) -> Path:
    assert main(["train", str(config_path), "--out", str(run), "--no-progress",
                 *settings]) == 0
    return run


def rank_processes(run: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if "medlite.training.distributed" in command and str(run) in command:
            found.append(process)
    return found


@pytest.fixture(scope="module")
def single_and_ddp(config_path, tmp_path_factory) -> tuple[Path, Path, pd.DataFrame]:
    """The fit on one process, and on two whose driver was SIGKILLed after two epochs and
    then resumed; with the DDP fit's history as it was at the kill."""
    root = tmp_path_factory.mktemp("runs")
    one = train(config_path, root / "one")
    two = root / "two"
    fit_history = two / "fits" / FIT / "history.csv"
    kill_when(["train", config_path, "--out", two, "--no-progress",
               "--set", "trainer.devices=2"], lambda: history_rows(fit_history) >= 2)
    at_kill = pd.read_csv(fit_history)
    assert len(at_kill) < EPOCHS and not (two / "metrics.json").exists()
    deadline = time.time() + 20
    while rank_processes(two) and time.time() < deadline:
        time.sleep(0.2)
    assert not rank_processes(two), "rank processes outlived the killed driver"
    train(config_path, two, "--resume", "--set", "trainer.devices=2")
    return one, two, at_kill


def history(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "fits" / FIT / "history.csv")


def test_two_processes_follow_the_loss_curve_of_one(single_and_ddp):
    one, two = (history(run) for run in single_and_ddp[:2])
    assert len(one) == len(two) == EPOCHS
    np.testing.assert_allclose(two["train_loss"], one["train_loss"], rtol=5e-3)
    np.testing.assert_allclose(two["val_loss"], one["val_loss"], rtol=5e-3)
    assert one["train_loss"].iloc[-1] < 0.7 * one["train_loss"].iloc[0]  # it learns
    assert one["val_loss"].is_monotonic_decreasing
    ddp_run = single_and_ddp[1]
    done = json.loads((ddp_run / "fits" / FIT / "done.json").read_text())
    assert done["result"]["devices"] == 2
    logs = sorted((ddp_run / "fits" / FIT / "ddp").glob("rank*.log"))
    assert [log.name for log in logs] == ["rank0.log", "rank1.log"]


def test_the_killed_ddp_fit_continued_from_its_checkpoint(single_and_ddp):
    _, two, at_kill = single_and_ddp
    done = json.loads((two / "fits" / FIT / "done.json").read_text())
    assert done["attempts"] == 2
    pd.testing.assert_frame_equal(history(two).iloc[:len(at_kill)], at_kill)


def test_the_ddp_weights_are_the_single_process_weights(single_and_ddp):
    one, two = (load_state_dict(run / "model.pt") for run in single_and_ddp[:2])
    assert one.keys() == two.keys()
    # As one vector: Adam moves parameters whose gradient is float noise (a BatchNorm bias
    # before another BatchNorm) by up to lr per step either way, so no single one is exact.
    first, second = (torch.cat([state[k].flatten() for k in one
                                if state[k].is_floating_point()]) for state in (one, two))
    assert float((second - first).norm() / first.norm()) < 1e-3
    tables = [pd.read_csv(run / "per_sample.csv") for run in single_and_ddp[:2]]
    np.testing.assert_allclose(tables[1]["dice_lesion"], tables[0]["dice_lesion"], atol=0.02)


def test_a_global_batch_that_does_not_split_is_a_clear_error(config_path, tmp_path, capsys):
    assert main(["train", str(config_path), "--out", str(tmp_path / "run"), "--no-progress",
                 "--set", "trainer.devices=3"]) == 2
    err = capsys.readouterr().err
    assert "trainer.batch_size" in err and "3 devices" in err and "Traceback" not in err
