"""Layer-parallel training: a bottom-up local rule's units split into K stages, one process each.

    stage 1 (this process)          stage 2                          stage K
    batch t: units 1..a, step  --(a_t, y_t)-->  units a+1..b, step  --(...)-->  units ..L, step

Each stage trains its units on the activations it receives, with the rule's own optimizers, and sends its
units' output on; nothing is sent upstream, so stage 1 starts batch t+1 while later stages still work on
batch t (no backward locking). A send completes only when the next stage takes it (gloo), and a stage keeps
at most ``in_flight`` sends open, so a fast stage waits for a slow one instead of queueing without bound.

Same maths: unit k's update on batch t uses what unit k-1 produced on batch t before its own update, as the
one-process simultaneous schedule does (the rule's ``train_units`` is the code of both), so the parameters
after any number of steps equal the one-process run's (tests/test_parallel.py).

Stage 1 runs the ordinary Trainer on a stand-in for the rule (``PipelineHead``): the data, the stopping
rule, metering, checkpoints and result.json are the one-process run's. The epoch boundary is the one
meeting point: stage 1 sends "sync" down the line behind the epoch's last batch, and every stage hands its
units' state (parameters, optimizer state, running statistics) and loss means to stage 1 in one gather.
Validation then runs on the assembled network, and a checkpoint is the whole rule's state, the same as a
one-process run's, so a run killed anywhere resumes from it with any layout. That gather is the only thing
a later stage sends to an earlier one, and no update reads it. A state loaded into stage 1 (at the start,
on resume, when the best state is restored) reaches the others by broadcast before the next batch. Every
wait has a timeout ($LOCALEARN_PARALLEL_TIMEOUT, 600 s); a stage that dies takes the others down, and the
error names it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import logging
import math
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .algorithms.base import Algorithm
from .callbacks import Callback
from .energy.memory import lifetime_peak
from .splits import DataSplit
from .trainer import Result, Trainer, on_cpu

log = logging.getLogger(__name__)

BATCH, SYNC, LOAD, STOP, RESIZE = 1, 2, 3, 4, 5
HEADER = 12  # kind, lr fraction, dtype, ndim, up to 6 sizes, labels
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class ParallelError(RuntimeError):
    """A stage died, refused, or did not answer within the timeout."""


def timeout_seconds() -> float:
    return float(os.environ.get("LOCALEARN_PARALLEL_TIMEOUT", 600))


# -- the layout -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layout:
    """Which units each stage trains ([start, stop) into the rule's pipeline_units) and where it runs."""

    stages: tuple[tuple[int, int], ...]
    devices: tuple[str, ...]
    in_flight: int

    @property
    def world_size(self) -> int:
        return len(self.stages)

    def units(self, rank: int) -> range:
        return range(*self.stages[rank])

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "units",
            "world_size": self.world_size,
            "stages": [
                {"units": [f"unit{i + 1}" for i in self.units(r)], "device": d}
                for r, d in enumerate(self.devices)
            ],
            "in_flight": self.in_flight,
            "backend": backend(self.devices),
        }


def balanced_split(costs: Sequence[int], stages: int) -> list[tuple[int, int]]:
    """Consecutive units in ``stages`` non-empty groups, the costliest group as cheap as it can be."""

    @functools.cache
    def best(n: int, k: int) -> tuple[int, tuple[int, ...]]:  # the first n units in k groups
        if k == 1:
            return sum(costs[:n]), (0,)
        return min(
            (max(best(s, k - 1)[0], sum(costs[s:n])), best(s, k - 1)[1] + (s,)) for s in range(k - 1, n)
        )

    starts = best(len(costs), stages)[1]
    return list(zip(starts, (*starts[1:], len(costs)), strict=True))


def plan(
    algo: Algorithm, world_size: int | None = None, devices: Sequence[str] = (), in_flight: int = 2
) -> Layout:
    """The layout of ``algo``'s units over ``world_size`` stages (or one per device), balanced by parameter
    count (a dense unit's step costs about that, times the batch). Refuses what cannot run so, saying why."""
    why = algo.parallel_refusal()
    if why is not None:
        raise ValueError(f"{algo.name} cannot train layer-parallel: {why}")
    if algo.num_stages > 1 or algo.passes_per_epoch > 1:
        raise ValueError(f"{algo.name} trains its parts one after another; nothing to run side by side")
    if devices and world_size not in (None, len(devices)):
        raise ValueError(f"world_size={world_size} but {len(devices)} devices: give one or match them")
    world_size = len(devices) if devices else world_size
    units = algo.pipeline_units()
    if world_size is None or not 2 <= world_size <= len(units):
        raise ValueError(
            f"world_size={world_size!r}: a layer-parallel run of {algo.name} on this network needs 2 to "
            f"{len(units)} stages (one unit or more each)"
        )
    if in_flight < 1:
        raise ValueError(f"in_flight={in_flight!r} must be >= 1")
    costs = [sum(p.numel() for p in unit.parameters()) for unit in units]
    devices = tuple(devices) or (str(algo.device),) * world_size
    return Layout(tuple(balanced_split(costs, world_size)), devices, in_flight)


def backend(devices: Sequence[str]) -> str:
    """NCCL between distinct GPUs; gloo otherwise (CPU, or stages sharing a GPU, which NCCL refuses)."""
    cuda = [torch.device(d) for d in devices if torch.device(d).type == "cuda"]
    return "nccl" if len(cuda) == len(devices) and len(set(cuda)) == len(cuda) else "gloo"


# -- messages between consecutive stages -------------------------------------------------------------------
class Link:
    """One stage's ends of the line: receive from the stage below, send to the stage above."""

    def __init__(self, rank: int, world_size: int, device: torch.device, in_flight: int) -> None:
        self.rank, self.world_size, self.in_flight = rank, world_size, in_flight
        self.wire = device if dist.get_backend() == "nccl" else torch.device("cpu")
        self.open_sends: deque[dist.Work] = deque()
        # Bytes of every message each way (a middle stage has both); RESIZE grows them to the largest batch.
        self.capacity_in = self.capacity_out = HEADER * 8
        self.sources: set[int] = set()  # every rank a message came from: only ever rank - 1
        self.waiting = 0.0  # seconds blocked on the stage below (receive) or above (backpressure)
        self.next_message: tuple[torch.Tensor, dist.Work] | None = None  # a receive already posted

    def send(
        self, kind: int, a: torch.Tensor | None = None, y: torch.Tensor | None = None, lr: float = 0.0
    ) -> None:
        """One message: a header (kind, learning-rate fraction, the activation's dtype and shape, the batch
        size), then for a batch the activation's and the labels' bytes, padded to the link's capacity, so
        that the next stage can post its receive before the message exists (see recv)."""
        header = torch.zeros(HEADER, dtype=torch.float64)
        header[0], header[1] = kind, lr
        payload = [header.view(torch.uint8)]
        if a is not None and y is not None:
            header[2], header[3], header[10] = DTYPES.index(a.dtype), a.dim(), len(y)
            header[4 : 4 + a.dim()] = torch.tensor(a.shape, dtype=torch.float64)
            payload += [a.detach().contiguous().view(-1).view(torch.uint8).to(self.wire), y.view(torch.uint8)]
        size = sum(len(p) for p in payload)
        if size > self.capacity_out:  # tell the next stage first, in a message of the size it expects
            self.send(RESIZE, lr=size)  # (the new size where a batch has its learning-rate fraction)
            self.capacity_out = size
        message = torch.zeros(self.capacity_out, dtype=torch.uint8, device=self.wire)
        torch.cat([p.to(self.wire) for p in payload], out=message[:size])
        self.open_sends.append(dist.isend(message, self.rank + 1))
        start = time.perf_counter()
        while len(self.open_sends) > self.in_flight:  # backpressure: wait until the next stage takes one
            self._wait(self.open_sends.popleft(), f"stage {self.rank + 2} to take a message")
        self.waiting += time.perf_counter() - start

    def flush(self) -> None:
        while self.open_sends:
            self._wait(self.open_sends.popleft(), f"stage {self.rank + 2} to take a message")

    def recv(self) -> tuple[int, torch.Tensor | None, torch.Tensor | None, float]:
        """The next message from the stage below. Its receive was posted as soon as the one before had
        arrived: the transfer overlaps this stage's step instead of following it."""
        start = time.perf_counter()
        try:
            while True:
                message, work = self.next_message or self._post()
                self.next_message = None
                self._wait(work, f"stage {self.rank} to send")
                source = work._source_rank() if self.wire.type == "cpu" else self.rank - 1
                self.sources.add(source)
                assert source == self.rank - 1, f"stage {self.rank + 1} got a message from stage {source + 1}"
                header = message[: HEADER * 8].cpu().view(torch.float64)
                kind, lr = int(header[0]), float(header[1])
                if kind == RESIZE:
                    self.capacity_in = int(lr)
                if kind != STOP:
                    self.next_message = self._post()
                if kind != RESIZE:
                    break
        finally:
            self.waiting += time.perf_counter() - start
        if kind != BATCH:
            return kind, None, None, lr
        shape = [int(s) for s in header[4 : 4 + int(header[3])]]
        dtype, labels = DTYPES[int(header[2])], int(header[10])
        start, end = HEADER * 8, HEADER * 8 + math.prod(shape) * dtype.itemsize
        a = message[start:end].view(dtype).view(shape)
        return kind, a, message[end : end + labels * 8].view(torch.long), lr

    def _post(self) -> tuple[torch.Tensor, dist.Work]:
        message = torch.empty(self.capacity_in, dtype=torch.uint8, device=self.wire)
        if self.wire.type == "cpu":  # gloo: from any rank, so that the assertion in recv can fail
            return message, dist.irecv(message)
        return message, dist.irecv(message, self.rank - 1)  # NCCL has no receive from any rank

    @staticmethod
    def _wait(work: dist.Work, what: str) -> None:
        seconds = timeout_seconds()
        if not work.wait(datetime.timedelta(seconds=seconds)):
            raise ParallelError(f"waited {seconds:.0f} s for {what} ($LOCALEARN_PARALLEL_TIMEOUT)")


# -- what every stage does ---------------------------------------------------------------------------------
class Stage:
    """One stage's units of the rule: train them on what arrives, and hand over their state."""

    def __init__(self, algo: Algorithm, layout: Layout, rank: int, step_delay: float = 0.0) -> None:
        self.algo, self.layout, self.rank, self.step_delay = algo, layout, rank, step_delay
        self.units = layout.units(rank)
        self.last = rank == layout.world_size - 1
        self.link = Link(rank, layout.world_size, algo.device, layout.in_flight)
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
            dist.gather_object(stage.handover(), None, dst=0)
        elif kind == LOAD:
            box: list[Any] = [None]
            dist.broadcast_object_list(box, src=0)
            algo.load_state_dict(box[0])
        elif kind == STOP:
            return


# -- stage 1: the Trainer's stand-in for the rule ----------------------------------------------------------
class PipelineHead:
    """What the Trainer trains in stage 1: the rule itself (every attribute it does not override is the
    rule's), whose train_step trains stage 1's units and sends their output up the line."""

    def __init__(self, algo: Algorithm, layout: Layout, step_delay: float = 0.0) -> None:
        self.algo, self.layout = algo, layout
        self.own = Stage(algo, layout, 0, step_delay)  # not .stage: that is the rule's
        self.lr_fraction = 0.0
        self.dirty = False  # stages above hold steps stage 1 has not collected
        self.pending_state: dict[str, Any] | None = on_cpu(algo.state_dict())  # to broadcast
        self.reports: list[dict[str, Any]] = []  # each stage's last handover (without its tensors)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.algo, name)

    def prepare(self, train: DataSplit) -> None:
        self.algo.prepare(train)
        self.pending_state = on_cpu(self.algo.state_dict())

    def set_progress(self, fraction: float) -> None:
        self.lr_fraction = fraction

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.pending_state is not None:
            self.own.link.send(LOAD)
            self.own.link.flush()
            dist.broadcast_object_list([self.pending_state], src=0)
            self.pending_state = None
        self.dirty = True
        return self.own.step(self.algo.pipeline_input(x, y), y, self.lr_fraction)

    def sync(self) -> None:
        """Collect every stage's units: afterwards stage 1's copy of the rule is the whole trained rule."""
        if not self.dirty:
            return
        self.own.link.send(SYNC)
        self.own.link.flush()
        own = self.own.handover(with_state=False)
        handovers: list[Any] = [None] * self.layout.world_size
        dist.gather_object({}, handovers, dst=0)
        handovers[0] = own
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
        self.sync()
        means = {k: v for r in self.reports for k, v in r["means"].items()}
        later = {k: v for r in self.reports[1:] for k, v in r["means"].items()}
        return {**later, "loss": float(self.algo.step_loss(means))} if means else {}

    def begin_evaluation(self) -> None:
        self.sync()
        self.algo.begin_evaluation()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        self.sync()
        return self.algo.predict(x)

    def state_dict(self) -> dict[str, Any]:
        self.sync()
        return self.algo.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sync()
        self.algo.load_state_dict(state)
        self.pending_state = on_cpu(state)

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


# -- processes ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """A stage process is killed when the process that started it dies, even by SIGKILL (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _init(rank: int, layout: Layout, address: str) -> None:
    if torch.device(layout.devices[rank]).type == "cuda":
        torch.cuda.set_device(torch.device(layout.devices[rank]))  # NCCL's objects go to this device
    dist.init_process_group(
        backend(layout.devices),
        init_method=address,
        rank=rank,
        world_size=layout.world_size,
        timeout=datetime.timedelta(seconds=timeout_seconds()),
    )


def _stage_process(
    rank: int, factory: Callable[[str], Algorithm], layout: Layout, address: str, threads: int, delay: float
) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: stage 1 ends the run
    torch.set_num_threads(threads)
    _init(rank, layout, address)
    try:
        serve(Stage(factory(layout.devices[rank]), layout, rank, delay))
    finally:
        dist.destroy_process_group()


def _describe(exitcode: int) -> str:
    if exitcode < 0:
        return f"was killed by {signal.Signals(-exitcode).name}"
    return f"exited with code {exitcode}"


def fit(
    factory: Callable[[str], Algorithm],
    train: DataSplit,
    val: DataSplit,
    test: DataSplit,
    *,
    world_size: int | None = None,
    devices: Sequence[str] = (),
    in_flight: int = 2,
    threads_per_stage: int | None = None,
    step_delays: dict[int, float] | None = None,
    callbacks: Sequence[Callback] = (),
    **trainer_options: Any,
) -> Result:
    """Train the rule ``factory`` builds, its units split over ``world_size`` processes (or one per device
    of ``devices``), with the Trainer's options; returns the Trainer's Result.

    ``factory(device)`` must build the same rule in every process: an ``AlgorithmFactory``, or any picklable
    function (a module-level one, or a functools.partial of one). This process is stage 1 and trains on the
    splits, which live on its device; the others are started here and end with the run.
    ``threads_per_stage``: torch's threads in each process (default: $OMP_NUM_THREADS, else the cores
    shared out). ``step_delays``: {stage index from 0: seconds each of its steps sleeps}, to show what a
    slow stage does to the others.
    """
    algo = factory(devices[0] if devices else str(train.device))
    layout = plan(algo, world_size, devices, in_flight)
    run_info = trainer_options.pop("run_info", None) or {}
    trainer_options["run_info"] = {**run_info, "parallel": layout.to_dict()}  # config.json: the layout
    threads = threads_per_stage or int(
        os.environ.get("OMP_NUM_THREADS") or max(1, (os.cpu_count() or 1) // layout.world_size)
    )
    delays = step_delays or {}
    address = f"tcp://127.0.0.1:{_free_port()}"
    context = mp.get_context("spawn")
    children = [
        context.Process(
            target=_stage_process,
            args=(rank, factory, layout, address, threads, delays.get(rank, 0.0)),
            name=f"localearn-stage{rank + 1}",
        )
        for rank in range(1, layout.world_size)
    ]
    for child in children:
        child.start()
    stages = layout.to_dict()["stages"]
    log.info("layer-parallel: %s", "; ".join(f"{','.join(s['units'])} on {s['device']}" for s in stages))
    own_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _init(0, layout, address)
        head = PipelineHead(algo, layout, delays.get(0, 0.0))
        callbacks = [*callbacks, LayoutReport(head)]
        trainer = Trainer(head, train, val, test, callbacks=callbacks, **trainer_options)  # type: ignore[arg-type]
        result = trainer.fit()
        head.stop()
    except BaseException as error:
        dead = _dead_stage(children)
        for child in children:
            child.kill()
        if dead is not None and not isinstance(error, KeyboardInterrupt):
            raise ParallelError(f"{dead}; the run stopped (continue it with --resume)") from error
        raise
    finally:
        torch.set_num_threads(own_threads)
        for child in children:
            child.join(timeout=timeout_seconds())
        if dist.is_initialized():
            dist.destroy_process_group()
    return result


def _dead_stage(children: Sequence[Any]) -> str | None:
    """Which stage died first, as well as can be told: one killed by a signal before one that exited with an
    error (which is how a stage fails when its neighbour dies)."""
    time.sleep(0.5)  # a neighbour's death reaches this process before the child's exit code is reaped
    ended = [(c.exitcode, i) for i, c in enumerate(children, start=2) if c.exitcode not in (None, 0)]
    if not ended:
        return None
    exitcode, number = min(ended, key=lambda e: (e[0] >= 0, e[1]))
    return f"stage {number} of {len(children) + 1} (pid {children[number - 2].pid}) {_describe(exitcode)}"
