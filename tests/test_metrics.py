"""Segmentation, regression and bootstrap metrics against hand computations and other libraries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    jaccard_score,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
)
from torchmetrics.classification import MulticlassJaccardIndex
from torchmetrics.functional.regression import concordance_corrcoef
from torchmetrics.functional.segmentation import dice_score, mean_iou

from medlite.metrics import (
    SEGMENTATION_CLASS_NAMES,
    bootstrap_by_subject,
    bootstrap_distribution,
    metrics_with_ci,
    per_image_scores,
    regression_metrics,
    segmentation_counts,
    segmentation_scores,
    segmentation_statistic,
)

torch.set_num_threads(1)


def random_masks(n_images: int, num_classes: int, size: int = 16, seed: int = 0):
    """Correlated random (pred, target) int64 label maps (N, size, size)."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (n_images, size, size), generator=generator)
    noise = torch.randint(0, num_classes, (n_images, size, size), generator=generator)
    keep = torch.rand(n_images, size, size, generator=generator) < 0.6
    return torch.where(keep, target, noise), target


# ---------------------------------------------------------------- segmentation


def test_counts_and_scores_of_a_hand_made_image():
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]])
    pred = torch.tensor([[[0, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]])
    counts = segmentation_counts(pred, target, num_classes=2)
    # lesion: tp 3, fp 1 (0,1), fn 1 (1,3); background: tp 11, fp 1, fn 1.
    assert counts.dtype == torch.int64 and counts.shape == (1, 2, 3)
    assert counts.tolist() == [[[11, 1, 1], [3, 1, 1]]]
    scores = segmentation_scores(counts, "image", SEGMENTATION_CLASS_NAMES)
    assert scores["iou_lesion"] == pytest.approx(3 / 5)
    assert scores["dice_lesion"] == pytest.approx(6 / 8)
    assert scores["iou_background"] == pytest.approx(11 / 13)
    assert scores["dice_background"] == pytest.approx(22 / 24)
    assert scores["miou"] == pytest.approx((3 / 5 + 11 / 13) / 2)
    assert scores["mdice"] == pytest.approx((6 / 8 + 22 / 24) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(14 / 16)


def test_default_class_names_and_key_set():
    pred, target = random_masks(2, 3)
    scores = segmentation_scores(segmentation_counts(pred, target, 3))
    assert set(scores) == {
        *(f"{metric}_class{c}" for metric in ("iou", "dice") for c in range(3)),
        "miou",
        "mdice",
        "pixel_accuracy",
    }


def test_dataset_aggregate_matches_sklearn_and_torchmetrics():
    pred, target = random_masks(5, 3, seed=1)
    scores = segmentation_scores(segmentation_counts(pred, target, 3), "dataset")
    flat_true, flat_pred = target.reshape(-1).numpy(), pred.reshape(-1).numpy()
    iou = jaccard_score(flat_true, flat_pred, average=None)
    dice = f1_score(flat_true, flat_pred, average=None)
    tm_iou = MulticlassJaccardIndex(num_classes=3, average=None)(pred, target).numpy()
    tm_dice = dice_score(
        pred,
        target,
        num_classes=3,
        average="none",
        input_format="index",
        aggregation_level="global",
    )[0].numpy()
    for c in range(3):
        assert scores[f"iou_class{c}"] == pytest.approx(iou[c])
        assert scores[f"iou_class{c}"] == pytest.approx(tm_iou[c], abs=1e-6)
        assert scores[f"dice_class{c}"] == pytest.approx(dice[c])
        assert scores[f"dice_class{c}"] == pytest.approx(tm_dice[c], abs=1e-6)
    assert scores["miou"] == pytest.approx(iou.mean())
    assert scores["mdice"] == pytest.approx(f1_score(flat_true, flat_pred, average="macro"))
    assert scores["pixel_accuracy"] == pytest.approx(accuracy_score(flat_true, flat_pred))


def test_image_aggregate_matches_torchmetrics_samplewise_and_sklearn_per_image():
    pred, target = random_masks(4, 2, seed=2)
    counts = segmentation_counts(pred, target, 2)
    per_image = per_image_scores(counts, SEGMENTATION_CLASS_NAMES)
    tm_iou = mean_iou(pred, target, num_classes=2, per_class=True, input_format="index").numpy()
    tm_dice = dice_score(pred, target, num_classes=2, average="none", input_format="index").numpy()
    for c, name in enumerate(SEGMENTATION_CLASS_NAMES):
        np.testing.assert_allclose(per_image[f"iou_{name}"], tm_iou[:, c], atol=1e-6)
        np.testing.assert_allclose(per_image[f"dice_{name}"], tm_dice[:, c], atol=1e-6)
    for n in range(4):
        truth, guess = target[n].reshape(-1).numpy(), pred[n].reshape(-1).numpy()
        assert per_image["miou"][n] == pytest.approx(jaccard_score(truth, guess, average="macro"))
        assert per_image["pixel_accuracy"][n] == pytest.approx(accuracy_score(truth, guess))
    scores = segmentation_scores(counts, "image", SEGMENTATION_CLASS_NAMES)
    assert scores["iou_lesion"] == pytest.approx(tm_iou[:, 1].mean(), abs=1e-6)
    assert scores["mdice"] == pytest.approx(tm_dice.mean(), abs=1e-6)
    # Without empty classes, mean of per-class means == mean over images of per-image mIoU.
    assert scores["miou"] == pytest.approx(
        mean_iou(pred, target, num_classes=2, input_format="index").mean().item(), abs=1e-6
    )


def two_images_one_without_lesion():
    """Image 0: all background, predicted so. Image 1: lesion IoU 1/2, Dice 2/3."""
    pred = torch.zeros(2, 4, 4, dtype=torch.long)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    pred[1, 0, 0] = 1
    target[1, 0, :2] = 1
    return pred, target


def test_empty_class_is_ignored_by_default_like_torchmetrics():
    pred, target = two_images_one_without_lesion()
    counts = segmentation_counts(pred, target, 2)
    per_image = per_image_scores(counts, SEGMENTATION_CLASS_NAMES)
    assert math.isnan(per_image["iou_lesion"][0]) and math.isnan(per_image["dice_lesion"][0])
    assert per_image["miou"][0] == 1.0  # background only
    tm_dice = dice_score(pred, target, num_classes=2, average="none", input_format="index")
    assert torch.isnan(tm_dice[0, 1])
    tm_iou = mean_iou(pred, target, num_classes=2, per_class=True, input_format="index")
    assert tm_iou[0, 1] == -1  # torchmetrics' "absent" sentinel
    np.testing.assert_allclose(
        per_image["miou"], mean_iou(pred, target, num_classes=2, input_format="index"), atol=1e-6
    )

    scores = segmentation_scores(counts, "image", SEGMENTATION_CLASS_NAMES)
    assert scores["iou_lesion"] == pytest.approx(1 / 2)
    assert scores["dice_lesion"] == pytest.approx(2 / 3)
    assert scores["dice_lesion"] == pytest.approx(np.nanmean(tm_dice[:, 1].numpy()))
    assert scores["iou_background"] == pytest.approx((1 + 14 / 15) / 2)
    assert scores["miou"] == pytest.approx((1 / 2 + (1 + 14 / 15) / 2) / 2)


def test_empty_score_one_counts_an_empty_image_as_perfect():
    pred, target = two_images_one_without_lesion()
    counts = segmentation_counts(pred, target, 2)
    scores = segmentation_scores(counts, "image", SEGMENTATION_CLASS_NAMES, empty_score=1.0)
    assert scores["iou_lesion"] == pytest.approx((1 + 1 / 2) / 2)
    assert scores["dice_lesion"] == pytest.approx((1 + 2 / 3) / 2)
    zero = segmentation_scores(counts, "image", SEGMENTATION_CLASS_NAMES, empty_score=0.0)
    assert zero["iou_lesion"] == pytest.approx(1 / 4)
    # Dataset aggregation sums counts first, so a per-image empty class does not matter.
    for empty_score in (float("nan"), 1.0, 0.0):
        dataset = segmentation_scores(counts, "dataset", SEGMENTATION_CLASS_NAMES, empty_score)
        assert dataset["iou_lesion"] == pytest.approx(1 / 2)
        assert dataset["pixel_accuracy"] == pytest.approx(31 / 32)


def test_class_absent_from_every_image_is_nan_and_left_out_of_the_mean():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    counts = segmentation_counts(target, target, 2)
    for aggregate in ("image", "dataset"):
        scores = segmentation_scores(counts, aggregate, SEGMENTATION_CLASS_NAMES)
        assert math.isnan(scores["iou_lesion"])
        assert scores["miou"] == 1.0 and scores["pixel_accuracy"] == 1.0


def test_counts_accept_numpy_and_concatenate_over_batches():
    pred, target = random_masks(4, 2, seed=3)
    whole = segmentation_counts(pred.numpy().astype(np.uint8), target.numpy(), 2)
    batches = torch.cat(
        [segmentation_counts(pred[:3], target[:3], 2), segmentation_counts(pred[3:], target[3:], 2)]
    )
    assert torch.equal(whole, batches)
    assert torch.equal(whole.sum(dim=(1, 2)) - whole[..., 1].sum(1), torch.full((4,), 256))


@pytest.mark.parametrize(
    ("pred", "target", "message"),
    [
        (torch.rand(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), "integer"),
        (torch.full((1, 4, 4), 2), torch.zeros(1, 4, 4, dtype=torch.long), "outside"),
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long), "shape"),
    ],
)
def test_counts_reject_bad_input(pred, target, message):
    with pytest.raises(ValueError, match=message):
        segmentation_counts(pred, target, 2)


def test_scores_reject_bad_arguments():
    counts = segmentation_counts(*random_masks(1, 2), 2)
    with pytest.raises(ValueError, match="aggregate"):
        segmentation_scores(counts, "pixel")
    with pytest.raises(ValueError, match="class_names"):
        segmentation_scores(counts, "image", ["lesion"])


def test_segmentation_statistic_recomputes_from_counts_of_the_indices():
    pred, target = random_masks(5, 2, seed=4)
    counts = segmentation_counts(pred, target, 2)
    statistic = segmentation_statistic(counts, "dataset", SEGMENTATION_CLASS_NAMES)
    assert statistic(np.arange(5)) == segmentation_scores(
        counts, "dataset", SEGMENTATION_CLASS_NAMES
    )
    doubled = statistic(np.array([0, 0, 1]))
    manual = segmentation_scores(
        counts[[0, 0, 1]].sum(0, keepdim=True), "image", SEGMENTATION_CLASS_NAMES
    )
    assert doubled == pytest.approx(manual)


# ---------------------------------------------------------------- regression


def test_regression_metrics_match_sklearn_and_scipy():
    rng = np.random.default_rng(0)
    y_true = rng.uniform(0, 72, size=50)  # PASI range
    y_pred = y_true + rng.normal(2.0, 5.0, size=50)
    metrics = regression_metrics(y_true, y_pred)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(y_true, y_pred))
    assert metrics["mse"] == pytest.approx(mean_squared_error(y_true, y_pred))
    assert metrics["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y_true, y_pred)))
    assert metrics["r2"] == pytest.approx(r2_score(y_true, y_pred))
    assert metrics["pcc"] == pytest.approx(stats.pearsonr(y_true, y_pred).statistic)
    assert 0 < metrics["ccc"] < metrics["pcc"]  # a shifted prediction loses agreement


def test_ccc_by_hand_and_against_torchmetrics():
    # y_true [1,2,3], y_pred [2,2,4]: means 2, 8/3; var 2/3, 8/9; cov 2/3 -> CCC 2/3.
    assert regression_metrics([1, 2, 3], [2, 2, 4])["ccc"] == pytest.approx(2 / 3)
    rng = np.random.default_rng(1)
    y_true = rng.normal(size=20)
    y_pred = 0.5 * y_true + rng.normal(size=20)
    # Equal means: the 1/N (Lin) and 1/(N-1) (torchmetrics) variances give the same CCC.
    y_pred = y_pred - y_pred.mean() + y_true.mean()
    reference = concordance_corrcoef(torch.from_numpy(y_pred), torch.from_numpy(y_true)).item()
    assert regression_metrics(y_true, y_pred)["ccc"] == pytest.approx(reference, rel=1e-9)
    # Unequal means, large N: O(1/N) apart.
    y_true, y_pred = rng.normal(size=5000), rng.normal(0.3, 1.2, size=5000) + 0.0
    y_pred = y_pred + 0.8 * y_true
    reference = concordance_corrcoef(torch.from_numpy(y_pred), torch.from_numpy(y_true)).item()
    assert regression_metrics(y_true, y_pred)["ccc"] == pytest.approx(reference, abs=1e-3)


def test_regression_perfect_constant_and_bad_input():
    perfect = regression_metrics(torch.tensor([[1.0], [2.0], [4.0]]), np.array([1.0, 2.0, 4.0]))
    assert perfect == pytest.approx({"mae": 0, "mse": 0, "rmse": 0, "pcc": 1, "ccc": 1, "r2": 1})
    constant = regression_metrics([0.1, 0.1, 0.1], [0.1, 0.1, 0.1])
    assert all(math.isnan(constant[key]) for key in ("pcc", "ccc", "r2"))
    flat_pred = regression_metrics([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    assert math.isnan(flat_pred["pcc"]) and flat_pred["ccc"] == 0.0
    with pytest.raises(ValueError, match="same length"):
        regression_metrics([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        regression_metrics([1.0, float("nan")], [1.0, 2.0])


# ---------------------------------------------------------------- bootstrap


def mean_of(values: np.ndarray):
    return lambda indices: {"mean": float(values[indices].mean())}


def test_one_sample_per_subject_matches_scipy_percentile_bootstrap():
    values = np.random.default_rng(0).normal(10.0, 1.0, size=40)
    ours = bootstrap_by_subject(mean_of(values), list(range(40)), n_resamples=5000, seed=1)["mean"]
    scipy_ci = stats.bootstrap(
        (values,), np.mean, n_resamples=5000, method="percentile", rng=np.random.default_rng(2)
    ).confidence_interval
    # Monte Carlo error of each endpoint is about 0.006 here (SE 0.16, B = 5000).
    assert ours[0] == pytest.approx(scipy_ci.low, abs=0.04)
    assert ours[1] == pytest.approx(scipy_ci.high, abs=0.04)


def test_resamples_take_all_samples_of_a_drawn_subject_together():
    subjects = ["a", "b", "a", "c", "b", "a", "d"]
    seen = []
    bootstrap_distribution(
        lambda idx: seen.append(np.sort(idx)) or {"n": float(len(idx))}, subjects, 200, seed=3
    )
    members = {s: [i for i, t in enumerate(subjects) if t == s] for s in set(subjects)}
    for indices in seen:
        counts = np.bincount(indices, minlength=len(subjects))
        for group in members.values():
            assert len(set(counts[group])) == 1  # a subject's samples are drawn as a block
        drawn = sum(counts[group[0]] for group in members.values())
        assert drawn == 4  # one draw per subject


def test_grouped_bootstrap_equals_bootstrap_of_subject_values():
    subject_values = np.random.default_rng(4).normal(size=10)
    values = np.repeat(subject_values, 5)  # five identical images per lesion
    subjects = np.repeat(np.arange(10), 5)
    grouped = bootstrap_by_subject(mean_of(values), subjects.tolist(), 2000, seed=5)["mean"]
    per_subject = bootstrap_by_subject(mean_of(subject_values), list(range(10)), 2000, seed=5)
    assert grouped == pytest.approx(per_subject["mean"])
    naive = bootstrap_by_subject(mean_of(values), list(range(50)), 2000, seed=5)["mean"]
    assert naive[1] - naive[0] < 0.6 * (grouped[1] - grouped[0])  # about 1/sqrt(5) as wide


def test_metrics_with_ci_contains_the_estimate_and_is_deterministic():
    pred, target = random_masks(12, 2, seed=6)
    counts = segmentation_counts(pred, target, 2)
    statistic = segmentation_statistic(counts, "dataset", SEGMENTATION_CLASS_NAMES)
    subjects = [n // 2 for n in range(12)]
    result = metrics_with_ci(statistic, subjects, n_resamples=300, seed=7)
    assert result["miou"]["value"] == pytest.approx(statistic(np.arange(12))["miou"])
    for name, entry in result.items():
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
        assert entry["ci_low"] < entry["ci_high"], name
    assert metrics_with_ci(statistic, subjects, n_resamples=300, seed=7) == result
    assert metrics_with_ci(statistic, subjects, n_resamples=300, seed=8) != result


def test_confidence_widens_the_interval():
    values = np.random.default_rng(9).normal(size=30)
    narrow = bootstrap_by_subject(mean_of(values), list(range(30)), 1000, confidence=0.5)["mean"]
    wide = bootstrap_by_subject(mean_of(values), list(range(30)), 1000, confidence=0.99)["mean"]
    assert wide[0] < narrow[0] < narrow[1] < wide[1]


def test_single_subject_gives_zero_width_interval_with_a_warning():
    values = np.array([1.0, 2.0, 6.0])
    with pytest.warns(RuntimeWarning, match="single subject"):
        result = metrics_with_ci(mean_of(values), ["p1", "p1", "p1"], n_resamples=50)
    assert result["mean"] == {"value": 3.0, "ci_low": 3.0, "ci_high": 3.0, "confidence": 0.95,
                              "resamples": 50, "valid_resamples": 50}


def test_nan_resamples_are_left_out_of_that_metric():
    values = np.array([0.0, 1.0, 2.0, 3.0])

    def statistic(indices):
        drew_first = bool(np.any(indices == 0))
        return {"mean": float(values[indices].mean()), "sometimes": 1.0 if drew_first else np.nan}

    intervals = bootstrap_by_subject(statistic, [0, 1, 2, 3], n_resamples=200)
    assert intervals["sometimes"] == (1.0, 1.0)
    assert not any(math.isnan(x) for x in intervals["mean"])


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one sample"):
        bootstrap_by_subject(mean_of(np.array([])), [])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_by_subject(mean_of(np.ones(3)), [0, 1, 2], confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_by_subject(mean_of(np.ones(3)), [0, 1, 2], n_resamples=0)


def test_no_resamples_means_no_interval():
    values = np.arange(6.0)
    result = metrics_with_ci(mean_of(values), list(range(6)), n_resamples=0)
    assert result["mean"] == {"value": 2.5, "ci_low": None, "ci_high": None,
                              "confidence": None, "resamples": 0, "valid_resamples": 0}
