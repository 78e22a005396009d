"""One-Step PASI (Xing et al., AbbVie) as a task recipe: psoriasis severity from photos.

The photos of each subject/visit/region become one 2x2 composite (:mod:`medlite.data.visits`).
Each base learner is a ``create_model`` regression network predicting the composite's regional
score (E + I + S) x A, 0-72, or, beyond the paper, the four components E, I, S (0-4) and A
(0-6) (``ensemble.heads: [components]``). The visit's PASI is assembled by Equation 2
(:mod:`medlite.pasi`); with per-visit PASI scores only, every composite learns its visit's
PASI and the visit's prediction is the mean over its regions.

The plan, as the paper: subjects split 90/10 into train/test by the greedy split that keeps
the desquamation distribution balanced, the training subjects into 5 grouped folds; one fit
per (architecture, head, fold) trains on four folds and predicts the fifth (out-of-fold);
a ``stacking`` fit then fits the meta-learners on the out-of-fold matrix. Unlike the paper,
nothing a fit predicts out of fold chose anything in it: its epoch is chosen (and it stops
early) on an inner validation part of its four folds (``ensemble.inner_val_fraction``), or,
with a schedule that watches no validation metric, it keeps its last epoch and the held-out
fold is only watched; and the best base and meta learner are chosen by out-of-fold visit
MAE, never on test. The deployed run
is one module, :class:`~medlite.models.pasi_ensemble.PasiEnsemble`.

Deviation, for numerical stability with the paper's SGD lr 0.01: each network learns its
targets standardised with its training rows' mean and standard deviation, and the loss is
the MSE in those units.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from medlite.config import (
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
)
from medlite.data.splits import assign_splits, greedy_split_with_folds
from medlite.data.transforms import normalize, to_tensor_image
from medlite.data.visits import (
    CompositeCache,
    CompositeDataset,
    read_visit_tables,
    visit_composites,
    visit_folder_photos,
    visit_items,
)
from medlite.ensemble.calibration import VisitCalibration, choose_visit_calibration
from medlite.ensemble.selection import learner_weights, stack_composites
from medlite.errors import ConfigError, DataError
from medlite.evaluation.conformal import conformal_columns, conformal_statistic
from medlite.evaluation.pasi_metrics import (
    REGIONAL_MAX,
    headline_models,
    models_statistic,
    visit_scores,
    visit_value,
)
from medlite.inference.predictor import Prepared
from medlite.inference.types import PasiOutput, VisitInput
from medlite.models.pasi_ensemble import (
    COMPONENTS,
    PasiEnsemble,
    PasiInferenceNetwork,
    build_base_model,
    module_key,
    regional_from_outputs,
)
from medlite.models.weights import check_pretrained_available
from medlite.pasi import percent_change, severity_category
from medlite.reports.pasi import pasi_figures
from medlite.runs import load_state_dict, read_json, write_csv_atomic, write_json
from medlite.tasks.base import Task, resolve_relative
from medlite.tasks.pasi.config import (
    PasiConfig,
    PasiDataConfig,
    PasiEnsembleConfig,
    base_columns,
    fit_key,
    inner_val_fraction,
    target_columns,
)
from medlite.training.loop import TrainingParts
from medlite.training.losses import StandardizedMSELoss
from medlite.training.plan import Fit, read_fit_predictions
from medlite.training.seeding import derive_seed

STACKING_FIT = "stacking"
ENSEMBLE_FILE = "ensemble.json"
#: The stacking fit's out-of-fold training visits with their cross-fitted calibration.
CALIBRATION_FILE = "visit_calibration.csv"


def out_of_fold_visits(table: pd.DataFrame, learner: str, per_visit: bool) -> pd.DataFrame:
    """One row per training visit: subject, visit, the physician's PASI (``true``) and
    ``learner``'s out-of-fold prediction (``raw``), from the stacking fit's composite table
    (``per_visit``: the targets are PASI per visit, else regional scores)."""
    truth = visit_scores(table, table["true"].to_numpy(float), per_visit)
    raw = visit_scores(table, table[learner].to_numpy(float), per_visit)["pasi"]
    return truth.rename(columns={"pasi": "true"}).assign(raw=raw.to_numpy())


class PasiTask(Task):
    name = "pasi"
    config_class = PasiConfig
    content_columns = ("images",)
    derived_keys = ("data.cache_dir", "data.score_level")

    def resolve_paths(self, config: PasiConfig, base_dir: Path) -> PasiConfig:
        config = super().resolve_paths(config, base_dir)
        resolve_relative(config.data, ("photos", "scores", "cache_dir"), base_dir)
        return config

    def demo_config(self, out_dir: Path) -> PasiConfig:
        from medlite.datasets.pasi_trial import write_pasi_trial

        photos, scores = write_pasi_trial(Path(out_dir) / "data", n_subjects=30,
                                          visits_per_subject=(5, 6), photo_size=48, seed=0)
        config = PasiConfig(
            name="demo-pasi", data=PasiDataConfig(photos=photos, scores=scores, tile_size=32),
            ensemble=PasiEnsembleConfig(architectures=["mobilenet_v3_small", "squeezenet1_1"],
                                        heads=["regional", "components"], test_fraction=0.2),
            model=ModelConfig(name="mobilenet_v3_small", pretrained=False),
            optimizer=OptimizerConfig(name="adam", lr=2e-3),
            scheduler=SchedulerConfig(name="cosine", min_lr=1e-5))
        config.trainer.max_epochs = 8
        config.trainer.batch_size = 16
        config.trainer.early_stopping_patience = None
        config.evaluation.bootstrap_resamples = 500
        return config

    def complete_config(self, config: PasiConfig, samples: pd.DataFrame, run_dir: Path):
        config.data.score_level = "visit" if "pasi" in samples.columns else "region"
        if config.data.cache_dir is None:
            config.data.cache_dir = (Path(run_dir) / "cache" / "composites").resolve()
        return config

    # -- data ------------------------------------------------------------------------------
    def load_samples(self, config: PasiConfig, data_path: Path | None = None) -> pd.DataFrame:
        photos = data_path or config.data.photos
        if photos is None or config.data.scores is None:
            raise DataError("data.photos and data.scores: both required (CSV files; see "
                            "`medlite data check --help`)")
        tables = read_visit_tables(Path(photos), Path(config.data.scores),
                                   check_images=config.data.check_images)
        items = visit_items(tables)
        items.attrs["source"] = str(photos)
        items.attrs["visit_order"] = list(tables.visit_order)
        return items

    def load_run_samples(self, config: PasiConfig, run_dir: Path) -> pd.DataFrame:
        config = config.model_copy(deep=True)
        config.data.check_images = False  # checked when the run started
        return super().load_run_samples(config, run_dir)

    def split(self, samples: pd.DataFrame, config: PasiConfig) -> pd.DataFrame:
        """The paper's greedy desquamation-balanced train/test split, then grouped folds (per
        visit PASI only: the severity categories are balanced instead)."""
        if "desquamation" in samples.columns:
            labels, values = samples["desquamation"].to_numpy(dtype=int), (0, 1, 2, 3, 4)
        else:
            labels = np.digitize(samples["pasi"].to_numpy(float),
                                 list(config.severity_thresholds), right=True)
            values = (0, 1, 2)
        ensemble = config.ensemble
        return greedy_split_with_folds(samples, labels, values, ensemble.test_fraction,
                                       ensemble.folds, ensemble.split_trials, config.seed)

    def cache(self, config: PasiConfig) -> CompositeCache:
        return CompositeCache(Path(config.data.cache_dir))

    def prepare_training(self, config: PasiConfig, samples, run_dir, progress):
        """Check that pretrained weights exist; build every composite once, before the fits
        (which then only read the cache)."""
        from tqdm import tqdm

        check_pretrained_available(config.ensemble.architectures, config.model.pretrained,
                                   config.model.initial_weights())
        for head in config.ensemble.heads:
            target_columns(samples, head)  # a components head needs per-region scores
        cache = self.cache(config)
        for paths in tqdm(samples["images"], desc="composites", disable=not progress,
                          leave=False):
            cache.get(paths, config.data.tile_size)
        return samples

    # -- the plan --------------------------------------------------------------------------
    def plan(self, config: PasiConfig, samples: pd.DataFrame) -> list[Fit]:
        train = samples[samples["split"] == "train"]
        fits = []
        inner_fraction = inner_val_fraction(config)
        if not inner_fraction and (config.trainer.early_stopping_patience
                                   or config.scheduler.name == "plateau"):
            raise ConfigError("ensemble.inner_val_fraction: 0 keeps each fit's last epoch, but "
                              "early stopping or the plateau scheduler would watch the "
                              "held-out fold; give a fraction (e.g. 0.15) or turn them off")
        for fold in range(config.ensemble.folds):
            held = train["fold"] == fold
            rest = train[~held]
            if inner_fraction:  # an inner part of the training folds chooses the epoch
                inner = assign_splits(rest["subject"].astype(str).to_numpy(),
                                      val_fraction=inner_fraction, test_fraction=0.0,
                                      seed=derive_seed("inner", config.seed, fold))
                fit_ids, val_ids = rest.loc[inner == "train"], rest.loc[inner == "val"]
            else:  # the held-out fold is watched, chooses nothing: the last epoch is kept
                fit_ids, val_ids = rest, train[held]
            for column, (architecture, head) in base_columns(config).items():
                fits.append(Fit(key=fit_key(column, fold), train=tuple(fit_ids["sample"]),
                                val=tuple(val_ids["sample"]),
                                predict=tuple(train.loc[held, "sample"]),
                                params={"column": column, "architecture": architecture,
                                        "head": head, "fold": fold,
                                        "keep": "best" if inner_fraction else "last"}))
        return [*fits, Fit(key=STACKING_FIT, kind="stacking",
                           depends_on=tuple(f.key for f in fits))]

    def fit_model(self, config: PasiConfig, fit: Fit, for_training: bool):
        pretrained = config.model.pretrained and for_training
        return build_base_model(fit.params["architecture"], fit.params["head"],
                                pretrained=pretrained,
                                weights_path=config.model.initial_weights() if pretrained else None,
                                **config.model.kwargs)

    def training_parts(self, config: PasiConfig, train_rows, val_rows, model, fit):
        targets = target_columns(train_rows, fit.params["head"])
        values = train_rows[targets].to_numpy(dtype=np.float32)
        model.mean.copy_(torch.from_numpy(values.mean(axis=0)))
        model.std.copy_(torch.from_numpy(np.maximum(values.std(axis=0), 1e-3)))
        cache, tile = self.cache(config), config.data.tile_size
        return TrainingParts(
            model=model, loss_fn=StandardizedMSELoss(model.std.clone()),
            train_data=CompositeDataset(train_rows, cache, tile, targets,
                                        train=config.data.augment),
            val_data=CompositeDataset(val_rows, cache, tile, targets, train=False),
            keep=fit.params.get("keep", "best"))

    def finish_fit(self, model, config: PasiConfig, train_rows, fit) -> bool:
        """Precise BatchNorm: statistics averaged over the training composites (unaugmented)
        under the final weights."""
        if not config.ensemble.precise_bn or not any(
                isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
            return False
        data = CompositeDataset(train_rows, self.cache(config), config.data.tile_size,
                                target_columns(train_rows, fit.params["head"]), train=False)
        update_bn((b["input"] for b in DataLoader(data, config.trainer.batch_size)), model)
        return True

    def fit_predictions(self, model, config: PasiConfig, rows: pd.DataFrame) -> pd.DataFrame:
        """Regional-score predictions of one base learner for composite ``rows``."""
        data = CompositeDataset(rows.assign(_none=0.0), self.cache(config),
                                config.data.tile_size, ["_none"], train=False)
        head = "components" if model.mean.numel() == len(COMPONENTS) else "regional"
        with torch.no_grad():
            values = torch.cat([regional_from_outputs(model(b["input"]), head)
                                for b in DataLoader(data, config.trainer.batch_size)])
        return rows[["sample", "subject"]].assign(pred=values.double().numpy())

    def run_fit(self, context, fit: Fit, fit_dir: Path, *, progress: bool = False) -> dict:
        if fit.kind != STACKING_FIT:
            return super().run_fit(context, fit, fit_dir, progress=progress)
        config = context.config
        train = context.samples[context.samples["split"] == "train"].reset_index(drop=True)
        columns = list(base_columns(config))
        oof = np.column_stack([
            read_fit_predictions(context, [fit_key(c, k) for k in range(config.ensemble.folds)])
            .set_index("sample")["pred"].loc[train["sample"]].to_numpy() for c in columns])
        result, table = stack_composites(train, oof, columns, config.ensemble.meta_learners,
                                         folds=config.ensemble.folds, seed=config.seed,
                                         metric=config.ensemble.selection_metric)
        write_csv_atomic(table, fit_dir / "out_of_fold.csv")
        visits = out_of_fold_visits(table, self.deployed_name(config, result),
                                    per_visit="pasi" in train.columns)
        calibration, report, calibrated = choose_visit_calibration(
            visits, config.ensemble.calibration, metric=config.ensemble.selection_metric,
            folds=config.ensemble.folds, neighbours=config.ensemble.distribution_neighbours,
            clear_threshold=config.ensemble.clear_threshold)
        write_csv_atomic(visits.assign(calibrated=calibrated), fit_dir / CALIBRATION_FILE)
        result.update(calibration=calibration.to_json(), calibration_choice=report)
        write_json(fit_dir / ENSEMBLE_FILE, result)
        return result

    def deployed_name(self, config: PasiConfig, selection: dict) -> str:
        deploy = config.ensemble.deploy
        if deploy in ("best_meta", "best_base"):
            deploy = selection[deploy] or selection["best_base"]
        if deploy not in selection["meta_learners"] and deploy not in selection["columns"]:
            raise ConfigError(f"ensemble.deploy: {deploy!r} is neither a meta-learner "
                              f"({', '.join(selection['meta_learners'])}) nor a base learner "
                              f"({', '.join(selection['columns'])})")
        return deploy

    def deploy(self, context, results) -> PasiEnsemble:
        """Every fold copy and the stacking weights in one module."""
        config, selection = context.config, results[STACKING_FIT]
        model = self.build_model(config, for_training=False)
        for name in model.columns:
            copies = model.members[module_key(name)]
            for fold in range(config.ensemble.folds):
                state = load_state_dict(context.fit_dir(fit_key(name, fold)) / "model.pt")
                copies[fold].load_state_dict(state)
        coef, intercept = learner_weights(selection, self.deployed_name(config, selection))
        model.meta_coef.copy_(torch.tensor(coef, dtype=torch.float32))
        model.meta_intercept.fill_(intercept)
        for row, meta in enumerate(model.meta_names):
            meta_coef, meta_intercept = learner_weights(selection, meta)
            model.meta_coefs[row] = torch.from_numpy(meta_coef)
            model.meta_intercepts[row] = meta_intercept
        model.per_visit_target.fill_(int("pasi" in context.samples.columns))
        return model.eval()

    def conformal_calibration(self, context, model, results):
        """Visit-level ``|true - predicted|`` of the deployed learner's out-of-fold
        predictions on the training subjects (each visit scored by fold models that never
        saw its subject), after the visit calibration cross-fitted without its subject. The
        deployed ensemble averages those fold models, so its errors on new subjects are, if
        anything, smaller: coverage is checked on the test split."""
        from medlite.evaluation.conformal import ConformalCalibration

        visits = pd.read_csv(context.fit_dir(STACKING_FIT) / CALIBRATION_FILE,
                             dtype={"subject": str})
        deployed = self.deployed_name(context.config, results[STACKING_FIT])
        method = results[STACKING_FIT]["calibration"]["method"]
        return ConformalCalibration(
            "regression", np.abs(visits["true"] - visits["calibrated"]).to_numpy(),
            f"out-of-fold predictions of {deployed}, calibration {method} cross-fitted "
            f"({len(visits)} training visits)", bounds=(0.0, REGIONAL_MAX))

    def evaluation_extras(self, context, results) -> dict:
        selection = dict(results[STACKING_FIT])
        selection["deployed"] = self.deployed_name(context.config, selection)
        return {"selection": selection}

    def saved_extras(self, run_dir: Path, config: PasiConfig) -> dict:
        selection = read_json(Path(run_dir) / "fits" / STACKING_FIT / ENSEMBLE_FILE)
        return {"selection": {**selection, "deployed": self.deployed_name(config, selection)}}

    def build_model(self, config: PasiConfig, for_training: bool = True) -> PasiEnsemble:
        columns = base_columns(config)
        members = {name: [build_base_model(arch, head, **config.model.kwargs)
                          for _ in range(config.ensemble.folds)]
                   for name, (arch, head) in columns.items()}
        return PasiEnsemble(members, {name: head for name, (_, head) in columns.items()},
                            config.ensemble.meta_learners)

    # -- inference -------------------------------------------------------------------------
    def example_input(self, config: PasiConfig) -> torch.Tensor:
        side = 2 * config.data.tile_size
        return torch.randn(1, 3, side, side)

    def prepare(self, item: VisitInput, config: PasiConfig) -> Prepared:
        composites = visit_composites(item.photos, config.data.tile_size, item.source)
        tensors = [normalize(to_tensor_image(c)) for c in composites.values()]
        return Prepared(tensors, (list(composites), list(composites.values()), item))

    def inference_network(self, model, config: PasiConfig):
        return PasiInferenceNetwork(model) if isinstance(model, PasiEnsemble) else model

    def assemble(self, outputs, context, config: PasiConfig) -> PasiOutput:
        regions, composites, item = context
        # (regions, 1 + M + K [+ 4]): see PasiInferenceNetwork.
        values = torch.stack(outputs).double().numpy()
        per_visit = config.data.score_level == "visit"
        names = ["deployed", *base_columns(config), *config.ensemble.meta_learners]
        members = {name: visit_value(regions, values[:, i], per_visit)
                   for i, name in enumerate(names[:values.shape[1]])}
        components = None
        if values.shape[1] == len(names) + len(COMPONENTS):
            components = {r: dict(zip(COMPONENTS, row[len(names):].tolist(), strict=True))
                          for r, row in zip(regions, values, strict=True)}
        pasi = members["deployed"]
        return PasiOutput(pasi=pasi, severity=severity_category(pasi, config.severity_thresholds),
                          regional=dict(zip(regions, values[:, 0].tolist(), strict=True)),
                          components=components, members=members, subject=item.subject,
                          visit=item.visit, source=item.source,
                          composites=dict(zip(regions, composites, strict=True)))

    def load_postprocessing(self, run_dir: Path, config: PasiConfig) -> VisitCalibration | None:
        """The visit calibration the stacking fit chose (None for runs made before it)."""
        path = Path(run_dir) / "fits" / STACKING_FIT / ENSEMBLE_FILE
        if not path.is_file():
            return None
        saved = read_json(path).get("calibration")
        return VisitCalibration.from_json(saved) if saved else None

    def postprocess(self, output: PasiOutput, state: VisitCalibration, config: PasiConfig
                    ) -> PasiOutput:
        """The deployed PASI calibrated; the raw one kept in ``uncalibrated`` and in
        ``members["deployed_uncalibrated"]``; the visit's clear-skin probability."""
        raw = output.members["deployed"]
        pasi = float(state.predict(raw)[0])
        output.uncalibrated, output.pasi = raw, pasi
        output.members = {**output.members, "deployed": pasi, "deployed_uncalibrated": raw}
        output.clear_probability = float(state.clear_probability(raw)[0])
        output.severity = severity_category(pasi, config.severity_thresholds)
        return output

    def parse_inputs(self, paths, visits, config):
        if paths:
            raise DataError(f"{paths[0]}: pasi predicts visits: give --visit FOLDER (with "
                            "upper/, trunk/, lower/ and optionally head/ photo folders)")
        return [VisitInput(visit_folder_photos(Path(folder)), visit=Path(folder).name,
                           name=str(folder)) for folder in visits]

    def write_prediction(self, output: PasiOutput, name: str, writer):
        from medlite.reports.figures import save_png

        files = [save_png(c, writer.path(name, f"_{r}.png"))
                 for r, c in output.composites.items()]
        summary = {"visit": output.visit, "pasi": round(output.pasi, 2),
                   **{k: round(v, 2) for k, v in conformal_columns(output).items()},
                   **({"pasi_uncalibrated": round(output.uncalibrated, 2),
                       "clear_probability": round(output.clear_probability, 3)}
                      if output.uncalibrated is not None else {}),
                   "severity": output.severity,
                   **{f"regional_{r}": round(v, 2) for r, v in output.regional.items()}}
        for region, values in (output.components or {}).items():
            summary.update({f"{region}_{k}": round(v, 2) for k, v in values.items()})
        return files, summary

    def prediction_table(self, summaries: list[dict],
                         state: VisitCalibration | None = None) -> pd.DataFrame:
        """The visits in the order given, with the % change of PASI from the first and, when
        the run is calibrated, the probability that the physician would score PASI75/90/100
        from the first visit to each later one."""
        table = pd.DataFrame(summaries)
        baseline = table["pasi"].iloc[0]
        table["percent_change_from_first"] = [
            round(float(percent_change(baseline, v)), 1) if baseline > 0 else float("nan")
            for v in table["pasi"]]
        if state is not None and "pasi_uncalibrated" in table:
            raw = table["pasi_uncalibrated"].to_numpy(float)
            for level in (75, 90, 100):
                table[f"p_pasi{level}_from_first"] = [float("nan")] + [
                    round(state.response_probability(raw[0], value, level), 3)
                    for value in raw[1:]]
        return table

    # -- evaluation ------------------------------------------------------------------------
    def evaluation_inputs(self, rows: pd.DataFrame, config: PasiConfig):
        per_visit = "pasi" in rows.columns
        target = rows["pasi" if per_visit else "regional"].to_numpy(float)
        truth = visit_scores(rows, target, per_visit)
        inputs = []
        for (subject, visit), group in rows.groupby(["subject", "visit"], sort=False):
            photos = {r: list(images) for r, images in zip(group["region"], group["images"],
                                                            strict=True)}
            true = truth.loc[(truth["subject"] == subject) & (truth["visit"] == visit),
                             "pasi"].iloc[0]
            inputs.append(({"subject": str(subject), "visit": visit, "true": float(true)},
                           VisitInput(photos, subject=str(subject), visit=str(visit))))
        return inputs

    def score(self, output: PasiOutput, info: dict, config, prediction_dir) -> list[dict]:
        row = {**info, **output.members, **conformal_columns(output)}
        if output.clear_probability is not None:
            row["clear_probability"] = output.clear_probability
        if output.interval is not None:
            row["covered"] = output.interval[0] <= info["true"] <= output.interval[1]
        return [row]

    def statistic(self, table: pd.DataFrame, config: PasiConfig, extras: dict):
        groups = headline_models(extras.get("selection", {}))
        models = models_statistic(table, list(groups), config.severity_thresholds,
                                  groups=groups)
        intervals = conformal_statistic(table)
        return lambda index: {**models(index), **intervals(index)}

    def figures(self, table, config: PasiConfig, figure_dir: Path, extras: dict):
        return pasi_figures(table, config, figure_dir, extras)
