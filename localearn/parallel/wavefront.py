"""Layer-parallel training on one device: the wavefront schedule, one process, one CUDA stream per stage.

    tick t:  stage 1 trains on batch t   stage 2 on batch t-1   ...   stage K on batch t-K+1

Stage r (consecutive units, shared out as ``plan`` shares them between processes) trains at tick t on what
stage r-1 produced from batch t-r+1 at tick t-1. No step of a tick reads what another step of the same tick
writes, so on a GPU each stage's step runs on a stream of its own and the device may overlap them, where
the one-process step is one chain (unit k waits for unit k-1's forward). On a CPU the steps of a tick run
one after another: the same numbers and no speed-up (for cores, use ``--parallel units``).

Same maths as the one-process simultaneous schedule and as the stage processes: unit k's update on batch t
uses what unit k-1 produced on batch t before its own update, and each stage's step is the rule's
``train_units``. At the epoch's end the pipe drains (K-1 ticks with no new batch), so validation,
checkpoints and the stopping rule see a rule that has trained on every batch of the epoch, as a one-process
run's has. Each batch carries its learning-rate fraction, set before the stage's step that trains on it.

On a GPU the streams are fenced once per tick, on the device (no host sync): every stage's stream waits for
the default stream (the new batch, the last tick's outputs), and the default stream waits for all of them.
A tensor that one stream made and another reads is marked with ``record_stream`` so that the caching
allocator does not hand its memory out while the reader may still run.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from ..algorithms.base import Algorithm
from ..callbacks import Callback
from ..trainer import Result, Trainer
from .layout import Layout
from .standin import RuleStandIn

Batch = tuple[torch.Tensor, torch.Tensor, float]  # a stage's input, the labels, the learning-rate fraction


class Wavefront(RuleStandIn):
    """What the Trainer trains: the rule, whose train_step runs one tick of the wavefront."""

    def __init__(self, algo: Algorithm, layout: Layout) -> None:
        super().__init__(algo, layout)
        self.waiting: list[Batch | None] = [None] * layout.world_size  # each stage's input for the next tick
        cuda = algo.device.type == "cuda"
        self.streams = [torch.cuda.Stream(algo.device) for _ in layout.stages] if cuda else []
        self.sums: dict[str, torch.Tensor] = {}  # every unit's losses over this epoch's steps
        self.counts: dict[str, int] = {}
        self.steps = [0] * layout.world_size  # this epoch's steps, per stage
        self.last_steps: list[int] = []  # the last epoch's, for result.json

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Stage 1's statistics on this batch; the later stages' are on batches before it (epoch_stats)."""
        self.waiting[0] = (self.algo.pipeline_input(x, y), y, self.lr_fraction)
        return self._tick()

    def _tick(self) -> dict[str, torch.Tensor]:
        inputs, self.waiting = self.waiting, [None] * self.layout.world_size
        default = torch.cuda.current_stream(self.algo.device) if self.streams else None
        for stream in self.streams:
            stream.wait_stream(default)
        first: dict[str, torch.Tensor] = {}
        for rank, batch in enumerate(inputs):
            if batch is None:
                continue
            a, y, lr = batch
            with self._on_stream(rank, a, y):
                self.algo.set_progress(lr)
                out, stats = self.algo.train_units(a, y, self.layout.units(rank))
                for k, v in stats.items():
                    self.sums[k] = self.sums.get(k, 0.0) + v.detach()
                    self.counts[k] = self.counts.get(k, 0) + 1
            self.steps[rank] += 1
            if rank + 1 < self.layout.world_size:
                self.waiting[rank + 1] = (out, y, lr)
            if rank == 0:
                first = stats
        for stream in self.streams:
            default.wait_stream(stream)
        return first

    def _on_stream(self, rank: int, *reads: torch.Tensor) -> contextlib.AbstractContextManager:
        if not self.streams:
            return contextlib.nullcontext()
        for t in reads:  # made on another stream: keep its memory until this one is done with it
            t.record_stream(self.streams[rank])
        return torch.cuda.stream(self.streams[rank])

    def settle(self) -> None:
        """Drain the pipe: ticks with no new batch until every batch taken has reached the last stage."""
        while any(batch is not None for batch in self.waiting):
            self._tick()

    def epoch_stats(self) -> dict[str, float]:
        """Every unit's loss over the epoch (stage 1's as the Trainer's own means of train_step's), and the
        rule's headline loss over all units."""
        self.settle()
        means = {k: float(v) / self.counts[k] for k, v in self.sums.items()}
        self.sums, self.counts = {}, {}
        self.last_steps, self.steps = self.steps, [0] * self.layout.world_size
        return {**means, "loss": float(self.algo.step_loss(means))} if means else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.waiting = [None] * self.layout.world_size  # batches of a run being replaced
        self.algo.load_state_dict(state)


class WavefrontReport(Callback):
    """result.json says how the run was laid out, and each stage's steps in the last epoch."""

    def __init__(self, head: Wavefront) -> None:
        self.head = head

    def on_fit_end(self, trainer: Trainer, result: Result) -> None:
        layout = self.head.layout.to_dict()
        for entry, steps in zip(layout["stages"], self.head.last_steps, strict=False):
            entry["steps_last_epoch"] = steps
        result.extra["parallel"] = layout
