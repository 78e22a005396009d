"""The task recipe interface.

A recipe says only what is its own: how to read its data, which network, loss and
validation metrics, how an input becomes network inputs and network outputs the clinical
result, which metrics a set of scored samples gives, and which figures its report has. The
spine does the rest for every task: run folders, splits, the fit plan and its runner
(:mod:`medlite.training.plan`), the training loop, the predictor
(:mod:`medlite.inference.predictor`), the evaluator (:mod:`medlite.evaluation.evaluator`)
and the report. Defaults here serve single-network tasks (segmentation, classification):
one fit per stage, or one per cross-validation fold plus a final fit.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from torch import nn

from medlite.config import BaseTaskConfig
from medlite.data.splits import read_splits, split_samples
from medlite.errors import DataError
from medlite.training.plan import START_FROM_CONFIG, Fit, train_network
from medlite.training.seeding import derive_seed

if TYPE_CHECKING:
    import torch

    from medlite.evaluation.conformal import ConformalCalibration
    from medlite.inference.predictor import Prepared
    from medlite.training.loop import TrainingParts
    from medlite.training.plan import RunContext

SPLITS_FILE = "splits.csv"
FINAL_FIT = "final"


@dataclass(frozen=True)
class Stage:
    """One link of a chain of fits (classification's head stage, then fine-tuning)."""

    name: str
    trainable: str = "all"
    freeze_first_n_layers: int | None = None
    overrides: dict = field(default_factory=dict)


class Task:
    """A task recipe. Subclasses set ``name`` and ``config_class`` and fill in the hooks."""

    name: str = ""
    config_class: type[BaseTaskConfig] = BaseTaskConfig
    #: Config keys that training fills in when the user leaves them empty (class names read
    #: from the data); ``--resume`` does not count them as changed.
    derived_keys: tuple[str, ...] = ()
    #: Columns of a sample row naming the files that make the sample (content hashes).
    content_columns: tuple[str, ...] = ()
    #: The validation metric the best epoch is chosen by (learning-curve marker).
    monitor: str = "val_loss"

    # -- configuration -------------------------------------------------------------------
    def resolve_paths(self, config: BaseTaskConfig, base_dir: Path) -> BaseTaskConfig:
        """Make relative paths in the config relative to ``base_dir`` (the config's folder)."""
        resolve_relative(config.model, ("weights_path",), base_dir)
        return config

    def demo_config(self, out_dir: Path) -> BaseTaskConfig:
        """Generate built-in synthetic data under ``out_dir`` and a quick config for it."""
        raise NotImplementedError

    def complete_config(self, config: BaseTaskConfig, samples: pd.DataFrame, run_dir: Path
                        ) -> BaseTaskConfig:
        """Fill in what the data (or the run folder) decides (see :attr:`derived_keys`)."""
        return config

    def class_names(self, config: BaseTaskConfig) -> list[str] | None:
        return None

    # -- data ----------------------------------------------------------------------------
    def load_samples(self, config: BaseTaskConfig, data_path: Path | None = None
                     ) -> pd.DataFrame:
        """One row per sample with at least ``sample`` and ``subject`` (and ``split`` when the
        data fixes it). ``data_path`` replaces the config's data source (for evaluate)."""
        raise NotImplementedError

    def load_evaluation_samples(self, config: BaseTaskConfig, data_path: Path) -> pd.DataFrame:
        """Samples of other data to evaluate a trained run on (``medlite evaluate --data``)."""
        return self.load_samples(config, data_path)

    def load_run_samples(self, config: BaseTaskConfig, run_dir: Path) -> pd.DataFrame:
        """The samples of a run with the splits it saved (what its fits train on)."""
        return with_saved_splits(self.load_samples(config), run_dir)

    def stratify_labels(self, samples: pd.DataFrame) -> np.ndarray | None:
        """Per-sample labels to stratify subject splits and folds by, or None."""
        return None

    def split(self, samples: pd.DataFrame, config: BaseTaskConfig) -> pd.DataFrame:
        """``samples`` with ``split`` (train/val/test) and, for k-fold, ``fold``."""
        return split_samples(samples, config.split, seed=config.seed,
                             stratify=self.stratify_labels(samples))

    def fingerprints(self, samples: pd.DataFrame) -> list[str]:
        """A content hash per sample (sha256 of its files), so that evaluation data can be
        checked against what the run trained on."""
        cache: dict[str, str] = {}
        hashes = []
        for row in samples[list(self.content_columns)].itertuples(index=False):
            digest = hashlib.sha256()
            for value in row:
                for path in value if isinstance(value, tuple | list) else (value,):
                    if str(path) not in cache:
                        cache[str(path)] = file_sha256(Path(path))
                    digest.update(bytes.fromhex(cache[str(path)]))
            hashes.append(digest.hexdigest())
        return hashes

    def prepare_training(self, config: BaseTaskConfig, samples: pd.DataFrame, run_dir: Path,
                         progress: bool) -> pd.DataFrame:
        """Work done once before the fits (caches); returns the samples the fits use."""
        return samples

    # -- the plan --------------------------------------------------------------------------
    def stages(self, config: BaseTaskConfig) -> list[Stage]:
        """The chain of fits one model is trained through (default: one fit)."""
        return [Stage("main")]

    def plan(self, config: BaseTaskConfig, samples: pd.DataFrame) -> list[Fit]:
        """One chain of :meth:`stages` on the train/val split; with ``split.fold: all``, one
        chain per fold (predicting its held-out fold) and a final chain on every sample."""
        stages = self.stages(config)
        if config.split.folds and config.split.fold == "all":
            fits: list[Fit] = []
            for fold in sorted(int(f) for f in samples["fold"].unique()):
                held = samples["fold"] == fold
                train, val = self.carve_validation(samples[~held], config, f"fold{fold}")
                fits += chain(stages, f"fold{fold}-", train, val,
                              samples.loc[held, "sample"].tolist())
            train, val = self.carve_validation(samples, config, FINAL_FIT)
            return fits + chain(stages, f"{FINAL_FIT}-", train, val)
        train = samples.loc[samples["split"] == "train", "sample"].tolist()
        val = samples.loc[samples["split"] == "val", "sample"].tolist()
        return chain(stages, "", train, val)

    def carve_validation(self, rows: pd.DataFrame, config: BaseTaskConfig, key: str
                         ) -> tuple[list[str], list[str]]:
        """Split ``rows`` by subject into training and validation samples for one fit."""
        from medlite.data.splits import assign_splits

        share = config.split.val_fraction / max(1e-9, 1 - 1 / (config.split.folds or 2))
        splits = assign_splits(rows["subject"].astype(str).to_numpy(),
                               val_fraction=min(0.5, share), test_fraction=0.0,
                               seed=derive_seed("validation", config.seed, key))
        ids = rows["sample"].to_numpy()
        return ids[splits == "train"].tolist(), ids[splits == "val"].tolist()

    def out_of_fold_fits(self, context: RunContext) -> list[str]:
        """Fits whose held-out predictions together score every sample once (CV)."""
        return [key for key, item in context.fits.items() if item.predict]

    def evaluation_extras(self, context: RunContext, results: dict[str, dict]) -> dict:
        """What the evaluation of a training run needs beyond the per-sample table (e.g.
        which learners were chosen on out-of-fold data)."""
        return {}

    def saved_extras(self, run_dir: Path, config: BaseTaskConfig) -> dict:
        """:meth:`evaluation_extras` of a finished run, read back from its folder (to
        evaluate it again on other data)."""
        return {}

    def deployed_fit(self, context: RunContext) -> str:
        """The fit whose weights the run deploys (default: the plan's last)."""
        return list(context.fits)[-1]

    def deploy(self, context: RunContext, results: dict[str, dict]) -> nn.Module:
        """The deployed network, from the fits' results."""
        from medlite.runs import load_state_dict

        model = self.build_model(context.config, for_training=False)
        key = self.deployed_fit(context)
        model.load_state_dict(load_state_dict(context.fit_dir(key) / "model.pt"))
        return model.eval()

    def conformal_calibration(self, context: RunContext, model: nn.Module,
                              results: dict[str, dict]) -> ConformalCalibration | None:
        """Nonconformity scores of the deployed model on held-out data it never trained on
        (see :mod:`medlite.evaluation.conformal`); None: no intervals or sets."""
        return None

    def run_fit(self, context: RunContext, fit: Fit, fit_dir: Path, *,
                progress: bool = False) -> dict:
        """Run one fit of the plan where the executor put it; returns its small result."""
        if fit.kind != "network":
            raise ValueError(f"task {self.name} has no fit kind {fit.kind!r}")
        return train_network(context, fit, fit_dir, progress=progress)

    # -- model and training ----------------------------------------------------------------
    def build_model(self, config: BaseTaskConfig, for_training: bool = True) -> nn.Module:
        """The deployed network (``for_training``: with the config's initial weights)."""
        raise NotImplementedError

    def fit_model(self, config: BaseTaskConfig, fit: Fit, for_training: bool) -> nn.Module:
        """The network one fit trains (default: the deployed network)."""
        return self.build_model(config, for_training=for_training)

    def training_parts(self, config: BaseTaskConfig, train_rows: pd.DataFrame,
                       val_rows: pd.DataFrame, model: nn.Module, fit: Fit) -> TrainingParts:
        raise NotImplementedError

    def finish_fit(self, model: nn.Module, config: BaseTaskConfig, train_rows: pd.DataFrame,
                   fit: Fit) -> bool:
        """A last step on the best weights (e.g. precise BatchNorm); True when it changed
        them."""
        return False

    def fit_predictions(self, model: nn.Module, config: BaseTaskConfig,
                        rows: pd.DataFrame) -> pd.DataFrame:
        """The per-sample table of a fit's held-out samples (out-of-fold predictions)."""
        from medlite.evaluation.evaluator import predict_table
        from medlite.inference.predictor import Predictor

        return predict_table(Predictor(self, config, model), rows, None)

    # -- inference ------------------------------------------------------------------------
    def example_input(self, config: BaseTaskConfig) -> torch.Tensor:
        raise NotImplementedError

    def inference_network(self, model: nn.Module, config: BaseTaskConfig) -> nn.Module:
        """The module the predictor runs (and the fast paths optimize): ``model`` itself
        unless the task needs more than its ``forward`` gives."""
        return model

    def prepare(self, item: Any, config: BaseTaskConfig) -> Prepared:
        """A typed input (:mod:`medlite.inference.types`) as network-input tensors."""
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: torch.Tensor, config: BaseTaskConfig):
        return model(batch)

    def assemble(self, outputs: list, context: Any, config: BaseTaskConfig) -> Any:
        """The outputs of one input's network inputs as its typed output."""
        raise NotImplementedError

    def load_postprocessing(self, run_dir: Path, config: BaseTaskConfig) -> Any:
        """What a trained run fitted beside its network and applies to every output after
        :meth:`assemble` (e.g. a calibration), loaded once per predictor; None: nothing."""
        return None

    def postprocess(self, output: Any, state: Any, config: BaseTaskConfig) -> Any:
        """``output`` with ``state`` (from :meth:`load_postprocessing`) applied."""
        return output

    def parse_inputs(self, paths: list[Path], visits: list[Path], config: BaseTaskConfig
                     ) -> list[Any]:
        """``medlite predict``'s file arguments as typed inputs."""
        raise NotImplementedError

    def write_prediction(self, output: Any, name: str, writer) -> tuple[list[Path], dict]:
        """Write one output's files with ``writer``; return them and its summary columns."""
        raise NotImplementedError

    def prediction_table(self, summaries: list[dict], state: Any = None) -> pd.DataFrame | None:
        """The table of ``predictions.csv`` from the inputs' summaries (None: as recorded);
        ``state`` is the predictor's :meth:`load_postprocessing`."""
        return None

    # -- evaluation -----------------------------------------------------------------------
    def evaluation_inputs(self, rows: pd.DataFrame, config: BaseTaskConfig
                          ) -> list[tuple[dict, Any]]:
        """``(truth and identity, typed input)`` per evaluated unit of ``rows``."""
        raise NotImplementedError

    def score(self, output: Any, info: dict, config: BaseTaskConfig,
              prediction_dir: Path | None) -> list[dict]:
        """Rows of the per-sample table for one output (with ``subject``); may save the
        output under ``prediction_dir`` (None: keep nothing)."""
        raise NotImplementedError

    def statistic(self, table: pd.DataFrame, config: BaseTaskConfig, extras: dict):
        """``f(row indices) -> {group: {metric: value}}`` over the per-sample table."""
        raise NotImplementedError

    def figures(self, table: pd.DataFrame, config: BaseTaskConfig, figure_dir: Path,
                extras: dict) -> tuple[dict[str, Path], list[tuple[str, str]], dict]:
        """Figures, report sections and extra ``metrics.json`` entries of an evaluation."""
        return {}, [], {}


def chain(stages: list[Stage], prefix: str, train: list[str], val: list[str],
          predict: list[str] | None = None) -> list[Fit]:
    """Fits training one model through ``stages``, each starting from the previous one's
    best weights; the last predicts ``predict``."""
    fits: list[Fit] = []
    for index, stage in enumerate(stages):
        key = (prefix.rstrip("-") or stage.name if len(stages) == 1
               else f"{prefix}{index + 1}-{stage.name}")
        last = index == len(stages) - 1
        fits.append(Fit(key=key, train=tuple(train), val=tuple(val),
                        predict=tuple(predict or ()) if last else (),
                        start=f"fit:{fits[-1].key}" if fits else START_FROM_CONFIG,
                        trainable=stage.trainable,
                        freeze_first_n_layers=stage.freeze_first_n_layers,
                        overrides=dict(stage.overrides), params={"stage": stage.name}))
    return fits


def model_profile(task: Task, config: BaseTaskConfig) -> dict:
    """Parameters, FLOPs and CPU latency of the task's network at its input size."""
    import torch

    from medlite.models import profile_model

    model = task.build_model(config, for_training=False)
    shape = tuple(task.example_input(config).shape)
    return {"model": config.model.name,
            **profile_model(model, shape, threads=torch.get_num_threads(), warmup=1,
                            repeats=5)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return digest.hexdigest()


def resolve_relative(section: Any, fields: tuple[str, ...], base_dir: Path) -> None:
    """Make the relative paths in ``section``'s ``fields`` relative to ``base_dir``."""
    for name in fields:
        value = getattr(section, name)
        if value is not None and not Path(value).is_absolute():
            setattr(section, name, (Path(base_dir) / value).resolve())


def with_saved_splits(samples: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
    """``samples`` with the ``split`` (and ``fold``) columns the run saved in splits.csv."""
    path = Path(run_dir) / SPLITS_FILE
    saved = read_splits(path).set_index("sample")
    missing = sorted(set(samples["sample"]) - set(saved.index))
    if missing:
        raise DataError(f"{path}: sample {missing[0]} of the data is not in the run's split "
                        f"file ({len(missing)} missing); was the data changed?")
    samples = samples.copy()
    samples["split"] = saved.loc[samples["sample"], "split"].to_numpy()
    if "fold" in saved:
        # .array keeps the nullable Int64 (test samples are in no fold); numpy would make
        # the folds floats, and a reopened run would write "1.0" where a fresh one has "1".
        samples["fold"] = saved.loc[samples["sample"], "fold"].array
    return samples
