"""Mono-Forward (Gong, Li and Abdulla, arXiv 2501.09238, 2025).

Every hidden unit i gets a projection matrix M_i (num_classes x n_i) and learns from its own
cross-entropy; nothing crosses a unit boundary:

    a_0 = x
    a_i = f_i(a_{i-1}.detach())                  (unit i: W_i, b_i and its activation)
    G_i = a_i M_i^T                              ("goodness" scores, [batch, num_classes])
    L_i = CrossEntropy(G_i, y)                   updates (W_i, b_i, M_i) only
    prediction: argmax G_L  (option: argmax sum_i G_i)

Mapping onto an nn.Sequential [unit_1, ..., unit_L, head]: the head (the network's last child) maps a_L to
class scores and so *is* M_L, the projection of the last hidden unit; units 1..L-1 get auxiliary
bias-free projections (Kaiming-uniform, as nn.Linear). On a 2x1000 MLP this gives exactly the paper's
W_1, M_1, W_2, M_2, and backprop trains the same network without M_1. With ``last_projection="bias_free"``
the head is made the reference code's M_L (``MF_MLP.projection_matrices``): no bias, Kaiming-uniform as the
other projections, so that G_L = a_L M_L^T exactly.

Schedules (research notes, anchors_ff_mf.md section 2a; the sources disagree, so both are here):
- ``simultaneous`` (default): every unit takes its local step on every batch (the paper's Algorithm 1).
- ``sequential``: unit 1 is trained to its stopping point, frozen, then unit 2, ... The frozen prefix is
  recomputed under no_grad on every batch. The Trainer applies its stopping rule to each stage; while a
  stage runs, predictions come from that stage's projection (its local readout).

Layer-parallel runs (localearn.parallel) split the simultaneous schedule's groups (unit, projection) over
processes; ``train_units`` is the step of both.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Algorithm, ParameterGroups
from .config import OptimizerConfig, check_choice
from .units import forward_detached, last_unit_loss, linear_readout, unit_output_shapes, units_of


@dataclasses.dataclass
class MonoForwardConfig(OptimizerConfig):
    schedule: str = "simultaneous"  # simultaneous | sequential
    prediction: str = "last"  # last: argmax G_L | sum: argmax sum_i G_i
    last_projection: str = "head"  # head: the network's head as it is | bias_free: the reference's M_L

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("schedule", self.schedule, ("simultaneous", "sequential"))
        check_choice("prediction", self.prediction, ("last", "sum"))
        check_choice("last_projection", self.last_projection, ("head", "bias_free"))


class MonoForward(Algorithm):
    name = "mono_forward"
    Config = MonoForwardConfig

    def __init__(self, net: nn.Module, num_classes: int, **kwargs: Any) -> None:
        super().__init__(net, num_classes, **kwargs)
        units = units_of(net, self.name)
        if self.config.last_projection == "bias_free":
            self._make_head_bias_free(units[-1])
        shapes = unit_output_shapes(units, self.input_shape, num_classes, self.name)
        # Local groups: (unit, its projection). The head is the projection of the last hidden unit.
        self.projections = nn.ModuleList(
            linear_readout(shapes[i], num_classes) for i in range(len(units) - 2)
        ).to(self.device)
        self.aux["projections"] = self.projections
        if len(units) >= 2:
            self.groups = [(units[i], self.projections[i]) for i in range(len(units) - 2)]
            self.groups.append((units[-2], units[-1]))
        else:  # a single linear map: one local group that is its own readout
            self.groups = [(units[0], nn.Identity())]
        self.num_stages = len(self.groups) if self.config.schedule == "sequential" else 1
        self.optimizers = self.optimizers_for_stage(0)

    @staticmethod
    def _make_head_bias_free(head: nn.Module) -> None:
        """The head's Linear becomes M_L: drawn afresh as nn.Linear draws a weight (Kaiming-uniform, a =
        sqrt(5)), as the reference draws its projections, and without a bias."""
        linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
        if len(linears) != 1:
            raise ValueError(
                f"last_projection='bias_free' needs a head with one nn.Linear; it has {len(linears)}"
            )
        (linear,) = linears
        nn.init.kaiming_uniform_(linear.weight, a=5**0.5)
        linear.register_parameter("bias", None)

    def optimizers_for_stage(self, stage: int) -> list[torch.optim.Optimizer]:
        active = [self.groups[stage]] if self.config.schedule == "sequential" else self.groups
        return [self.make_optimizer([*unit.parameters(), *proj.parameters()]) for unit, proj in active]

    def parameter_groups(self) -> ParameterGroups:
        return ParameterGroups(
            {f"unit{i + 1}": [*u.parameters(), *p.parameters()] for i, (u, p) in enumerate(self.groups)}
        )

    @property
    def _trainable(self) -> range:
        """Indices of the groups that learn now: all of them, or the current stage's one."""
        if self.config.schedule == "sequential":
            return range(self.stage, self.stage + 1)
        return range(len(self.groups))

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        trainable = self._trainable
        a = x
        with torch.no_grad():  # the frozen prefix of the sequential schedule
            for unit, _ in self.groups[: trainable.start]:
                a = unit(a)
        _, stats = self.train_units(a, y, trainable)
        stats["loss"] = self.step_loss(stats)
        return stats

    def train_units(
        self, a: torch.Tensor, y: torch.Tensor, units: range
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        outputs = forward_detached([self.groups[i][0] for i in units], a)
        stats: dict[str, torch.Tensor] = {}
        total = 0.0
        for i, a in zip(units, outputs, strict=True):
            loss = F.cross_entropy(self.groups[i][1](a), y)  # G_i = a_i M_i^T, unit i's own loss
            stats[f"loss_unit{i + 1}"] = loss.detach()
            total = total + loss
        # The losses live on disjoint graphs (detach above), so one backward gives every unit its own
        # local gradient and nothing else.
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        total.backward()
        for opt in self.optimizers:
            opt.step()
        return outputs[-1].detach(), stats

    def step_loss(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        return last_unit_loss(stats)  # its projection is the readout

    def parallel_refusal(self) -> str | None:
        if self.config.schedule == "sequential":
            return "schedule=sequential trains one unit at a time; layer-parallel runs need simultaneous"
        return None

    def pipeline_units(self) -> list[nn.Module]:
        return [nn.ModuleList([unit, projection]) for unit, projection in self.groups]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        # While a sequential stage runs, later units are untrained: read out from the current one.
        last = self._trainable.stop
        a, total = x, None
        for unit, proj in self.groups[:last]:
            a = unit(a)
            if self.config.prediction == "sum":
                scores = proj(a)
                total = scores if total is None else total + scores
        return total if self.config.prediction == "sum" else self.groups[last - 1][1](a)
