"""The command line: help texts, a trained run through train/evaluate/predict/export,
and bad input reported on one line with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medlite.cli import build_parser, main
from medlite.datasets.lesions import write_lesion_dataset

SUBCOMMANDS = [["demo"], ["data"], ["data", "index"], ["data", "check"], ["train"],
               ["configs"], ["evaluate"], ["predict"], ["export"], ["profile"], ["models"],
               ["serve"], ["cluster"], ["cluster", "script"]]


@pytest.mark.parametrize("words", [[], *SUBCOMMANDS])
def test_every_command_explains_itself(words, capsys):
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0
    assert "usage: medlite" in capsys.readouterr().out


def test_parser_has_exactly_the_documented_commands():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == {"demo", "data", "train", "configs", "evaluate", "predict",
                             "export", "profile", "models", "serve", "cluster"}


def test_configs_lists_and_prints_the_shipped_configs(capsys):
    assert main(["configs"]) == 0
    listing = capsys.readouterr().out
    assert "segmentation_ph2" in listing and "stress_drivedb" in listing
    assert main(["configs", "show", "pasi"]) == 0
    assert "task: pasi" in capsys.readouterr().out
    assert main(["configs", "show", "nope"]) == 2
    assert main(["train", "--list-configs"]) == 0
    assert "classification_dermamnist" in capsys.readouterr().out


TINY_CONFIG = """task: segmentation
data:
  manifest: data/manifest.csv
  image_size: [32, 32]
model:
  name: tinyunet
  kwargs: {widths: [16, 32, 32, 64]}
trainer: {max_epochs: 1, batch_size: 4, threads: 2}
split: {val_fraction: 0.25, test_fraction: 0.25}
evaluation: {bootstrap_resamples: 20}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_lesion_dataset(root / "data", n_subjects=6, images_per_subject=2,
                         size=(40, 48), seed=1)
    config = root / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    run = root / "runs" / "tiny"
    assert main(["train", str(config), "--out", str(run), "--no-progress"]) == 0
    return root, config, run


def test_train_refuses_existing_run(trained, capsys):
    root, config, run = trained
    before = (run / "metrics.json").read_text()
    assert main(["train", str(config), "--out", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(run) in err and "--resume" in err
    assert (run / "metrics.json").read_text() == before


def other_clinic(folder, seed=9):
    """Synthetic lesions of subjects the run never saw (the generator names subjects SYN..)."""
    manifest = write_lesion_dataset(folder, n_subjects=3, images_per_subject=1,
                                    size=(56, 40), seed=seed)
    manifest.write_text(manifest.read_text().replace(",SYN", ",OTHER"))
    return manifest


def test_evaluate_on_another_manifest(trained, capsys):
    root, _, run = trained
    other = other_clinic(root / "other")
    assert main(["evaluate", str(run), "--data", str(other)]) == 0
    saved = json.loads((run / "evaluations" / "manifest" / "metrics.json").read_text())
    assert saved["n_samples"] == 3
    assert 0 <= saved["metrics"]["dataset"]["pixel_accuracy"]["value"] <= 1
    assert main(["evaluate", str(run), "--data", str(other)]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err


def test_evaluate_again_on_the_runs_own_test_split(trained):
    _, _, run = trained
    assert main(["evaluate", str(run), "--overwrite"]) == 0
    again = json.loads((run / "evaluations" / "test" / "metrics.json").read_text())
    original = json.loads((run / "metrics.json").read_text())
    assert again["n_samples"] == original["n_samples"]
    assert again["metrics"] == original["metrics"]
    assert "test split" in again["evaluated"]


def snapshot(run):
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in run.rglob("*") if p.is_file() and "evaluations" not in p.parts}


def test_evaluate_writes_nothing_into_the_run_but_evaluations(trained, tmp_path):
    _, _, run = trained
    before = snapshot(run)
    assert main(["evaluate", str(run), "--split", "val", "--out", str(run / "evaluations" /
                                                                      "val-again")]) == 0
    assert snapshot(run) == before


def test_evaluate_with_flip_tta_and_post_processing(trained, capsys):
    root, _, run = trained
    other = root / "other" / "manifest.csv"
    if not other.exists():
        other_clinic(root / "other")
    out = root / "tta-eval"
    assert main(["evaluate", str(run), "--data", str(other), "--out", str(out),
                 "--set", "inference.flip_tta=true", "--set", "inference.fill_holes=true",
                 "--set", "inference.largest_component=true"]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["inference"] == {"flip_tta": True, "largest_component": True,
                                  "component_rule": "largest", "fill_holes": True}
    for mask_file in (out / "predictions").glob("*_mask.png"):
        from scipy import ndimage
        assert ndimage.label(np.array(Image.open(mask_file)) > 0)[1] <= 1
    # The run itself is unchanged: training keys cannot be overridden afterwards.
    assert main(["evaluate", str(run), "--data", str(other), "--out", str(root / "x"),
                 "--set", "trainer.max_epochs=3"]) == 2
    assert "only inference.* and evaluation.*" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--data", str(other), "--out", str(root / "y"),
                 "--set", "inference.flip_ttta=true"]) == 2
    assert "inference.flip_ttta" in capsys.readouterr().err


def test_predict_writes_full_resolution_masks_and_overlays(trained, tmp_path):
    root, _, run = trained
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((37, 53, 4), 180, np.uint8)).save(photo)  # RGBA, odd size
    out = tmp_path / "masks"
    assert main(["predict", str(run), str(photo), str(root / "data" / "images"),
                 "--out", str(out)]) == 0
    mask = np.array(Image.open(out / "photo_mask.png"))
    assert mask.shape == (37, 53) and set(np.unique(mask)) <= {0, 255}
    assert Image.open(out / "photo_overlay.png").size == (53, 37)
    assert len(list(out.glob("*_mask.png"))) == 1 + 12
    assert main(["predict", str(run), str(photo), "--out", str(out)]) == 2  # no overwrite
    index = pd.read_csv(out / "predictions.csv")
    assert len(index) == 13 and index["name"].is_unique and "pixels_lesion" in index
    fast = tmp_path / "fast"
    assert main(["predict", str(run), str(photo), "--out", str(fast), "--fast"]) == 0
    agreement = (np.array(Image.open(fast / "photo_mask.png")) == mask).mean()
    assert agreement > 0.999


def test_export_onnx_matches_pytorch(trained, capsys):
    _, _, run = trained
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert (run / "export" / "model.onnx").is_file()
    out = capsys.readouterr().out
    assert "batch of 3" in out and "max abs difference" in out


def test_profile_json_has_the_documented_keys(capsys):
    assert main(["profile", "tinyunet", "--input-size", "32", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"params", "flops", "flops_thop_convention", "latency_ms"} <= set(result)
    assert result["params"] == 481_170


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "medlite.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def test_bad_config_key_is_one_line_without_traceback(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("task: segmentation\ntrainer:\n  max_epoch: 3\n")
    result = run_cli("train", config)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[0].endswith(
        "trainer.max_epoch: unknown key (did you mean 'max_epochs'?)")


def test_data_index_lists_every_problem_and_writes_nothing(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "A1.png")
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(masks / "A1_lesion.png")  # size
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "B2.png")  # no mask
    bad = np.zeros((32, 32), np.uint8)
    bad[0, 0] = 128
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "C3.png")
    Image.fromarray(bad).save(masks / "C3_lesion.png")  # value outside {0, 255}
    (images / "D4.jpg").write_bytes(b"not a jpeg")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(masks / "D4_lesion.png")
    out = tmp_path / "manifest.csv"
    result = run_cli("data", "index", images, masks, "--out", out)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for name in ["A1_lesion.png", "B2.png", "C3_lesion.png", "D4.jpg"]:
        assert name in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("edit, expected", [
    (lambda rows: [rows[0].replace("mask", "maks")] + rows[1:], "mask"),
    (lambda rows: rows + [rows[1]], "identical"),
    (lambda rows: [rows[0], rows[1].replace("SYN0001_1.jpg", "gone.jpg")] + rows[2:],
     "gone.jpg"),
    (lambda rows: [rows[0] + ",split", rows[1] + ",train", rows[2] + ",test"]
     + [r + "," for r in rows[3:]], "SYN0001"),  # one subject's two views in two splits
])
def test_bad_manifest_through_train_is_one_line_exit_2(tmp_path, capsys, edit, expected):
    manifest = write_lesion_dataset(tmp_path / "data", n_subjects=4,
                                    images_per_subject=2, size=(32, 32), seed=2)
    rows = manifest.read_text().strip().splitlines()
    manifest.write_text("\n".join(edit(rows)) + "\n")
    config = tmp_path / "c.yaml"
    config.write_text(TINY_CONFIG)
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "manifest.csv" in err.splitlines()[0]
    assert expected in err
    assert not (tmp_path / "run" / "model.pt").exists()


def test_predict_gives_same_stem_inputs_their_own_outputs(trained, tmp_path):
    _, _, run = trained
    for index, path in enumerate([tmp_path / "a" / "x.jpg", tmp_path / "b" / "x.jpg",
                                  tmp_path / "x.png"]):
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(np.full((40, 40, 3), 60 * index, np.uint8)).save(path)
    out = tmp_path / "out"
    assert main(["predict", str(run), str(tmp_path / "a" / "x.jpg"),
                 str(tmp_path / "b" / "x.jpg"), str(tmp_path / "x.png"), "--out",
                 str(out)]) == 0
    index = pd.read_csv(out / "predictions.csv")
    assert index["name"].tolist() == ["a_x", "b_x", "x"]
    assert len(list(out.glob("*_mask.png"))) == 3
    assert index["input"].tolist() == [str(tmp_path / p) for p in ("a/x.jpg", "b/x.jpg",
                                                                   "x.png")]


def test_overwrite_never_deletes_a_folder_medlite_did_not_make(trained, tmp_path, capsys):
    _, _, run = trained
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("precious")
    assert main(["evaluate", str(run), "--out", str(thesis), "--overwrite"]) == 2
    assert "not a folder medlite created" in capsys.readouterr().err
    photo = tmp_path / "p.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(photo)
    assert main(["predict", str(run), str(photo), "--out", str(thesis), "--overwrite"]) == 2
    assert (thesis / "chapter1.tex").read_text() == "precious"
    assert sorted(p.name for p in thesis.iterdir()) == ["chapter1.tex"]
    # A folder medlite made is replaced.
    assert main(["evaluate", str(run), "--out", str(tmp_path / "ev")]) == 0
    assert main(["evaluate", str(run), "--out", str(tmp_path / "ev"), "--overwrite"]) == 0


def test_external_data_overlapping_training_is_refused_naming_the_files(trained, tmp_path,
                                                                      capsys):
    root, _, run = trained
    splits = pd.read_csv(run / "splits.csv")
    training = pd.read_csv(root / "data" / "manifest.csv")
    seen = training[training["subject"].isin(splits.loc[splits["split"] == "train",
                                                        "subject"])].head(2).copy()
    seen["image"] = [str((root / "data" / p).resolve()) for p in seen["image"]]
    seen["mask"] = [str((root / "data" / p).resolve()) for p in seen["mask"]]
    seen["subject"] = ["NEW1", "NEW2"]  # new ids, same pictures: caught by content
    overlapping = tmp_path / "overlap.csv"
    seen.to_csv(overlapping, index=False)
    assert main(["evaluate", str(run), "--data", str(overlapping)]) == 2
    err = capsys.readouterr().err
    assert "overlap the run's training or validation data" in err
    assert Path(seen["image"].iloc[0]).name in err and "--allow-overlap" in err
    assert main(["evaluate", str(run), "--data", str(overlapping), "--allow-overlap",
                 "--out", str(tmp_path / "ev")]) == 0
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["overlap"]["n"] == 2 and "--allow-overlap" in saved["note"]
    assert "--allow-overlap" in (tmp_path / "ev" / "report.html").read_text()
