"""A class read at a fixed specificity: the cut chosen on validation, then applied to test,
to other data and to every prediction."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from medlite.cli import main
from medlite.evaluation.external import evaluate_run
from medlite.evaluation.operating_point import (
    VALIDATION_FILE,
    rates_at,
    threshold_at_specificity,
)


def test_the_cut_by_hand():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.35, 0.6])
    positive = np.array([False] * 5 + [True] * 2)
    cut = threshold_at_specificity(scores, positive, 0.8)
    # 4 of the 5 negatives must fall below the cut: just above 0.4
    assert 0.4 < cut < 0.4 + 1e-12
    assert rates_at(scores, positive, cut) == {"sensitivity": 0.5, "specificity": 0.8}
    assert np.isnan(threshold_at_specificity(scores[positive], positive[positive], 0.8))


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95])
def test_the_cut_is_the_most_sensitive_roc_point_at_the_target_specificity(target):
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.2
    scores = np.round(rng.normal(positive * 1.2, 1.0), 2)  # ties included
    cut = threshold_at_specificity(scores, positive, target)
    rates = rates_at(scores, positive, cut)
    fpr, tpr, _ = roc_curve(positive, scores)
    assert rates["specificity"] >= target
    assert rates["sensitivity"] == pytest.approx(tpr[fpr <= 1 - target].max())


def test_a_run_reads_one_class_at_the_cut_chosen_on_validation(tiny_runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["classification"], run)
    validation = pd.read_csv(run / VALIDATION_FILE)
    splits = pd.read_csv(run / "splits.csv")
    assert set(validation["sample"]) == set(splits.loc[splits["split"] == "val", "sample"])
    names = ["normal", "early", "late"]
    cut = threshold_at_specificity(validation["p_late"].to_numpy(),
                                   validation["label_index"].to_numpy() == names.index("late"),
                                   0.75)

    settings = ["evaluation.positive_class=late", "evaluation.target_specificity=0.75"]
    result, out = evaluate_run(run, split="test", out=tmp_path / "test", overrides=settings)
    table = pd.read_csv(out / "per_sample.csv")
    positive = (table["label"] == "late").to_numpy()
    assert table["flag_late"].tolist() == (table["p_late"] >= cut).tolist()
    point = result.metrics["operating_point"]
    expected = rates_at(table["p_late"].to_numpy(), positive, cut)
    for name in ("sensitivity", "specificity"):
        assert point[name]["value"] == pytest.approx(expected[name], nan_ok=True)
    if 0 < positive.sum() < len(positive):
        assert point["roc_auc"]["value"] == pytest.approx(roc_auc_score(positive,
                                                                        table["p_late"]))
    assert result.info["operating_point"]["threshold"] == pytest.approx(cut)

    images = tmp_path / "images"
    images.mkdir()
    for path in table["image"][:2]:
        shutil.copy(path, images)
    assert main(["predict", str(run), str(images), "--out", str(tmp_path / "pred"),
                 *[arg for s in settings for arg in ("--set", s)]]) == 0
    predicted = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert predicted["flag_late"].tolist() == (predicted["p_late"] >= cut).tolist()


def test_an_unknown_positive_class_is_a_clear_error(tiny_runs, tmp_path, capsys):
    code = main(["evaluate", str(tiny_runs["classification"]), "--out", str(tmp_path / "e"),
                 "--set", "evaluation.positive_class=melanoma"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evaluation.positive_class" in err[0] and "melanoma" in err[0]
