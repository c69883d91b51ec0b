"""The registry of learning rules and ``make``, the one way to build any of them by name.

A rule outside this package joins the registry with ``@register``; modules named (comma-separated) in
``$LOCALEARN_PLUGINS`` are imported when the registry loads, so their rules reach the command line and the
processes it starts (compare's runs, tune's workers) as well as ``make``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .backprop import Backprop
from .base import Algorithm, ParameterGroups
from .config import HyperparameterError
from .counter_current import CounterCurrent
from .dfa import DFA
from .diffusion_blocks import DiffusionBlocks
from .forward_forward import ForwardForward
from .forward_gradient import ForwardGradient
from .mono_forward import MonoForward
from .noprop import NoProp

ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(cls: type[Algorithm]) -> type[Algorithm]:
    """Add a rule to the registry under ``cls.name`` (usable as a class decorator)."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name; set the class attribute `name`")
    if ALGORITHMS.get(cls.name, cls) is not cls:
        raise ValueError(f"algorithm name {cls.name!r} is taken by {ALGORITHMS[cls.name].__name__}")
    ALGORITHMS[cls.name] = cls
    return cls


for _cls in (
    Backprop,
    CounterCurrent,
    DFA,
    DiffusionBlocks,
    ForwardForward,
    ForwardGradient,
    MonoForward,
    NoProp,
):
    register(_cls)
for _module in filter(None, (m.strip() for m in os.environ.get("LOCALEARN_PLUGINS", "").split(","))):
    importlib.import_module(_module)


def get_algorithm(name: str) -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise KeyError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


def hyperparameter_fields(name: str) -> dict[str, dataclasses.Field]:
    """The hyperparameters an algorithm accepts, by name (the fields of its Config dataclass)."""
    return {f.name: f for f in dataclasses.fields(get_algorithm(name).Config)}


def check_hyperparameters(name: str, hparams: dict[str, Any]) -> Any:
    """The algorithm's Config built from ``hparams``: unknown names and bad values fail here, clearly."""
    valid = hyperparameter_fields(name)
    unknown = sorted(set(hparams) - set(valid))
    if unknown:
        raise HyperparameterError(
            f"unknown hyperparameter(s) {', '.join(unknown)} for {name}; valid: {', '.join(valid)}"
        )
    return get_algorithm(name).Config(**hparams)


def make(
    name: str,
    net: nn.Module | str | None,
    num_classes: int,
    *,
    input_shape: Sequence[int] | None = None,
    device: str | torch.device | None = None,
    **hparams: Any,
) -> Algorithm:
    """Build the algorithm ``name``; unknown names or hyperparameters list the valid ones.

    ``net`` is a module of the user's (each rule says what it can train, and refuses the rest by naming
    what it needs), a model spec such as ``"mlp:1000,1000"`` that the rule builds itself, or None for the
    rule's own default network. A spec needs ``input_shape``; a module built elsewhere is moved to
    ``device`` when one is given.
    """
    cls = get_algorithm(name)
    config = check_hyperparameters(name, hparams)
    if net is None or isinstance(net, str):
        model = net or cls.default_model
        if model is None:
            raise ValueError(f"{name} has no network of its own: pass a module or a model spec")
        if input_shape is None:
            raise ValueError(f"building {name}'s network from {model!r} needs input_shape=(...)")
        net = cls.build_network(model, tuple(input_shape), num_classes, config)
    return cls(net, num_classes, input_shape=input_shape, device=device, **hparams)


@dataclasses.dataclass(frozen=True)
class AlgorithmFactory:
    """A rule, its network spec and its seed, as a picklable recipe: ``factory(device)`` seeds torch's
    generator and calls ``make``, so every call (in any process) gives the same initial weights."""

    algorithm: str
    model: str | None
    num_classes: int
    input_shape: tuple[int, ...]
    seed: int
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __call__(self, device: str | torch.device | None = None) -> Algorithm:
        torch.manual_seed(self.seed)
        return make(
            self.algorithm,
            self.model,
            self.num_classes,
            input_shape=self.input_shape,
            device=device,
            **self.hyperparameters,
        )


__all__ = [
    "AlgorithmFactory",
    "ALGORITHMS",
    "Algorithm",
    "HyperparameterError",
    "ParameterGroups",
    "check_hyperparameters",
    "get_algorithm",
    "hyperparameter_fields",
    "make",
    "register",
]
