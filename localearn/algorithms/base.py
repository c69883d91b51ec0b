"""The Algorithm contract shared by every learning rule, and the mechanics they share. What their
hyperparameters share (checks, optimizers, schedules) is in config.py; networks as stacks of units in
units.py.

An algorithm owns its network, its auxiliary parameters, its optimizers and its random generators. The
Trainer only calls:

    train_step(x, y) -> {"loss": ..., ...}   one update on one batch
    predict(x)       -> [batch, num_classes]  class scores, no grad
    state_dict() / load_state_dict(state)     everything needed to resume
    enter(stage, data_pass)                   before every pass over the training data (see below)
    set_progress(fraction)                    before every step: the learning-rate schedule follows it
    begin_evaluation()                        before every evaluation: the evaluation noise restarts
    prepare(train)                            once, before training: data-dependent initialisation
    epoch_stats()                             once per epoch: statistics the rule gathers itself

and two classmethods: ``build_network(model, input_shape, num_classes, config)`` (the module the rule
trains; default: ``models.from_spec``) and ``search_space(trial, config)`` (Optuna).

For layer-parallel runs (localearn.parallel), a rule whose units learn bottom-up also implements
``pipeline_units``, ``train_units`` and ``step_loss`` (its one-process ``train_step`` calls ``train_units``
on every unit, so both run the same code); the others say why not in ``parallel_refusal``.

What trains when: a run is a sequence of stages (``num_stages`` > 1: parts trained one after another, each
to its own stopping point, as Mono-Forward's sequential schedule), and each epoch of a stage is
``passes_per_epoch`` passes over the training data (> 1: one block per pass, or a budget of several passes
for rules that train one block per step). The Trainer calls ``enter(stage, data_pass)`` before every pass;
the base class starts a later stage (freezing what trained before) and records the pass in
``self.data_pass``. Configs, results and reports count data passes, not only epochs.

Randomness: ``self.generator`` draws the rule's training noise (negatives, tangents, noisy labels) and is
saved with the state; ``self.eval_generator`` draws prediction noise and is reseeded by
``begin_evaluation``, so an evaluation is a deterministic function of the weights. Both are seeded from
torch's global generator without advancing it, so a rule's randomness never shifts the initialisation of
anything built after it.

Hyperparameters live in a dataclass per algorithm (``Config``); its fields are the only keywords ``make``
accepts, and ``__post_init__`` checks choices so a bad value fails before any work starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .. import models
from ..splits import DataSplit
from .config import (
    LR_RANGES,
    WEIGHT_DECAY_RANGES,
    HyperparameterError,
    OptimizerConfig,
    lr_factor,
    make_optimizer,
)
from .units import infer_input_shape


@dataclasses.dataclass
class ParameterGroups:
    """What must learn independently, and what every group shares.

    ``local``: named groups in order from the input up; under a ``local`` rule a group's update on a batch
    does not depend on the parameters of any later group. ``shared``: parameters that learn from every
    group's loss (a label embedding, a classifier used by every block); the locality tests leave them out.
    """

    local: dict[str, list[nn.Parameter]]
    shared: dict[str, list[nn.Parameter]] = dataclasses.field(default_factory=dict)


class Algorithm:
    """Base class of every learning rule. Subclasses set ``name`` and ``Config`` and implement the rule."""

    name: ClassVar[str] = ""
    Config: ClassVar[type] = OptimizerConfig
    default_model: ClassVar[str | None] = None  # a rule's own network kind, over the dataset preset's
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
    num_stages: int = 1  # > 1: parts trained one after another (see the module docstring)
    passes_per_epoch: int = 1  # > 1: one epoch is this many passes over the training data

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        *,
        input_shape: Sequence[int] | None = None,
        device: str | torch.device | None = None,
        **hparams: Any,
    ) -> None:
        if num_classes < 2:
            raise HyperparameterError(f"num_classes={num_classes} must be >= 2")
        self.config = self.Config(**hparams)
        # The device is recorded, not guessed later: given, else the network's, else the CPU.
        if device is None:
            device = next((p.device for p in net.parameters()), "cpu")
        self.device = torch.device(device)
        self.net = net.to(self.device)
        self.num_classes = num_classes
        self.input_shape = tuple(input_shape) if input_shape is not None else infer_input_shape(net)
        self.stage, self.data_pass = 0, 0
        # Auxiliary parameters (projection matrices, feedback weights, ...) go in here so that they are
        # saved, moved and counted with the network.
        self.aux = nn.ModuleDict()
        self.optimizers: list[torch.optim.Optimizer] = []
        with torch.random.fork_rng(devices=[]):  # seeds from the global stream, which stays where it was
            seed, self.eval_seed, choice_seed = (int(torch.randint(2**62, ())) for _ in range(3))
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.eval_generator = torch.Generator(device=self.device).manual_seed(self.eval_seed)
        self.choice_generator = torch.Generator().manual_seed(choice_seed)  # on the CPU: see random_choice

    # -- the contract ---------------------------------------------------------------------------------
    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float | torch.Tensor]:
        """One update on one batch. Values may be 0-dim tensors: the Trainer avoids a device sync per step."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def build_network(
        cls, model: str, input_shape: Sequence[int], num_classes: int, config: Any
    ) -> nn.Module:
        """The module this rule trains, from a model spec (``mlp:1000,1000``, ...); ``config`` is the rule's
        resolved Config, for rules whose network depends on a hyperparameter (a number of blocks)."""
        return models.from_spec(model, input_shape, num_classes)

    @classmethod
    def example_network(cls, input_shape: Sequence[int], num_classes: int) -> nn.Module:
        """A small network for the registry-wide tests: four units (three hidden) for stacked rules."""
        return cls.build_network("mlp:8,8,32", input_shape, num_classes, cls.Config())

    @classmethod
    def search_space(cls, trial: Any, config: Any) -> dict[str, Any]:
        """Hyperparameters for one Optuna trial, given the run's other settings (``config``, the resolved
        Config). The default tunes the learning rate and the weight decay, each on the optimizer's scale."""
        return {
            "lr": trial.suggest_float("lr", *cls.lr_range(config), log=True),
            "weight_decay": trial.suggest_float(
                "weight_decay", *WEIGHT_DECAY_RANGES[config.optimizer], log=True
            ),
        }

    @classmethod
    def lr_range(cls, config: Any) -> tuple[float, float]:
        """The learning rates tuning searches: adaptive optimizers share one scale (LR_RANGES), plain SGD's
        is the rule's own (``sgd_lr_range``)."""
        return cls.sgd_lr_range(config) if config.optimizer == "sgd" else LR_RANGES[config.optimizer]

    @classmethod
    def sgd_lr_range(cls, config: Any) -> tuple[float, float]:
        """Plain SGD's learning rates for tuning; a rule overrides this with its paper's grid."""
        return LR_RANGES["sgd"]

    def parameter_groups(self) -> ParameterGroups:
        """Default for stacked rules: one group per unit (child) of the network, from the input up."""
        return ParameterGroups(
            {f"unit{i + 1}": list(u.parameters()) for i, u in enumerate(self.net.children())}
        )

    # -- what trains when -------------------------------------------------------------------------------
    def enter(self, stage: int, data_pass: int = 0) -> None:
        """Before a pass over the training data: start ``stage`` if it is a later one, note the pass."""
        if not self.stage <= stage < self.num_stages:
            raise ValueError(
                f"{self.name} is at stage {self.stage} of {self.num_stages}; cannot enter {stage}"
            )
        if not 0 <= data_pass < self.passes_per_epoch:
            raise ValueError(f"data pass {data_pass} is outside 0..{self.passes_per_epoch - 1}")
        while self.stage < stage:
            self.stage += 1
            self.net.zero_grad(set_to_none=True)  # what froze keeps no stale gradient
            self.optimizers = self.optimizers_for_stage(self.stage)
        self.data_pass = data_pass

    def prepare(self, train: DataSplit) -> None:
        """Before the first step, with the training split: initialisation that depends on the data (NoProp's
        class-mean label prototypes). The Trainer calls it before it resumes, so a saved state wins. Default:
        nothing."""

    def optimizers_for_stage(self, stage: int) -> list[torch.optim.Optimizer]:
        """Staged rules: the optimizers of what trains in ``stage``."""
        raise NotImplementedError

    def set_progress(self, fraction: float) -> None:
        """Where training stands in its budget (0 at the start, 1 at the epoch cap): every optimizer's
        learning rates follow the Config's ``lr_schedule`` (constant: nothing changes)."""
        if getattr(self.config, "lr_schedule", "constant") == "constant":
            return
        factor = lr_factor(self.config, fraction)
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])  # saved with the optimizer's state
                group["lr"] = group["initial_lr"] * factor

    def begin_evaluation(self) -> None:
        """Restart the evaluation noise, so that predictions are a function of the weights alone."""
        self.eval_generator.manual_seed(self.eval_seed)

    # -- layer-parallel runs (localearn.parallel) ---------------------------------------------------------
    def parallel_refusal(self) -> str | None:
        """Why this rule, as configured, cannot run its units in separate processes (None: it can). A rule
        that can overrides ``pipeline_units``, ``train_units`` and ``step_loss``."""
        if self.locality == "output_error":
            return f"{self.name}'s update of every unit needs the output error, a signal from the top"
        if self.locality == "global":
            return f"{self.name}'s update of a unit needs gradients through the units above it"
        return f"{self.name} has no layer-parallel form"

    def pipeline_units(self) -> list[nn.Module]:
        """One module per unit, from the input up, holding everything that unit's update writes (its
        parameters, its local head, its running statistics): what a stage owns and hands back."""
        raise NotImplementedError(self.parallel_refusal())

    def pipeline_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the first unit receives in training (the input itself, or a rule's encoding of it)."""
        return x

    def train_units(
        self, a: torch.Tensor, y: torch.Tensor, units: range
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The local update of ``units`` (indices into pipeline_units) on ``a``, the first one's input: the
        detached output of the last one, computed before the update, and each unit's loss (``loss_unitN``).
        Parameters outside ``units`` get no gradient, so their optimizers skip them."""
        raise NotImplementedError(self.parallel_refusal())

    def step_loss(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        """A step's headline loss (``loss``) from the units' losses that train_units returned."""
        raise NotImplementedError(self.parallel_refusal())

    def epoch_stats(self) -> dict[str, float]:
        """Training statistics the rule gathers itself, beside the Trainer's per-step means (a layer-parallel
        run's later stages); called once per epoch before validation. Default: none."""
        return {}

    # -- shared mechanics -----------------------------------------------------------------------------
    def make_optimizer(
        self, params: Iterable[nn.Parameter], lr: float | None = None
    ) -> torch.optim.Optimizer:
        """An optimizer over ``params`` as the Config says (``lr`` overrides the Config's learning rate)."""
        c = self.config
        return make_optimizer(c.optimizer, params, c.lr if lr is None else lr, c.weight_decay, c.momentum)

    def random_choice(self, n: int) -> int:
        """A uniform index in 0..n-1 (which block a step trains), drawn on the CPU so that the Python branch
        on it never waits for the device."""
        return int(torch.randint(n, (), generator=self.choice_generator))

    def hyperparameters(self) -> dict[str, Any]:
        return dataclasses.asdict(self.config)

    def extra_state(self) -> dict[str, Any]:
        """Rule-specific state beyond modules, optimizers and generators (running statistics, ...)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "algorithm": self.name,
            "stage": self.stage,
            "data_pass": self.data_pass,
            "net": self.net.state_dict(),
            "aux": self.aux.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "generator": self.generator.get_state(),
            "choice_generator": self.choice_generator.get_state(),
            "eval_seed": self.eval_seed,
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
        self.enter(state["stage"], state["data_pass"])
        self.net.load_state_dict(state["net"])
        self.aux.load_state_dict(state["aux"])
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(
                f"state has {len(state['optimizers'])} optimizers, {self.name} has {len(self.optimizers)}"
            )
        for opt, opt_state in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.generator.set_state(state["generator"])
        if "choice_generator" in state:  # absent from checkpoints written before it existed
            self.choice_generator.set_state(state["choice_generator"])
        self.eval_seed = state["eval_seed"]
        self.begin_evaluation()
        self.load_extra_state(state["extra"])

    def train(self, mode: bool = True) -> None:
        self.net.train(mode)
        self.aux.train(mode)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({params})"
