"""A network as a stack of units: the units themselves, their output shapes, the local heads that rules
attach to them, and forward passes with the graph cut at every unit boundary."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


def units_of(net: nn.Module, algorithm: str) -> list[nn.Module]:
    """The children of an nn.Sequential: the units of locality. Anything else is refused, clearly."""
    if not isinstance(net, nn.Sequential) or len(net) == 0:
        raise TypeError(
            f"{algorithm} needs an nn.Sequential whose children are the local units (the last one producing "
            f"class scores), e.g. localearn.models.mlp(...); got {type(net).__name__}"
        )
    return list(net.children())


def infer_input_shape(net: nn.Module) -> tuple[int, ...] | None:
    """(in_features,) where the first layer with weights is an nn.Linear; None where it cannot be known
    (a convolution fixes the channels but not the height and width)."""
    first = next((m for m in net.modules() if next(m.parameters(recurse=False), None) is not None), None)
    return (first.in_features,) if isinstance(first, nn.Linear) else None


def unit_output_shapes(
    units: Sequence[nn.Module], input_shape: Sequence[int] | None, num_classes: int, algorithm: str
) -> list[tuple[int, ...]]:
    """The output shape of every unit (no batch dimension), by one dry pass in evaluation mode."""
    if input_shape is None:
        raise ValueError(
            f"{algorithm} needs the input shape to size what it attaches to each unit, and it cannot be "
            "inferred from this network (its first layer with weights is not an nn.Linear): pass "
            "input_shape=(C, H, W) to make()"
        )
    params = (p for u in units for p in u.parameters())
    device = next(params, torch.zeros(())).device
    modes = [(m, m.training) for u in units for m in u.modules()]
    shapes = []
    try:
        with torch.no_grad():
            a = torch.zeros(2, *input_shape, device=device)  # 2: batch norm refuses a batch of one
            for unit in units:
                unit.eval()
                a = unit(a)
                shapes.append(tuple(a.shape[1:]))
    finally:
        for m, mode in modes:
            m.training = mode
    if shapes[-1] != (num_classes,):
        raise ValueError(
            f"the network's last unit gives outputs of shape {shapes[-1]}, expected ({num_classes},)"
        )
    return shapes


def linear_readout(unit_output_shape: Sequence[int], num_classes: int) -> nn.Module:
    """A bias-free linear map from a unit's flattened output to class scores (a local classifier head)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(unit_output_shape), num_classes, bias=False))


def sinusoidal_features(values: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """[N] -> [N, dim]: sin and cos of scale * value at dim / 2 geometric frequencies (1 to 1 / 10000), the
    transformer's position encoding, here of a diffusion time or a noise level."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(dim // 2, device=values.device) / (dim // 2))
    angles = scale * values.unsqueeze(-1) * freqs
    return torch.cat([angles.sin(), angles.cos()], -1)


def last_unit_loss(stats: dict[str, Any]) -> Any:
    """The highest-numbered ``loss_unitN`` of a step's (or an epoch's) statistics: where the last unit's
    head makes the prediction, the loss that compares with backprop's."""
    return stats[
        f"loss_unit{max(int(k.removeprefix('loss_unit')) for k in stats if k.startswith('loss_unit'))}"
    ]


def forward_detached(units: Iterable[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """Every unit's output, each unit fed the *detached* output of the one before: the graph is cut at
    every unit boundary, so a loss on one output reaches that unit's parameters and nothing earlier."""
    outputs, h = [], x
    for unit in units:
        h = unit(h.detach())
        outputs.append(h)
    return outputs
