"""What each stage process does (train its units on what arrives, hand its state over at the epoch's end)
and what stage 1 gives the Trainer in place of the rule."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from ..algorithms.base import Algorithm
from ..callbacks import Callback
from ..energy.memory import lifetime_peak
from ..trainer import Result, Trainer, on_cpu
from .layout import Layout
from .link import BATCH, LOAD, STOP, SYNC, Link, recv_handover, send_handover
from .standin import RuleStandIn


class Stage:
    """One stage's units of the rule: train them on what arrives, and hand over their state."""

    def __init__(self, algo: Algorithm, layout: Layout, rank: int, step_delay: float = 0.0) -> None:
        self.algo, self.layout, self.rank, self.step_delay = algo, layout, rank, step_delay
        self.units = layout.units(rank)
        self.last = rank == layout.world_size - 1
        self.link = Link(rank, algo.device, layout.in_flight)
        owned = [algo.pipeline_units()[i] for i in self.units]
        self.owned_params = {id(p) for unit in owned for p in unit.parameters()}
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.busy = 0.0  # seconds in train_units this epoch (as the host sees them: a GPU may lag)
        self.step_times: list[float] = []  # when each step of this epoch ended (time.time())

    def step(self, a: torch.Tensor, y: torch.Tensor, lr: float) -> dict[str, torch.Tensor]:
        """Train this stage's units on batch (a, y) and send their output on."""
        self.algo.set_progress(lr)
        start = time.perf_counter()
        out, stats = self.algo.train_units(a, y, self.units)
        self.busy += time.perf_counter() - start
        if not self.last:
            self.link.send(BATCH, out, y, lr)
        for k, v in stats.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.steps += 1
        if self.step_delay:  # a slow stage, for tests and demonstrations
            time.sleep(self.step_delay)
        self.step_times.append(time.time())
        return stats

    def handover(self, with_state: bool = True) -> dict[str, Any]:
        """This stage's units' state and this epoch's loss means, for stage 1; restarts the means."""
        units = self.algo.pipeline_units()
        optimizers = []
        for opt in self.algo.optimizers if with_state else []:
            params = [p for group in opt.param_groups for p in group["params"]]
            state = opt.state_dict()["state"]
            owned = (i for i, p in enumerate(params) if id(p) in self.owned_params and i in state)
            optimizers.append({i: state[i] for i in owned})
        report = {
            "stage": self.rank + 1,
            "units": {i: units[i].state_dict() for i in self.units} if with_state else {},
            "optimizers": optimizers,
            "means": {k: float(v) / self.steps for k, v in self.sums.items()} if self.steps else {},
            "steps": self.steps,
            "step_times": self.step_times,
            "busy_seconds": self.busy,
            "waiting_seconds": self.link.waiting,
            "sources": sorted(self.link.sources),
            "peak_memory": lifetime_peak(self.algo.device),
        }
        self.sums, self.steps, self.busy, self.step_times = {}, 0, 0.0, []
        self.link.waiting = 0.0
        return on_cpu(report)


def serve(stage: Stage) -> None:
    """A later stage's loop: take what the stage below sends, until it says stop."""
    algo = stage.algo
    algo.train(True)
    while True:
        kind, a, y, lr = stage.link.recv()
        if kind == BATCH:
            stage.step(a.to(algo.device), y.to(algo.device), lr)
            continue
        if not stage.last:  # pass the word on first, so the stages above can answer at the same time
            stage.link.send(kind)
            stage.link.flush()
        if kind == SYNC:
            send_handover(stage.handover(), stage.link.wire)
        elif kind == LOAD:
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0)
            algo.load_state_dict(box[0])
        elif kind == STOP:
            return


# -- stage 1: the Trainer's stand-in for the rule ----------------------------------------------------------
class PipelineHead(RuleStandIn):
    """What the Trainer trains in stage 1: the rule, whose train_step trains stage 1's units and sends their
    output up the line."""

    def __init__(self, algo: Algorithm, layout: Layout, step_delay: float = 0.0) -> None:
        super().__init__(algo, layout)
        self.own = Stage(algo, layout, 0, step_delay)  # not .stage: that is the rule's
        self.dirty = False  # stages above hold steps stage 1 has not collected
        # The other stages get stage 1's whole state before the next batch: at the start (after the rule's
        # prepare), and after every load (resume, the best state restored).
        self.broadcast_due = True
        self.reports: list[dict[str, Any]] = []  # each stage's last handover (without its tensors)

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.broadcast_due:
            self.own.link.send(LOAD)
            self.own.link.flush()
            dist.broadcast_object_list([on_cpu(self.algo.state_dict())], src=0)
            self.broadcast_due = False
        self.dirty = True
        return self.own.step(self.algo.pipeline_input(x, y), y, self.lr_fraction)

    def settle(self) -> None:
        """Collect every stage's units: afterwards stage 1's copy of the rule is the whole trained rule."""
        if not self.dirty:
            return
        self.own.link.send(SYNC)
        self.own.link.flush()
        own = self.own.handover(with_state=False)
        wire = self.own.link.wire
        handovers = [own, *(recv_handover(rank, wire) for rank in range(1, self.layout.world_size))]
        units = self.algo.pipeline_units()
        for report in handovers[1:]:
            for i, state in report["units"].items():
                units[i].load_state_dict(state)
            for opt, owned in zip(self.algo.optimizers, report["optimizers"], strict=True):
                state = opt.state_dict()
                state["state"].update(owned)
                opt.load_state_dict(state)
        self.reports = [{k: v for k, v in r.items() if k not in ("units", "optimizers")} for r in handovers]
        self.dirty = False

    def epoch_stats(self) -> dict[str, float]:
        """The later stages' unit losses, and the rule's headline loss over all units."""
        self.settle()
        means = {k: v for r in self.reports for k, v in r["means"].items()}
        later = {k: v for r in self.reports[1:] for k, v in r["means"].items()}
        return {**later, "loss": float(self.algo.step_loss(means))} if means else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.settle()
        self.algo.load_state_dict(state)
        self.broadcast_due = True

    def stop(self) -> None:
        self.own.link.send(STOP)
        self.own.link.flush()


class LayoutReport(Callback):
    """result.json says how the run was laid out and what each stage did in the last epoch."""

    def __init__(self, head: PipelineHead) -> None:
        self.head = head

    def on_fit_end(self, trainer: Trainer, result: Result) -> None:
        stages = self.head.layout.to_dict()["stages"]
        reports = self.head.reports
        for entry, report in zip(stages, reports, strict=False):
            entry["steps_last_epoch"] = report["steps"]
            entry["busy_seconds_last_epoch"] = report["busy_seconds"]  # in its units' steps
            entry["waiting_seconds_last_epoch"] = report["waiting_seconds"]  # on its neighbours
            entry["received_from"] = [rank + 1 for rank in report["sources"]]  # stage numbers
            entry["peak_memory_bytes"], entry["peak_memory_kind"] = report["peak_memory"]  # the process's
            # How long after stage 1's last step of the last epoch this stage ended its own.
            if report["step_times"] and reports[0]["step_times"]:
                entry["finished_after_stage1_s"] = report["step_times"][-1] - reports[0]["step_times"][-1]
        result.extra["parallel"] = {**self.head.layout.to_dict(), "stages": stages}
