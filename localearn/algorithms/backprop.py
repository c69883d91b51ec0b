"""End-to-end backpropagation: the baseline every local rule is measured against.

    loss = CrossEntropy(net(x), y)
    g = d loss / d theta,   g <- g * min(1, clip / ||g||)  (with clip > 0: the CCL paper's baselines)
    theta <- optimizer_step(theta, g)                    for every parameter of the network

Works on any nn.Module that maps a batch to class scores (it need not be an nn.Sequential).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .base import Algorithm
from .config import OptimizerConfig, check_positive


@dataclasses.dataclass
class BackpropConfig(OptimizerConfig):
    clip: float = 0.0  # the gradient's norm over the whole network is clipped to this; 0: none

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("clip", self.clip, allow_zero=True)


class Backprop(Algorithm):
    name = "backprop"
    Config = BackpropConfig
    locality = "global"

    def __init__(self, net: nn.Module, num_classes: int, **kwargs: object) -> None:
        super().__init__(net, num_classes, **kwargs)
        self.optimizers = [self.make_optimizer(self.net.parameters())]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        (optimizer,) = self.optimizers
        loss = F.cross_entropy(self.net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.clip > 0:  # foreach, and no host sync: the norm stays a tensor on the device
            nn.utils.clip_grad_norm_(self.net.parameters(), self.config.clip, foreach=True)
        optimizer.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
