"""Counter-current learning (Kao and Hariharan, NeurIPS 2024, arXiv 2409.19841).

Two networks run in opposite directions: the forward network from the input up, a feedback network the
algorithm builds from the targets down. Both cut the graph at every unit input (stop-gradient, SG):

    a_0 = x,  a_l = f_l(SG(a_{l-1}))          forward units l = 1..L-1 (the network's hidden units)
    logits = U_L(SG(a_{L-1}))                 the network's head, trained by CE(logits, y) only
    b_L = targets,  b_{l-1} = g_l(SG(b_l))    feedback units l = L..1, g_l shaped like f_l reversed
    loss = CE(logits, y) + sum_{l=0}^{L-1} D(a_l, b_l)

Pair l updates forward unit l (through a_l) and feedback unit l+1 (through b_l); the input pair (x, b_0)
trains only the lowest feedback unit. The CE term reaches only the head: the feedback network gets no
gradient from it.

The pair loss D, ``loss`` (research notes, anchors_ccl_dfa_fg_noprop_db.md section 1a; the official code
differs from the paper's equation):
- ``code`` (default; IandRover/CCL-NeurIPS24): the feedback network runs on all C class one-hots
  (targets = I_C), so B_l is [C, d_l] and A_l (flattened a_l) is [N, d_l]; the target is onehot(y) [N, C].
  MLPs: D = MSE(A B^T, onehot(y)) / d_l * 0.5 * 256  (no normalisation).
  Convolutional networks: rows L2-normalised, A^ = A/|A|, B^ = B/|B|, and decorrelation terms:
  D = MSE(A^ B^^T, onehot(y)) + 0.5 * (MSE(A^ A^^T, I_N) + MSE(B^ B^^T, I_C)).
- ``paper`` (Eq. 2): the feedback network runs on the batch's own labels (targets = onehot(y), B_l is
  [N, d_l]) and D = |norm(A) norm(B)^T - I_N|_F^2 / N, rows L2-normalised (squared Frobenius norm per
  example). Two examples of one class get the same b, so I_N cannot be met exactly; the code, fed batch
  labels, targets the same-label matrix instead, which is the ``code`` loss's target seen per example.

Feedback units mirror the forward ones: a unit whose output is a vector gets a bias-free Linear back to its
input's size (reshaped to the input's shape); a convolutional unit gets nearest-neighbour upsampling to its
input's height and width and a 3x3 convolution back to its input channels. Every feedback unit but the
lowest ends in ``feedback_activation`` (ELU, as the reference code, which also uses ELU and no bias in the
forward MLP: ``mlp:256,256:elu:nobias``); the lowest, whose b_0 is paired with the raw input, is linear as
there.

Two optimizers, one per network (``lr`` and ``feedback_lr``), each network's gradient clipped to its own
norm ``clip`` (0: none). The reference MLP runs use plain SGD, lr 1 for both, clip 1, batch 256: the
defaults here. Clipping a whole network's norm couples its units through that one scalar (a unit's step
shrinks when another's gradient is large); no gradient crosses a unit boundary, and with ``clip=0`` the
units are fully independent.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..models import ACTIVATIONS
from .base import Algorithm, ParameterGroups
from .config import OptimizerConfig, check_choice, check_positive
from .units import forward_detached, unit_output_shapes, units_of

LOSSES = ("code", "paper")


@dataclasses.dataclass
class CounterCurrentConfig(OptimizerConfig):
    lr: float = 1.0  # forward network
    optimizer: str = "sgd"
    momentum: float = 0.0
    feedback_lr: float = 0.0  # feedback network; 0: the same as lr
    clip: float = 1.0  # gradient-norm clip per network; 0: none
    loss: str = "code"  # code | paper
    feedback_activation: str = "elu"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("feedback_lr", self.feedback_lr, allow_zero=True)
        check_positive("clip", self.clip, allow_zero=True)
        check_choice("loss", self.loss, LOSSES)
        check_choice("feedback_activation", self.feedback_activation, tuple(ACTIVATIONS))


class Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(len(x), *self.shape)


def feedback_unit(in_shape: tuple[int, ...], out_shape: tuple[int, ...], activation: str | None) -> nn.Module:
    """g_l: maps a forward unit's output shape back to its input shape, then the activation (if any)."""
    act = [ACTIVATIONS[activation]()] if activation else []
    if len(out_shape) == 3 and len(in_shape) == 3:  # convolutional: upsample, then a 3x3 convolution
        return nn.Sequential(
            nn.Upsample(size=in_shape[1:], mode="nearest"),
            nn.Conv2d(out_shape[0], in_shape[0], 3, padding=1, bias=False),
            *act,
        )
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(out_shape), math.prod(in_shape), bias=False),
        *act,
        Reshape(in_shape),
    )


def pair_loss(a: torch.Tensor, b: torch.Tensor, y: torch.Tensor, loss: str, normalised: bool) -> torch.Tensor:
    """D(a_l, b_l) for one pair, as the module docstring gives it. a: [N, ...]; b: [C or N, ...]."""
    a, b = a.flatten(1), b.flatten(1)
    if loss == "paper":
        target = torch.eye(len(a), device=a.device, dtype=a.dtype)
        # The squared Frobenius norm per example: a mean over all N^2 entries would shrink the diagonal,
        # the part that carries the labels, by 1/N.
        return F.mse_loss(F.normalize(a, dim=1) @ F.normalize(b, dim=1).T, target, reduction="sum") / len(a)
    target = F.one_hot(y, len(b)).to(a.dtype)
    if not normalised:
        return F.mse_loss(a @ b.T, target) / a.shape[1] * 0.5 * 256
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    eye_a = torch.eye(len(a), device=a.device, dtype=a.dtype)
    eye_b = torch.eye(len(b), device=a.device, dtype=a.dtype)
    return F.mse_loss(a @ b.T, target) + 0.5 * (F.mse_loss(a @ a.T, eye_a) + F.mse_loss(b @ b.T, eye_b))


class CounterCurrent(Algorithm):
    name = "counter_current"
    Config = CounterCurrentConfig

    def __init__(self, net: nn.Module, num_classes: int, **kwargs: Any) -> None:
        super().__init__(net, num_classes, **kwargs)
        units = units_of(net, self.name)
        if len(units) < 2:
            raise ValueError("counter_current needs at least one hidden unit before the head")
        self.hidden_units, self.head = units[:-1], units[-1]
        # The input shape sizes the lowest feedback unit; unit_output_shapes explains when it is missing.
        shapes = [self.input_shape, *unit_output_shapes(units, self.input_shape, num_classes, self.name)]
        c = self.config
        # feedback[l] is g_{l+1}: from unit l+1's output shape back to its input shape (l = 0..L-1). The
        # lowest, whose output b_0 is paired with the input x, has no activation (x may be negative).
        self.feedback = nn.ModuleList(
            feedback_unit(shapes[i], shapes[i + 1], c.feedback_activation if i > 0 else None)
            for i in range(len(units))
        ).to(self.device)
        self.aux["feedback"] = self.feedback
        # The code's normalised pair loss belongs to convolutional networks (its CNN script).
        self.normalised = any(isinstance(m, nn.modules.conv._ConvNd) for m in net.modules())
        self.optimizers = [
            self.make_optimizer(self.net.parameters()),
            self.make_optimizer(self.feedback.parameters(), lr=c.feedback_lr or c.lr),
        ]

    @classmethod
    def search_space(cls, trial: Any, config: Any) -> dict[str, Any]:
        # The paper's own grid (App. 6.1): clip 0.5 or 1, with the learning rate of sgd_lr_range.
        return {
            "lr": trial.suggest_float("lr", *cls.lr_range(config), log=True),
            "clip": trial.suggest_categorical("clip", [0.5, 1.0]),
        }

    @classmethod
    def sgd_lr_range(cls, config: Any) -> tuple[float, float]:
        # The paper's grid is lr 0.2-2 (research notes, section 1c); the range reaches down to 0.005 for
        # convolutional networks, which learn at 0.01 here (the presets).
        return 0.005, 2.0

    def parallel_refusal(self) -> str | None:
        # Its feedback network runs top-down: unit k's loss pairs its activity with the feedback unit fed
        # from the layer above.
        return "counter_current's feedback network carries the targets from the top down to every unit"

    def parameter_groups(self) -> ParameterGroups:
        """Pair l trains forward unit l and feedback unit l+1; the input pair trains feedback unit 1 alone,
        and the head learns from the cross-entropy alone."""
        groups = {"input": list(self.feedback[0].parameters())}
        for i, unit in enumerate(self.hidden_units, 1):
            groups[f"unit{i}"] = [*unit.parameters(), *self.feedback[i].parameters()]
        groups["head"] = list(self.head.parameters())
        return ParameterGroups(groups)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's losses, each on its own graph: "ce" (the head) and "pair{l}" for l = 0..L-1."""
        # Forward network, SG at every unit input.
        activations = [x, *forward_detached(self.hidden_units, x)]
        logits = self.head(activations[-1].detach())
        # Feedback network from the targets down, SG at every unit input.
        if self.config.loss == "code":
            b = torch.eye(self.num_classes, device=x.device, dtype=x.dtype)  # every class, not the batch
        else:
            b = F.one_hot(y, self.num_classes).to(x.dtype)
        feedback_outputs = []
        for unit in reversed(self.feedback):  # g_L, ..., g_1
            b = unit(b.detach())
            feedback_outputs.append(b)
        feedback_outputs.reverse()  # b_0, ..., b_{L-1}
        out = {"ce": F.cross_entropy(logits, y)}
        for i, (a_i, b_i) in enumerate(zip(activations, feedback_outputs, strict=True)):
            out[f"pair{i}"] = pair_loss(a_i, b_i, y, self.config.loss, self.normalised)
        return out

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = self.losses(x, y)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        if self.config.clip > 0:  # per network, as the reference
            nn.utils.clip_grad_norm_(self.net.parameters(), self.config.clip)
            nn.utils.clip_grad_norm_(self.feedback.parameters(), self.config.clip)
        for opt in self.optimizers:
            opt.step()
        stats = {f"loss_{k}": v.detach() for k, v in losses.items() if k != "ce"}
        stats["loss"] = losses["ce"].detach()
        return stats

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
