"""Subgroup metrics: per-value metrics equal to an independent computation on that value's
rows, the flag for a subgroup whose interval lies below the whole, columns taken from the
data by sample or subject, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, mean_absolute_error

from medlite.errors import ConfigError, DataError
from medlite.evaluation.evaluator import record, summarize
from medlite.evaluation.subgroups import (
    attach_subgroup_columns,
    lower_is_better,
    subgroup_metrics,
)
from medlite.tasks import get_task

CLASSES = ["normal", "early", "late"]


def classification_table(n_per_site: int = 30, seed: int = 0) -> pd.DataFrame:
    """Site A mostly right, site B mostly wrong; one sample per subject."""
    rng = np.random.default_rng(seed)
    rows = []
    for site, right in (("A", 0.95), ("B", 0.3)):
        for i in range(n_per_site):
            truth = int(rng.integers(0, 3))
            predicted = truth if rng.random() < right else (truth + 1) % 3
            probabilities = np.full(3, 0.1)
            probabilities[predicted] = 0.8
            rows.append({"sample": f"{site}{i}", "subject": f"{site}{i}",
                         "label": CLASSES[truth], "label_index": truth,
                         "predicted": CLASSES[predicted], "correct": predicted == truth,
                         "confidence": 0.8,
                         **{f"p_{c}": p for c, p in zip(CLASSES, probabilities, strict=True)}})
    return pd.DataFrame(rows)


def classification_config(**evaluation):
    return get_task("classification").config_class.model_validate({
        "task": "classification", "data": {"manifest": "unused.csv", "class_names": CLASSES},
        "evaluation": {"bootstrap_resamples": 200, **evaluation}})


def test_every_metric_per_subgroup_with_the_worse_site_flagged(tmp_path):
    table = classification_table()
    samples = table[["sample", "subject"]].assign(site=table["sample"].str[0])
    config = classification_config(subgroups=["site"])
    task = get_task("classification")
    result = summarize(task, config, table.drop(columns=[]), tmp_path, evaluated="test split",
                       samples=samples)
    sites = {entry["value"]: entry for entry in result.info["subgroups"]["site"]}
    assert set(sites) == {"A", "B"}
    for site, entry in sites.items():
        rows = table[table["sample"].str[0] == site]
        accuracy = entry["metrics"]["classification"]["accuracy"]
        assert accuracy["value"] == pytest.approx(
            accuracy_score(rows["label_index"], rows[[f"p_{c}" for c in CLASSES]]
                           .to_numpy().argmax(1)))
        assert accuracy["ci_low"] <= accuracy["value"] <= accuracy["ci_high"]
        assert entry["n_samples"] == entry["n_subjects"] == 30
    assert "classification.accuracy" in sites["B"]["flagged"]
    assert sites["A"]["flagged"] == []
    # The per-sample table carries the column; metrics.json and the report show it.
    assert list(result.per_sample["site"].unique()) == ["A", "B"]
    record(result, tmp_path, config, run_dir=tmp_path, title="t")
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["subgroups"]["site"][1]["flagged"] == sites["B"]["flagged"]
    report = (tmp_path / "report.html").read_text()
    assert "<h2>Subgroups</h2>" in report and "class='flagged'" in report


def test_error_metrics_are_flagged_when_their_interval_lies_above():
    table = pd.DataFrame({"subject": [f"s{i}" for i in range(40)],
                          "clinic": ["x"] * 20 + ["y"] * 20,
                          "error": np.r_[np.full(20, 0.5), np.full(20, 5.0)]
                          + np.random.default_rng(1).normal(0, 0.1, 40)})

    def metrics_of(rows):
        value = mean_absolute_error(np.zeros(len(rows)), rows["error"])
        spread = 0.2
        return {"visit": {"mae": {"value": value, "ci_low": value - spread,
                                  "ci_high": value + spread}}}

    overall = metrics_of(table)
    groups = subgroup_metrics(table, ["clinic"], metrics_of, overall)
    flagged = {entry["value"]: entry["flagged"] for entry in groups["clinic"]}
    assert flagged == {"x": [], "y": ["visit.mae"]}
    assert lower_is_better("mae") and lower_is_better("ece") and not lower_is_better("dice")


def test_small_subgroups_are_counted_not_scored_and_missing_values_form_their_own():
    table = pd.DataFrame({"subject": ["a", "b", "c", "d"], "site": ["x", "x", "x", None]})
    groups = subgroup_metrics(table, ["site"], lambda rows: {"g": {}}, {}, min_subjects=2)
    by_value = {entry["value"]: entry for entry in groups["site"]}
    assert by_value["x"]["metrics"] == {"g": {}}
    assert by_value["(missing)"]["n_subjects"] == 1 and by_value["(missing)"]["metrics"] == {}


def test_columns_come_from_the_data_by_sample_or_subject():
    table = pd.DataFrame({"sample": ["s1", "s2", "s3"], "subject": ["1", "1", "2"]})
    by_sample = pd.DataFrame({"sample": ["s3", "s1", "s2"], "subject": ["2", "1", "1"],
                              "camera": ["c", "a", "b"]})
    assert list(attach_subgroup_columns(table, by_sample, ["camera"])["camera"]) == \
        ["a", "b", "c"]
    visits = pd.DataFrame({"subject": [1, 1, 2], "visit": [0, 1, 0],
                           "skin_tone": ["dark", "dark", "light"]})
    per_visit = pd.DataFrame({"subject": ["1", "2", "1"], "visit": [0, 0, 1]})
    assert list(attach_subgroup_columns(per_visit, visits, ["skin_tone"])["skin_tone"]) == \
        ["dark", "light", "dark"]
    with pytest.raises(ConfigError, match="evaluation.subgroups: no column 'site'"):
        attach_subgroup_columns(table, by_sample, ["site"])
    varying = visits.assign(skin_tone=["dark", "light", "light"])
    with pytest.raises(DataError, match="several values for subject '1'"):
        attach_subgroup_columns(per_visit, varying, ["skin_tone"])


def test_a_pasi_run_reports_metrics_per_skin_tone(tiny_runs, tmp_path):
    """The synthetic trial records each subject's skin tone; evaluating a trained PASI run
    by it gives each tone's visit MAE as computed by hand from the per-sample table."""
    from medlite.evaluation.external import evaluate_run

    result, _ = evaluate_run(tiny_runs["pasi"], split="test", out=tmp_path / "by-tone",
                             overrides=["evaluation.subgroups=[skin_tone]",
                                        "evaluation.subgroup_min_subjects=1"])
    table = result.per_sample
    assert set(table["skin_tone"]) <= {"light", "medium", "dark"}
    entries = result.info["subgroups"]["skin_tone"]
    assert sum(entry["n_samples"] for entry in entries) == len(table)
    deployed_group = next(g for g in result.metrics if g.startswith("deployed"))
    for entry in entries:
        rows = table[table["skin_tone"] == entry["value"]]
        mae = entry["metrics"][deployed_group]["mae"]["value"]
        assert mae == pytest.approx(mean_absolute_error(rows["true"], rows["deployed"]))
