"""The One-Step PASI task end to end on a small synthetic trial: split, the plan of
(architecture, head, fold) fits and the stacking fit, out-of-fold model choice, leaderboard,
report, learning, resume, evaluate, predict on visit folders, export, bad input."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import medlite
from medlite.cli import main
from medlite.config import OptimizerConfig, SchedulerConfig
from medlite.data.splits import read_splits
from medlite.datasets.pasi_trial import write_pasi_trial
from medlite.ensemble import META_LEARNERS
from medlite.ensemble.calibration import VisitCalibration
from medlite.errors import WeightsNotFoundError
from medlite.evaluation.pasi_metrics import visit_scores
from medlite.inference import VisitInput
from medlite.models.pasi_ensemble import regional_from_outputs
from medlite.models.weights import check_pretrained_available
from medlite.pasi import REGION_WEIGHTS
from medlite.tasks.pasi import PasiConfig, PasiDataConfig, PasiEnsembleConfig
from medlite.training.runner import train_run

ARCH = "mobilenet_v3_small"
COLUMNS = [ARCH, f"{ARCH}+components"]


def tiny_config(data_dir, **ensemble):
    photos, scores = data_dir / "photos.csv", data_dir / "scores.csv"
    config = PasiConfig(
        name="tiny-pasi", seed=3,
        data=PasiDataConfig(photos=photos, scores=scores, tile_size=32, check_images=False),
        ensemble=PasiEnsembleConfig(architectures=[ARCH], heads=["regional", "components"],
                                    folds=2, test_fraction=0.25, split_trials=5, **ensemble),
        optimizer=OptimizerConfig(name="adam", lr=2e-3),
        scheduler=SchedulerConfig(name="cosine", min_lr=1e-5))
    config.model.pretrained = False
    config.trainer.max_epochs = 6
    config.trainer.batch_size = 16
    config.trainer.threads = 2
    config.trainer.early_stopping_patience = None
    config.evaluation.bootstrap_resamples = 30
    return config


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    root = tmp_path_factory.mktemp("pasi")
    write_pasi_trial(root / "data", n_subjects=16, visits_per_subject=(4, 4),
                     photo_size=64, seed=1)
    return root


@pytest.fixture(scope="module")
def trained(trial):
    run = trial / "run"
    result = train_run(tiny_config(trial / "data"), run, progress=False)
    return run, result


def test_run_holds_split_plan_leaderboard_figures_and_report(trained):
    run, _ = trained
    splits = read_splits(run / "splits.csv")
    assert (splits.groupby("subject")["split"].nunique() == 1).all()
    assert set(splits["split"]) == {"train", "test"}
    assert splits.loc[splits["split"] == "test", "fold"].isna().all()
    assert set(splits.loc[splits["split"] == "train", "fold"]) == {0, 1}

    plan = json.loads((run / "plan.json").read_text())
    assert [f["key"] for f in plan] == [f"{ARCH}-fold0", f"{ARCH}-components-fold0",
                                        f"{ARCH}-fold1", f"{ARCH}-components-fold1",
                                        "stacking"]
    assert plan[-1]["kind"] == "stacking" and len(plan[-1]["depends_on"]) == 4
    # With a cosine schedule and no early stopping each fit trains on its other fold, keeps
    # its last epoch and only watches (and then predicts) its own.
    fold0 = pd.read_csv(run / "fits" / f"{ARCH}-fold0" / "samples.csv")
    train = splits[splits["split"] == "train"].set_index("sample")
    roles = fold0.assign(fold=train.loc[fold0["sample"], "fold"].to_numpy())
    assert set(roles.loc[roles["role"].isin(["predict", "val"]), "fold"]) == {0}
    assert set(roles.loc[roles["role"] == "train", "fold"]) == {1}
    assert plan[0]["params"]["keep"] == "last"
    assert not (run / "fits" / f"{ARCH}-fold0" / "checkpoints").exists()
    fits = pd.read_csv(run / "fits.csv")
    assert len(fits) == 5 and (fits["status"] == "done").all()

    board = pd.read_csv(run / "leaderboard.csv")
    assert set(board["model"]) == {*META_LEARNERS, *COLUMNS}
    assert board["oof_mae"].is_monotonic_increasing and list(board["rank"]) == [1, 2, 3, 4, 5, 6]
    assert (board["mae_ci_low"] <= board["mae"]).all()
    assert (board["mae"] <= board["mae_ci_high"]).all()
    for figure in ("agreement", "bland_altman", "trajectories"):
        assert (run / "figures" / f"{figure}.png").stat().st_size > 10_000
    report = (run / "report.html").read_text()
    assert "Leaderboard" in report and "responders" in report and "out-of-fold" in report


def test_best_learners_are_chosen_out_of_fold_never_on_test(trained):
    run, result = trained
    selection = json.loads((run / "fits" / "stacking" / "ensemble.json").read_text())
    oof = pd.read_csv(run / "fits" / "stacking" / "out_of_fold.csv", dtype={"visit": str})
    truth = visit_scores(oof, oof["true"].to_numpy(), per_visit=False)["pasi"].to_numpy()
    by_hand = {name: np.abs(visit_scores(oof, oof[name].to_numpy(), False)["pasi"]
                            - truth).mean() for name in [*COLUMNS, *META_LEARNERS]}
    assert selection["out_of_fold_error"] == pytest.approx(by_hand)
    best_base = min(COLUMNS, key=by_hand.get)
    best_meta = min(META_LEARNERS, key=by_hand.get)
    assert (selection["best_base"], selection["best_meta"]) == (best_base, best_meta)
    groups = list(result.metrics)
    assert groups[0] == "deployed: ridge_intercept"
    assert f"best base (out of fold): {best_base}" in groups
    # The headline figures are the chosen models' test metrics, not the test-best ones.
    table = pd.read_csv(run / "per_sample.csv")
    mae = np.abs(table[best_base] - table["true"]).mean()
    assert result.metrics[f"best base (out of fold): {best_base}"]["mae"]["value"] == \
        pytest.approx(mae)


def test_the_ensemble_learns_well_beyond_a_constant_guess(trained):
    run, result = trained
    table = pd.read_csv(run / "per_sample.csv")
    constant = np.abs(table["true"] - table["true"].mean()).mean()
    assert result.metrics["deployed: ridge_intercept"]["mae"]["value"] < 0.8 * constant


def test_visit_pasi_is_equation_2_of_the_regional_predictions(trial, trained):
    run, _ = trained
    predictor = medlite.load_run(run)
    photos = pd.read_csv(trial / "data" / "photos.csv", dtype=str)
    rows = photos[(photos["subject"] == "S001") & (photos["visit"] == photos["visit"].iloc[0])]
    visit = VisitInput({r: [trial / "data" / p for p in g["image"]]
                        for r, g in rows.groupby("region")})
    output = predictor.predict_one(visit)
    by_hand = sum(REGION_WEIGHTS[r] * v for r, v in output.regional.items())
    # Equation 2 gives the ensemble's PASI; the run's visit calibration then maps it.
    assert output.uncalibrated == pytest.approx(by_hand)
    assert output.pasi == pytest.approx(float(predictor.postprocessing.predict(by_hand)[0]))
    assert set(output.components) == {"upper", "trunk", "lower"}
    assert set(output.members) == {"deployed", "deployed_uncalibrated", *COLUMNS,
                                   *META_LEARNERS}
    assert output.severity in ("clear", "mild", "moderate-to-severe")


def test_meta_learner_weights_reproduce_the_ensemble_outputs(trained):
    run, _ = trained
    selection = json.loads((run / "fits" / "stacking" / "ensemble.json").read_text())
    model = medlite.load_run(run).network
    with torch.no_grad():
        outputs, components = model.predict_parts(torch.randn(2, 3, 64, 64))
        plain = model(torch.randn(2, 3, 64, 64))
    assert plain.shape == (2, 3) and components.shape == (2, 4)
    for index, name in enumerate(model.meta_names):
        weights = selection["meta_learners"][name]
        coef = torch.tensor([weights["coefficients"][c] for c in selection["columns"]],
                            dtype=torch.float64)
        expected = (outputs[:, 1:3].double() @ coef + weights["intercept"]).clamp(0, 72)
        assert torch.allclose(outputs[:, 3 + index].double(), expected, atol=1e-4)
    deployed = selection["meta_learners"]["ridge_intercept"]
    coef = torch.tensor([deployed["coefficients"][c] for c in selection["columns"]])
    assert torch.allclose(outputs[:, 0].double(), (outputs[:, 1:3].double() @ coef.double()
                                                   + deployed["intercept"]).clamp(0, 72),
                          atol=1e-4)
    assert selection["meta_learners"]["linear"]["intercept"] == 0.0


def test_resume_reruns_only_unfinished_fits(trial, trained):
    run, result = trained
    copy = trial / "run-resume"
    shutil.copytree(run, copy)
    unfinished = copy / "fits" / f"{ARCH}-fold1"
    (unfinished / "done.json").unlink()
    attempts_before = {p.parent.name: json.loads(p.read_text())
                       for p in (copy / "fits").glob("*/attempts.json")}
    resumed = train_run(tiny_config(trial / "data"), copy, resume=True, progress=False)
    attempts_after = {p.parent.name: json.loads(p.read_text())
                      for p in (copy / "fits").glob("*/attempts.json")}
    changed = {k for k in attempts_after if attempts_after[k] != attempts_before.get(k)}
    assert changed == {f"{ARCH}-fold1"}
    assert resumed.metrics == result.metrics  # seeded by its key: the same fit again


def test_evaluate_on_visit_tables_via_cli(trial, trained, capsys):
    run, _ = trained
    data = trial / "data"
    out = trial / "evaluated"
    arguments = ["evaluate", str(run), "--data", str(data / "photos.csv"), "--scores",
                 str(data / "scores.csv"), "--out", str(out)]
    assert main(arguments) == 2  # the run trained on these subjects
    assert "overlap the run's training" in capsys.readouterr().err
    assert main([*arguments, "--allow-overlap"]) == 0
    assert len(pd.read_csv(out / "leaderboard.csv")) == 6
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n_subjects"] == 16 and saved["overlap"]["n"] > 0
    assert not (run / "evaluated").exists() and not (data / ".medlite_composites").exists()


def test_predict_on_visit_folders(trial, trained, tmp_path, capsys):
    run, _ = trained
    photos = pd.read_csv(trial / "data" / "photos.csv", dtype=str)
    visits = []
    for visit in sorted(photos["visit"].unique(), key=int)[:2]:
        folder = tmp_path / f"week{visit}"
        rows = photos[(photos["subject"] == "S001") & (photos["visit"] == visit)]
        for row in rows.itertuples():
            (folder / row.region).mkdir(parents=True, exist_ok=True)
            shutil.copy(trial / "data" / row.image, folder / row.region)
        visits += ["--visit", str(folder)]
    out = tmp_path / "pred"
    assert main(["predict", str(run), *visits, "--out", str(out)]) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert list(table["name"]) == [visits[1].split("/")[-1], visits[3].split("/")[-1]]
    by_hand = sum(w * table[f"regional_{r}"] for r, w in REGION_WEIGHTS.items() if r != "head")
    # Equation 2 gives the ensemble's PASI, which the run's visit calibration then maps.
    assert np.allclose(table["pasi_uncalibrated"], by_hand, atol=0.02)
    saved = json.loads((run / "fits" / "stacking" / "ensemble.json").read_text())
    calibration = VisitCalibration.from_json(saved["calibration"])
    assert np.allclose(table["pasi"], calibration.predict(table["pasi_uncalibrated"]), atol=0.01)
    assert np.allclose(table["clear_probability"],
                       calibration.clear_probability(table["pasi_uncalibrated"]), atol=1e-3)
    assert table["p_pasi90_from_first"][1] == pytest.approx(calibration.response_probability(
        table["pasi_uncalibrated"][0], table["pasi_uncalibrated"][1], 90), abs=1e-3)
    expected_change = 100 * (table["pasi"][0] - table["pasi"][1]) / table["pasi"][0]
    assert table["percent_change_from_first"][1] == pytest.approx(expected_change, abs=0.2)
    assert {"upper_erythema", "lower_area", "severity"} <= set(table.columns)
    assert (out / f"{table['name'][0]}_upper.png").is_file()
    assert main(["predict", str(run), *visits, "--out", str(out)]) == 2  # no overwrite
    assert main(["predict", str(run), "--visit", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "p2")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_export_onnx_matches_pytorch(tiny_runs, tmp_path, capsys):
    # The smallest ensemble (two networks and their combination) keeps the dynamo
    # exporter's trace (about 15 s a network here) short; the graph is the same shape as any other.
    out = tmp_path / "ensemble.onnx"
    assert main(["export", str(tiny_runs["pasi"]), "--out", str(out)]) == 0
    assert out.stat().st_size > 0
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


def test_missing_pretrained_weights_fail_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(WeightsNotFoundError) as info:
        check_pretrained_available(["resnet18", ARCH], pretrained=True, weights_path=None)
    message = str(info.value)
    assert "resnet18" in message and "model.pretrained: false" in message
    assert len(info.value.problems) == 2


def test_visit_scores_equation_2_and_per_visit_mean():
    rows = pd.DataFrame({"subject": ["a"] * 3 + ["b"] * 3, "visit": ["0"] * 6,
                         "region": ["upper", "trunk", "lower"] * 2})
    regional = np.array([10.0, 20.0, 30.0, 80.0, -2.0, 0.0])
    by_region = visit_scores(rows, regional, per_visit=False)
    # 0.2*10 + 0.3*20 + 0.4*30 = 20; predictions are clipped to 0-72 first: 0.2*72 = 14.4
    assert by_region["pasi"].tolist() == pytest.approx([20.0, 14.4])
    per_visit = visit_scores(rows, np.array([9.0, 12.0, 15.0, 1.0, 2.0, 3.0]), per_visit=True)
    assert per_visit["pasi"].tolist() == pytest.approx([12.0, 2.0])


def test_components_head_computes_the_regional_score_within_ranges():
    outputs = torch.tensor([[2.0, 1.0, 1.0, 2.0],      # (2+1+1) x 2 = 8
                            [5.0, -1.0, 4.5, 7.0]])    # clipped: (4+0+4) x 6 = 48
    assert regional_from_outputs(outputs, "components").tolist() == pytest.approx([8.0, 48.0])
    assert regional_from_outputs(torch.tensor([[80.0], [-3.0]]), "regional").tolist() == [72, 0]


def test_evaluation_without_intervals(trained, tmp_path):
    run, _ = trained
    assert main(["evaluate", str(run), "--out", str(tmp_path / "none"), "--set",
                 "evaluation.bootstrap_resamples=0"]) == 0
    saved = json.loads((tmp_path / "none" / "metrics.json").read_text())
    for name, group in saved["metrics"].items():
        metric = "coverage" if name == "conformal" else "mae"
        assert group[metric]["ci_low"] is None and group[metric]["resamples"] == 0
    board = pd.read_csv(tmp_path / "none" / "leaderboard.csv")
    assert board["mae_ci_low"].isna().all() and board["mae"].notna().all()


def test_a_schedule_that_watches_validation_gets_an_inner_split(trial):
    from medlite.errors import ConfigError
    from medlite.tasks.pasi.recipe import PasiTask

    config = tiny_config(trial / "data")
    config.trainer.early_stopping_patience = 5  # watches validation: an inner split
    task = PasiTask()
    samples = task.split(task.load_samples(config), config)
    plan = task.plan(config, samples)
    fold = samples.set_index("sample")["fold"]
    for fit in plan[:-1]:
        k = fit.params["fold"]
        assert fit.params["keep"] == "best"
        assert set(fold.loc[list(fit.predict)]) == {k}
        assert set(fold.loc[list(fit.train + fit.val)]) == {1 - k}
        train_subjects = set(samples.set_index("sample").loc[list(fit.train), "subject"])
        val_subjects = set(samples.set_index("sample").loc[list(fit.val), "subject"])
        assert val_subjects and not train_subjects & val_subjects
    config.ensemble.inner_val_fraction = 0.0
    with pytest.raises(ConfigError, match="inner_val_fraction"):
        task.plan(config, samples)
