"""The command line: help texts, a trained run through train/evaluate/predict/export,
and bad input reported on one line with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from medlite.cli import build_parser, main
from medlite.datasets.lesions import write_lesion_dataset

SUBCOMMANDS = [["demo"], ["data"], ["data", "index"], ["train"], ["evaluate"], ["predict"],
               ["export"], ["profile"], ["models"]]


@pytest.mark.parametrize("words", [[], *SUBCOMMANDS])
def test_every_command_explains_itself(words, capsys):
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0
    assert "usage: medlite" in capsys.readouterr().out


def test_parser_lists_the_issue_commands():
    text = build_parser().format_help()
    for command in ["demo", "data", "train", "evaluate", "predict", "export", "profile"]:
        assert command in text


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


def test_evaluate_on_another_manifest(trained, capsys):
    root, _, run = trained
    other = write_lesion_dataset(root / "other", n_subjects=3, images_per_subject=1,
                                 size=(56, 40), seed=9)
    assert main(["evaluate", str(run), "--data", str(other)]) == 0
    saved = json.loads((run / "evaluations" / "manifest" / "metrics.json").read_text())
    assert saved["n_samples"] == 3
    assert 0 <= saved["metrics"]["dataset"]["pixel_accuracy"]["value"] <= 1
    assert main(["evaluate", str(run), "--data", str(other)]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err


def test_evaluate_again_on_the_runs_own_test_split(trained):
    _, _, run = trained
    assert main(["evaluate", str(run)]) == 0
    again = json.loads((run / "evaluations" / "test" / "metrics.json").read_text())
    original = json.loads((run / "metrics.json").read_text())
    assert again["n_samples"] == original["n_samples"]
    assert again["metrics"] == original["metrics"]
    assert "test split" in again["data"]


def test_evaluate_with_flip_tta_and_post_processing(trained, capsys):
    root, _, run = trained
    other = root / "other" / "manifest.csv"
    if not other.exists():
        write_lesion_dataset(root / "other", n_subjects=3, images_per_subject=1,
                             size=(56, 40), seed=9)
    out = root / "tta-eval"
    assert main(["evaluate", str(run), "--data", str(other), "--out", str(out),
                 "--set", "inference.flip_tta=true", "--set", "inference.fill_holes=true",
                 "--set", "inference.largest_component=true"]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["inference"] == {"flip_tta": True, "largest_component": True,
                                  "fill_holes": True}
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
    assert main(["predict", str(run), str(photo), "--out", str(out)]) == 2
    fast = tmp_path / "fast"
    assert main(["predict", str(run), str(photo), "--out", str(fast), "--fast"]) == 0
    agreement = (np.array(Image.open(fast / "photo_mask.png")) == mask).mean()
    assert agreement > 0.999


def test_export_onnx_matches_pytorch(trained, capsys):
    _, _, run = trained
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert (run / "export" / "model.onnx").is_file()
    assert "max abs difference" in capsys.readouterr().out


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
