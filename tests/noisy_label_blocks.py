"""A test rule that builds its own blocks, the shape NoProp and DiffusionBlocks have (registry name
``noisy_label_blocks``). It exists to prove the seams: it is registered through $LOCALEARN_PLUGINS (see
conftest.py) and then goes through make, the Trainer, resume after SIGKILL, compare and tune with no
special case anywhere.

Block t (t = 1..T) sees the raw input x and a noisy label embedding, never another block's output:

    u_y = E[y]                                           label embedding, shared by all blocks (learned)
    z_t = sqrt(s_t) u_y + sqrt(1 - s_t) eps              s_t = signal_max * (t - 1) / (T - 1), eps ~ N(0, I)
    L_t = CE(block_t(x, z_t), y)                         updates block t (and the shared E)
    one epoch = T passes over the data, pass t trains block t (NoProp-DT's order)
    prediction: z_1 ~ N(0, I); for t: logits_t = block_t(x, z_t), z_t+1 = sqrt(s_t+1) softmax(logits_t) E
                + sqrt(1 - s_t+1) eps; the last block's logits       (noise from the evaluation generator)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from localearn import models
from localearn.algorithms import register
from localearn.algorithms.base import Algorithm, ParameterGroups
from localearn.algorithms.config import OptimizerConfig, check_positive


@dataclasses.dataclass
class NoisyLabelBlocksConfig(OptimizerConfig):
    blocks: int = 3  # T
    signal_max: float = 0.5  # the last block's share of label signal in its input

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("signal_max", self.signal_max)


class LabelBlocks(nn.Module):
    """T blocks, each an MLP on [x, z] -> class logits, and the shared label embedding."""

    def __init__(
        self, features: int, num_classes: int, hidden: list[int], blocks: int, activation: str
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            models.mlp(features + num_classes, hidden, num_classes, activation=activation)
            for _ in range(blocks)
        )
        self.embedding = nn.Embedding(num_classes, num_classes)
        nn.init.eye_(self.embedding.weight)  # one-hot labels to start with

    def block(self, t: int, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.blocks[t](torch.cat([x.flatten(1), z], 1))


@register
class NoisyLabelBlocks(Algorithm):
    name = "noisy_label_blocks"
    Config = NoisyLabelBlocksConfig
    convolutional = False

    @classmethod
    def build_network(cls, model: str, input_shape: Any, num_classes: int, config: Any) -> nn.Module:
        kind, sizes, options = models.parse_spec(model)
        if kind != "mlp":
            raise ValueError(f"noisy_label_blocks needs an mlp:H1,... spec for its blocks; got {model!r}")
        activation = models.activation_of(options)
        hidden = sizes or list(models.MODEL_KINDS["mlp"].default_sizes)
        return LabelBlocks(math.prod(input_shape), num_classes, hidden, config.blocks, activation)

    def __init__(self, net: nn.Module, num_classes: int, **kwargs: Any) -> None:
        super().__init__(net, num_classes, **kwargs)
        if not isinstance(net, LabelBlocks):
            raise TypeError(
                "noisy_label_blocks needs the blocks it builds itself (each sees x and a noisy label); "
                f"pass a model spec such as 'mlp:32' to make(), not a {type(net).__name__}"
            )
        t = len(net.blocks)
        self.passes_per_epoch = t
        self.signal = [self.config.signal_max * i / max(t - 1, 1) for i in range(t)]
        self.optimizers = [self.make_optimizer(block.parameters()) for block in net.blocks]
        self.optimizers.append(self.make_optimizer(net.embedding.parameters()))

    def parameter_groups(self) -> ParameterGroups:
        return ParameterGroups(
            {f"block{t + 1}": list(b.parameters()) for t, b in enumerate(self.net.blocks)},
            shared={"label_embedding": list(self.net.embedding.parameters())},
        )

    def noisy(self, u: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
        eps = torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
        return math.sqrt(self.signal[t]) * u + math.sqrt(1 - self.signal[t]) * eps

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.data_pass  # this pass trains block t
        z = self.noisy(self.net.embedding(y), t, self.generator)
        loss = F.cross_entropy(self.net.block(t, x, z), y)
        block_opt, embedding_opt = self.optimizers[t], self.optimizers[-1]
        block_opt.zero_grad(set_to_none=True)
        embedding_opt.zero_grad(set_to_none=True)
        loss.backward()
        block_opt.step()
        embedding_opt.step()
        return {"loss": loss.detach(), f"loss_block{t + 1}": loss.detach()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.randn(len(x), self.num_classes, generator=self.eval_generator, device=x.device)
        for t in range(len(self.net.blocks)):
            logits = self.net.block(t, x, z)
            if t + 1 < len(self.net.blocks):
                z = self.noisy(logits.softmax(1) @ self.net.embedding.weight, t + 1, self.eval_generator)
        return logits
