"""One-Step PASI (Xing et al., AbbVie) as a task recipe: psoriasis severity from photos.

The photos of each subject/visit/region become one 2x2 composite (:mod:`medlite.data.visits`).
Each base learner is a ``create_model`` regression network predicting the composite's regional
score (E + I + S) x A, 0-72, or, beyond the paper, the four components E, I, S (0-4) and A
(0-6) from which the regional score is computed (``ensemble.heads: [components]``). The
visit's PASI is assembled by Equation 2 (weights upper 0.2, trunk 0.3, lower 0.4, plus head
0.1 when photographed). With per-visit PASI scores only, every composite is trained on its
visit's PASI and the visit's prediction is the mean over its regions.

Ensemble, as the paper: subjects are split 90/10 into train/test by the greedy split that
keeps the desquamation distribution balanced (:func:`greedy_stratified_split`), the training
subjects into 5 grouped folds. Every (architecture, head, fold) is an independent job
(:mod:`medlite.training.jobs`, resumable, N at a time) that trains on four folds, with the
fifth as its validation set (early stopping and the plateau scheduler watch it, as in the
paper) and out-of-fold predictions. Four meta-learners (:mod:`medlite.ensemble`) are fitted
on the out-of-fold matrix; on test data each architecture predicts the mean of its fold
copies. The leaderboard ranks every base and meta learner by visit-level MAE with
subject-bootstrap CIs.

The trained run is one module, :class:`PasiEnsemble` (every fold copy and the deployed
meta-learner's weights), so ``predict`` and ``export`` work like any other task.

Deviation, for numerical stability with the paper's SGD lr 0.01: each network learns its
targets standardised with the training folds' mean and standard deviation (the wrapper
:class:`StandardizedOutput` maps back to score units), and the loss is the MSE in those
standardised units (the MSE divided by the target variance).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from medlite.config import (
    BaseTaskConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    StrictModel,
    TrainerConfig,
)
from medlite.data.manifest import write_csv_atomic
from medlite.data.splits import (
    assign_folds,
    check_subject_disjoint,
    greedy_stratified_split,
    write_splits,
)
from medlite.data.visits import (
    CompositeCache,
    CompositeDataset,
    make_composite,
    read_visit_tables,
    visit_items,
)
from medlite.ensemble import META_LEARNERS, fit_meta_learner, meta_learner_weights
from medlite.errors import ConfigError, DataError
from medlite.metrics import metrics_with_ci, regression_metrics
from medlite.models import create_model
from medlite.pasi import REGION_WEIGHTS, percent_change, severity_accuracy
from medlite.reports.html import write_standard_report
from medlite.runs import load_state_dict, save_torch_atomic, write_json
from medlite.tasks.base import (
    SPLITS_FILE,
    Evaluation,
    Task,
    load_run_config,
    record_results,
    resolve_relative,
    with_saved_splits,
)
from medlite.training.batchnorm import recompute_batchnorm_statistics
from medlite.training.jobs import Job, make_executor, run_jobs
from medlite.training.loop import MODEL_FILE, TrainingParts, fit

#: The 29 torchvision architectures of the paper's Table S1.
PAPER_ARCHITECTURES: tuple[str, ...] = (
    "alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn",
    "vgg19_bn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "wide_resnet50_2", "wide_resnet101_2", "squeezenet1_0",
    "squeezenet1_1", "densenet121", "densenet169", "googlenet", "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "mnasnet0_5", "mnasnet1_0",
)
COMPONENTS = ("erythema", "induration", "desquamation", "area")
COMPONENT_MAX = (4.0, 4.0, 4.0, 6.0)
REGIONAL_MAX = 72.0
JOBS_DIR = "jobs"
ENSEMBLE_FILE = "ensemble.json"
LEADERBOARD_FILE = "leaderboard.csv"


# -- configuration -----------------------------------------------------------------------------

class PasiDataConfig(StrictModel):
    photos: Path | None = Field(None, description="CSV: subject, visit, region, image.")
    scores: Path | None = Field(None, description="CSV: subject, visit, region, erythema, "
                                "induration, desquamation, area_percent|area; or subject, "
                                "visit, pasi.")
    tile_size: int = Field(128, ge=8, description="Tile side; the composite is 2x this.")
    cache_dir: Path | None = Field(None, description="Composite cache (default: "
                                   "<photos folder>/.medlite_composites).")
    augment: bool = Field(True, description="Rotate and shuffle tiles, jitter brightness "
                          "and contrast in training.")
    check_images: bool = Field(True, description="Decode every photo when checking the data.")


class PasiEnsembleConfig(StrictModel):
    architectures: list[str] = Field(default_factory=lambda: list(PAPER_ARCHITECTURES),
                                     min_length=1)
    heads: list[Literal["regional", "components"]] = Field(
        default_factory=lambda: ["regional"], min_length=1,
        description="regional: one output, (E+I+S)xA (the paper); components: E, I, S, A.")
    folds: int = Field(5, ge=2)
    workers: int = Field(1, ge=1, description="Jobs trained at the same time.")
    meta_learners: list[str] = Field(default_factory=lambda: list(META_LEARNERS))
    deploy: str = Field("ridge_intercept", description="Meta-learner used by predict and "
                        "export, or a base learner name such as resnet34.")
    test_fraction: float = Field(0.1, gt=0, lt=1)
    precise_bn: bool = Field(True, description="Recompute BatchNorm statistics over the "
                             "training composites after training (short schedules leave "
                             "them lagging; see medlite.training.batchnorm).")
    split_trials: int = Field(20, ge=1, description="Shuffles of the greedy split.")

    @field_validator("meta_learners")
    @classmethod
    def _known(cls, names: list[str]) -> list[str]:
        unknown = [n for n in names if n not in META_LEARNERS]
        if unknown:
            raise ValueError(f"unknown meta-learner {unknown[0]!r} (one of "
                             f"{', '.join(META_LEARNERS)})")
        return names


class PasiConfig(BaseTaskConfig):
    task: Literal["pasi"] = "pasi"
    data: PasiDataConfig = Field(default_factory=PasiDataConfig)
    ensemble: PasiEnsembleConfig = Field(default_factory=PasiEnsembleConfig)
    severity_thresholds: tuple[float, float] = Field(
        (1.0, 10.0), description="clear below the first, moderate-to-severe above the second")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(name="resnet34",
                                                                   pretrained=True))
    optimizer: OptimizerConfig = Field(
        default_factory=lambda: OptimizerConfig(name="sgd", lr=0.01, momentum=0.9))
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig(
        name="plateau", factor=0.1, threshold=1e-4, patience=10))
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(
        max_epochs=100, batch_size=16, early_stopping_patience=50))


# -- models ---------------------------------------------------------------------------------

class StandardizedOutput(nn.Module):
    """``network(x) * std + mean``: the network learns standardised targets, callers see
    score units. ``mean`` and ``std`` are buffers ``(K,)`` saved with the weights."""

    def __init__(self, network: nn.Module, num_outputs: int):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.zeros(num_outputs))
        self.register_buffer("std", torch.ones(num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) * self.std + self.mean


class StandardizedMSELoss(nn.Module):
    """MSE in standardised target units: ``mean(((pred - target) / std) ** 2)``."""

    def __init__(self, std: torch.Tensor):
        super().__init__()
        self.register_buffer("std", std.clone())

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (((pred - target) / self.std) ** 2).mean()


def regional_from_outputs(outputs: torch.Tensor, head: str) -> torch.Tensor:
    """Network outputs (B, 1) or (B, 4) -> regional score (B,) clipped to its range.

    ``components`` outputs are E, I, S, A, each clipped to its range first."""
    if head == "regional":
        return outputs[:, 0].clamp(0.0, REGIONAL_MAX)
    top = torch.tensor(COMPONENT_MAX, dtype=outputs.dtype, device=outputs.device)
    parts = torch.minimum(outputs.clamp(min=0.0), top)
    return parts[:, :3].sum(dim=1) * parts[:, 3]


def build_base_model(config: PasiConfig, architecture: str, head: str,
                     pretrained: bool) -> StandardizedOutput:
    outputs = 4 if head == "components" else 1
    network = create_model(architecture, task="regression", num_outputs=outputs,
                           pretrained=pretrained,
                           weights_path=config.model.weights_path if pretrained else None,
                           **config.model.kwargs)
    return StandardizedOutput(network, outputs)


class PasiEnsemble(nn.Module):
    """Every fold copy of every base learner, and the deployed stacking weights.

    ``forward(composites (B, 3, 2T, 2T)) -> (B, 1 + M)``: column 0 is the deployed
    prediction of the regional score (0-72, or the visit PASI for per-visit targets),
    columns 1..M each base learner's prediction (mean of its fold copies), in the order of
    ``columns``.
    """

    def __init__(self, members: dict[str, list[nn.Module]], heads: dict[str, str],
                 meta_names: list[str]):
        super().__init__()
        self.columns = list(members)
        self.heads = dict(heads)
        self.meta_names = list(meta_names)
        self.members = nn.ModuleDict({
            _module_key(name): nn.ModuleList(copies) for name, copies in members.items()})
        self.register_buffer("meta_coef", torch.zeros(len(self.columns)))
        self.register_buffer("meta_intercept", torch.zeros(()))
        # Every meta-learner's weights (rows in the order of meta_names), for evaluation.
        self.register_buffer("meta_coefs", torch.zeros(len(self.meta_names), len(self.columns),
                                                       dtype=torch.float64))
        self.register_buffer("meta_intercepts", torch.zeros(len(self.meta_names),
                                                            dtype=torch.float64))
        # 1 when the targets were per-visit PASI (a visit = mean of its regions), 0 when
        # regional scores (a visit = Equation 2).
        self.register_buffer("per_visit_target", torch.zeros((), dtype=torch.uint8))

    def base_predictions(self, x: torch.Tensor) -> torch.Tensor:
        columns = []
        for name in self.columns:
            copies = self.members[_module_key(name)]
            folds = [regional_from_outputs(copy(x), self.heads[name]) for copy in copies]
            columns.append(torch.stack(folds).mean(dim=0))
        return torch.stack(columns, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_predictions(x)
        stacked = (base @ self.meta_coef + self.meta_intercept).clamp(0.0, REGIONAL_MAX)
        return torch.cat([stacked[:, None], base], dim=1)


def _module_key(column: str) -> str:
    return column.replace(".", "_")


def base_columns(config: PasiConfig) -> dict[str, tuple[str, str]]:
    """Base learner name -> (architecture, head); the name is the architecture, with
    ``+components`` for the interpretable head."""
    columns = {}
    for architecture in config.ensemble.architectures:
        for head in config.ensemble.heads:
            name = architecture if head == "regional" else f"{architecture}+components"
            columns[name] = (architecture, head)
    return columns


# -- training jobs -----------------------------------------------------------------------------

def _job_key(column: str, fold: int) -> str:
    return f"{column.replace('+', '-')}-fold{fold}"


def _target_columns(samples: pd.DataFrame, head: str) -> list[str]:
    if "pasi" in samples.columns:
        if head == "components":
            raise ConfigError("ensemble.heads: 'components' needs per-region E, I, S and area "
                              "scores; the scores file gives a PASI per visit")
        return ["pasi"]
    return list(COMPONENTS) if head == "components" else ["regional"]


def train_fold_job(job: Job, job_dir: Path) -> dict:
    """One (architecture, head, fold) training: module-level so worker processes can run it.

    Resumes from ``job_dir/checkpoints/last.ckpt`` when an earlier attempt left one.
    Returns out-of-fold and test predictions of the regional score by sample."""
    from medlite.tasks import get_task

    run_dir = Path(job_dir).resolve().parents[1]  # RUN/jobs/KEY: the run can be moved
    config: PasiConfig = load_run_config(run_dir)
    task: PasiTask = get_task("pasi")
    samples = with_saved_splits(task.load_samples(config, check_images=False), run_dir)
    architecture, head, fold = job.params["architecture"], job.params["head"], job.params["fold"]
    training = samples[samples["split"] == "train"]
    fit_rows = training[training["fold"] != fold]
    held_out = training[training["fold"] == fold]
    test = samples[samples["split"] == "test"]
    targets = _target_columns(samples, head)

    model = build_base_model(config, architecture, head, pretrained=config.model.pretrained)
    values = fit_rows[targets].to_numpy(dtype=np.float32)
    model.mean.copy_(torch.from_numpy(values.mean(axis=0)))
    model.std.copy_(torch.from_numpy(np.maximum(values.std(axis=0), 1e-3)))
    cache = task.composite_cache(config)
    tile = config.data.tile_size
    batch = config.trainer.batch_size
    train_set = CompositeDataset(fit_rows, cache, tile, targets, train=config.data.augment,
                                 seed=config.seed + fold)
    val_set = CompositeDataset(held_out, cache, tile, targets, train=False)
    parts = TrainingParts(
        model=model, loss_fn=StandardizedMSELoss(model.std.clone()),
        train_loader=DataLoader(train_set, batch_size=batch, shuffle=True,
                                drop_last=len(train_set) > batch,
                                num_workers=config.trainer.num_workers),
        val_loader=DataLoader(val_set, batch_size=batch,
                              num_workers=config.trainer.num_workers),
        monitor="val_loss", monitor_mode="min")
    resume = (job_dir / "checkpoints" / "last.ckpt").is_file()
    fit(parts, config, job_dir, resume=resume, progress=False)
    model.load_state_dict(load_state_dict(job_dir / MODEL_FILE))
    if config.ensemble.precise_bn:
        plain = CompositeDataset(fit_rows, cache, tile, targets, train=False)
        batches = (b["input"] for b in DataLoader(plain, batch_size=batch))
        if recompute_batchnorm_statistics(model, batches):
            save_torch_atomic(model.state_dict(), job_dir / MODEL_FILE)
    oof = predict_regional(model, head, held_out, cache, tile, batch)
    test_pred = predict_regional(model, head, test, cache, tile, batch)
    history = pd.read_csv(job_dir / "history.csv") if (job_dir / "history.csv").is_file() \
        else pd.DataFrame()
    return {"oof": dict(zip(held_out["sample"], oof.tolist(), strict=True)),
            "test": dict(zip(test["sample"], test_pred.tolist(), strict=True)),
            "epochs": len(history), "cache_hits": cache.hits, "cache_misses": cache.misses,
            "best_val_loss": float(history["val_loss"].min()) if len(history) else None}


@torch.no_grad()
def predict_regional(model: nn.Module, head: str, rows: pd.DataFrame, cache: CompositeCache,
                     tile: int, batch: int) -> np.ndarray:
    """Regional-score predictions (N,) of one base model for composite ``rows``."""
    if rows.empty:
        return np.zeros(0)
    model.eval()
    dataset = CompositeDataset(rows.assign(_none=0.0), cache, tile, ["_none"], train=False)
    out = [regional_from_outputs(model(b["input"]), head)
           for b in DataLoader(dataset, batch_size=batch)]
    return torch.cat(out).numpy().astype(np.float64)


# -- visit-level assembly and the leaderboard ------------------------------------------------

def visit_scores(rows: pd.DataFrame, values: np.ndarray, per_visit: bool) -> pd.DataFrame:
    """Composite values (N,) -> one PASI per subject/visit.

    Per-region values (regional scores) are combined by Equation 2 (weights of
    :data:`medlite.pasi.REGION_WEIGHTS`); per-visit values (PASI targets) are averaged over
    the visit's regions. Returns columns subject, visit, pasi."""
    frame = rows[["subject", "visit", "region"]].copy()
    frame["value"] = np.asarray(values, dtype=np.float64)
    if per_visit:
        grouped = frame.groupby(["subject", "visit"], sort=False)["value"].mean()
    else:
        frame["value"] = frame["value"].clip(0, REGIONAL_MAX) * frame["region"].map(REGION_WEIGHTS)
        grouped = frame.groupby(["subject", "visit"], sort=False)["value"].sum()
    return grouped.clip(0, REGIONAL_MAX).rename("pasi").reset_index()


def score_statistic(y_true: np.ndarray, y_pred: np.ndarray,
                    thresholds: tuple[float, float]) -> Callable[[np.ndarray], dict]:
    """Visit-level MAE, MSE, Pearson, CCC and severity accuracy of the rows ``index``."""

    def statistic(index: np.ndarray) -> dict[str, float]:
        if len(index) < 2:
            return dict.fromkeys(("mae", "mse", "pcc", "ccc", "severity_acc"), float("nan"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            scores = regression_metrics(y_true[index], y_pred[index])
        return {"mae": scores["mae"], "mse": scores["mse"], "pcc": scores["pcc"],
                "ccc": scores["ccc"],
                "severity_acc": severity_accuracy(y_true[index], y_pred[index], thresholds)}
    return statistic


def leaderboard(visits: pd.DataFrame, models: list[str], kinds: dict[str, str],
                config: PasiConfig) -> tuple[pd.DataFrame, dict]:
    """Visit-level metrics with subject-bootstrap CIs for every model column of ``visits``
    (which holds subject, visit, true and one PASI column per model), sorted by MAE."""
    rows, metrics = [], {}
    truth = visits["true"].to_numpy(dtype=np.float64)
    subjects = visits["subject"].astype(str).to_numpy()
    for name in models:
        statistic = score_statistic(truth, visits[name].to_numpy(dtype=np.float64),
                                    config.severity_thresholds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = metrics_with_ci(statistic, subjects,
                                     n_resamples=config.evaluation.bootstrap_resamples,
                                     confidence=config.evaluation.confidence, seed=config.seed)
        metrics[name] = result
        row = {"model": name, "kind": kinds[name]}
        for key, entry in result.items():
            row[key] = entry["value"]
            row[f"{key}_ci_low"], row[f"{key}_ci_high"] = entry["ci_low"], entry["ci_high"]
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("mae", kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table, metrics


# -- the recipe --------------------------------------------------------------------------------

class PasiTask(Task):
    name = "pasi"
    config_class = PasiConfig

    def resolve_paths(self, config: PasiConfig, base_dir: Path) -> PasiConfig:
        config = super().resolve_paths(config, base_dir)
        resolve_relative(config.data, ("photos", "scores", "cache_dir"), base_dir)
        return config

    def demo_config(self, out_dir: Path) -> PasiConfig:
        from medlite.datasets.pasi_trial import write_pasi_trial

        photos, scores = write_pasi_trial(Path(out_dir) / "data", n_subjects=30,
                                          visits_per_subject=(5, 6), photo_size=48,
                                          seed=0)
        config = PasiConfig(
            name="demo-pasi",
            data=PasiDataConfig(photos=photos, scores=scores, tile_size=32),
            ensemble=PasiEnsembleConfig(
                architectures=["mobilenet_v3_small", "squeezenet1_1"],
                heads=["regional", "components"], test_fraction=0.2),
            model=ModelConfig(name="mobilenet_v3_small", pretrained=False),
            optimizer=OptimizerConfig(name="adam", lr=2e-3),
            scheduler=SchedulerConfig(name="cosine", min_lr=1e-5),
        )
        config.trainer.max_epochs = 8
        config.trainer.batch_size = 16
        config.trainer.early_stopping_patience = None
        config.evaluation.bootstrap_resamples = 500
        return config

    # -- data ------------------------------------------------------------------------------
    def load_samples(self, config: PasiConfig, data_path: Path | None = None,
                     check_images: bool | None = None) -> pd.DataFrame:
        photos = data_path or config.data.photos
        if photos is None or config.data.scores is None:
            raise DataError("data.photos and data.scores: both required (CSV files; see "
                            "`medlite data check --help`)")
        check = config.data.check_images if check_images is None else check_images
        tables = read_visit_tables(Path(photos), Path(config.data.scores), check_images=check)
        items = visit_items(tables)
        items.attrs["source"] = str(photos)
        items.attrs["visit_order"] = list(tables.visit_order)
        return items

    def composite_cache(self, config: PasiConfig) -> CompositeCache:
        folder = config.data.cache_dir or Path(config.data.photos).parent / ".medlite_composites"
        return CompositeCache(folder)

    def split(self, samples: pd.DataFrame, config: PasiConfig) -> pd.DataFrame:
        """The paper's greedy desquamation-balanced train/test split, then grouped folds."""
        subjects = samples["subject"].astype(str).to_numpy()
        if "desquamation" in samples.columns:
            labels, values = samples["desquamation"].to_numpy(dtype=int), (0, 1, 2, 3, 4)
        else:  # per-visit PASI only: balance the severity categories instead
            low, high = config.severity_thresholds
            labels = np.digitize(samples["pasi"].to_numpy(float), [low, high], right=True)
            values = (0, 1, 2)
        is_test, imbalance = greedy_stratified_split(
            subjects, labels, test_fraction=config.ensemble.test_fraction,
            n_trials=config.ensemble.split_trials, seed=config.seed, label_values=values)
        samples = samples.copy()
        samples["split"] = np.where(is_test, "test", "train")
        folds = np.full(len(samples), -1)
        train = ~is_test
        if len(np.unique(subjects[train])) < config.ensemble.folds:
            raise DataError(f"{samples.attrs.get('source', 'data')}: "
                            f"{len(np.unique(subjects[train]))} training subjects cannot make "
                            f"{config.ensemble.folds} folds")
        folds[train] = assign_folds(subjects[train], config.ensemble.folds, seed=config.seed)
        samples["fold"] = folds
        check_subject_disjoint(subjects, samples["split"].to_numpy(),
                               samples.attrs.get("source", "data"))
        samples.attrs["split_imbalance"] = float(imbalance)
        return samples

    # -- model -----------------------------------------------------------------------------
    def build_model(self, config: PasiConfig, for_training: bool = True) -> PasiEnsemble:
        columns = base_columns(config)
        members = {name: [build_base_model(config, arch, head, pretrained=False)
                          for _ in range(config.ensemble.folds)]
                   for name, (arch, head) in columns.items()}
        return PasiEnsemble(members, {name: head for name, (_, head) in columns.items()},
                            config.ensemble.meta_learners)

    def example_input(self, config: PasiConfig) -> torch.Tensor:
        side = 2 * config.data.tile_size
        return torch.randn(1, 3, side, side)

    # -- the pipeline ----------------------------------------------------------------------
    def run_training(self, config: PasiConfig, run_dir: Path, *, resume: bool,
                     progress: bool) -> dict:
        run_dir = Path(run_dir)
        samples = self.load_samples(config)
        if resume and (run_dir / SPLITS_FILE).is_file():
            samples = with_saved_splits(samples, run_dir)
        else:
            samples = self.split(samples, config)
            write_splits(run_dir / SPLITS_FILE, samples["sample"], samples["subject"],
                         samples["split"], samples["fold"].where(samples["fold"] >= 0))
        composites = self._build_composites(samples, config, progress)
        columns = base_columns(config)
        check_weights_available(config)
        jobs = [Job(_job_key(name, fold), {"architecture": arch, "head": head, "fold": fold})
                for name, (arch, head) in columns.items()
                for fold in range(config.ensemble.folds)]
        results = run_jobs(jobs, train_fold_job, run_dir / JOBS_DIR,
                           executor=make_executor(config.ensemble.workers), progress=progress)

        model = self._assemble(config, run_dir, samples, columns, results)
        evaluation = self.evaluate(model, config, samples[samples["split"] == "test"], run_dir)
        cache = {"before_jobs": composites,
                 "jobs_reads": sum(r.get("cache_hits", 0) for r in results.values()),
                 "jobs_builds": sum(r.get("cache_misses", 0) for r in results.values())}
        return record_results(self, config, evaluation, run_dir, {
            "split": "test", **_counts(evaluation.per_sample), "composite_cache": cache})

    def _build_composites(self, samples: pd.DataFrame, config: PasiConfig,
                          progress: bool) -> dict:
        """Build every composite once, before the jobs (which then only read the cache)."""
        cache = self.composite_cache(config)
        for paths in tqdm(samples["images"], desc="composites", disable=not progress,
                          leave=False):
            cache.get(paths, config.data.tile_size)
        return {"built": cache.misses, "reused": cache.hits}

    def _assemble(self, config: PasiConfig, run_dir: Path, samples: pd.DataFrame,
                  columns: dict, results: dict) -> PasiEnsemble:
        """Out-of-fold matrix -> meta-learners; fold copies -> the deployed ensemble."""
        train = samples[samples["split"] == "train"]
        oof = np.column_stack([
            [results[_job_key(name, int(fold))]["oof"][sample]
             for sample, fold in zip(train["sample"], train["fold"], strict=True)]
            for name in columns])
        target = train["pasi" if "pasi" in train.columns else "regional"].to_numpy(float)
        groups = train["subject"].astype(str).to_numpy()
        names = list(columns)
        ensemble = {"columns": names, "meta_learners": {}, "deploy": config.ensemble.deploy}
        for meta in config.ensemble.meta_learners:
            estimator = fit_meta_learner(meta, oof, target, groups, seed=config.seed)
            ensemble["meta_learners"][meta] = meta_learner_weights(estimator, names)
        write_json(run_dir / ENSEMBLE_FILE, ensemble)
        oof_table = train[["sample", "subject", "visit", "region", "fold"]].copy()
        oof_table["true"] = target
        for i, name in enumerate(names):
            oof_table[name] = oof[:, i]
        (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
        write_csv_atomic(oof_table, run_dir / "predictions" / "out_of_fold.csv")

        model = self.build_model(config, for_training=False)
        for name in names:
            copies = model.members[_module_key(name)]
            for fold in range(config.ensemble.folds):
                state = load_state_dict(run_dir / JOBS_DIR / _job_key(name, fold) / MODEL_FILE)
                copies[fold].load_state_dict(state)
        coef, intercept = deployed_weights(ensemble, config.ensemble.deploy)
        model.meta_coef.copy_(torch.tensor(coef, dtype=torch.float32))
        model.meta_intercept.fill_(float(intercept))
        for row, meta in enumerate(model.meta_names):
            meta_coef, meta_intercept = deployed_weights(ensemble, meta)
            model.meta_coefs[row] = torch.from_numpy(meta_coef)
            model.meta_intercepts[row] = meta_intercept
        model.per_visit_target.fill_(int("pasi" in samples.columns))
        save_torch_atomic(model.state_dict(), run_dir / MODEL_FILE)
        return model.eval()

    # -- evaluation --------------------------------------------------------------------------
    @torch.no_grad()
    def composite_predictions(self, model: PasiEnsemble, config: PasiConfig,
                              samples: pd.DataFrame) -> np.ndarray:
        """(N, 1 + M) ensemble outputs for composite rows (see :class:`PasiEnsemble`)."""
        cache = self.composite_cache(config)
        dataset = CompositeDataset(samples.assign(_none=0.0), cache, config.data.tile_size,
                                   ["_none"], train=False)
        model.eval()
        outputs = [model(b["input"]) for b in DataLoader(dataset, batch_size=32)]
        return torch.cat(outputs).numpy().astype(np.float64)

    def evaluate(self, model: PasiEnsemble, config: PasiConfig, samples: pd.DataFrame,
                 out_dir: Path) -> Evaluation:
        from medlite.reports.longitudinal import (
            plot_agreement,
            plot_bland_altman,
            plot_trajectories,
            responder_agreement,
        )

        out_dir = Path(out_dir)
        figure_dir = out_dir / "figures"
        figure_dir.mkdir(parents=True, exist_ok=True)
        ensemble = ensemble_weights(model)
        outputs = self.composite_predictions(model, config, samples)
        base = {name: outputs[:, 1 + i] for i, name in enumerate(model.columns)}
        per_visit = "pasi" in samples.columns
        target = "pasi" if per_visit else "regional"
        composite_table = samples[["sample", "subject", "visit", "region"]].copy()
        composite_table["true"] = samples[target].to_numpy(float)
        predictions = dict(base)
        for meta in ensemble["meta_learners"]:
            coef, intercept = deployed_weights(ensemble, meta)
            matrix = np.column_stack([base[name] for name in ensemble["columns"]])
            predictions[meta] = np.clip(matrix @ coef + intercept, 0, REGIONAL_MAX)
        for name, values in predictions.items():
            composite_table[name] = values
        kinds = {name: "base" for name in base} | {m: "meta" for m in ensemble["meta_learners"]}

        visits = visit_scores(samples, composite_table["true"].to_numpy(), per_visit)
        visits = visits.rename(columns={"pasi": "true"})
        for name, values in predictions.items():
            visits[name] = visit_scores(samples, values, per_visit)["pasi"].to_numpy()
        visits = _order_visits(visits, samples.attrs.get("visit_order"))
        board, all_metrics = leaderboard(visits, list(predictions), kinds, config)
        (out_dir / "predictions").mkdir(parents=True, exist_ok=True)
        write_csv_atomic(composite_table, out_dir / "predictions" / "composites.csv")
        write_csv_atomic(visits, out_dir / "predictions" / "visits.csv")
        write_csv_atomic(board, out_dir / LEADERBOARD_FILE)

        deployed = config.ensemble.deploy if config.ensemble.deploy in predictions \
            else board["model"].iloc[0]
        best_base = board[board["kind"] == "base"]["model"].iloc[0]
        best_meta = (board[board["kind"] == "meta"]["model"].iloc[0]
                     if (board["kind"] == "meta").any() else None)
        chosen = visits[["subject", "visit", "true"]].assign(pred=visits[deployed])
        numeric = pd.to_numeric(chosen["visit"], errors="coerce")
        if numeric.notna().all():  # weeks or days: plot to scale, in time order
            chosen["visit"] = numeric
        figures = {
            "agreement": plot_agreement(chosen["true"], chosen["pred"],
                                        figure_dir / "agreement.png",
                                        title=f"{deployed}: predicted vs physician PASI"),
            "bland_altman": plot_bland_altman(chosen["true"], chosen["pred"],
                                              figure_dir / "bland_altman.png"),
            "trajectories": plot_trajectories(chosen, figure_dir / "trajectories.png"),
        }
        responders = responder_agreement(chosen)
        write_csv_atomic(responders, out_dir / "responder_agreement.csv")
        metrics = {deployed: all_metrics[deployed], f"best base: {best_base}":
                   all_metrics[best_base]}
        if best_meta is not None and best_meta != deployed:
            metrics[f"best meta: {best_meta}"] = all_metrics[best_meta]
        per_sample = visits[["subject", "visit", "true"]].assign(pred=visits[deployed])
        return Evaluation(
            metrics=metrics, per_sample=per_sample, figures=figures,
            extra={"aggregation": "one PASI per subject/visit (Equation 2 over the region "
                   "composites); MAE/MSE in PASI points; severity_acc: same category "
                   f"(thresholds {list(config.severity_thresholds)})",
                   "deployed": deployed, "leaderboard": board.to_dict(orient="records"),
                   "responder_agreement": responders.to_dict(orient="records"),
                   "n_composites": len(samples)})

    def write_report(self, run_dir, config, evaluation, out_path, title):
        board = pd.DataFrame(evaluation.extra["leaderboard"])
        shown = ["rank", "model", "kind", "mae", "mae_ci_low", "mae_ci_high", "mse", "pcc",
                 "ccc", "ccc_ci_low", "ccc_ci_high", "severity_acc"]
        responders = pd.DataFrame(evaluation.extra["responder_agreement"])
        sections = [
            ("Leaderboard (test visits, sorted by MAE)",
             board[[c for c in shown if c in board]].to_html(index=False, float_format="%.3f")),
            (f"PASI50/75/90/100 responders at the last visit ({evaluation.extra['deployed']} "
             "vs physician)", responders.to_html(index=False, float_format="%.3f")),
        ]
        return write_standard_report(run_dir, config, evaluation, out_path, title,
                                     extra_sections=sections)

    # -- prediction --------------------------------------------------------------------------
    def predict(self, model: PasiEnsemble, config: PasiConfig, inputs: list[Path],
                out_dir: Path, overwrite: bool = False) -> list[Path]:
        """Each input is a visit folder with region subfolders (upper/, trunk/, lower/,
        optional head/; up to four photos each). Writes ``visit_predictions.csv`` (PASI, the
        regional sub-scores and, across the given visits in order, the % change from the
        first) and one composite PNG per region."""
        from PIL import Image

        from medlite.data.io import IMAGE_EXTENSIONS, read_image
        from medlite.data.transforms import normalize, to_tensor_image

        out_dir = Path(out_dir)
        target = out_dir / "visit_predictions.csv"
        if target.exists() and not overwrite:
            raise DataError(f"{target}: exists; pass --overwrite to replace predictions")
        rows = []
        for visit_dir in map(Path, inputs):
            if not visit_dir.is_dir():
                raise DataError(f"{visit_dir}: not a folder (a visit is a folder with upper/, "
                                "trunk/ and lower/ photo folders)")
            regional = {}
            for region in REGION_WEIGHTS:
                folder = visit_dir / region
                photos = sorted(p for p in folder.glob("*")
                                if p.suffix.lower() in IMAGE_EXTENSIONS) if folder.is_dir() else []
                if not photos:
                    if region == "head":
                        continue
                    raise DataError(f"{folder}: no photos for region {region}")
                if len(photos) > 4:
                    raise DataError(f"{folder}: {len(photos)} photos; at most 4 per region")
                composite = make_composite([read_image(p) for p in photos],
                                           config.data.tile_size)
                out_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(composite).save(out_dir / f"{visit_dir.name}_{region}.png")
                with torch.no_grad():
                    value = model.eval()(normalize(to_tensor_image(composite))[None])[0, 0]
                regional[region] = float(value)
            if int(model.per_visit_target):
                pasi = float(np.mean(list(regional.values())))
            else:
                pasi = float(sum(REGION_WEIGHTS[r] * v for r, v in regional.items()))
            rows.append({"visit": visit_dir.name, "pasi": round(pasi, 2),
                         **{f"regional_{r}": round(v, 2) for r, v in regional.items()}})
        table = pd.DataFrame(rows)
        baseline = table["pasi"].iloc[0]
        table["percent_change_from_first"] = [
            round(float(percent_change(baseline, v)), 1) if baseline > 0 else float("nan")
            for v in table["pasi"]]
        write_csv_atomic(table, target)
        return [target]


def check_weights_available(config: PasiConfig) -> None:
    """Fail before any training when pretrained weights are asked for and missing."""
    from medlite.errors import WeightsNotFoundError
    from medlite.models.weights import hub_checkpoint_path

    architectures = config.ensemble.architectures
    if config.model.weights_path is not None:
        if len(architectures) > 1:
            raise ConfigError("model.weights_path: one file cannot initialise several "
                              "architectures; use model.pretrained (torch hub cache) or a "
                              "single architecture")
        return
    if not config.model.pretrained:
        return
    missing = []
    for arch in architectures:
        try:
            path = hub_checkpoint_path(arch)
        except WeightsNotFoundError as error:
            missing.append(str(error))
            continue
        if not path.is_file():
            missing.append(f"model.pretrained: ImageNet weights for {arch!r} are not in the "
                           f"local torch cache (expected {path})")
    if missing:
        raise WeightsNotFoundError(
            f"{missing[0]} (and {len(missing) - 1} more); medlite never downloads: copy the "
            "files there, or set model.pretrained: false" if len(missing) > 1 else
            f"{missing[0]}; medlite never downloads: copy the file there, or set "
            "model.pretrained: false", problems=missing)


def deployed_weights(ensemble: dict, name: str) -> tuple[np.ndarray, float]:
    """(coef (M,), intercept) that turn the base columns into the named model's prediction:
    a meta-learner's weights, or a one-hot column for a base learner."""
    columns = ensemble["columns"]
    if name in ensemble["meta_learners"]:
        weights = ensemble["meta_learners"][name]
        return (np.array([weights["coefficients"][c] for c in columns], dtype=np.float64),
                float(weights["intercept"]))
    if name in columns:
        return np.eye(len(columns))[columns.index(name)], 0.0
    raise ConfigError(f"ensemble.deploy: {name!r} is neither a meta-learner "
                      f"({', '.join(ensemble['meta_learners'])}) nor a base learner "
                      f"({', '.join(columns)})")


def ensemble_weights(model: PasiEnsemble) -> dict:
    """The stacking weights held by a trained ensemble, in the layout of ensemble.json."""
    return {"columns": model.columns, "meta_learners": {
        name: {"coefficients": dict(zip(model.columns, model.meta_coefs[row].tolist(),
                                        strict=True)),
               "intercept": float(model.meta_intercepts[row])}
        for row, name in enumerate(model.meta_names)}}


def _order_visits(visits: pd.DataFrame, visit_order: list | None) -> pd.DataFrame:
    if not visit_order:
        numeric = pd.to_numeric(visits["visit"], errors="coerce")
        if numeric.notna().all():
            return visits.assign(_rank=numeric).sort_values(
                ["subject", "_rank"], kind="stable").drop(columns="_rank").reset_index(drop=True)
        return visits
    rank = {v: i for i, v in enumerate(visit_order)}
    return visits.assign(_rank=visits["visit"].map(rank)).sort_values(
        ["subject", "_rank"], kind="stable").drop(columns="_rank").reset_index(drop=True)


def _counts(per_sample: pd.DataFrame) -> dict:
    return {"n_visits": len(per_sample), "n_subjects": int(per_sample["subject"].nunique())}
