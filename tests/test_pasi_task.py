"""The One-Step PASI task end to end on a tiny synthetic trial: split, jobs, stacking,
leaderboard, report, resume, evaluate, predict on a visit folder, export, bad input."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from medlite.cli import main
from medlite.data.splits import read_splits
from medlite.datasets.pasi_trial import write_pasi_trial
from medlite.ensemble import META_LEARNERS
from medlite.errors import WeightsNotFoundError
from medlite.pasi import REGION_WEIGHTS
from medlite.tasks.base import load_trained_model, train_run
from medlite.tasks.pasi import (
    PasiConfig,
    PasiDataConfig,
    PasiEnsembleConfig,
    check_weights_available,
)

ARCH = "squeezenet1_1"


def tiny_config(data_dir, **ensemble):
    photos, scores = data_dir / "photos.csv", data_dir / "scores.csv"
    config = PasiConfig(
        name="tiny-pasi", seed=3,
        data=PasiDataConfig(photos=photos, scores=scores, tile_size=16, check_images=False),
        ensemble=PasiEnsembleConfig(architectures=[ARCH], heads=["regional", "components"],
                                    folds=2, test_fraction=0.25, split_trials=5, **ensemble))
    config.model.pretrained = False
    config.trainer.max_epochs = 1
    config.trainer.batch_size = 8
    config.trainer.threads = 2
    config.evaluation.bootstrap_resamples = 30
    return config


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    root = tmp_path_factory.mktemp("pasi")
    write_pasi_trial(root / "data", n_subjects=10, visits_per_subject=(3, 3),
                     photo_size=32, seed=1)
    return root


@pytest.fixture(scope="module")
def trained(trial):
    run = trial / "run"
    train_run(tiny_config(trial / "data"), run, progress=False)
    return run


def test_run_holds_split_leaderboard_figures_and_report(trained):
    splits = read_splits(trained / "splits.csv")
    by_subject = splits.groupby("subject")["split"].nunique()
    assert (by_subject == 1).all()
    assert set(splits["split"]) == {"train", "test"}
    assert splits.loc[splits["split"] == "test", "fold"].isna().all()
    assert set(splits.loc[splits["split"] == "train", "fold"]) == {0, 1}

    board = pd.read_csv(trained / "leaderboard.csv")
    assert set(board["model"]) == {*META_LEARNERS, ARCH, f"{ARCH}+components"}
    assert board["mae"].is_monotonic_increasing and list(board["rank"]) == [1, 2, 3, 4, 5, 6]
    assert (board["mae_ci_low"] <= board["mae"]).all()
    assert (board["mae"] <= board["mae_ci_high"]).all()
    for figure in ("agreement", "bland_altman", "trajectories"):
        assert (trained / "figures" / f"{figure}.png").stat().st_size > 10_000
    report = (trained / "report.html").read_text()
    assert "Leaderboard" in report and "responders" in report
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["deployed"] == "ridge_intercept"
    jobs = pd.read_csv(trained / "jobs" / "jobs.csv")
    assert len(jobs) == 4 and (jobs["status"] == "done").all()


def test_visit_pasi_is_equation_2_of_the_composite_predictions(trained):
    composites = pd.read_csv(trained / "predictions" / "composites.csv", dtype={"visit": str})
    visits = pd.read_csv(trained / "predictions" / "visits.csv", dtype={"visit": str})
    for model in ("linear", ARCH, "true"):
        weighted = composites[model].clip(0, 72) * composites["region"].map(REGION_WEIGHTS)
        by_hand = weighted.groupby([composites["subject"], composites["visit"]]).sum()
        merged = visits.set_index(["subject", "visit"])[model]
        assert np.allclose(merged.loc[by_hand.index].to_numpy(), by_hand.to_numpy())


def test_meta_learner_weights_reproduce_its_predictions(trained):
    ensemble = json.loads((trained / "ensemble.json").read_text())
    composites = pd.read_csv(trained / "predictions" / "composites.csv")
    weights = ensemble["meta_learners"]["linear_intercept"]
    by_hand = sum(weights["coefficients"][c] * composites[c] for c in ensemble["columns"])
    by_hand = (by_hand + weights["intercept"]).clip(0, 72)
    assert np.allclose(composites["linear_intercept"], by_hand)
    assert ensemble["meta_learners"]["linear"]["intercept"] == 0.0


def test_trained_ensemble_is_one_module_with_deployed_and_base_outputs(trained):
    task, config, model = load_trained_model(trained)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3)  # deployed + two base learners
    ensemble = json.loads((trained / "ensemble.json").read_text())
    weights = ensemble["meta_learners"]["ridge_intercept"]
    coef = torch.tensor([weights["coefficients"][c] for c in ensemble["columns"]])
    expected = (out[:, 1:].double() @ coef.double() + weights["intercept"]).clamp(0, 72)
    assert torch.allclose(out[:, 0].double(), expected, atol=1e-4)


def test_resume_reruns_only_unfinished_jobs(trial, trained):
    run = trial / "run-resume"
    shutil.copytree(trained, run)
    unfinished = run / "jobs" / f"{ARCH}-fold1"
    (unfinished / "done.json").unlink()
    attempts_before = {p.parent.name: json.loads(p.read_text())
                       for p in (run / "jobs").glob("*/attempts.json")}
    train_run(tiny_config(trial / "data"), run, resume=True, progress=False)
    attempts_after = {p.parent.name: json.loads(p.read_text())
                      for p in (run / "jobs").glob("*/attempts.json")}
    changed = {k for k in attempts_after if attempts_after[k] != attempts_before.get(k)}
    assert changed == {f"{ARCH}-fold1"}
    assert (unfinished / "done.json").is_file()


def test_evaluate_on_visit_tables_via_cli(trial, trained, capsys):
    data = trial / "data"
    out = trial / "evaluated"
    assert main(["evaluate", str(trained), "--data", str(data / "photos.csv"),
                 "--scores", str(data / "scores.csv"), "--out", str(out)]) == 0
    board = pd.read_csv(out / "leaderboard.csv")
    assert len(board) == 6
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_subjects"] == 10


def test_predict_on_visit_folders(trial, trained, tmp_path, capsys):
    photos = pd.read_csv(trial / "data" / "photos.csv", dtype=str)
    visits = []
    for visit in ("0", "4"):
        folder = tmp_path / f"week{visit}"
        rows = photos[(photos["subject"] == "S001") & (photos["visit"] == visit)]
        for row in rows.itertuples():
            (folder / row.region).mkdir(parents=True, exist_ok=True)
            shutil.copy(trial / "data" / row.image, folder / row.region)
        visits += ["--visit", str(folder)]
    out = tmp_path / "pred"
    assert main(["predict", str(trained), *visits, "--out", str(out)]) == 0
    table = pd.read_csv(out / "visit_predictions.csv")
    assert list(table["visit"]) == ["week0", "week4"]
    by_hand = sum(w * table[f"regional_{r}"] for r, w in REGION_WEIGHTS.items() if r != "head")
    assert np.allclose(table["pasi"], by_hand, atol=0.02)
    expected_change = 100 * (table["pasi"][0] - table["pasi"][1]) / table["pasi"][0]
    assert table["percent_change_from_first"][1] == pytest.approx(expected_change, abs=0.1)
    assert (out / "week0_upper.png").is_file()
    assert main(["predict", str(trained), *visits, "--out", str(out)]) == 2  # no overwrite
    assert main(["predict", str(trained), "--visit", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "p2")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_export_onnx_matches_pytorch(trained, capsys):
    assert main(["export", str(trained)]) == 0
    assert "max abs difference" in capsys.readouterr().out


def test_data_check_lists_every_problem(trial, tmp_path, capsys):
    data = trial / "data"
    assert main(["data", "check", str(data / "photos.csv"), str(data / "scores.csv"),
                 "--no-decode"]) == 0
    assert "OK" in capsys.readouterr().out
    scores = pd.read_csv(data / "scores.csv", dtype=str)
    scores.loc[0, "erythema"] = "7"
    scores.loc[1, "region"] = "elbow"
    bad = tmp_path / "scores.csv"
    scores.to_csv(bad, index=False)
    assert main(["data", "check", str(data / "photos.csv"), str(bad), "--no-decode"]) == 2
    err = capsys.readouterr().err
    assert "erythema" in err and "elbow" in err and str(bad) in err
    assert "Traceback" not in err


def test_missing_pretrained_weights_fail_before_training(trial, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    config = tiny_config(trial / "data")
    config.model.pretrained = True
    config.ensemble.architectures = ["resnet18", ARCH]
    with pytest.raises(WeightsNotFoundError) as info:
        check_weights_available(config)
    message = str(info.value)
    assert "resnet18" in message and "model.pretrained: false" in message
    assert len(info.value.problems) == 2


def test_visit_scores_equation_2_and_per_visit_mean():
    from medlite.tasks.pasi import visit_scores

    rows = pd.DataFrame({"subject": ["a"] * 3 + ["b"] * 3, "visit": ["0"] * 6,
                         "region": ["upper", "trunk", "lower"] * 2})
    regional = np.array([10.0, 20.0, 30.0, 80.0, -2.0, 0.0])
    by_region = visit_scores(rows, regional, per_visit=False)
    # 0.2*10 + 0.3*20 + 0.4*30 = 20; predictions are clipped to 0-72 first: 0.2*72 = 14.4
    assert by_region["pasi"].tolist() == pytest.approx([20.0, 14.4])
    per_visit = visit_scores(rows, np.array([9.0, 12.0, 15.0, 1.0, 2.0, 3.0]), per_visit=True)
    assert per_visit["pasi"].tolist() == pytest.approx([12.0, 2.0])


def test_components_head_computes_the_regional_score_within_ranges():
    from medlite.tasks.pasi import regional_from_outputs

    outputs = torch.tensor([[2.0, 1.0, 1.0, 2.0],      # (2+1+1) x 2 = 8
                            [5.0, -1.0, 4.5, 7.0]])    # clipped: (4+0+4) x 6 = 48
    assert regional_from_outputs(outputs, "components").tolist() == pytest.approx([8.0, 48.0])
    assert regional_from_outputs(torch.tensor([[80.0], [-3.0]]), "regional").tolist() == [72, 0]
