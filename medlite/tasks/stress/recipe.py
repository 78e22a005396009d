"""Stress recognition from ECG spectrograms (SONIC, Phukan et al. 2024) as a task recipe.

The paper: WESAD chest ECG (700 Hz) cut into 5 s windows every 2 s; each window becomes a
``scipy.signal.spectrogram`` image resized to 224 x 224, replicated to 3 channels and
normalised; ImageNet backbones (ResNet50, EfficientNet-B0, ..., not frozen) each end in global
average pooling, a 128-unit layer and logits; SONIC concatenates the logits of two backbones,
then a 12-unit layer and the classes. Adam 1e-3, 20 epochs, batch 32, cross-entropy, 5-fold CV
over windows, accuracy and macro F1, confusion matrices and a t-SNE of the fused layer.

What this recipe adds: cross-validation that does not leak (windows of 5 s every 2 s share
60% of their samples, so the paper's window-level folds test on what trained): ``cv.scheme:
subject`` (default) or ``time`` (purged blocks of each recording), and ``cv.compare_window_cv``
to train the paper's folds beside them (``leakage.csv``); validation carved from each fit's
training windows, purged (:mod:`medlite.data.cv`); the normalisation fitted on each fit's
training windows and stored inside the network (:mod:`medlite.models.stress`); and a
deployable model, trained once more on every window after the folds (fit ``final``).

The plan: one fit per fold of each scheme (``<scheme>-fold<k>``), then ``final``. Recordings
and windows: :mod:`medlite.data.recordings`; spectrograms are cached once per recording
(``data.cache_dir``, default ``RUN/spectrograms``), and the fits read ``RUN/windows.csv``.
Tables and figures: :mod:`medlite.reports.stress`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from medlite.config import (
    ModelConfig,
)
from medlite.data import cv as folds_of
from medlite.data import recordings as rec
from medlite.data import spectrogram as spectra
from medlite.errors import DataError
from medlite.evaluation.evaluator import GROUP_COLUMN, metrics_with_intervals
from medlite.inference.predictor import Prepared
from medlite.inference.types import RecordingInput, StressOutput
from medlite.metrics import classification_metrics
from medlite.models import stress as nets
from medlite.reports import stress as report
from medlite.reports.timeline import plot_probability_over_time
from medlite.runs import write_csv_atomic
from medlite.tasks.base import FINAL_FIT, Task, resolve_relative
from medlite.tasks.stress.config import (
    StressConfig,
    StressCVConfig,
    StressDataConfig,
    StressSpectrogramConfig,
)
from medlite.training.loop import TrainingParts
from medlite.training.plan import Fit, read_fit_predictions

WINDOWS_FILE = "windows.csv"
RECORDINGS_FILE = "recordings.csv"
FOLDS_FILE = "folds.csv"
LEAKAGE_FILE = "leakage.csv"


class StressTask(Task):
    name = "stress"
    config_class = StressConfig

    def resolve_paths(self, config: StressConfig, base_dir: Path) -> StressConfig:
        config = super().resolve_paths(config, base_dir)
        data, inline = config.data, isinstance(config.data.recordings, list)
        resolve_relative(data, ("cache_dir",) if inline else ("cache_dir", "recordings"), base_dir)
        for entry in data.recordings if inline else []:
            resolve_relative(entry, ("path",), base_dir)
            if entry.labels and (base_dir / entry.labels).is_file():
                entry.labels = str((base_dir / entry.labels).resolve())
        weights = config.model.kwargs.get("backbone_weights")
        if isinstance(weights, list):
            config.model.kwargs = {**config.model.kwargs, "backbone_weights": [
                str((base_dir / w).resolve()) if w and not Path(w).is_absolute() else w
                for w in weights]}
        return config

    def demo_config(self, out_dir: Path) -> StressConfig:
        from medlite.datasets.ecg import make_ecg_study

        recordings = make_ecg_study(n_subjects=6, minutes_per_condition=(1.5, 1.5, 1.5),
                                    fs=128.0, seed=0)
        manifest = rec.write_recordings(recordings, Path(out_dir) / "data")
        config = StressConfig(
            name="demo-stress",
            data=StressDataConfig(recordings=manifest, label_scheme="wesad2", fs=128.0),
            spectrogram=StressSpectrogramConfig(image_size=32),
            model=ModelConfig(name="sonic", pretrained=False,
                              kwargs={"backbones": ["squeezenet1_1", "shufflenet_v2_x0_5"]}),
            cv=StressCVConfig(scheme="subject", folds=3, compare_window_cv=True))
        config.trainer.max_epochs = 8
        # Tiny images leave little for a second thread to do, and on a shared machine two
        # threads stall each other (several times slower than one).
        config.trainer.threads = 1
        config.evaluation.bootstrap_resamples = 500
        return config

    def class_names(self, config: StressConfig) -> list[str]:
        return config.data.names()

    # -- data ------------------------------------------------------------------------------
    def _windows(self, config: StressConfig, data_path: Path | None = None,
                 cache: spectra.SpectrogramCache | None = None, progress: bool = False):
        source = data_path or config.data.recordings
        if source is None:
            raise DataError("data.recordings: required (a CSV manifest of recordings with "
                            "columns path, format, subject, fs, channel, labels, a folder "
                            "of WESAD pickles, or a list of such rows)")
        return rec.prepare_windows(
            source if isinstance(source, list) else Path(source),
            label_scheme=config.data.label_scheme, class_names=config.data.names(),
            settings=config.data.windows(), params=config.spectrogram.params(),
            default_fs=config.data.fs, cache=cache, progress=progress)

    def load_samples(self, config: StressConfig, data_path: Path | None = None) -> pd.DataFrame:
        """The usable windows of the recordings (:func:`~medlite.data.recordings.
        prepare_windows`), with their bootstrap cluster."""
        windows, _ = self._windows(config, data_path)
        windows[GROUP_COLUMN] = rec.bootstrap_groups(windows, config.evaluation.block_s)[0]
        return windows

    def load_run_samples(self, config: StressConfig, run_dir: Path) -> pd.DataFrame:
        return rec.read_window_table(Path(run_dir) / WINDOWS_FILE, (GROUP_COLUMN,))

    def fingerprints(self, samples: pd.DataFrame) -> list[str]:
        return samples["window_sha256"].tolist()

    def schemes(self, config: StressConfig, windows: pd.DataFrame) -> list[str]:
        """The main scheme, and the comparison scheme when ``cv.compare_window_cv``."""
        main = config.cv.scheme
        if not config.cv.compare_window_cv:
            return [main]
        return [main, folds_of.comparison_scheme(main, config.cv.folds, windows)]

    def with_folds(self, samples: pd.DataFrame, config: StressConfig) -> pd.DataFrame:
        """``samples`` with ``fold_<scheme>`` for every scheme trained (the main one from the
        saved ``fold`` when resuming)."""
        samples, main = samples.copy(), f"fold_{config.cv.scheme}"
        if main not in samples and "fold" in samples:
            samples[main] = samples["fold"].astype("Int64").fillna(-1).to_numpy(np.int64)
        for scheme in self.schemes(config, samples):
            if f"fold_{scheme}" not in samples:
                samples[f"fold_{scheme}"] = folds_of.scheme_folds(
                    samples, scheme, folds=config.cv.folds, seed=config.seed,
                    gap_s=config.data.window_s, source=samples.attrs.get("source", "data"))
        return samples

    def split(self, samples: pd.DataFrame, config: StressConfig) -> pd.DataFrame:
        """Every window trains (the final fit, and the folds that do not hold it out);
        ``fold`` is the main scheme's fold testing it, NA for windows purged from all."""
        present = np.unique(samples["label"])
        if present.size < 2:
            raise DataError(f"{samples.attrs.get('source', 'data')}: every usable window is of "
                            f"class {config.data.names()[int(present[0])]}; training needs two "
                            "classes")
        samples = self.with_folds(samples, config)
        folds = samples[f"fold_{config.cv.scheme}"]
        samples["fold"] = folds.where(folds >= 0).astype("Int64")
        samples["split"] = "train"
        return samples

    def prepare_training(self, config: StressConfig, samples: pd.DataFrame, run_dir: Path,
                         progress: bool) -> pd.DataFrame:
        """Check the network takes the image size; cache every window's spectrogram; write
        ``RUN/windows.csv`` (what the fits read) and ``RUN/recordings.csv``."""
        nets.check_model_input(self.build_model(config, for_training=True),
                               config.spectrogram.image_size, config.model.name)
        samples = self.with_folds(samples, config)
        folder = Path(config.data.cache_dir or Path(run_dir) / "spectrograms").resolve()
        cache = spectra.SpectrogramCache(folder)
        windows, recordings = self._windows(config, None, cache, progress)
        if windows["sample"].tolist() != samples["sample"].tolist():
            raise DataError(f"{windows.attrs['source']}: the recordings changed while the run "
                            "was prepared")
        samples["image_file"] = windows["image_file"].to_numpy()
        samples["image_row"] = windows["image_row"].to_numpy()
        write_csv_atomic(samples, Path(run_dir) / WINDOWS_FILE)
        write_csv_atomic(recordings, Path(run_dir) / RECORDINGS_FILE)
        return self.load_run_samples(config, run_dir)  # exactly what the fits read

    # -- the plan --------------------------------------------------------------------------
    def plan(self, config: StressConfig, samples: pd.DataFrame) -> list[Fit]:
        """One fit per fold of each scheme, predicting its held-out windows, then ``final``
        on every window; validation carved from the training windows of each."""
        every = np.arange(len(samples))
        fits: list[Fit] = []
        for role, scheme in zip(("main", "comparison"), self.schemes(config, samples),
                                strict=False):
            folds = samples[f"fold_{scheme}"].to_numpy()
            for fold in sorted(int(f) for f in np.unique(folds[folds >= 0])):
                fits.append(self._fit(config, samples, f"{scheme}-fold{fold}", scheme,
                                      every[(folds >= 0) & (folds != fold)],
                                      config.seed + fold + 1, every[folds == fold],
                                      depends_on=(), role=role, fold=fold))
        return [*fits, self._fit(config, samples, FINAL_FIT, config.cv.scheme, every,
                                 config.seed, every[:0], tuple(f.key for f in fits),
                                 role="final")]

    def _fit(self, config: StressConfig, samples: pd.DataFrame, key: str, scheme: str,
             train: np.ndarray, seed: int, predict: np.ndarray, depends_on: tuple,
             **params) -> Fit:
        fit_rows, val_rows, how = folds_of.carve_validation(
            samples, train, scheme, config.cv.val_fraction, config.data.window_s, seed)
        ids = samples["sample"].to_numpy()
        return Fit(key=key, train=ids[fit_rows], val=ids[val_rows], predict=ids[predict],
                   depends_on=depends_on,
                   params={"scheme": scheme, "validation": how, "seed": seed, **params})

    def out_of_fold_fits(self, context) -> list[str]:
        return [k for k, f in context.fits.items() if f.params.get("role") == "main"]

    def deployed_fit(self, context) -> str:
        return FINAL_FIT

    # -- model and training ----------------------------------------------------------------
    def build_model(self, config: StressConfig, for_training: bool = True) -> nets.StressNet:
        spectrogram, model = config.spectrogram, config.model
        return nets.build_stress_net(model.name, len(config.data.names()),
                                     spectrogram.image_size, spectrogram.normalization,
                                     kwargs=model.kwargs, pretrained=model.pretrained,
                                     weights_path=model.initial_weights(),
                                     for_training=for_training)

    def training_parts(self, config: StressConfig, train_rows, val_rows, model, fit):
        """Cached spectrograms, cross-entropy, accuracy and macro F1; the normaliser is
        fitted on (at most ``normalizer_max_windows`` of) the fit's training windows."""
        train_data, val_data = rec.windows_dataset(train_rows), rec.windows_dataset(val_rows)
        normalizer = spectra.SpectrogramNormalizer(config.spectrogram.normalization)
        if normalizer.needs_fit:
            drawn = np.random.default_rng(fit.params["seed"]).permutation(len(train_data))
            chosen = np.sort(drawn[:config.spectrogram.normalizer_max_windows])
            model.normalize.set_statistics(normalizer.fit(train_data.images(chosen)))
        n_classes = len(config.data.names())
        return TrainingParts(
            model=model, loss_fn=nn.CrossEntropyLoss(), train_data=train_data, val_data=val_data,
            val_metrics=MetricCollection({
                "accuracy": MulticlassAccuracy(num_classes=n_classes, average="micro"),
                "macro_f1": MulticlassF1Score(num_classes=n_classes, average="macro")}),
            prediction_fn=partial(torch.argmax, dim=1), monitor="val_loss", monitor_mode="min",
            channels_last=False)

    def fit_predictions(self, model: nets.StressNet, config: StressConfig, rows: pd.DataFrame):
        """Probabilities and fused features of held-out windows, from the cache."""
        device = nets.scoring_device(config.trainer.accelerator)
        probabilities, features = nets.predict_dataset(model, rec.windows_dataset(rows),
                                                       config.inference.batch_size, device)
        return report.window_scores(rows, probabilities, features, config.data.names(),
                                    GROUP_COLUMN)

    # -- inference -------------------------------------------------------------------------
    def example_input(self, config: StressConfig) -> torch.Tensor:
        side = config.spectrogram.image_size
        return torch.randn(1, 1, side, side) * 10.0 - 40.0

    def prepare(self, item: RecordingInput, config: StressConfig) -> Prepared:
        """Every window of the recording (format, fs and channel from ``inference.*`` when
        the input does not say); spectrograms of the ok ones, a chunk at a time."""
        inference = config.inference
        recording = rec.input_recording(
            item, config.data.label_scheme, config.data.names(), default_format=inference.format,
            default_fs=inference.fs or config.data.fs, default_channel=inference.channel)
        windows, table, truth = rec.inference_windows(recording, config.data.windows())
        ok = np.flatnonzero(windows.ok)
        return Prepared(rec.spectrogram_stream(windows.windows[ok], recording.fs,
                                               config.spectrogram.params()),
                        (table, ok, truth, item.source))

    def forward(self, model, batch: torch.Tensor, config: StressConfig):
        """``(logits, features)`` of a StressNet; logits of a fast-path module."""
        return model(batch, return_features=True) if isinstance(model, nets.StressNet) \
            else model(batch)

    def assemble(self, outputs: list, context, config: StressConfig) -> StressOutput:
        table, ok, truth, source = context
        names = config.data.names()
        parts = [o if isinstance(o, tuple) else (o, None) for o in outputs]
        probabilities, features = np.zeros((0, len(names))), None
        if parts:
            probabilities = torch.stack([p[0] for p in parts]).softmax(dim=1).double().numpy()
            if parts[0][1] is not None:
                features = torch.stack([p[1] for p in parts]).float().numpy()
        return StressOutput(rec.probability_table(table, ok, truth, probabilities, names),
                            names, features, source)

    def parse_inputs(self, paths, visits, config) -> list[RecordingInput]:
        if visits:
            raise DataError("--visit: only for pasi runs")
        return [RecordingInput(path) for path in rec.expand_recording_inputs(paths)]

    def write_prediction(self, output: StressOutput, name: str, writer):
        """``<name>_stress.csv`` (start_s, end_s, ok, p_<class>, predicted[, true]) and
        ``<name>_stress.png`` (probabilities over time)."""
        table, names = output.windows, output.class_names
        return [writer.save_csv(table, name, "_stress.csv"),
                plot_probability_over_time(table, names, writer.path(name, "_stress.png"),
                                           title=Path(output.source).name)], \
            report.prediction_summary(table, names)

    # -- evaluation ------------------------------------------------------------------------
    def evaluation_inputs(self, rows: pd.DataFrame, config: StressConfig):
        """One recording input per recording of ``rows`` (other data), with its windows."""
        source, own = str(rows["manifest"].iloc[0]), config.data.recordings
        if source == rec.INLINE_SOURCE or (own is not None and not isinstance(own, list)
                                           and Path(source).resolve() == Path(own).resolve()):
            raise DataError(f"{source}: the deployed model was trained on every window of the "
                            "run's data; its cross-validated metrics are in the run's "
                            "metrics.json. Pass --data with other recordings")
        return rec.recording_inputs(rows, config.data.fs)

    def score(self, output: StressOutput, info: dict, config, prediction_dir) -> list[dict]:
        """Rows of the windows of ``info`` (labelled and usable) from the output's table."""
        table, wanted, names = output.windows, info["windows"], output.class_names
        rows = rec.window_positions(table, info["recording"], wanted["sample"], output.source)
        rank = np.cumsum(table["ok"].to_numpy(bool)) - 1  # ok window -> its feature row
        features = output.features[rank[rows]] if output.features is not None else None
        probabilities = table[[f"p_{n}" for n in names]].to_numpy(np.float64)[rows]
        return report.window_scores(wanted, probabilities, features, names,
                                    GROUP_COLUMN).to_dict("records")

    def statistic(self, table: pd.DataFrame, config: StressConfig, extras: dict):
        """``<scheme>_cv`` for pooled out-of-fold predictions (they have a ``fit`` column),
        ``deployed_model`` for the deployed model on other recordings."""
        names = config.data.names()
        labels = table["label"].to_numpy(np.int64)
        probabilities = table[[f"p_{n}" for n in names]].to_numpy(np.float64)
        group = (f"{str(table['fit'].iloc[0]).rsplit('-fold', 1)[0]}_cv" if "fit" in table
                 else "deployed_model")
        return lambda index: {group: classification_metrics(labels[index],
                                                            probabilities[index], names)}

    def evaluation_extras(self, context, results: dict[str, dict]) -> dict:
        """Every scheme's out-of-fold predictions, the comparison scheme's metrics, the
        per-fold and leakage tables (also ``RUN/folds.csv``, ``RUN/leakage.csv``), the
        recordings table and how validation was carved."""
        config, run_dir = context.config, context.run_dir
        windows = context.samples.reset_index(drop=True)
        schemes = {}
        for role, scheme in zip(("main", "comparison"), self.schemes(config, windows),
                                strict=False):
            keys = [k for k, f in context.fits.items() if f.params.get("role") == role]
            table = read_fit_predictions(context, keys)
            metrics = metrics_with_intervals(self.statistic(table, config, {}),
                                             table[GROUP_COLUMN], config.evaluation, config.seed)
            schemes[scheme] = (role, table, metrics[f"{scheme}_cv"], {
                context.fits[k].params["fold"]: {**results[k], **context.fits[k].params}
                for k in keys})
        extras = report.cross_validation_tables(windows, schemes, config.data.names(),
                                                config.data.window_s)
        write_csv_atomic(extras["per_fold"], run_dir / FOLDS_FILE)
        write_csv_atomic(extras["leakage"], run_dir / LEAKAGE_FILE)
        extras["recordings"] = pd.read_csv(run_dir / RECORDINGS_FILE,
                                           dtype={"recording": str, "subject": str})
        extras["validation"] = sorted({f.params["validation"] for f in context.fits.values()})
        extras["metric_groups"] = extras["comparison"]  # metrics.json holds every scheme
        return extras

    def figures(self, table: pd.DataFrame, config: StressConfig, figure_dir: Path,
                extras: dict):
        """Confusion matrices of every scheme (or of the deployed model), the t-SNE of the
        fused features, the report's tables and the metrics.json extras."""
        names, evaluation = config.data.names(), config.evaluation
        unit = rec.bootstrap_groups(table, evaluation.block_s)[1]
        shown = {"max_points": evaluation.tsne_max_points, "seed": config.seed}
        if "fit" not in table:  # the deployed model on other recordings
            figures = report.deployed_figures(table, names, figure_dir, **shown)
            sections, info = report.deployed_report(table, unit)
        else:
            main = config.cv.scheme
            figures = report.out_of_fold_figures(extras["tables"], names, figure_dir, **shown)
            sections, info = report.cross_validation_report(
                extras, main, unit, window_s=config.data.window_s, step_s=config.data.step_s,
                val_fraction=config.cv.val_fraction, confidence=evaluation.confidence)
        return figures, sections, {"class_names": names, "bootstrap_unit": unit, **info}
