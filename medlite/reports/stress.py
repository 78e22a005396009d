"""Tables, figures and report sections of a stress-recognition evaluation: windows per
recording, per-fold metrics, the leakage table (window-level against subject-wise or
time-blocked CV) and its explanation, confusion matrices and the t-SNE of the fused
features. Figures use the object-oriented matplotlib builders of the other report modules."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score

from medlite.data.cv import overlap_fraction, train_test_overlap
from medlite.metrics import confusion
from medlite.reports.classification_figures import plot_confusion_matrix
from medlite.reports.embedding import plot_tsne, tsne_embedding
from medlite.reports.html import metric_table

WINDOW_COUNTS = ("total", "unlabelled", "mixed", "nan", "flat", "clipped", "bad", "kept")
LEAKAGE_METRICS = ("accuracy", "macro_f1", "balanced_accuracy")


def window_totals(recordings: pd.DataFrame) -> dict[str, int]:
    """Window counts (total, unlabelled, mixed, nan, flat, clipped, bad, kept) summed over
    the recordings table of :func:`medlite.data.recordings.prepare_windows`."""
    return {c: int(recordings[c].sum()) for c in WINDOW_COUNTS if c in recordings}


def predicted_classes(windows: pd.DataFrame, table: pd.DataFrame, names: Sequence[str]
                      ) -> np.ndarray:
    """The arg-max class of each of ``windows`` in the per-sample ``table`` (columns sample,
    ``p_<name>``), -1 for windows the table does not hold."""
    probabilities = table[[f"p_{n}" for n in names]].to_numpy(np.float64)
    position = pd.Series(np.arange(len(windows)), index=windows["sample"].to_numpy())
    predicted = np.full(len(windows), -1, dtype=np.int64)
    predicted[position.loc[table["sample"]].to_numpy()] = probabilities.argmax(axis=1)
    return predicted


def per_fold_table(windows: pd.DataFrame, folds: np.ndarray, table: pd.DataFrame,
                   fits: Mapping[int, Mapping], scheme: str, names: Sequence[str]
                   ) -> pd.DataFrame:
    """One row per fold of ``scheme``: sizes, accuracy and macro F1 over the classes present
    in the fold, and the test classes no training window of the fold has (time blocks of a
    protocol that runs its conditions in sequence can hold out a whole class).

    Args:
        windows: every window (label, subject, sample); ``folds`` its fold under ``scheme``.
        table: the out-of-fold per-sample table of the scheme's fold fits.
        fits: fold -> ``n_train``, ``n_val``, ``validation``, ``epochs``, ``best_val_loss``.
    """
    labels = windows["label"].to_numpy()
    predicted = predicted_classes(windows, table, names)
    rows = []
    for fold in sorted(int(f) for f in np.unique(folds[folds >= 0])):
        mask = folds == fold
        info = fits[fold]
        trained = set(labels[(folds >= 0) & ~mask])
        untrained = [names[c] for c in sorted(set(labels[mask]) - trained)]
        rows.append({
            "scheme": scheme, "fold": fold, "test_windows": int(mask.sum()),
            "test_subjects": int(windows["subject"][mask].nunique()),
            "fit_windows": info.get("n_train"), "val_windows": info.get("n_val"),
            "validation": info.get("validation"),
            "accuracy": float(accuracy_score(labels[mask], predicted[mask])),
            "macro_f1": float(f1_score(labels[mask], predicted[mask], average="macro",
                                       zero_division=0.0)),
            "epochs": info.get("epochs"), "best_val_loss": info.get("best_val_loss"),
            "untrained_classes": "+".join(untrained)})
    return pd.DataFrame(rows)


def leakage_row(scheme: str, role: str, folds: np.ndarray, metrics: Mapping[str, Mapping],
                overlap: tuple[float, float]) -> dict:
    """One row of the leakage table: the scheme's out-of-fold accuracy, macro F1 and balanced
    accuracy with their intervals, and how much its test windows share with training
    windows (:func:`medlite.data.cv.train_test_overlap`)."""
    tested = folds >= 0
    return {"scheme": scheme, "role": role, "folds": int(len(np.unique(folds[tested]))),
            "tested_windows": int(tested.sum()),
            **{f"{metric}{suffix}": metrics[metric].get(key)
               for metric in LEAKAGE_METRICS
               for suffix, key in (("", "value"), ("_ci_low", "ci_low"),
                                   ("_ci_high", "ci_high"))},
            "mean_shared_with_training": round(overlap[0], 4),
            "share_of_test_windows_sharing_samples": round(overlap[1], 4)}


def leakage_explanation(window_s: float, step_s: float, leakage: pd.DataFrame) -> str:
    """HTML: why window-level CV leaks, and the side-by-side table."""
    shared = overlap_fraction(window_s, step_s)
    text = (f"Windows of {window_s:g} s start every {step_s:g} s, so neighbouring "
            f"windows share {shared:.0%} of their samples. Under window-level CV (the paper's "
            "protocol) a test window's neighbours sit in the training folds, and the same "
            "person's other windows train the model: the test set is partly the training set. "
            "Subject-wise CV tests on people the model never saw; time-blocked CV tests on "
            "later or earlier stretches of a recording, with windows that would share samples "
            "across a block boundary purged. The columns mean_shared_with_training and "
            "share_of_test_windows_sharing_samples measure the overlap directly; the gap in "
            "accuracy and macro F1 between the rows is the optimism of window-level CV.")
    if len(leakage) < 2:
        text += (" This run trained one scheme only; set cv.compare_window_cv: true to train "
                 "the same model under both and compare.")
    return (f"<p class='note'>{html.escape(text)}</p>"
            + leakage.to_html(index=False, float_format="%.3f"))


def report_sections(recordings: pd.DataFrame | None, per_fold: pd.DataFrame | None = None,
                    leakage: pd.DataFrame | None = None,
                    comparison: Mapping[str, Mapping] | None = None, *,
                    window_s: float = 5.0, step_s: float = 2.0,
                    confidence: float | None = None) -> list[tuple[str, str]]:
    """``(heading, html)`` sections: windows per recording, per-fold metrics, the
    comparison scheme's metrics and the leakage explanation (those given)."""
    sections = []
    if recordings is not None:
        sections.append(("Windows per recording (dropped: unlabelled, across a label "
                         "change, NaN, flat, clipped)", recordings.to_html(index=False)))
    if per_fold is not None:
        sections.append(("Per-fold metrics (macro F1 over the classes present in the fold)",
                         per_fold.to_html(index=False, float_format="%.3f")))
    for group, values in (comparison or {}).items():
        sections.append((f"Comparison: {group} (out-of-fold, same model and data)",
                         metric_table(values, confidence)))
    if leakage is not None:
        sections.append(("Leakage: window-level vs subject-wise / time-blocked CV",
                         leakage_explanation(window_s, step_s, leakage)))
    return sections


def confusion_figure(labels: np.ndarray, probabilities: np.ndarray, names: Sequence[str],
                     path: Path, title: str) -> Path:
    """The confusion matrix of arg-max predictions of ``probabilities`` ``(N, C)``."""
    matrix = confusion(np.asarray(labels), np.asarray(probabilities).argmax(axis=1), len(names))
    return plot_confusion_matrix(matrix, list(names), path, title=title)


def tsne_figure(features: np.ndarray, labels: np.ndarray, names: Sequence[str], path: Path,
                title: str, max_points: int, seed: int) -> Path | None:
    """t-SNE scatter of ``features`` (at most ``max_points`` drawn at random), or None when
    fewer than 4 points."""
    if len(features) < 4:
        return None
    chosen = np.arange(len(features))
    if len(chosen) > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, max_points, replace=False))
    embedding = tsne_embedding(features[chosen], seed=seed)
    return plot_tsne(embedding, np.asarray(labels)[chosen], list(names), path, title=title)


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The feature columns ``f0..fN`` of a per-sample table, in order."""
    count = sum(c.startswith("f") and c[1:].isdigit() for c in table.columns)
    return [f"f{j}" for j in range(count)]


def window_scores(rows: pd.DataFrame, probabilities: np.ndarray, features: np.ndarray | None,
                  names: Sequence[str], group_column: str) -> pd.DataFrame:
    """The per-sample table of windows ``rows``: sample, subject, recording, start_s, end_s,
    label (class code), true and predicted class, ``group_column`` (bootstrap cluster),
    ``p_<class>`` and the features ``f0..fN`` (when given)."""
    table = rows[["sample", "subject", "recording", "start_s", "end_s", "label"]].copy()
    table = table.reset_index(drop=True)
    table["true"] = [names[i] for i in table["label"]]
    table["predicted"] = [names[i] for i in np.asarray(probabilities).argmax(axis=1)]
    table[group_column] = rows[group_column].astype(str).to_numpy()
    parts = [table, pd.DataFrame(probabilities, columns=[f"p_{n}" for n in names])]
    if features is not None:
        parts.append(pd.DataFrame(features, columns=[f"f{j}" for j in range(features.shape[1])]))
    return pd.concat(parts, axis=1)


def recordings_scored(table: pd.DataFrame) -> pd.DataFrame:
    """Windows per recording and true class of a per-sample table."""
    return (table.groupby(["recording", "subject"], sort=False)["true"].value_counts()
            .unstack(fill_value=0).add_prefix("windows_").reset_index())


def _tsne(rows: pd.DataFrame, names: Sequence[str], path: Path, title: str, max_points: int,
          seed: int) -> Path | None:
    columns = feature_columns(rows)
    if not columns:
        return None
    return tsne_figure(rows[columns].to_numpy(np.float32), rows["label"].to_numpy(), names,
                       path, f"t-SNE of the fused features{title} (n={len(rows)})", max_points,
                       seed)


def _confusion(rows: pd.DataFrame, names: Sequence[str], path: Path, title: str) -> Path:
    return confusion_figure(rows["label"].to_numpy(), rows[[f"p_{n}" for n in names]].to_numpy(),
                            names, path, title)


def out_of_fold_figures(tables: Mapping[str, pd.DataFrame], names: Sequence[str],
                        figure_dir: Path, *, max_points: int, seed: int) -> dict:
    """A confusion matrix of every scheme's pooled out-of-fold table (``tables``: scheme ->
    table with a ``fit`` column, the main scheme first) and the t-SNE of the held-out
    windows of the main scheme's first fold."""
    figures: dict[str, Path | None] = {}
    for scheme, rows in tables.items():
        figures[f"confusion_matrix_{scheme}-level_cv"] = _confusion(
            rows, names, figure_dir / f"confusion_{scheme}_cv.png",
            f"{scheme}-level CV, out-of-fold windows")
    main = next(iter(tables.values()))
    fold = min(int(key.rsplit("fold", 1)[1]) for key in main["fit"])
    held = main[main["fit"].str.endswith(f"-fold{fold}")]
    figures["t-sne_of_the_fused_features"] = _tsne(
        held, names, figure_dir / "tsne.png", f", held-out windows of fold {fold}", max_points,
        seed)
    return figures


def deployed_figures(table: pd.DataFrame, names: Sequence[str], figure_dir: Path, *,
                     max_points: int, seed: int) -> dict:
    """The confusion matrix and t-SNE of the deployed model on other recordings."""
    return {"confusion": _confusion(table, names, figure_dir / "confusion.png",
                                    "deployed model"),
            "t-sne_of_the_fused_features": _tsne(table, names, figure_dir / "tsne.png", "",
                                                 max_points, seed)}


def deployed_report(table: pd.DataFrame, unit: str) -> tuple[list, dict]:
    """Report sections and metrics.json entries of the deployed model on other recordings."""
    recordings = recordings_scored(table)
    return report_sections(recordings), {
        "aggregation": "every labelled, usable window of the evaluated recordings; CIs "
        f"resample {unit}s", "windows": {"kept": len(table)},
        "recordings": recordings.to_dict(orient="records")}


def cross_validation_report(extras: Mapping, scheme: str, unit: str, *, window_s: float,
                            step_s: float, val_fraction: float, confidence: float | None
                            ) -> tuple[list, dict]:
    """Report sections and metrics.json entries of a cross-validated run: ``extras`` holds
    the recordings, per_fold and leakage tables, the comparison scheme's metrics
    (``comparison``) and how validation was carved (``validation``)."""
    recordings, per_fold, leakage = (extras[k] for k in ("recordings", "per_fold", "leakage"))
    info = {"aggregation": "Out-of-fold predictions: every window scored by the model of the "
            f"fold that held it out ({scheme}-level CV), pooled over folds; CIs resample "
            f"{unit}s. The deployed model.pt was trained on every window afterwards.",
            "cv": {"scheme": scheme, "schemes": list(leakage["scheme"]),
                   "validation": list(extras["validation"]), "val_fraction": val_fraction},
            "windows": window_totals(recordings),
            "recordings": recordings.to_dict(orient="records"),
            "per_fold": per_fold.to_dict(orient="records"),
            "leakage": leakage.to_dict(orient="records")}
    # The comparison scheme's metrics sit with the main scheme's in the metric tables.
    sections = report_sections(recordings, per_fold, leakage, window_s=window_s,
                               step_s=step_s, confidence=confidence)
    return sections, info


def cross_validation_tables(windows: pd.DataFrame, schemes: Mapping[str, tuple],
                            names: Sequence[str], window_s: float) -> dict:
    """The per-fold and leakage tables of the schemes a run trained. ``schemes``: scheme ->
    ``(role, out-of-fold table, its metrics, {fold: fit result and params})``, the main
    scheme first; ``windows`` holds ``fold_<scheme>`` columns. Returns ``per_fold``,
    ``leakage``, ``tables`` (scheme -> table) and ``comparison`` (the other schemes'
    metrics as ``{<scheme>_cv: metrics}``)."""
    per_fold, leakage, tables, comparison = [], [], {}, {}
    for scheme, (role, table, metrics, fits) in schemes.items():
        folds = windows[f"fold_{scheme}"].to_numpy()
        per_fold.append(per_fold_table(windows, folds, table, fits, scheme, names))
        leakage.append(leakage_row(scheme, role, folds, metrics,
                                   train_test_overlap(windows, folds, window_s)))
        tables[scheme] = table
        if role != "main":
            comparison[f"{scheme}_cv"] = metrics
    return {"per_fold": pd.concat(per_fold, ignore_index=True),
            "leakage": pd.DataFrame(leakage), "tables": tables, "comparison": comparison}


def prediction_summary(table: pd.DataFrame, names: Sequence[str]) -> dict:
    """Summary columns of one recording's prediction: windows, ok windows and the mean
    probability of stress (of the last class when none is called stress)."""
    focus = "stress" if "stress" in names else names[-1]
    ok = table["ok"].to_numpy(bool)
    return {"windows": len(table), "ok_windows": int(ok.sum()),
            f"mean_p_{focus}": float(table.loc[ok, f"p_{focus}"].mean()) if ok.any()
            else float("nan")}
