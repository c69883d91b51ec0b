"""End-to-end backpropagation: the baseline every local rule is measured against.

    loss = CrossEntropy(net(x), y)
    theta <- optimizer_step(theta, d loss / d theta)      for every parameter of the network

Works on any nn.Module that maps a batch to class scores (it need not be an nn.Sequential).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Algorithm, OptimizerConfig


class Backprop(Algorithm):
    name = "backprop"
    Config = OptimizerConfig
    locality = "global"

    def __init__(self, net: nn.Module, num_classes: int, **kwargs: object) -> None:
        super().__init__(net, num_classes, **kwargs)
        self.optimizers = [self.make_optimizer(self.net.parameters())]

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        (optimizer,) = self.optimizers
        loss = F.cross_entropy(self.net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
