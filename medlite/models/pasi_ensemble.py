"""One-Step PASI's networks: base learners with standardised outputs and the deployed
ensemble of every fold copy with its stacking weights."""

from __future__ import annotations

import torch
from torch import nn

from medlite.models.registry import create_model

#: The components head's outputs, in order, and their ranges' upper ends.
COMPONENTS: tuple[str, ...] = ("erythema", "induration", "desquamation", "area")
COMPONENT_MAX: tuple[float, ...] = (4.0, 4.0, 4.0, 6.0)
#: Largest regional score (E + I + S) x A.
REGIONAL_MAX = 72.0


class StandardizedOutput(nn.Module):
    """``network(x) * std + mean``: the network learns standardised targets, callers see
    score units. ``mean`` and ``std`` are buffers ``(K,)`` saved with the weights.

    Input ``(B, 3, H, W)``; output ``(B, K)``."""

    def __init__(self, network: nn.Module, num_outputs: int):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.zeros(num_outputs))
        self.register_buffer("std", torch.ones(num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) * self.std + self.mean


def regional_from_outputs(outputs: torch.Tensor, head: str) -> torch.Tensor:
    """Network outputs ``(B, 1)`` or ``(B, 4)`` -> regional score ``(B,)`` clipped to 0-72.

    ``components`` outputs are E, I, S, A, each clipped to its range first."""
    if head == "regional":
        return outputs[:, 0].clamp(0.0, REGIONAL_MAX)
    parts = clip_components(outputs)
    return parts[:, :3].sum(dim=1) * parts[:, 3]


def clip_components(outputs: torch.Tensor) -> torch.Tensor:
    """E, I, S ``(B, 3)`` clipped to 0-4 and A to 0-6: ``(B, 4)``."""
    top = torch.tensor(COMPONENT_MAX, dtype=outputs.dtype, device=outputs.device)
    return torch.minimum(outputs.clamp(min=0.0), top)


def build_base_model(architecture: str, head: str, *, pretrained: bool = False,
                     weights_path=None, **kwargs) -> StandardizedOutput:
    """A ``create_model`` regression network with one output (``regional``) or four
    (``components``), standardised."""
    outputs = len(COMPONENTS) if head == "components" else 1
    network = create_model(architecture, task="regression", num_outputs=outputs,
                           pretrained=pretrained, weights_path=weights_path, **kwargs)
    return StandardizedOutput(network, outputs)


class PasiEnsemble(nn.Module):
    """Every fold copy of every base learner, and the deployed stacking weights.

    ``forward(composites (B, 3, 2T, 2T)) -> (B, 1 + M)``: column 0 is the deployed
    prediction of the regional score (0-72, or the visit PASI for per-visit targets),
    columns 1..M each base learner's prediction (mean of its fold copies), in the order of
    ``columns``. :meth:`predict_parts` also gives the mean E, I, S, A of the components heads.
    """

    def __init__(self, members: dict[str, list[nn.Module]], heads: dict[str, str],
                 meta_names: list[str]):
        super().__init__()
        self.columns = list(members)
        self.heads = dict(heads)
        self.meta_names = list(meta_names)
        self.members = nn.ModuleDict({
            module_key(name): nn.ModuleList(copies) for name, copies in members.items()})
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

    def predict_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, 1 + M + K)``: :meth:`forward`'s columns followed by each of the K
        meta-learners' predictions (order of ``meta_names``), and the components heads'
        mean E, I, S, A ``(B, 4)`` (None without components heads)."""
        columns, components = [], []
        for name in self.columns:
            copies = self.members[module_key(name)]
            outputs = [copy(x) for copy in copies]
            columns.append(torch.stack([regional_from_outputs(o, self.heads[name])
                                        for o in outputs]).mean(dim=0))
            if self.heads[name] == "components":
                components.append(torch.stack([clip_components(o) for o in outputs]).mean(0))
        base = torch.stack(columns, dim=1)
        stacked = (base @ self.meta_coef + self.meta_intercept).clamp(0.0, REGIONAL_MAX)
        metas = (base.double() @ self.meta_coefs.T + self.meta_intercepts).clamp(
            0.0, REGIONAL_MAX).to(base.dtype)
        parts = torch.stack(components).mean(dim=0) if components else None
        return torch.cat([stacked[:, None], base, metas], dim=1), parts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_parts(x)[0][:, : 1 + len(self.columns)]


class PasiInferenceNetwork(nn.Module):
    """Everything :meth:`PasiEnsemble.predict_parts` gives, as one tensor, so that the fast
    inference paths (which run ``forward`` only) keep the meta-learners and components.

    ``forward(composites (B, 3, 2T, 2T)) -> (B, 1 + M + K [+ 4])``: the deployed prediction,
    the M base learners, the K meta-learners, then (with components heads) mean E, I, S, A.
    """

    def __init__(self, ensemble: PasiEnsemble):
        super().__init__()
        self.ensemble = ensemble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, components = self.ensemble.predict_parts(x)
        return values if components is None else torch.cat([values, components], dim=1)


def module_key(column: str) -> str:
    """A base learner's name as a module key (no dots)."""
    return column.replace(".", "_")
