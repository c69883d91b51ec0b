"""What every gradient-based rule's hyperparameters share: the checks that name a bad value and the valid
ones, the optimizers, the learning-rate schedules, and the ranges tuning searches."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


class HyperparameterError(ValueError):
    """A hyperparameter name or value that the algorithm does not accept."""


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise HyperparameterError naming the bad value and the valid ones."""
    if value not in choices:
        raise HyperparameterError(f"{name}={value!r} is not valid; choose one of: {', '.join(choices)}")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok or not math.isfinite(value):
        raise HyperparameterError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'} and finite")


OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine", "linear_cooldown")


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """The optimizers every rule may choose from, built the same way for all of them: ``fused``, so that a
    step updates each tensor in one pass of one kernel. On a GPU, launches, not arithmetic, bound a small
    unit's step; on a CPU the step is bound by memory, and foreach's several passes over the weights and
    moments cost a 2x1000 MLP's Adam step about three times fused's (benchmarks/RESULTS.md, issue 18)."""
    check_choice("optimizer", name, OPTIMIZERS)
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=True)


@dataclasses.dataclass
class OptimizerConfig:
    """Hyperparameters every gradient-based rule shares."""

    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    # The learning rate over the budget (the epoch cap; per stage for staged rules), set every step:
    lr_schedule: str = "constant"  # constant | cosine (down to lr_floor * lr) | linear_cooldown
    lr_floor: float = 0.0  # cosine: the final learning rate as a fraction of lr
    cooldown_start: float = 0.5  # linear_cooldown: constant until this fraction, then linearly to 0

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("momentum", self.momentum, allow_zero=True)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if not 0 <= self.lr_floor <= 1:
            raise HyperparameterError(f"lr_floor={self.lr_floor!r} must lie in [0, 1]")
        if not 0 <= self.cooldown_start < 1:
            raise HyperparameterError(f"cooldown_start={self.cooldown_start!r} must lie in [0, 1)")


def lr_factor(config: Any, fraction: float) -> float:
    """The learning rate's multiplier at ``fraction`` (0..1) of the budget under the Config's schedule."""
    fraction = min(max(fraction, 0.0), 1.0)
    if config.lr_schedule == "cosine":
        return config.lr_floor + (1 - config.lr_floor) * 0.5 * (1 + math.cos(math.pi * fraction))
    if config.lr_schedule == "linear_cooldown":  # loeweX/Forward-Forward's cool-down, per step
        start = config.cooldown_start
        return 1.0 if fraction <= start else (1 - fraction) / (1 - start)
    return 1.0


# Learning-rate ranges for tuning, by optimizer: adaptive optimizers and plain SGD live on different scales.
LR_RANGES = {"adam": (1e-5, 1e-2), "adamw": (1e-5, 1e-2), "sgd": (1e-3, 1.0)}
# Weight decay: AdamW's is decoupled from the gradient (a fraction of the weights per step, 1e-3 to 1e-1 in
# the papers here), Adam's and SGD's is an L2 term added to it.
WEIGHT_DECAY_RANGES = {"adam": (1e-7, 1e-3), "adamw": (1e-5, 1e-1), "sgd": (1e-7, 1e-3)}
