"""Configs: paper defaults, unknown keys and bad values named by dotted path."""

import pytest

from medlite.errors import ConfigError
from medlite.tasks import load_config
from medlite.tasks.segmentation import SegmentationConfig


def write(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_segmentation_defaults_reproduce_the_tinyunet_recipe():
    config = SegmentationConfig()
    assert config.model.name == "tinyunet"
    assert config.data.image_size == (256, 256)
    assert config.optimizer.name == "adam" and config.optimizer.lr == 1e-4
    assert config.optimizer.betas[0] == 0.9
    assert config.scheduler.name == "cosine" and config.scheduler.min_lr == 1e-6
    assert config.loss.ce_weight == 1.0 and config.loss.dice_weight == 1.0


def test_relative_manifest_resolves_against_config_folder(tmp_path):
    config = load_config(write(tmp_path, "task: segmentation\ndata:\n  manifest: m.csv\n"))
    assert config.data.manifest == (tmp_path / "m.csv").resolve()
    assert config.name == "config"


@pytest.mark.parametrize("text, expected", [
    ("task: segmentation\ntrainer:\n  max_epoch: 3\n",
     "trainer.max_epoch: unknown key (did you mean 'max_epochs'?)"),
    ("task: segmentation\ndata:\n  image_size: [250, 256]\n", "data.image_size"),
    ("task: segmentation\noptimizer:\n  lr: -1\n", "optimizer.lr"),
    ("task: segmentation\noptimizer:\n  name: rmsprop\n", "optimizer.name"),
    ("task: segmentaton\n", "unknown task 'segmentaton'"),
    ("data: {}\n", "task: required key is missing"),
    ("task: segmentation\nmodel: [1, 2\n", "not valid YAML"),
])
def test_bad_config_names_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_overrides_apply_dotted_keys(tmp_path):
    config = load_config(write(tmp_path, "task: segmentation\n"),
                         ["trainer.max_epochs=3", "data.image_size=[64, 64]"])
    assert config.trainer.max_epochs == 3
    assert config.data.image_size == (64, 64)
    with pytest.raises(ConfigError, match="trainer.max_epochs"):
        load_config(write(tmp_path, "task: segmentation\n"), ["trainer.max_epochs=zero"])



def test_overrides_address_list_items_by_index(tmp_path):
    path = write(tmp_path, "task: classification\ndata: {manifest: m.csv, class_names: [a, b]}\n"
                 "stages:\n  - {name: head, epochs: 2, lr: 1.0e-3, trainable: head}\n"
                 "  - {name: fine_tune, epochs: 5, lr: 1.0e-4, trainable: all}\n")
    config = load_config(path, ["stages.1.lr=1e-5", "stages.0.epochs=3"])
    assert [stage.lr for stage in config.stages] == [1e-3, 1e-5]
    assert [stage.epochs for stage in config.stages] == [3, 5]
    with pytest.raises(ConfigError, match=r"--set stages.2.lr: stages has 2 items; '2' is not"):
        load_config(path, ["stages.2.lr=1e-5"])
    with pytest.raises(ConfigError, match="stages.0.lr.x: lr is not a section"):
        load_config(path, ["stages.0.lr.x=1"])

def test_unknown_model_argument_is_a_config_error():
    from medlite.models import create_model

    with pytest.raises(ConfigError, match="model.kwargs: 'tinyunet' does not take widthz"):
        create_model("tinyunet", widthz=[16, 32, 32, 64])
    with pytest.raises(ConfigError, match="did you mean tinyunet"):
        create_model("tinyunett")


def test_config_module_knows_no_task():
    """medlite.config must not import the task registry (no import cycle)."""
    import subprocess
    import sys

    code = ("import sys, medlite.config; "
            "print(any(m.startswith('medlite.tasks') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "False"


def test_shipped_configs_load_by_name_relative_to_the_current_folder(tmp_path, monkeypatch):
    from medlite.tasks import shipped_configs

    names = set(shipped_configs())
    assert {"segmentation_ph2", "pasi", "classification_dermamnist", "classification_ssc",
            "stress_drivedb", "stress_wesad"} <= names
    monkeypatch.chdir(tmp_path)
    config = load_config("segmentation_ph2")
    assert config.task == "segmentation" and config.name == "segmentation_ph2"
    assert config.data.manifest == (tmp_path / "data" / "ph2_manifest.csv").resolve()
    for name in names:
        assert load_config(name).task in ("segmentation", "pasi", "classification", "stress")


def test_fold_all_is_cross_validation_and_negative_folds_are_refused(tmp_path):
    config = load_config(write(tmp_path, "task: segmentation\nsplit: {folds: 3, fold: all}\n"))
    assert config.split.fold == "all"
    with pytest.raises(ConfigError, match="split.fold"):
        load_config(write(tmp_path, "task: segmentation\nsplit: {folds: 3, fold: -1}\n"))
