"""The Algorithm contract shared by every learning rule, and a few mechanics they share.

An algorithm owns its network, its auxiliary parameters and its optimizers. The Trainer only calls:

    train_step(x, y) -> {"loss": ..., ...}   one update on one batch
    predict(x)       -> [batch, num_classes]  class scores, no grad
    state_dict() / load_state_dict(state)     everything needed to resume
    search_space(trial) -> dict               hyperparameters for Optuna (classmethod)

Rules that train in stages (a unit at a time) also expose ``num_stages``, ``stage`` and
``advance_stage()``: the Trainer applies its one stopping rule to each stage in turn.

Hyperparameters live in a dataclass per algorithm (``Config``); its fields are the only keywords ``make``
accepts, and ``__post_init__`` checks choices so a bad value fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

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


def make_optimizer(
    name: str, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """The optimizers every rule may choose from, built the same way for all of them."""
    check_choice("optimizer", name, OPTIMIZERS)
    params = list(params)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)


@dataclasses.dataclass
class OptimizerConfig:
    """Hyperparameters every gradient-based rule shares."""

    lr: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("momentum", self.momentum, allow_zero=True)


def units_of(net: nn.Module, algorithm: str) -> list[nn.Module]:
    """The children of an nn.Sequential: the units of locality. Anything else is refused, clearly."""
    if not isinstance(net, nn.Sequential) or len(net) == 0:
        raise TypeError(
            f"{algorithm} needs an nn.Sequential whose children are the local units (the last one producing "
            f"class scores), e.g. localearn.models.mlp(...); got {type(net).__name__}"
        )
    return list(net.children())


def unit_output_shapes(
    units: Sequence[nn.Module], input_shape: Sequence[int] | None, num_classes: int, algorithm: str
) -> list[tuple[int, ...]]:
    """The output shape of every unit (no batch dimension), for rules that attach something to each unit.

    With the input shape known this is one dry pass (any unit, convolutional ones included); without it
    only units ending in an nn.Linear can be sized, and anything else asks for ``input_shape``.
    """
    if input_shape is not None:
        device = next((p.device for u in units for p in u.parameters()), torch.device("cpu"))
        shapes = []
        with torch.no_grad():
            a = torch.zeros(1, *input_shape, device=device)
            for unit in units:
                a = unit(a)
                shapes.append(tuple(a.shape[1:]))
        if shapes[-1] != (num_classes,):
            raise ValueError(
                f"the network's last unit gives outputs of shape {shapes[-1]}, expected ({num_classes},)"
            )
        return shapes
    shapes = []
    for i, unit in enumerate(units):
        linears = [m for m in unit.modules() if isinstance(m, nn.Linear)]
        if not linears or any(isinstance(m, nn.modules.conv._ConvNd) for m in unit.modules()):
            raise ValueError(
                f"{algorithm} cannot infer the output size of unit {i + 1} (no final nn.Linear); "
                "pass input_shape=... to make() (the CLI and Trainer do)"
            )
        shapes.append((linears[-1].out_features,))
    return shapes


def linear_readout(unit_output_shape: Sequence[int], num_classes: int) -> nn.Module:
    """A bias-free linear map from a unit's flattened output to class scores (a local classifier head)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(unit_output_shape), num_classes, bias=False))


class Algorithm:
    """Base class of every learning rule. Subclasses set ``name`` and ``Config`` and implement the rule."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = OptimizerConfig
    num_stages: int = 1  # > 1 for rules that train one unit at a time
    convolutional: ClassVar[bool] = True  # False: the rule refuses convolutional units with a clear error
    # What the update of a unit may depend on besides its own input, parameters and the targets:
    #   "local"         nothing else: no signal crosses a unit boundary (Mono-Forward, Forward-Forward,
    #                   counter-current learning, forward gradient with local_activity)
    #   "output_error"  the network's output error, carried by fixed matrices, never by later weights (DFA)
    #   "global"        the weights above it (backprop, and forward gradients of the end-to-end loss)
    # The locality tests check each claim; a rule whose locality depends on a variant overrides it.
    locality: str = "local"
    monitors: ClassVar[tuple[str, ...]] = ("val_accuracy", "val_loss")  # what early stopping may watch
    monitor_note: ClassVar[str] = ""  # why a rule allows fewer monitors; stated in every config

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        *,
        input_shape: Sequence[int] | None = None,
        **hparams: Any,
    ) -> None:
        if num_classes < 2:
            raise HyperparameterError(f"num_classes={num_classes} must be >= 2")
        self.net = net
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.config = self.Config(**hparams)
        self.stage = 0
        # Auxiliary parameters (projection matrices, feedback weights, ...) go in here so that they are
        # saved, moved and counted with the network.
        self.aux = nn.ModuleDict()
        self.optimizers: list[torch.optim.Optimizer] = []

    # -- the contract ---------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float | torch.Tensor]:
        """One update on one batch. Values may be 0-dim tensors: the Trainer avoids a device sync per step."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        """Hyperparameters for one Optuna trial; the default tunes learning rate and weight decay."""
        return {
            "lr": trial.suggest_float("lr", 1e-5, 1e-2, log=True),
            "weight_decay": trial.suggest_float("weight_decay", 1e-7, 1e-3, log=True),
        }

    def advance_stage(self) -> None:
        """Freeze the current stage and start the next one, with fresh optimizers for what trains now."""
        if self.stage + 1 >= self.num_stages:
            raise RuntimeError(f"{self.name} is already at its last stage ({self.num_stages})")
        self.stage += 1
        self.net.zero_grad(set_to_none=True)  # the frozen unit keeps no stale gradient
        self.optimizers = self._optimizers_for_stage(self.stage)

    def _optimizers_for_stage(self, stage: int) -> list[torch.optim.Optimizer]:
        """Staged rules: the optimizers of what trains in ``stage``."""
        raise NotImplementedError

    # -- shared mechanics -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        for p in self.net.parameters():
            return p.device
        return torch.device("cpu")

    def hyperparameters(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def extra_state(self) -> dict[str, Any]:
        """Rule-specific state beyond modules and optimizers (generators, stage, running statistics)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.name,
            "stage": self.stage,
            "net": self.net.state_dict(),
            "aux": self.aux.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("algorithm") != self.name:
            raise ValueError(f"state was saved by {state.get('algorithm')!r}, not {self.name!r}")
        # Staged rules rebuild their optimizers per stage, so the stage comes first.
        if state["stage"] < self.stage:
            raise ValueError(
                f"state is from stage {state['stage']}, this {self.name} is at stage {self.stage}"
            )
        while self.stage < state["stage"]:
            self.advance_stage()
        self.net.load_state_dict(state["net"])
        self.aux.load_state_dict(state["aux"])
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(
                f"state has {len(state['optimizers'])} optimizers, {self.name} has {len(self.optimizers)}"
            )
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.load_extra_state(state["extra"])

    def train(self, mode: bool = True) -> None:
        self.net.train(mode)
        self.aux.train(mode)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({params})"
