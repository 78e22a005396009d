"""The SONIC stress task end to end on tiny synthetic studies: subject-wise and window-level
CV side by side, run layout, metrics with CIs, figures, resume, the same out-of-fold
predictions under every executor, a model that learns, predict, evaluate, export, and
one-line errors for bad recordings."""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from medlite.cli import main
from medlite.data.cv import carve_validation, cv_folds, train_test_overlap
from medlite.data.ecg import load_signal_file
from medlite.data.recordings import (
    WindowSettings,
    bootstrap_groups,
    prepare_windows,
    recording_windows,
    write_recordings,
)
from medlite.data.spectrogram import (
    NORMALIZER_MODES,
    SpectrogramNormalizer,
    SpectrogramParams,
    spectrogram_images,
)
from medlite.data.splits import read_splits
from medlite.data.windows import bandpass, make_windows
from medlite.datasets.ecg import make_ecg, make_ecg_study
from medlite.errors import DataError
from medlite.inference import load_run
from medlite.models.stress import SpectrogramStandardize
from medlite.tasks import load_config

ROOT = Path(__file__).resolve().parents[1]
FS = 100.0
BACKBONES = ["squeezenet1_1", "shufflenet_v2_x0_5"]
ENTRY_KEYS = {"value", "ci_low", "ci_high", "confidence", "resamples", "valid_resamples"}
WESAD3 = ["baseline", "stress", "amusement"]


def tiny_config(recordings, **cv) -> dict:
    return {
        "task": "stress", "name": "tiny-stress", "seed": 3,
        "data": {"recordings": str(recordings)},
        "spectrogram": {"image_size": 32},
        "model": {"name": "sonic", "pretrained": False, "kwargs": {"backbones": BACKBONES}},
        "cv": {"scheme": "subject", "folds": 2, **cv},
        "trainer": {"max_epochs": 1, "batch_size": 16, "threads": 1},
        "evaluation": {"bootstrap_resamples": 30},
    }


def write_yaml(path, config: dict):
    path.write_text(yaml.safe_dump(config))
    return path


def train(config: dict, path: Path, run: Path) -> Path:
    assert main(["train", str(write_yaml(path, config)), "--out", str(run),
                 "--no-progress"]) == 0
    return run


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("stress")
    recordings = make_ecg_study(n_subjects=3, minutes_per_condition=(0.5, 0.5, 0.5),
                                fs=FS, seed=1)
    manifest = write_recordings(recordings, root / "data")
    return root, manifest


@pytest.fixture(scope="module")
def trained(study):
    """Subject-wise and window-level CV of one epoch each on 3 subjects (sequential)."""
    root, manifest = study
    return train(tiny_config(manifest, compare_window_cv=True), root / "tiny.yaml",
                 root / "run")


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """Stress vs non-stress, 6 subjects, 12 epochs, 2 subject folds, no intervals."""
    root = tmp_path_factory.mktemp("stress-learns")
    recordings = make_ecg_study(n_subjects=6, minutes_per_condition=(0.5, 0.5, 0.5),
                                fs=FS, seed=1)
    config = tiny_config(write_recordings(recordings, root / "data"))
    config["data"]["label_scheme"] = "wesad2"
    config["trainer"]["max_epochs"] = 12
    config["evaluation"]["bootstrap_resamples"] = 0
    return train(config, root / "learns.yaml", root / "run")


def test_run_layout_folds_metrics_figures_report(trained):
    splits = read_splits(trained / "splits.csv")
    windows = pd.read_csv(trained / "windows.csv")
    # (90 s - 5 s) / 2 s + 1 = 43 windows per subject, less 4 across its 2 label changes.
    assert len(splits) == len(windows) == 3 * 39
    assert (splits["split"] == "train").all()  # every window trains the final fit
    # Subject-wise folds: each subject's windows all in one fold, so no fold trains on a
    # subject it tests.
    assert (splits.groupby("subject")["fold"].nunique() == 1).all()
    assert set(splits["fold"]) == {0, 1}
    for fold in (0, 1):
        test = set(splits.loc[splits["fold"] == fold, "subject"])
        train_subjects = set(splits.loc[splits["fold"] != fold, "subject"])
        assert test and train_subjects and not test & train_subjects

    metrics = json.loads((trained / "metrics.json").read_text())
    assert list(metrics["metrics"]) == ["subject_cv", "window_cv"]
    assert metrics["bootstrap_unit"] == "subject"
    for group in metrics["metrics"].values():
        for name in ("accuracy", "macro_f1"):
            entry = group[name]
            assert set(entry) == ENTRY_KEYS and entry["resamples"] == 30
            assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert metrics["n_samples"] == len(windows)
    assert metrics["windows"]["kept"] == len(windows)
    assert metrics["windows"]["mixed"] == 3 * 4  # two label changes per subject
    assert metrics["class_names"] == WESAD3
    assert metrics["cv"]["schemes"] == ["subject", "window"]
    assert metrics["bootstrap_unit"] == "subject"

    for figure in ("confusion_subject_cv", "confusion_window_cv", "tsne", "learning_curves"):
        assert (trained / "figures" / f"{figure}.png").stat().st_size > 5_000
    report = (trained / "report.html").read_text()
    assert "Leakage" in report and "share 60% of their samples" in report
    assert "Per-fold metrics" in report and "Windows per recording" in report
    assert "<h3>window_cv</h3>" in report

    folds = pd.read_csv(trained / "folds.csv")
    assert sorted(zip(folds["scheme"], folds["fold"], strict=True)) == [
        ("subject", 0), ("subject", 1), ("window", 0), ("window", 1)]
    assert (folds["epochs"] == 1).all()
    fits = pd.read_csv(trained / "fits.csv")
    assert (fits["status"] == "done").all() and len(fits) == 5  # 2 + 2 folds + final
    plan = {f["key"]: f for f in json.loads((trained / "plan.json").read_text())}
    assert list(plan) == ["subject-fold0", "subject-fold1", "window-fold0", "window-fold1",
                          "final"]
    assert sorted(plan["final"]["depends_on"]) == sorted(list(plan)[:4])
    # One subject per validation part is too many of 3: the end of each class stretch,
    # with the training windows that would share samples with it purged.
    assert plan["final"]["params"]["validation"] == "time" and plan["final"]["n_predict"] == 0
    assert plan["final"]["n_train"] + plan["final"]["n_val"] < len(windows)
    assert plan["window-fold0"]["params"]["validation"] == "window"
    assert not (trained / "fits" / "subject-fold0" / "checkpoints").exists()


def test_leakage_table_measures_shared_samples(trained):
    leakage = pd.read_csv(trained / "leakage.csv").set_index("scheme")
    assert list(leakage["role"]) == ["main", "comparison"]
    # Subject folds share no sample between test and training windows; shuffled windows do
    # (a test window's neighbours, 3 s of its 5, sit in the training folds).
    assert leakage.loc["subject", "share_of_test_windows_sharing_samples"] == 0
    assert leakage.loc["window", "share_of_test_windows_sharing_samples"] > 0.8
    assert leakage.loc["window", "mean_shared_with_training"] > 0.4
    assert (leakage["tested_windows"] == 3 * 39).all()
    metrics = json.loads((trained / "metrics.json").read_text())
    assert leakage.loc["subject", "accuracy"] == pytest.approx(
        metrics["metrics"]["subject_cv"]["accuracy"]["value"])
    assert leakage.loc["window", "macro_f1_ci_low"] == pytest.approx(
        metrics["metrics"]["window_cv"]["macro_f1"]["ci_low"])


def test_out_of_fold_predictions_cover_every_window_once(trained):
    oof = pd.read_csv(trained / "per_sample.csv")
    splits = read_splits(trained / "splits.csv").set_index("sample")
    assert oof["sample"].is_unique and set(oof["sample"]) == set(splits.index)
    folds = splits.loc[oof["sample"], "fold"].to_numpy()
    assert (oof["fit"] == [f"subject-fold{k}" for k in folds]).all()
    assert (oof["bootstrap_group"] == oof["subject"]).all()
    probabilities = oof[[f"p_{n}" for n in WESAD3]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    names = np.array(WESAD3)
    assert (oof["predicted"] == names[probabilities.argmax(axis=1)]).all()
    assert (oof["true"] == names[oof["label"]]).all()
    assert [c for c in oof if c.startswith("f") and c[1:].isdigit()] == [
        f"f{j}" for j in range(12)]  # SONIC's fused layer
    fold_file = pd.read_csv(trained / "fits" / "subject-fold0" / "predictions.csv")
    assert set(fold_file["sample"]) == set(splits.index[splits["fold"] == 0])


def test_deployed_model_loads_and_takes_raw_spectrograms(trained):
    predictor = load_run(trained)
    config, task = predictor.config, predictor.task
    assert config.data.label_scheme == "wesad3" and predictor.class_names == WESAD3
    logits, features = predictor.network(task.example_input(config), return_features=True)
    assert logits.shape == (1, 3) and features.shape == (1, 12)  # SONIC's fused layer
    final = torch.load(trained / "fits" / "final" / "model.pt", weights_only=True)
    deployed = torch.load(trained / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], deployed[k]) for k in final)


def test_resume_reruns_only_the_unfinished_fold(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "fits" / "subject-fold1" / "done.json").unlink()
    before = pd.read_csv(run / "per_sample.csv")
    assert main(["train", str(run / "config.yaml"), "--out", str(run), "--resume",
                 "--no-progress"]) == 0
    attempts = pd.read_csv(run / "fits.csv").set_index("key")["attempts"]
    assert attempts["subject-fold1"] == 2
    assert (attempts.drop("subject-fold1") == 1).all()
    after = pd.read_csv(run / "per_sample.csv")
    fold0 = before["fit"] == "subject-fold0"
    assert np.array_equal(before.loc[fold0, "p_stress"], after.loc[fold0, "p_stress"])


def test_executors_give_identical_out_of_fold_predictions(trained, tmp_path):
    # The out-of-fold fits of the sequential run trained again, at the same time, by two
    # worker processes (the other fits are kept): every fit is seeded from its key, so the
    # predictions are the same bytes.
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    folds = ["subject-fold0", "subject-fold1"]
    for fold in folds:
        shutil.rmtree(run / "fits" / fold)
    assert main(["train", str(run / "config.yaml"), "--out", str(run), "--resume",
                 "--no-progress", "--set", "executor.name=processes",
                 "--set", "executor.workers=2"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["executor"]["name"] == "processes"
    assert (pd.read_csv(run / "fits.csv").set_index("key")["attempts"][folds] == 1).all()
    for fold in folds:
        assert (run / "fits" / fold / "predictions.csv").read_bytes() == \
            (trained / "fits" / fold / "predictions.csv").read_bytes(), fold
    assert (run / "per_sample.csv").read_bytes() == (trained / "per_sample.csv").read_bytes()


def test_model_learns_stress_across_subjects(learned):
    metrics = json.loads((learned / "metrics.json").read_text())
    cv = metrics["metrics"]["subject_cv"]
    # Two thirds of the windows are non-stress: predicting it everywhere scores 0.67.
    assert cv["accuracy"]["value"] > 0.85
    assert cv["balanced_accuracy"]["value"] > 0.8
    assert metrics["class_names"] == ["non-stress", "stress"]


def test_no_bootstrap_gives_null_intervals(learned):
    metrics = json.loads((learned / "metrics.json").read_text())
    assert metrics["bootstrap_resamples"] == 0
    for entry in metrics["metrics"]["subject_cv"].values():
        assert set(entry) == ENTRY_KEYS
        assert entry["ci_low"] is None and entry["ci_high"] is None
        assert entry["resamples"] == 0 and entry["confidence"] is None
    assert "no confidence intervals" in (learned / "report.html").read_text()


def test_predict_writes_probability_over_time(trained, tmp_path, capsys):
    signal = make_ecg(42.0, FS, heart_rate_bpm=80, seed=5)
    pd.DataFrame({"ecg": signal}).to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred"
    assert main(["predict", str(trained), str(tmp_path / "new.csv"), "--out", str(out),
                 "--set", f"inference.fs={FS}"]) == 0
    table = pd.read_csv(out / "new_stress.csv")
    assert len(table) == 19  # (42 s - 5 s) / 2 s + 1 windows
    assert list(table.columns) == ["start_s", "end_s", "ok", "p_baseline", "p_stress",
                                   "p_amusement", "predicted"]
    assert np.allclose(table["start_s"], np.arange(19) * 2.0)
    probabilities = table[[f"p_{n}" for n in WESAD3]].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert (out / "new_stress.png").stat().st_size > 5_000
    index = pd.read_csv(out / "predictions.csv")
    assert index.loc[0, "windows"] == 19 and index.loc[0, "ok_windows"] == 19
    assert index.loc[0, "mean_p_stress"] == pytest.approx(table["p_stress"].mean())

    # The same numbers as the network on the spectrograms of the windows, computed directly
    # in batches of the same size (other batch sizes round float32 sums differently).
    predictor = load_run(trained)
    recording = load_signal_file(tmp_path / "new.csv", FS)
    windows = make_windows(recording.signal, FS, None, filter=partial(bandpass, low_hz=0.5,
                                                                      high_hz=40.0),
                           drop_bad=False)
    images = torch.from_numpy(spectrogram_images(windows.windows, FS, size=(32, 32),
                                                 channels=1))
    size = predictor.batch_size
    with torch.no_grad():
        expected = torch.cat([predictor.network(images[i:i + size]).softmax(dim=1)
                              for i in range(0, len(images), size)]).double().numpy()
    assert np.array_equal(probabilities, expected)
    # The fast CPU path gives no features but the same probabilities up to float rounding.
    assert main(["predict", str(trained), str(tmp_path / "new.csv"), "--out",
                 str(tmp_path / "fast"), "--set", f"inference.fs={FS}", "--fast"]) == 0
    fast = pd.read_csv(tmp_path / "fast" / "new_stress.csv")
    np.testing.assert_allclose(fast[[f"p_{n}" for n in WESAD3]], probabilities, atol=1e-4)

    # Without the sampling rate the CSV cannot be read: one line, exit 2; nothing overwritten.
    assert main(["predict", str(trained), str(tmp_path / "new.csv"), "--out",
                 str(tmp_path / "other")]) == 2
    assert "sampling rate missing" in capsys.readouterr().err
    assert main(["predict", str(trained), str(tmp_path / "new.csv"), "--out", str(out),
                 "--set", f"inference.fs={FS}"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["predict", str(trained), "--visit", str(tmp_path), "--out",
                 str(tmp_path / "visit")]) == 2
    assert "only for pasi runs" in capsys.readouterr().err


def test_predict_labelled_recording_adds_true_class(trained, study, tmp_path):
    _, manifest = study
    out = tmp_path / "pred"
    assert main(["predict", str(trained), str(manifest.parent / "synth01.csv"), "--out",
                 str(out), "--set", f"inference.fs={FS}"]) == 0
    table = pd.read_csv(out / "synth01_stress.csv", keep_default_na=False)
    assert set(table["true"]) == {"baseline", "stress", "amusement", ""}  # "": mixed windows
    assert list(table.columns)[-2:] == ["predicted", "true"]


def test_evaluate_on_other_recordings_and_refuses_own_data(trained, study, tmp_path, capsys):
    others = make_ecg_study(n_subjects=2, minutes_per_condition=(0.4, 0.4, 0.4), fs=FS,
                            seed=9)
    for recording in others:
        recording.subject = f"new-{recording.subject}"
    manifest = write_recordings(others, tmp_path / "other")
    out = tmp_path / "eval"
    assert main(["evaluate", str(trained), "--data", str(manifest), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_subjects"] == 2
    assert set(metrics["metrics"]["deployed_model"]["accuracy"]) == ENTRY_KEYS
    assert (out / "figures" / "confusion.png").is_file()
    scored = pd.read_csv(out / "per_sample.csv")
    expected, _ = prepare_windows(manifest, label_scheme="wesad3", class_names=WESAD3,
                                  settings=WindowSettings(), params=SpectrogramParams())
    assert scored["sample"].tolist() == expected["sample"].tolist()
    assert (scored["label"] == expected["label"]).all()
    assert metrics["n_samples"] == len(expected)
    # Every window of the run's own data trained the deployed model (the CV metrics are in
    # metrics.json): evaluating it there is refused.
    assert main(["evaluate", str(trained), "--out", str(tmp_path / "own")]) == 2
    assert "no test samples" in capsys.readouterr().err
    assert main(["evaluate", str(trained), "--split", "train", "--out",
                 str(tmp_path / "own-train")]) == 2
    assert "trained on every window" in capsys.readouterr().err
    # The same recordings under other names are caught by their content.
    copies = make_ecg_study(n_subjects=3, minutes_per_condition=(0.5, 0.5, 0.5), fs=FS, seed=1)
    for recording in copies:
        recording.subject = f"copy-{recording.subject}"
    assert main(["evaluate", str(trained), "--data",
                 str(write_recordings(copies, tmp_path / "copies")), "--out",
                 str(tmp_path / "copies-eval")]) == 2
    err = capsys.readouterr().err
    assert "have the same content" in err and str(tmp_path / "copies" / "copy-synth01.csv") in err


def test_export_onnx(trained, tmp_path):
    path = tmp_path / "stress.onnx"
    assert main(["export", str(trained), "--out", str(path)]) == 0
    assert path.stat().st_size > 100_000


# -- bad input: one line naming the file, exit code 2 --------------------------------------------

def _write_csv(path, ecg, labels=None):
    table = pd.DataFrame({"ecg": ecg})
    if labels is not None:
        table["label"] = labels
    table.to_csv(path, index=False)
    return path


def _bad_case(tmp_path, case: str):
    """A manifest whose single recording has the named problem; returns (manifest, name)."""
    n = int(30 * FS)
    ecg = make_ecg(30.0, FS, seed=2)
    labels = np.repeat([0, 1], n // 2)
    fs = FS
    extra = {}
    if case == "short":
        _write_csv(tmp_path / "rec.csv", ecg[:200], labels[:200])
    elif case == "nan":
        _write_csv(tmp_path / "rec.csv", np.full(n, np.nan), labels)
    elif case == "length":
        _write_csv(tmp_path / "rec.csv", ecg)
        np.save(tmp_path / "labels.npy", labels[:-10])
        extra = {"labels": "labels.npy"}
    elif case == "code":
        _write_csv(tmp_path / "rec.csv", ecg, np.where(labels == 1, 5, 0))
    elif case == "fs":
        _write_csv(tmp_path / "rec.csv", ecg, labels)
        fs = ""
    manifest = tmp_path / "recordings.csv"
    pd.DataFrame([{"path": "rec.csv", "subject": "s1", "fs": fs, **extra}]).to_csv(
        manifest, index=False)
    return manifest


@pytest.mark.parametrize(("case", "message"), [
    ("short", "shorter than one window"),
    ("nan", "contain NaN"),
    ("length", "label track has 2990 samples but the signal"),
    ("code", "label code 5 is not a class"),
    ("fs", "sampling rate missing"),
])
def test_bad_recordings_are_one_line_errors(tmp_path, capsys, case, message):
    manifest = _bad_case(tmp_path, case)
    config = write_yaml(tmp_path / "bad.yaml", tiny_config(manifest))
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert str(tmp_path / ("labels.npy" if case == "length" else "rec.csv")) in err


def test_unknown_manifest_column_and_misplaced_keys(tmp_path, capsys):
    manifest = tmp_path / "recordings.csv"
    pd.DataFrame([{"path": "rec.csv", "sampling_rate": 100}]).to_csv(manifest, index=False)
    config = write_yaml(tmp_path / "bad.yaml", tiny_config(manifest))
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "unknown column 'sampling_rate'" in capsys.readouterr().err
    raw = tiny_config(manifest)
    raw["split"] = {"folds": 5}
    config = write_yaml(tmp_path / "split.yaml", raw)
    assert main(["train", str(config), "--out", str(tmp_path / "run2")]) == 2
    assert "cv.scheme" in capsys.readouterr().err
    config = write_yaml(tmp_path / "workers.yaml", tiny_config(manifest, workers=2))
    assert main(["train", str(config), "--out", str(tmp_path / "run3")]) == 2
    assert "moved to executor.workers" in capsys.readouterr().err


def test_one_class_of_windows_is_refused(tmp_path, capsys):
    recording = make_ecg_study(n_subjects=2, minutes_per_condition=(0.5, 0.5, 0.5), fs=FS,
                               seed=1)
    for item in recording:
        item.labels[:] = 0
    manifest = write_recordings(recording, tmp_path / "data")
    config = write_yaml(tmp_path / "one.yaml", tiny_config(manifest))
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "training needs two classes" in capsys.readouterr().err


# -- building blocks of the recipe -------------------------------------------------------------

def _window_table(n_per_class=30, subjects=("a",), step=2.0):
    rows = []
    for subject in subjects:
        for i in range(2 * n_per_class):
            rows.append({"sample": f"{subject}@{i}", "subject": subject, "recording": subject,
                         "start_s": i * step, "label": int(i >= n_per_class)})
    return pd.DataFrame(rows)


def test_time_validation_is_the_end_of_each_class_stretch_and_purged():
    windows = _window_table()
    fit_rows, val_rows, how = carve_validation(windows, np.arange(len(windows)), "time",
                                               val_fraction=0.15, gap_s=5.0, seed=0)
    assert how == "time" and not set(fit_rows) & set(val_rows)
    assert sorted(val_rows) == [25, 26, 27, 28, 29, 55, 56, 57, 58, 59]  # ceil(0.15 x 30) = 5
    times = windows["start_s"].to_numpy()
    gaps = np.abs(times[fit_rows][:, None] - times[val_rows][None, :])
    assert gaps.min() >= 5.0  # no fitted window shares a sample with a validation window


def test_subject_validation_holds_out_whole_subjects():
    windows = _window_table(n_per_class=5, subjects=[f"s{i}" for i in range(8)])
    fit_rows, val_rows, how = carve_validation(windows, np.arange(len(windows)), "subject",
                                               val_fraction=0.15, gap_s=5.0, seed=0)
    assert how == "subject"
    fit_subjects = set(windows["subject"][fit_rows])
    val_subjects = set(windows["subject"][val_rows])
    assert len(val_subjects) == 1 and not fit_subjects & val_subjects
    assert len(fit_rows) + len(val_rows) == len(windows)
    again = carve_validation(windows, np.arange(len(windows)), "subject", val_fraction=0.15,
                             gap_s=5.0, seed=0)
    assert np.array_equal(again[1], val_rows)  # the same seed, the same validation part


def test_time_blocked_folds_share_no_samples_but_shuffled_windows_do():
    windows = _window_table(n_per_class=50)
    time_folds = cv_folds(windows, "time", folds=5, seed=42, gap_s=5.0)
    assert (time_folds == -1).sum() == 4 * 2  # two windows purged at each of 4 boundaries
    assert train_test_overlap(windows, time_folds, 5.0) == (0.0, 0.0)
    window_folds = cv_folds(windows, "window", folds=5, seed=42, gap_s=5.0)
    mean_shared, share = train_test_overlap(windows, window_folds, 5.0)
    assert mean_shared > 0.4 and share > 0.9


def test_leave_one_subject_out_when_folds_is_null():
    windows = _window_table(n_per_class=3, subjects=["a", "b", "c", "d"])
    folds = cv_folds(windows, "subject", folds=None, seed=42, gap_s=5.0)
    assert sorted(np.unique(folds)) == [0, 1, 2, 3]
    assert (windows.assign(fold=folds).groupby("subject")["fold"].nunique() == 1).all()
    with pytest.raises(DataError, match="cv.folds: 5 subject folds need at least 5 subjects"):
        cv_folds(windows, "subject", folds=5, seed=42, gap_s=5.0)
    with pytest.raises(DataError, match="one subject cannot make subject folds"):
        cv_folds(_window_table(), "subject", folds=2, seed=42, gap_s=5.0)


@pytest.mark.parametrize("mode", NORMALIZER_MODES)
def test_in_network_normalisation_matches_the_fitted_normaliser(mode):
    rng = np.random.default_rng(0)
    images = (rng.normal(-40, 8, (12, 16, 20)) + np.linspace(0, 30, 16)[None, :, None])
    normalizer = SpectrogramNormalizer(mode).fit(images[:8])
    module = SpectrogramStandardize(mode, height=16)
    module.set_statistics(normalizer)
    expected = normalizer.transform(images[8:])
    actual = module(torch.from_numpy(images[8:, None]).float())[:, 0].numpy()
    assert np.allclose(actual, expected, atol=1e-4)


def test_one_subject_resamples_blocks_of_each_recording():
    windows = _window_table(n_per_class=40)  # one subject, 160 s
    groups, unit = bootstrap_groups(windows, block_s=60.0)
    assert unit == "60 s recording block"
    assert sorted(set(groups)) == ["a:0", "a:1", "a:2"]
    groups, unit = bootstrap_groups(_window_table(3, subjects=("a", "b")), block_s=60.0)
    assert unit == "subject" and sorted(set(groups)) == ["a", "b"]


def test_inference_windows_keep_bad_windows_flagged():
    recording = make_ecg_study(n_subjects=1, minutes_per_condition=(0.5, 0.5, 0.5), fs=FS,
                               seed=1)[0]
    recording.signal[1000:1400] = np.nan
    kept = recording_windows(recording, WindowSettings())
    every = recording_windows(recording, WindowSettings(), labelled=False)
    assert len(every) == 43 and (~every.ok).sum() == kept.counts["nan"] > 0
    assert len(kept) == 39 - kept.counts["nan"]


# -- real data (../shared) -------------------------------------------------------------------

def test_drivedb_config_windows_two_classes_in_time_blocks(shared_dir, monkeypatch):
    monkeypatch.chdir(ROOT)  # a shipped config reads its paths from the current folder
    config = load_config("stress_drivedb")
    windows, recordings = prepare_windows(
        config.data.recordings, label_scheme=config.data.label_scheme,
        class_names=config.data.class_names, settings=config.data.windows(),
        params=config.spectrogram.params(), default_fs=config.data.fs)
    assert list(recordings["recording"]) == ["drive17a", "drive17b"]
    assert set(windows["subject"]) == {"drive17"}
    assert set(windows["label"]) == {0, 1}
    folds = cv_folds(windows, "time", folds=config.cv.folds, seed=config.seed,
                     gap_s=config.data.window_s)
    assert set(folds) == {-1, 0, 1, 2, 3, 4}
    assert train_test_overlap(windows, folds, config.data.window_s) == (0.0, 0.0)


def test_wesad_fixture_without_stress_labels_is_refused(shared_dir, tmp_path, capsys):
    config = tiny_config(shared_dir / "data" / "wesad_fixture")
    assert main(["train", str(write_yaml(tmp_path / "wesad.yaml", config)), "--out",
                 str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "S16_git.pkl" in err and "no labelled window" in err


def test_wesad_config_is_valid():
    config = load_config("stress_wesad")
    assert config.model.kwargs["backbones"] == ["resnet50", "efficientnet_b0"]
    assert config.spectrogram.image_size == 224 and config.trainer.max_epochs == 20


def test_the_drives_config_is_leave_one_drive_out_with_three_levels(shared_dir, monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config("stress_drivedb_drives")
    assert config.data.names() == ["rest", "highway", "city"]
    windows, recordings = prepare_windows(
        config.data.recordings, label_scheme=config.data.label_scheme,
        class_names=config.data.names(), settings=config.data.windows(),
        params=config.spectrogram.params(), default_fs=config.data.fs)
    assert set(windows["subject"]) == {"drive05", "drive06", "drive17"}
    by_drive = windows.groupby("subject")["label"].agg(lambda s: set(s))
    assert by_drive["drive05"] == by_drive["drive06"] == {0, 1, 2}
    assert by_drive["drive17"] == {0}  # its driving is neither known city nor highway
    folds = cv_folds(windows, "subject", folds=None, seed=config.seed,
                     gap_s=config.data.window_s)
    # each fold holds out exactly one drive
    held = windows.assign(fold=folds).groupby("fold")["subject"].nunique()
    assert len(held) == 3 and (held == 1).all()
