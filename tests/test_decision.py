"""The prior-balanced decision (post-hoc logit adjustment): tau chosen on validation, the
decision moved, the probabilities left alone."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from medlite.cli import main
from medlite.evaluation.decision import TAU_GRID, adjusted_argmax, choose_balanced_decision
from medlite.evaluation.external import evaluate_run
from medlite.evaluation.operating_point import VALIDATION_FILE
from medlite.metrics import classification_metrics


def imbalanced(n: int, seed: int):
    """Probabilities of a calibrated model under a 90/10 prior: the arg-max never names
    the rare class, whose true posterior rarely passes 0.5."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.1).astype(np.int64)
    evidence = rng.normal(labels * 1.5, 1.0)
    odds = np.exp(1.5 * evidence - 1.125) * 0.1 / 0.9  # the exact likelihood ratio x prior
    rare = odds / (1 + odds)
    return np.column_stack([1 - rare, rare]), labels


def test_tau_is_the_grid_value_with_the_best_validation_balanced_accuracy():
    probabilities, labels = imbalanced(600, seed=0)
    decision = choose_balanced_decision(probabilities, labels)
    counts = np.bincount(labels, minlength=2) + 1.0
    prior = counts / counts.sum()
    by_hand = [balanced_accuracy_score(labels, (probabilities * prior ** -t).argmax(1))
               for t in TAU_GRID]
    assert decision.tau == TAU_GRID[int(np.argmax(by_hand))]
    assert decision.validation_balanced_accuracy == pytest.approx(max(by_hand))
    assert decision.validation_balanced_accuracy_argmax == pytest.approx(
        balanced_accuracy_score(labels, probabilities.argmax(1)))
    # the rare class is what the plain arg-max loses; the adjusted decision wins it back
    assert decision.tau > 0.5
    assert (decision.validation_balanced_accuracy
            > decision.validation_balanced_accuracy_argmax + 0.1)
    assert decision.prior == pytest.approx(tuple(prior))
    assert decision.weights.sum() == pytest.approx(1.0)


def test_balanced_classes_keep_the_plain_argmax():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 50)
    probabilities = rng.dirichlet(np.ones(3), size=150)
    decision = choose_balanced_decision(probabilities, labels)
    # an equal prior makes every tau the same decision: the smallest (0) is kept
    assert decision.tau == 0.0
    assert (adjusted_argmax(probabilities, decision.weights) == probabilities.argmax(1)).all()


def test_a_class_missing_from_validation_gets_a_finite_weight():
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    decision = choose_balanced_decision(probabilities, np.array([0, 1, 0]))
    assert np.isfinite(decision.weights).all() and decision.prior[2] == pytest.approx(1 / 6)


def test_metrics_of_the_decision_move_and_those_of_the_probabilities_do_not():
    probabilities, labels = imbalanced(400, seed=2)
    weights = np.array([0.1, 0.9])
    adjusted = classification_metrics(labels, probabilities, ["common", "rare"],
                                      decision_weights=weights)
    plain = classification_metrics(labels, probabilities, ["common", "rare"])
    predicted = (probabilities * weights).argmax(1)
    assert adjusted["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert adjusted["balanced_accuracy"] == pytest.approx(
        balanced_accuracy_score(labels, predicted))
    assert adjusted["sensitivity_rare"] == pytest.approx(predicted[labels == 1].mean())
    assert adjusted["roc_auc"] == plain["roc_auc"] == pytest.approx(
        roc_auc_score(labels, probabilities[:, 1]))
    assert adjusted["ece"] == plain["ece"]
    assert adjusted["balanced_accuracy"] > plain["balanced_accuracy"]


def test_a_run_names_classes_by_the_decision_chosen_on_its_validation_split(tiny_runs,
                                                                           tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_runs["classification"], run)
    names = ["normal", "early", "late"]
    validation = pd.read_csv(run / VALIDATION_FILE)
    decision = choose_balanced_decision(validation[[f"p_{c}" for c in names]].to_numpy(),
                                        validation["label_index"].to_numpy())

    settings = ["evaluation.decision=balanced"]
    result, out = evaluate_run(run, split="test", out=tmp_path / "test", overrides=settings)
    table = pd.read_csv(out / "per_sample.csv")
    probabilities = table[[f"p_{c}" for c in names]].to_numpy()
    expected = (probabilities * decision.weights).argmax(1)
    assert table["predicted"].tolist() == [names[k] for k in expected]
    assert table["correct"].tolist() == (expected == table["label_index"]).tolist()
    assert table["confidence"].to_numpy() == pytest.approx(
        probabilities[np.arange(len(table)), expected])
    assert result.metrics["classification"]["accuracy"]["value"] == pytest.approx(
        (expected == table["label_index"]).mean())
    assert result.info["decision"]["tau"] == decision.tau
    assert "prior_k^-tau" in result.info["aggregation"]

    images = tmp_path / "images"
    images.mkdir()
    for path in table["image"][:3]:
        shutil.copy(path, images)
    assert main(["predict", str(run), str(images), "--out", str(tmp_path / "pred"),
                 "--set", settings[0]]) == 0
    predicted = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    weighted = (predicted[[f"p_{c}" for c in names]].to_numpy() * decision.weights).argmax(1)
    assert predicted["predicted"].tolist() == [names[k] for k in weighted]
