"""Run directories: refusal, resume/overwrite rules, atomic writes, environment record."""

import pytest
import torch

from medlite.errors import RunDirError
from medlite.runs import (
    environment_record,
    load_state_dict,
    prepare_run_dir,
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
    with pytest.raises(RunDirError, match="not a medlite run"):
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
