"""What the Trainer trains in place of the rule in a layer-parallel run: the rule itself, every attribute
not overridden, with its work still out (in other processes, in the pipe) brought in before anything reads
the whole rule."""

from __future__ import annotations

from typing import Any

import torch

from ..algorithms.base import Algorithm
from .layout import Layout


class RuleStandIn:
    """The rule (``algo``) as the Trainer sees it. A subclass trains in ``train_step`` and says in
    ``settle`` how the steps still out reach ``algo``; evaluation, prediction and the state come after it."""

    def __init__(self, algo: Algorithm, layout: Layout) -> None:
        self.algo, self.layout = algo, layout
        self.lr_fraction = 0.0  # the Trainer's for the next batch; it travels with the batch

    def __getattr__(self, name: str) -> Any:
        return getattr(self.algo, name)

    def set_progress(self, fraction: float) -> None:
        self.lr_fraction = fraction

    def settle(self) -> None:
        raise NotImplementedError

    def begin_evaluation(self) -> None:
        self.settle()
        self.algo.begin_evaluation()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.settle()
        return self.algo.predict(x)

    def state_dict(self) -> dict[str, Any]:
        self.settle()
        return self.algo.state_dict()
