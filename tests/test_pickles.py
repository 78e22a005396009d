"""Pickles and checkpoints: nothing in a file medlite reads can run code, and weights from
another task or architecture are refused with a message naming both."""

from __future__ import annotations

import ast
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from medlite.cli import main
from medlite.data.ecg import load_wesad
from medlite.errors import ConfigError, DataError
from medlite.models import create_model
from medlite.models.weights import load_state_dict_file
from medlite.runs import load_state_dict
from medlite.training.checkpoint import AtomicCheckpointIO, model_state_from_checkpoint

PACKAGE = Path(__file__).resolve().parents[1] / "medlite"
#: The one reader allowed to unpickle: WESAD's numpy-only unpickler.
NUMPY_ONLY_READER = PACKAGE / "data" / "ecg.py"


class Calls:
    """Unpickles to ``function(*args)``: what a crafted file would make a reader call."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


class Custom:
    """A class of no library: a weights-only load must not build it."""


def exploits(marker: Path) -> dict[str, Calls]:
    """Global named in the file (``posix.system``, ``builtins.eval``...) -> an object whose
    unpickling would create ``marker``."""
    return {"system": Calls(os.system, f"touch {marker}"),
            "builtins.eval": Calls(eval, f"open({str(marker)!r}, 'w').close()"),
            "subprocess.Popen": Calls(subprocess.Popen, ["touch", str(marker)])}


def wesad(ecg: object) -> dict:
    return {"signal": {"chest": {"ECG": ecg}}, "label": np.zeros(4, np.int64), "subject": "S2"}


# -- WESAD pickles -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["system", "builtins.eval", "subprocess.Popen"])
def test_a_wesad_pickle_naming_another_global_is_refused_and_runs_nothing(tmp_path, name):
    marker = tmp_path / "ran"
    path = tmp_path / "S2.pkl"
    path.write_bytes(pickle.dumps(wesad(exploits(marker)[name])))
    with pytest.raises(DataError) as caught:
        load_wesad(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and name in message and "\n" not in message
    assert not marker.exists()


def test_a_numpy_only_wesad_pickle_still_loads(tmp_path):
    path = tmp_path / "S2.pkl"
    path.write_bytes(pickle.dumps(wesad(np.ones((4, 1)))))
    assert load_wesad(path).signal.shape == (4,)


# -- every reader of the package ---------------------------------------------------------------

def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name):
            yield node, f"{node.func.value.id}.{node.func.attr}"


def test_the_package_loads_pickles_only_weights_only_or_numpy_only():
    unsafe = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))

        def where(node: ast.AST, path: Path = path) -> str:
            return f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"

        for node, name in _calls(tree):
            keywords = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
            if name == "torch.load" and keywords.get("weights_only") is not True:
                unsafe.append(f"{where(node)}: torch.load without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pd.read_pickle", "pandas.read_pickle"):
                unsafe.append(f"{where(node)}: {name}")
            if name in ("np.load", "numpy.load") and keywords.get("allow_pickle"):
                unsafe.append(f"{where(node)}: np.load with allow_pickle")
        for node in ast.walk(tree):
            unpickler = (isinstance(node, ast.Attribute) and node.attr == "Unpickler") or (
                isinstance(node, ast.ImportFrom) and node.module == "pickle")
            if unpickler and path != NUMPY_ONLY_READER:
                unsafe.append(f"{where(node)}: an unpickler outside {NUMPY_ONLY_READER.name}")
    assert unsafe == []


# -- checkpoints with globals that are not allowed -------------------------------------------

@pytest.fixture
def crafted(tmp_path) -> tuple[dict[str, Path], Path]:
    """Checkpoints naming os.system (it would create the marker) or a custom class."""
    marker = tmp_path / "ran"
    weights = {"conv.weight": torch.zeros(2, 2)}
    files = {"system": {**weights, "extra": exploits(marker)["system"]},
             "Custom": {"state_dict": weights, "hyper_parameters": Custom()}}
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / f"{name}.ckpt"
        torch.save(content, paths[name])
    return paths, marker


@pytest.mark.parametrize("name", ["system", "Custom"])
def test_medlite_loaders_refuse_checkpoints_naming_other_globals(crafted, name):
    paths, marker = crafted
    path = paths[name]
    loaders = [(lambda p: load_state_dict_file(p), ConfigError),
               (load_state_dict, DataError),
               (model_state_from_checkpoint, DataError),
               (AtomicCheckpointIO().load_checkpoint, DataError)]
    for load, error in loaders:
        with pytest.raises(error) as caught:
            load(path)
        message = str(caught.value)
        assert str(path) in message and name in message and "weights_only=True" in message
        assert "\n" not in message and "UnpicklingError" not in message
    assert not marker.exists()


def test_training_from_a_crafted_checkpoint_is_one_line(crafted, tmp_path, capsys):
    from medlite.datasets.lesions import write_lesion_dataset

    paths, marker = crafted
    manifest = write_lesion_dataset(tmp_path / "data", n_subjects=5, images_per_subject=1,
                                    size=(32, 32), seed=1)
    config = tmp_path / "c.yaml"
    config.write_text(f"task: segmentation\ndata: {{manifest: {manifest}, image_size: [32, 32]}}\n"
                      f"model: {{name: tinyunet, weights_path: {paths['system']}}}\n"
                      "trainer: {max_epochs: 1, threads: 1}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and str(paths["system"]) in lines[0] and "system" in lines[0], lines
    assert not marker.exists()


# -- weights of another task or architecture ---------------------------------------------------

@pytest.fixture(scope="module")
def segmentation_run(tmp_path_factory) -> Path:
    """A finished tinyunet segmentation run (one tiny epoch)."""
    from medlite.datasets.lesions import write_lesion_dataset
    from medlite.tasks.segmentation import SegmentationConfig, SegmentationDataConfig
    from medlite.training.runner import train_run

    root = tmp_path_factory.mktemp("weights")
    manifest = write_lesion_dataset(root / "data", n_subjects=5, images_per_subject=1,
                                    size=(32, 32), seed=2)
    config = SegmentationConfig(
        name="seg", data=SegmentationDataConfig(manifest=manifest, image_size=(32, 32)))
    config.model.kwargs = {"widths": [16, 16, 16, 16]}
    config.trainer.max_epochs, config.trainer.threads = 1, 1
    config.trainer.early_stopping_patience = None
    config.split.val_fraction = config.split.test_fraction = 0.2
    config.evaluation.bootstrap_resamples = 0
    train_run(config, root / "run", progress=False)
    return root / "run"


def _classifier_config(**model):
    from medlite.tasks.classification import ClassificationConfig

    return ClassificationConfig.model_validate({
        "task": "classification", "data": {"class_names": ["a", "b"], "image_size": 32},
        "model": {"name": "tinyunet_classifier", **model}})


@pytest.mark.parametrize("given", ["model.pt", "fits/main/model.pt", "."])
def test_a_segmentation_run_as_a_classifiers_weights_names_both(segmentation_run, given):
    from medlite.tasks import get_task

    path = segmentation_run / given
    with pytest.raises(ConfigError) as caught:
        get_task("classification").build_model(_classifier_config(weights_path=path))
    message = str(caught.value)
    assert message.startswith("model.weights_path: ") and "\n" not in message
    assert "does not fit tinyunet_classifier for classification" in message
    assert f"from a segmentation run (model tinyunet, {segmentation_run})" in message
    assert "unexpected keys: decoder4." in message and str(path) in message


def test_the_shipped_segmentation_model_as_a_classifiers_weights_names_both():
    from medlite.tasks import get_task

    with pytest.raises(ConfigError, match=r"dermoscopy_lesion/model.pt does not fit "
                       r"tinyunet_classifier for classification: the file is from a "
                       r"segmentation run \(model tinyunet"):
        get_task("classification").build_model(_classifier_config(weights="dermoscopy-lesion"))


def test_a_bare_state_dict_of_another_architecture_says_what_it_looks_like(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save(create_model("tinyunet", widths=(16, 16, 16, 16)).state_dict(), path)
    with pytest.raises(ConfigError) as caught:
        create_model("unet", task="segmentation", weights_path=path)
    message = str(caught.value)
    assert message.startswith(f"model.weights_path: {path} does not fit unet for "
                              "segmentation: its keys look like tinyunet's (")
    assert "missing keys: stem.0.conv.weight" in message and "unexpected keys: encoder1." in message
    assert "\n" not in message
    torch.save(create_model("resnet18", task="features").state_dict(), path)
    with pytest.raises(ConfigError, match="look like a torchvision ResNet's"):
        create_model("tinyunet", weights_path=path)


def test_a_run_whose_weights_were_swapped_is_refused_on_load(segmentation_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(segmentation_run, run)
    torch.save(create_model("unet", widths=(8, 16)).state_dict(), run / "model.pt")
    assert main(["export", str(run)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert f"{run / 'model.pt'} does not fit tinyunet for segmentation" in lines[0]
    assert "look like unet's" in lines[0]
