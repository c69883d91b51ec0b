"""The registry of learning rules and ``make``, the one way to build any of them by name."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from torch import nn

from .backprop import Backprop
from .base import Algorithm, HyperparameterError
from .counter_current import CounterCurrent
from .dfa import DFA
from .forward_forward import ForwardForward
from .forward_gradient import ForwardGradient
from .mono_forward import MonoForward

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (Backprop, CounterCurrent, DFA, ForwardForward, ForwardGradient, MonoForward)
}


def get_algorithm(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def hyperparameter_fields(name: str) -> dict[str, dataclasses.Field]:
    """The hyperparameters an algorithm accepts, by name (the fields of its Config dataclass)."""
    return {f.name: f for f in dataclasses.fields(get_algorithm(name).Config)}


def make(
    name: str,
    net: nn.Module,
    num_classes: int,
    *,
    input_shape: Sequence[int] | None = None,
    **hparams: Any,
) -> Algorithm:
    """Build the algorithm ``name`` on ``net``; unknown names or hyperparameters list the valid ones."""
    cls = get_algorithm(name)
    valid = hyperparameter_fields(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise HyperparameterError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for {name}; valid: {', '.join(valid)}"
        )
    return cls(net, num_classes, input_shape=input_shape, **hparams)


__all__ = ["ALGORITHMS", "Algorithm", "HyperparameterError", "get_algorithm", "hyperparameter_fields", "make"]
