"""Run directories: refusal, resume/overwrite rules, atomic writes, environment record."""

import pytest
import torch

from medlite.errors import ConfigError, RunDirError
from medlite.runs import (
    check_resume_config,
    config_differences,
    environment_record,
    load_state_dict,
    make_output_dir,
    prepare_run_dir,
    read_marker,
    save_torch_atomic,
    write_json,
)


def test_existing_run_is_refused_without_flags(tmp_path):
    run = prepare_run_dir(tmp_path / "run")
    write_json(run / "run.json", {})
    (run / "metrics.json").write_text("{}")
    with pytest.raises(RunDirError, match="--resume.*--overwrite"):
        prepare_run_dir(run)
    assert prepare_run_dir(run, resume=True) == run
    assert (run / "metrics.json").exists()
    prepare_run_dir(run, overwrite=True)
    assert not (run / "metrics.json").exists()


def test_overwrite_never_deletes_a_folder_medlite_did_not_make(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    with pytest.raises(RunDirError, match="not a folder medlite created"):
        prepare_run_dir(folder, overwrite=True)
    assert (folder / "chapter1.tex").read_text() == "precious"
    with pytest.raises(RunDirError, match="nothing to resume"):
        prepare_run_dir(folder, resume=True)


def test_state_dict_round_trip_is_weights_only(tmp_path):
    state = {"w": torch.arange(6.0).view(2, 3)}
    save_torch_atomic(state, tmp_path / "m.pt")
    assert torch.equal(load_state_dict(tmp_path / "m.pt")["w"], state["w"])
    assert not list(tmp_path.glob(".*tmp"))


def test_environment_record_has_seed_and_versions():
    record = environment_record(7)
    assert record["seed"] == 7
    assert {"torch", "lightning", "numpy"} <= set(record["versions"])


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    import os

    umask = os.umask(0)
    os.umask(umask)
    write_json(tmp_path / "metrics.json", {"a": 1})
    save_torch_atomic({"w": torch.ones(1)}, tmp_path / "model.pt")
    for name in ("metrics.json", "model.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


def test_every_folder_medlite_makes_is_marked_and_only_those_are_replaced(tmp_path):
    out = make_output_dir(tmp_path / "predictions", "predictions")
    marker = read_marker(out)
    assert marker["kind"] == "predictions" and len(marker["id"]) == 32
    (out / "a_mask.png").write_bytes(b"x")
    with pytest.raises(RunDirError, match="exists and is not empty"):
        make_output_dir(out, "predictions")
    again = make_output_dir(out, "predictions", overwrite=True)
    assert not (again / "a_mask.png").exists() and read_marker(again)["id"] != marker["id"]
    # An empty folder the user made is used; a non-empty one is never deleted.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert read_marker(make_output_dir(empty, "evaluation")) is not None
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(RunDirError):
            make_output_dir(thesis, "evaluation", overwrite=overwrite)
    assert (thesis / "chapter1.tex").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="not a folder"):
        make_output_dir(tmp_path / "file", "evaluation")


def test_resume_config_differences_name_the_keys():
    saved = {"task": "segmentation", "name": "a", "trainer": {"max_epochs": 10, "lr": 1},
             "inference": {"flip_tta": False}, "evaluation": {"bootstrap_resamples": 1000},
             "executor": {"workers": 1}, "data": {"class_names": ["a", "b"]}}
    given = {**saved, "name": "b", "trainer": {"max_epochs": 12, "lr": 1},
             "inference": {"flip_tta": True}, "evaluation": {"bootstrap_resamples": 0},
             "executor": {"workers": 2}, "data": {"class_names": None}}
    assert config_differences(saved, given) == ["data.class_names", "trainer.max_epochs"]
    assert config_differences(saved, given, derived=("data.class_names",)) == [
        "trainer.max_epochs"]
    with pytest.raises(ConfigError, match=r"trainer\.max_epochs: 10 -> 12"):
        check_resume_config(saved, given, "run/config.yaml", derived=("data.class_names",))
    check_resume_config(saved, {**given, "trainer": saved["trainer"]}, "run/config.yaml",
                        derived=("data.class_names",))


def test_resume_may_change_only_how_fast_a_run_trains():
    saved = {"task": "segmentation", "trainer": {"max_epochs": 10, "num_workers": 0,
                                                 "keep_checkpoints": False}}
    given = {"task": "segmentation", "trainer": {"max_epochs": 10, "num_workers": 4,
                                                 "keep_checkpoints": True}}
    assert config_differences(saved, given) == []
    given["trainer"]["max_epochs"] = 11
    assert config_differences(saved, given) == ["trainer.max_epochs"]
