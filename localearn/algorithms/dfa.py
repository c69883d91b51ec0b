"""Direct feedback alignment (Nokland, NeurIPS 2016; Launay et al., NeurIPS 2020).

The output error is sent straight to every hidden unit through a fixed random matrix; no forward weight
is ever used to carry it back (no weight transport):

    h_0 = x,  h_i = f_i(h_{i-1}.detach())         hidden units i = 1..L (linear map + activation [+ pool])
    logits = head(h_L.detach())
    e = dL/dlogits = (softmax(logits) - onehot(y)) / N       (cross-entropy, mean over the batch)
    delta_i = (B_i e) * f_i'(a_i)                  B_i: fixed, random, [n_i, num_classes]
    dW_i = delta_i h_{i-1}^T                       the unit's own backward from its output
    head: its true gradient (delta_L+1 = e)

The projected error B_i e is injected at the unit's *output* (after the activation, as Nokland's
ErrorFeedback module), so the unit's own local backward supplies f'(a_i); injecting it before the
activation would drop f' (research notes, anchors_ccl_dfa_fg_noprop_db.md section 2d). For convolutional
units the projection has one row per output element and is reshaped to the unit's output [C, H, W].

Each hidden unit has its own independent B_i (Nokland, BioTorch; TinyDFA instead shares the column
prefixes of one matrix). Its scale, ``feedback_init``, matters under SGD and not under Adam or RMSprop:
- ``nokland`` (default): U[-1/sqrt(n_i), 1/sqrt(n_i)]   (Nokland's rfb_mag = 0)
- ``unit``: U[-1, 1]                                   (Nokland's rfb_mag = 1, "works fine with SGD")
- ``xavier``: U[-a, a], a = sqrt(6 / (n_i + num_classes))   (BioTorch)
The matrices are drawn from torch's global generator when the rule is built (so the run's seed fixes
them) and are saved with the state as buffers, never trained.

With tanh or sigmoid, DFA learns from all-zero forward weights, which backprop cannot (f'(0) = 1 and
B_i e does not depend on the weights above); with ReLU, f'(0) = 0 and nothing would move.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import Algorithm
from .config import OptimizerConfig, check_choice
from .units import forward_detached, unit_output_shapes, units_of

FEEDBACK_INITS = ("nokland", "unit", "xavier")


@dataclasses.dataclass
class DFAConfig(OptimizerConfig):
    feedback_init: str = "nokland"  # nokland | unit | xavier: the scale of the feedback matrices

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("feedback_init", self.feedback_init, FEEDBACK_INITS)


def feedback_matrix(unit_size: int, num_classes: int, init: str) -> torch.Tensor:
    """One fixed random B_i of shape [unit_size, num_classes], at the scale ``init`` names."""
    if init == "nokland":
        bound = 1.0 / math.sqrt(unit_size)
    elif init == "unit":
        bound = 1.0
    else:  # xavier
        bound = math.sqrt(6.0 / (unit_size + num_classes))
    return torch.empty(unit_size, num_classes).uniform_(-bound, bound)


class FeedbackMatrices(nn.Module):
    """The fixed B_i, one buffer per hidden unit: saved and moved with the algorithm, never trained."""

    def __init__(self, matrices: list[torch.Tensor]) -> None:
        super().__init__()
        self.count = len(matrices)
        for i, matrix in enumerate(matrices):
            self.register_buffer(f"unit{i + 1}", matrix)

    def __getitem__(self, i: int) -> torch.Tensor:
        return getattr(self, f"unit{i + 1}")


class DFA(Algorithm):
    name = "dfa"
    Config = DFAConfig
    # The update of unit i depends on the network's output error, never on the weights above it.
    locality = "output_error"

    def __init__(self, net: nn.Module, num_classes: int, **kwargs: Any) -> None:
        super().__init__(net, num_classes, **kwargs)
        units = units_of(net, self.name)
        self.hidden_units, self.head = units[:-1], units[-1]
        shapes = unit_output_shapes(units, self.input_shape, num_classes, self.name)
        self.unit_shapes = shapes[:-1]
        self.feedback_matrices = FeedbackMatrices(
            [feedback_matrix(math.prod(s), num_classes, self.config.feedback_init) for s in self.unit_shapes]
        ).to(self.device)
        self.aux["feedback_matrices"] = self.feedback_matrices
        self.optimizers = [self.make_optimizer(self.net.parameters())]

    @classmethod
    def sgd_lr_range(cls, config: Any) -> tuple[float, float]:
        return 0.01, 0.4  # the CCL paper's grid for its BP and FA baselines (research notes, section 1c)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        # Forward, cutting the graph at every unit boundary: each output keeps only its own unit's graph.
        outputs = forward_detached(self.hidden_units, x)
        logits = self.head(outputs[-1].detach() if outputs else x)
        loss = F.cross_entropy(logits, y)
        # The output error e, and its projection to every hidden unit's output.
        error = (logits.detach().softmax(dim=1) - F.one_hot(y, self.num_classes).to(logits.dtype)) / len(y)
        projected = [(error @ self.feedback_matrices[i].T).view_as(out) for i, out in enumerate(outputs)]
        (optimizer,) = self.optimizers
        optimizer.zero_grad(set_to_none=True)
        # One backward over disjoint graphs: the head from the loss, unit i from B_i e at its output.
        torch.autograd.backward([loss, *outputs], [None, *projected])
        optimizer.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
