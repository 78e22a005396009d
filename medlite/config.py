"""YAML configs validated by pydantic.

Every task has a config class whose defaults reproduce that task's paper recipe. A YAML
file names its task with a top-level ``task:`` key; :func:`medlite.tasks.load_config` picks
the class, and :func:`validate_config` turns the first problem into a one-line
:class:`~medlite.errors.ConfigError` naming the file and the dotted key
(``trainer.max_epochs: ...``). This module knows no task.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from medlite.errors import ConfigError


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class FlipInferenceConfig(StrictModel):
    """The inference option image tasks share: flip test-time augmentation
    (:func:`medlite.inference.tta.flip_averaged_softmax`)."""

    flip_tta: bool = Field(False, description="Average softmax over the image and its "
                           "horizontal, vertical and double flips (4 forward passes).")


class ModelConfig(StrictModel):
    name: str = Field("tinyunet", description="A name from `medlite models`.")
    pretrained: bool = Field(False, description="ImageNet weights from the local torch cache.")
    weights_path: Path | None = Field(None, description="Local state_dict to start from.")
    weights: str | None = Field(None, description="A model shipped with medlite to start "
                                "from (fine-tuning), e.g. dermoscopy-lesion.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Family-specific arguments.")

    @model_validator(mode="after")
    def _one_start(self):
        if self.weights is not None and self.weights_path is not None:
            raise ValueError("weights: give weights (a shipped model) or weights_path (a "
                             "file), not both")
        return self

    def initial_weights(self) -> Path | None:
        """The state_dict file a fit starts from: ``weights_path``, or the shipped model
        ``weights``'s ``model.pt``; None for none."""
        if self.weights is None:
            return self.weights_path
        from medlite.pretrained import shipped_model_dir

        return shipped_model_dir(self.weights) / "model.pt"


class OptimizerConfig(StrictModel):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    fused: bool = Field(True, description="Adam/AdamW's fused kernel (one pass over all "
                        "parameters; 1.1-1.3x faster CPU training steps, same update up "
                        "to float rounding).")


class SchedulerConfig(StrictModel):
    name: Literal["cosine", "plateau", "step", "none"] = "cosine"
    min_lr: float = Field(1e-6, ge=0, description="Cosine annealing floor.")
    factor: float = Field(0.1, gt=0, lt=1, description="Plateau/step decay factor.")
    patience: int = Field(10, ge=0, description="Plateau patience in epochs.")
    threshold: float = Field(1e-4, ge=0, description="Plateau improvement threshold.")
    step_size: int = Field(30, ge=1, description="Step scheduler period in epochs.")


class TrainerConfig(StrictModel):
    max_epochs: int = Field(100, ge=1)
    batch_size: int = Field(8, ge=1)
    early_stopping_patience: int | None = Field(
        30, ge=1, description="Epochs without improvement of the monitored metric; null disables."
    )
    max_time_minutes: float | None = Field(None, gt=0, description="Wall-clock training budget.")
    accelerator: str = Field("auto", description="cpu, gpu, mps or auto (a GPU when present).")
    devices: int | Literal["auto"] = Field(
        "auto", description="Devices one fit trains on; more than 1 trains with DDP, one "
        "process per device (on a CPU: processes on 127.0.0.1). auto: 1, or with strategy "
        "ddp every GPU.")
    strategy: Literal["auto", "ddp"] = Field(
        "auto", description="ddp: data-parallel over trainer.devices; batch_size stays the "
        "global batch, so the optimisation is the same as on one device.")
    sync_batchnorm: bool = Field(
        True, description="Under DDP, BatchNorm statistics over the global batch (as on one "
        "device; one all-reduce per layer and step); false: each device's own share, faster "
        "for small batches through many BatchNorm layers.")
    precision: str = Field("32-true", description="Lightning precision, e.g. 16-mixed on GPUs. "
                           "bf16-mixed is 3-10x slower than 32-true on AVX-512 CPUs without "
                           "AMX; with AMX 1.5x faster per TinyU-Net step (BENCHMARKS.md).")
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="Train in the channels-last memory layout (same function; "
        "1.1-1.7x faster on oneDNN CPUs for TinyU-Net and MobileNetV2). auto: on for the "
        "image tasks, off for stress (SONIC's backbones were not measured).")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all cores.")
    limit_train_batches: float | int = Field(1.0, description="Fraction or number per epoch.")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms; "
                                "CPU training is reproducible without it.")
    keep_checkpoints: bool = Field(False, description="Keep each fit's Lightning checkpoints "
                                   "after it finished (its model.pt always stays).")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Validate, checkpoint and deploy the exponential moving "
        "average of the weights (and BatchNorm statistics), updated after every optimizer "
        "step with this decay, e.g. 0.999 (Lightning's EMAWeightAveraging); null: the "
        "weights themselves.")

    @model_validator(mode="after")
    def _batch_splits_over_devices(self):
        if isinstance(self.devices, int) and self.devices < 1:
            raise ValueError("devices: must be 1 or more, or auto")
        if isinstance(self.devices, int) and self.devices > 1 \
                and self.batch_size % self.devices:
            raise ValueError(f"batch_size: the global batch {self.batch_size} does not split "
                             f"evenly over {self.devices} devices")
        return self


class SplitConfig(StrictModel):
    """Subject-disjoint splits. A ``split`` column in the data wins for the rows that have one."""

    val_fraction: float = Field(0.15, ge=0, lt=1, description="Share of subjects for validation.")
    test_fraction: float = Field(0.15, ge=0, lt=1, description="Share of subjects for testing.")
    folds: int | None = Field(None, ge=2, description="k-fold: the test set is fold `fold`.")
    fold: int | Literal["all"] = Field(
        0, description="Which fold is the test set when `folds` is set; all: cross-validation "
        "(one fit per fold, out-of-fold metrics, then a final fit on every sample).")

    @field_validator("fold")
    @classmethod
    def _non_negative(cls, value):
        if isinstance(value, int) and value < 0:
            raise ValueError("must be 0 or more, or all")
        return value


class ClusterConfig(StrictModel):
    """An HPC batch queue that Dask workers are submitted to (dask-jobqueue)."""

    kind: Literal["slurm"] = "slurm"
    queue: str | None = Field(None, description="Partition (#SBATCH -p).")
    account: str | None = Field(None, description="Account to charge (#SBATCH -A).")
    cores: int = Field(1, ge=1, description="CPU cores per job.")
    memory: str = Field("4GB", description="Memory per job, e.g. 16GB.")
    walltime: str = Field("01:00:00", description="Time limit per job (HH:MM:SS).")
    jobs: int = Field(1, ge=1, description="Batch jobs (one Dask worker each).")
    gpus: int = Field(0, ge=0, description="GPUs per job (#SBATCH --gres=gpu:N).")
    interface: str | None = Field(
        None, description="Network interface the scheduler and workers talk on (e.g. ib0); "
        "default: the scheduler's host address.")
    job_extra: list[str] = Field(default_factory=list,
                                 description="More #SBATCH options, e.g. ['--qos=short'].")
    prologue: list[str] = Field(default_factory=list,
                                description="Shell lines before the worker starts (module "
                                "load ..., source .venv/bin/activate).")


class FitResourcesConfig(StrictModel):
    """What one fit needs from a Dask worker. Fits go only to workers that declare at least
    this (local and SLURM workers declare their cores and GPUs; workers started by hand
    with ``dask worker ... --resources "cpus=4,gpus=1"``). A worker trains one fit at a
    time, with all of its cores."""

    cpus: int = Field(1, ge=1, description="CPU cores a fit needs on its worker.")
    gpus: int = Field(0, ge=0, description="GPUs a fit needs; more than 0 sends fits only to "
                      "GPU workers.")


class ExecutorConfig(StrictModel):
    """Where the fits of a run's plan are trained. Results do not depend on it: every fit is
    seeded from the config's seed and its key (give ``trainer.threads`` to fix the number of
    CPU threads per fit, since float sums split differently over other thread counts)."""

    name: Literal["sequential", "processes", "dask"] = Field(
        "sequential", description="sequential: one fit after the other in this process; "
        "processes: `workers` local processes; dask: a Dask cluster (local on 127.0.0.1, "
        "`address` of a running scheduler, or `cluster` submitted to a batch queue).")
    workers: int = Field(1, ge=1, description="Fits trained at the same time.")
    threads_per_worker: int | None = Field(
        None, ge=1, description="torch CPU threads of each worker; default cores / workers.")
    address: str | None = Field(
        None, description="dask: a running scheduler, e.g. tcp://scheduler:8786 (its workers "
        "must see the run folder at the same path).")
    cluster: ClusterConfig | None = Field(None, description="dask: submit workers to a batch "
                                          "queue instead of starting them here.")
    retries: int = Field(0, ge=0, description="dask: times a fit is retried elsewhere when its "
                         "worker dies (it resumes from its last checkpoint).")
    resources_per_fit: FitResourcesConfig = Field(
        default_factory=FitResourcesConfig, description="dask: what a worker must have to "
        "take a fit; checked against the workers at start.")


class EvaluationConfig(StrictModel):
    bootstrap_resamples: int = Field(1000, ge=0, description="0 disables confidence intervals.")
    confidence: float = Field(0.95, gt=0, lt=1)
    subgroups: list[str] = Field(
        default_factory=list, description="Columns of the data (e.g. site, camera, "
        "skin_tone) to report every metric per value of, with intervals; the report flags "
        "values whose interval lies below the overall one.")
    subgroup_min_subjects: int = Field(
        5, ge=1, description="Subgroups with fewer subjects are counted but not scored.")
    conformal_coverage: float | None = Field(
        0.9, gt=0, lt=1, description="Coverage of the split-conformal PASI intervals and "
        "class prediction sets (calibrated on held-out predictions of the run); null: none.")


class BaseTaskConfig(StrictModel):
    """Fields shared by every task."""

    task: str
    seed: int = 42
    name: str | None = Field(None, description="Run name; default: the config file's stem.")
    output_dir: Path = Field(Path("runs"), description="Parent folder of run directories.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)


def _key_text(part: object) -> str:
    """A key of a dotted location as written, or quoted when it holds odd characters."""
    text = str(part)
    return text if text.isprintable() and text.strip() == text and text else repr(text)


def _format_error(source: str, error: dict) -> str:
    location = ".".join(_key_text(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{source}: {location}: unknown key"
    if kind == "missing":
        return f"{source}: {location}: required key is missing"
    value = error.get("input")
    text = "" if isinstance(value, dict | list) else repr(value)
    shown = f" (got {text if len(text) <= 80 else text[:77] + '...'})" if text else ""
    message = " ".join(error["msg"].split())
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        # A section's validator names its field first ("batch_size: ..."): one dotted key.
        field, sep, rest = message.partition(": ")
        if sep and field.isidentifier() and isinstance(value, dict):
            location, message = f"{location}.{field}" if location else field, rest
    return f"{source}: {location}: {message}{shown}"


def _suggest(error: dict, model_class: type[BaseModel]) -> str:
    """A 'did you mean' hint for a misspelled key, found by walking the config classes."""
    if error["type"] != "extra_forbidden":
        return ""
    section: Any = model_class
    for part in error["loc"][:-1]:
        field = getattr(section, "model_fields", {}).get(part)
        if field is None:
            return ""
        section = field.annotation
    fields = getattr(section, "model_fields", {})
    close = difflib.get_close_matches(str(error["loc"][-1]), list(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def validate_config(raw: dict, config_class: type[BaseTaskConfig], source: str) -> BaseTaskConfig:
    """Validate a parsed YAML mapping; raise ConfigError naming the first bad dotted key."""
    try:
        return config_class.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        lines = [_format_error(source, err) + _suggest(err, config_class) for err in errors]
        raise ConfigError(lines[0], problems=lines) from None


#: A config file larger than this is refused unread (the shipped ones are under 3 KiB).
MAX_CONFIG_BYTES = 1 << 20
#: Most YAML nodes a config may expand to, each alias counted as a copy of what it names:
#: nine levels of ten aliases ("billion laughs") are 10**9 nodes from under 1 KiB of text.
MAX_CONFIG_NODES = 100_000
#: Deepest nesting of mappings and sequences (configs use 4; PyYAML composes recursively).
MAX_CONFIG_DEPTH = 64


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _check_yaml_expansion(text: str, source: str) -> None:
    """Refuse YAML nested deeper than :data:`MAX_CONFIG_DEPTH` or expanding to more than
    :data:`MAX_CONFIG_NODES` nodes, from the parser's events, before any object is built."""
    expanded: dict[str, int] = {}  # anchor -> nodes of what it names, aliases expanded
    open_nodes: list[list] = [[None, 0]]  # [anchor, nodes so far] per open collection
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append([event.anchor, 1])
            if len(open_nodes) - 1 > MAX_CONFIG_DEPTH:
                raise ConfigError(f"{source}: nested more than {MAX_CONFIG_DEPTH} levels deep")
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, nodes = open_nodes.pop()
        elif isinstance(event, yaml.ScalarEvent):
            anchor, nodes = event.anchor, 1
        elif isinstance(event, yaml.AliasEvent):
            anchor, nodes = None, expanded.get(event.anchor, 1)
        else:
            continue
        if anchor is not None:
            expanded[anchor] = nodes
        open_nodes[-1][1] += nodes
        if sum(count for _, count in open_nodes) > MAX_CONFIG_NODES:
            raise ConfigError(f"{source}: expands to more than {MAX_CONFIG_NODES:,} YAML "
                              "nodes (aliases of aliases?)")


def parse_yaml(text: str, source: str):
    """``yaml.safe_load`` of ``text`` within the size limits above; every problem is a
    one-line ConfigError starting with ``source`` (and the line, when YAML knows it)."""
    try:
        _check_yaml_expansion(text, source)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or exc
        raise ConfigError(f"{source}{where}: not valid YAML ({_one_line(problem)})") from None
    except (ValueError, OverflowError) as exc:  # dates such as 2024-02-30, 5000-digit ints
        raise ConfigError(f"{source}: a value cannot be read ({_one_line(exc)})") from None


def read_yaml(path: Path) -> dict:
    """A config file's top-level mapping (see :func:`parse_yaml`; UTF-8, at most
    :data:`MAX_CONFIG_BYTES`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes, more than the {MAX_CONFIG_BYTES:,} a config "
                          "may have")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (at byte offset {exc.start})") from None
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    return raw


def apply_overrides(raw: dict, overrides: list[str], source: str = "--set") -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a raw config mapping.

    A number addresses an item of a list: ``stages.1.lr=1e-5`` sets the second stage's rate.
    """
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{source} {item!r}: expected dotted.key=value")
        node = raw
        parts = key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(f"{source} {key}: {'.'.join(parts[:depth])} has "
                                      f"{len(node)} items; {part!r} is not one of "
                                      f"0..{len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError(f"{source} {key}: {parts[depth - 1]} is not a section")
            if last:
                node[part] = parse_yaml(value, f"{source} {key}")
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                node = node[part]
    return raw


def dump_config(config: BaseTaskConfig) -> str:
    """The resolved config as YAML (every default written out), for the run directory."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
