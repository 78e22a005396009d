"""The config of the One-Step PASI (Xing et al.) recipe; every default is the paper's."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import Field, field_validator

from medlite.config import (
    BaseTaskConfig,
    ModelConfig,
    OptimizerConfig,
    SchedulerConfig,
    StrictModel,
    TrainerConfig,
)
from medlite.ensemble import META_LEARNERS
from medlite.errors import ConfigError
from medlite.models.pasi_ensemble import (
    COMPONENTS,
)

#: The 29 torchvision architectures of the paper's Table S1.
PAPER_ARCHITECTURES: tuple[str, ...] = (
    "alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn",
    "vgg19_bn", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "wide_resnet50_2", "wide_resnet101_2", "squeezenet1_0",
    "squeezenet1_1", "densenet121", "densenet169", "googlenet", "shufflenet_v2_x0_5",
    "shufflenet_v2_x1_0", "mobilenet_v2", "mobilenet_v3_large", "mobilenet_v3_small",
    "mnasnet0_5", "mnasnet1_0",
)


class PasiDataConfig(StrictModel):
    photos: Path | None = Field(None, description="CSV: subject, visit, region, image.")
    scores: Path | None = Field(None, description="CSV: subject, visit, region, erythema, "
                                "induration, desquamation, area_percent|area; or subject, "
                                "visit, pasi.")
    tile_size: int = Field(128, ge=8, description="Tile side; the composite is 2x this.")
    cache_dir: Path | None = Field(None, description="Composite cache (default: "
                                   "RUN/cache/composites).")
    augment: bool = Field(True, description="Rotate and shuffle tiles, jitter brightness "
                          "and contrast in training.")
    check_images: bool = Field(True, description="Decode every photo when checking the data.")
    score_level: Literal["region", "visit"] | None = Field(
        None, description="Set from the scores file at training: region (E, I, S, area per "
        "region; a visit is Equation 2) or visit (a PASI per visit).")


class PasiEnsembleConfig(StrictModel):
    architectures: list[str] = Field(default_factory=lambda: list(PAPER_ARCHITECTURES),
                                     min_length=1)
    heads: list[Literal["regional", "components"]] = Field(
        default_factory=lambda: ["regional"], min_length=1,
        description="regional: one output, (E+I+S)xA (the paper); components: E, I, S, A.")
    folds: int = Field(5, ge=2)
    inner_val_fraction: float | None = Field(
        None, ge=0, lt=0.5, description="Share of each fit's training subjects that chooses "
        "its best epoch (and stops it early), so the held-out fold stays unseen; 0: train on "
        "every other fold and keep the last epoch (needs no early stopping and no plateau "
        "scheduler); null: 0 when the schedule watches no validation metric, else 0.15.")
    meta_learners: list[str] = Field(default_factory=lambda: list(META_LEARNERS))
    deploy: str = Field("ridge_intercept", description="Meta-learner used by predict and "
                        "export, a base learner name such as resnet34, or best_meta / "
                        "best_base (the lowest out-of-fold visit MAE).")
    selection_metric: Literal["visit_mae", "pasi75_kappa", "pasi90_kappa", "pasi100_kappa"] = Field(
        "visit_mae", description="What ranks the base and meta learners (best_base, "
        "best_meta, the leaderboard) and the visit calibrations on out-of-fold data: visit "
        "MAE, or the last-visit PASI75/90/100 responder kappa with the physician (for a "
        "trial read by its endpoints).")
    calibration: list[Literal["none", "linear", "isotonic", "linear_clear",
                              "isotonic_clear"]] = Field(
        default_factory=lambda: ["none", "linear", "isotonic", "linear_clear",
                                 "isotonic_clear"],
        min_length=1, description="Candidate post-hoc calibrations of the deployed visit "
        "PASI, compared on cross-fitted out-of-fold visits by selection_metric: none; "
        "linear; isotonic (monotone, 0-72); linear_clear / isotonic_clear (also predict 0 "
        "where enough similar out-of-fold visits were clear). [none] turns calibration off.")
    clear_threshold: float | None = Field(
        None, gt=0, lt=1, description="Share of similar out-of-fold visits scored clear "
        "above which a hurdle calibration predicts PASI 0; null: chosen on the cross-fitted "
        "out-of-fold visits by the kappa of visit clearance (ties: lower MAE, then nearer 0.5).")
    distribution_neighbours: int | None = Field(
        None, ge=3, description="Out-of-fold visits in each predicted visit's conditional "
        "distribution of the physician's PASI (clear-skin and response probabilities); "
        "null: about the square root of their number.")
    test_fraction: float = Field(0.1, gt=0, lt=1)
    precise_bn: bool = Field(True, description="Recompute BatchNorm statistics over the "
                             "training composites after training (short schedules leave "
                             "them lagging; torch.optim.swa_utils.update_bn).")
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


def inner_val_fraction(config: PasiConfig) -> float:
    """The share of each fit's training subjects held out to choose its epoch."""
    if config.ensemble.inner_val_fraction is not None:
        return config.ensemble.inner_val_fraction
    watches = config.trainer.early_stopping_patience or config.scheduler.name == "plateau"
    return 0.15 if watches else 0.0


def base_columns(config: PasiConfig) -> dict[str, tuple[str, str]]:
    """Base learner name -> (architecture, head); the name is the architecture, with
    ``+components`` for the interpretable head."""
    return {(arch if head == "regional" else f"{arch}+components"): (arch, head)
            for arch in config.ensemble.architectures for head in config.ensemble.heads}


def fit_key(column: str, fold: int) -> str:
    return f"{column.replace('+', '-')}-fold{fold}"


def target_columns(samples: pd.DataFrame, head: str) -> list[str]:
    if "pasi" in samples.columns:
        if head == "components":
            raise ConfigError("ensemble.heads: 'components' needs per-region E, I, S and area "
                              "scores; the scores file gives a PASI per visit")
        return ["pasi"]
    return list(COMPONENTS) if head == "components" else ["regional"]
