"""One predictor for every task: ``medlite.load_run(run_dir).predict(inputs)``.

The predictor owns what every task's inference shares: loading a run, the device, batching
network inputs across (and within) inputs, the fast paths, and streaming outputs in input
order without holding them all. A task recipe only says how an input becomes network inputs
(:meth:`~medlite.tasks.base.Task.prepare`), how to run the network
(:meth:`~medlite.tasks.base.Task.forward`, e.g. flip test-time augmentation) and how network
outputs become the clinical result (:meth:`~medlite.tasks.base.Task.assemble`).
``medlite predict``, ``evaluate``, ``export`` and the web service all go through it.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from medlite.config import apply_overrides, validate_config
from medlite.errors import ConfigError, DataError, MedliteError
from medlite.evaluation.conformal import load_calibration
from medlite.inference.types import ClassificationOutput, PasiOutput
from medlite.models.weights import check_fit
from medlite.runs import find_run, load_state_dict

if TYPE_CHECKING:
    from medlite.config import BaseTaskConfig
    from medlite.tasks.base import Task

Fast = Literal["none", "torch", "onnxruntime", "openvino", "openvino-bf16", "int8",
               "openvino-int8"]
#: Validation inputs that calibrate int8 activation ranges.
INT8_CALIBRATION_INPUTS = 64
MODEL_FILE = "model.pt"


@dataclass
class Prepared:
    """An input made ready for the network: ``items`` yields network-input tensors (one per
    image, composite or window, without the batch axis), ``context`` whatever
    :meth:`~medlite.tasks.base.Task.assemble` needs to turn their outputs into the result."""

    items: Iterable[torch.Tensor]
    context: Any = None


@dataclass
class _Pending:
    context: Any
    outputs: list = field(default_factory=list)
    expected: int | None = None

    @property
    def finished(self) -> bool:
        return self.expected is not None and len(self.outputs) == self.expected


class Predictor:
    """A trained model ready for inference.

    Args:
        task, config, model: the recipe, the run's resolved config and the trained network.
        device: ``"cpu"``, ``"cuda"``... (``"auto"``: a GPU when present).
        batch_size: network inputs per forward pass (default: the config's
            ``inference.batch_size`` when it has one, else ``trainer.batch_size``).
        fast: ``"torch"`` runs :func:`~medlite.inference.fast.optimize_for_inference`
            (BatchNorm folding, channels-last; outputs within 1e-4), ``"onnxruntime"`` an ONNX
            Runtime session of that model, ``"int8"`` that session quantized to int8 with
            activation ranges calibrated on ``calibration`` network inputs (default: the
            first 64 of the run's validation split), ``"openvino"`` / ``"openvino-bf16"``
            the ONNX model compiled by OpenVINO in fp32 / bfloat16, ``"openvino-int8"`` the
            int8 model run by OpenVINO (``pip install 'medlite[openvino]'``); all CPU only.
        run_dir: the run the model came from (None for a model in memory); what the task
            fitted beside the network is applied to every output
            (:meth:`~medlite.tasks.base.Task.load_postprocessing`, e.g. the PASI visit
            calibration), and its ``conformal.json`` adds prediction sets or intervals at
            the config's ``evaluation.conformal_coverage``.
    """

    def __init__(self, task: Task, config: BaseTaskConfig, model: nn.Module, *,
                 device: str = "cpu", batch_size: int | None = None, fast: Fast = "none",
                 run_dir: Path | None = None, calibration: list[torch.Tensor] | None = None):
        self.task = task
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available()
                                   else ("cpu" if device == "auto" else device))
        inference = getattr(config, "inference", None)
        self.batch_size = int(batch_size or getattr(inference, "batch_size", None)
                              or config.trainer.batch_size)
        self.network = model.eval()
        self.fast = fast
        self.postprocessing = (task.load_postprocessing(self.run_dir, config)
                               if self.run_dir is not None else None)
        coverage = config.evaluation.conformal_coverage
        self.calibration = load_calibration(self.run_dir) if coverage is not None else None
        self.coverage = coverage if self.calibration is not None else None
        model = task.inference_network(model, config).eval()
        if fast != "none":
            if self.device.type != "cpu":
                raise ConfigError(f"--fast {fast}: a CPU inference path; use device cpu")
            from medlite.inference.fast import optimize_for_inference

            example = task.example_input(config)
            backend = {"int8": "onnxruntime-int8"}.get(fast, fast)
            if fast.endswith("int8") and calibration is None:
                calibration = self._validation_inputs(INT8_CALIBRATION_INPUTS)
            self.model = optimize_for_inference(model, example, backend=backend,
                                                calibration=calibration)
        else:
            self.model = model.to(self.device).eval()

    def _validation_inputs(self, limit: int) -> list[torch.Tensor]:
        """Up to ``limit`` network inputs (1, C, H, W) of the run's validation split."""
        task, config = self.task, self.config
        if self.run_dir is None:
            raise ConfigError(f"--fast {self.fast}: give calibration inputs for a model "
                              "without a run")
        try:
            samples = task.load_run_samples(config, self.run_dir)
            rows = samples[samples["split"] == "val"]
            prepared = (tensor[None] for _, item in task.evaluation_inputs(rows, config)
                        for tensor in task.prepare(item, config).items)
            inputs = list(itertools.islice(prepared, limit))
        except (MedliteError, OSError) as error:
            raise ConfigError(f"--fast {self.fast}: calibration needs the run's validation images, "
                              f"which cannot be read here ({error})") from None
        if not inputs:
            raise ConfigError(f"--fast {self.fast}: the run has no validation samples to calibrate "
                              "int8 activation ranges on")
        return inputs

    @property
    def class_names(self) -> list[str] | None:
        return self.task.class_names(self.config)

    def predict(self, inputs: Iterable[Any]) -> Iterator[Any]:
        """Outputs of ``inputs`` in order, computed in batches of network inputs and yielded
        as soon as each is complete (nothing is kept after it is yielded)."""
        queue: deque[_Pending] = deque()
        batch: list[torch.Tensor] = []
        owners: list[_Pending] = []

        def flush() -> None:
            if not batch:
                return
            outputs = self._forward(torch.stack(batch))
            for owner, output in zip(owners, _split(outputs, len(batch)), strict=True):
                owner.outputs.append(output)
            batch.clear()
            owners.clear()

        def ready() -> Iterator[Any]:
            while queue and queue[0].finished:
                pending = queue.popleft()
                output = self.task.assemble(pending.outputs, pending.context, self.config)
                if self.postprocessing is not None:
                    output = self.task.postprocess(output, self.postprocessing, self.config)
                yield self._with_uncertainty(output)

        for item in inputs:
            prepared = self.task.prepare(item, self.config)
            pending = _Pending(prepared.context)
            queue.append(pending)
            count = 0
            for tensor in prepared.items:
                batch.append(tensor)
                owners.append(pending)
                count += 1
                if len(batch) >= self.batch_size:
                    flush()
            pending.expected = count
            yield from ready()
        flush()
        yield from ready()

    def _with_uncertainty(self, output: Any) -> Any:
        """``output`` with its conformal set (classes) or interval (PASI), when calibrated."""
        calibration, coverage = self.calibration, self.coverage
        if calibration is None:
            return output
        if isinstance(output, ClassificationOutput) and calibration.kind == "classification":
            output.prediction_set = calibration.class_set(output.probabilities,
                                                          output.class_names, coverage)
            output.coverage = coverage
        elif isinstance(output, PasiOutput) and calibration.kind == "regression":
            output.interval = calibration.interval(output.pasi, coverage)
            output.coverage = coverage
        return output

    def predict_one(self, item: Any) -> Any:
        return next(iter(self.predict([item])))

    @torch.no_grad()
    def _forward(self, batch: torch.Tensor):
        output = self.task.forward(self.model, batch.to(self.device), self.config)
        return _to_cpu(output)

    def export_onnx(self, path: Path) -> tuple[Path, float]:
        """Write the network as ONNX (dynamic batch) and return the path and the largest
        difference from PyTorch on a batch of three example inputs."""
        from medlite.inference.export import export_onnx, onnx_parity

        example = self.task.example_input(self.config)
        export_onnx(self.network, example, path)
        check = torch.cat([example, *(self.task.example_input(self.config) for _ in range(2))])
        return Path(path), onnx_parity(self.network, path, check)


def _to_cpu(output):
    if isinstance(output, tuple):
        return tuple(_to_cpu(part) for part in output)
    return output.detach().cpu() if output is not None else None


def _split(output, n: int) -> list:
    """A batch output (a tensor, or a tuple of tensors/None) as ``n`` per-item outputs."""
    if isinstance(output, tuple):
        parts = [_split(part, n) if part is not None else [None] * n for part in output]
        return list(zip(*parts, strict=True))
    return list(output)


def load_run(run_dir: Path | str, *, device: str = "cpu", batch_size: int | None = None,
             fast: Fast = "none", overrides: list[str] | None = None) -> Predictor:
    """The predictor of a trained run.

    Args:
        run_dir: a finished medlite run directory.
        device, batch_size, fast: see :class:`Predictor`.
        overrides: ``key=value`` changes of the run's ``inference.*`` or ``evaluation.*``
            keys (how the trained model is applied), e.g. ``["inference.flip_tta=true"]``.

    Raises:
        RunDirError: not a run; DataError: the run has no trained weights, or weights that
        are not a plain state_dict or do not fit its config's model; ConfigError: an
        override of another key.
    """
    from medlite.pretrained import resolve_run
    from medlite.tasks import get_task, load_run_config

    run_dir = find_run(resolve_run(run_dir))
    config = with_inference_overrides(load_run_config(run_dir), overrides or [])
    task = get_task(config.task)
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        raise DataError(f"{weights}: no trained weights (did training finish?)")
    model = task.build_model(config, for_training=False)
    state = load_state_dict(weights)
    check_fit(model, state, source=weights, field=None, model_name=config.model.name,
              task=config.task, error=DataError)
    model.load_state_dict(state)
    return Predictor(task, config, model, device=device, batch_size=batch_size, fast=fast,
                     run_dir=run_dir)


def with_inference_overrides(config: BaseTaskConfig, overrides: list[str]) -> BaseTaskConfig:
    """``config`` changed by ``--set`` keys that do not touch training."""
    for item in overrides:
        if item.partition("=")[0].split(".")[0] not in ("inference", "evaluation"):
            raise ConfigError(f"--set {item}: only inference.* and evaluation.* keys can "
                              "change after training")
    if not overrides:
        return config
    raw = apply_overrides(config.model_dump(mode="json"), overrides)
    return validate_config(raw, type(config), "--set")
