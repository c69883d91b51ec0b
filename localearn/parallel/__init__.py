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

``mode="wavefront"`` (wavefront.py) is the same schedule in one process on one device: stage r trains on
batch t-r at tick t, each stage on a CUDA stream of its own, for a single GPU.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..algorithms.base import Algorithm
from ..callbacks import Callback
from ..splits import DataSplit
from ..trainer import Result, Trainer
from .layout import MODES, Layout, ParallelError, backend, balanced_split, plan, timeout_seconds
from .stages import LayoutReport, PipelineHead, Stage, serve
from .wavefront import Wavefront, WavefrontReport

log = logging.getLogger(__name__)

__all__ = ["MODES", "Layout", "ParallelError", "Wavefront", "balanced_split", "fit", "plan"]


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
    mode: str = "units",
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
    ``mode="wavefront"``: one process on the splits' device, ``world_size`` stages (default one per unit)
    on CUDA streams of their own (wavefront.py); ``devices``, ``in_flight``, ``threads_per_stage`` and
    ``step_delays`` do not apply.
    """
    algo = factory(devices[0] if devices else str(train.device))
    layout = plan(algo, world_size, devices, in_flight, mode)
    run_info = trainer_options.pop("run_info", None) or {}
    trainer_options["run_info"] = {**run_info, "parallel": layout.to_dict()}  # config.json: the layout
    if mode == "wavefront":
        head = Wavefront(algo, layout)
        callbacks = [*callbacks, WavefrontReport(head)]
        return Trainer(head, train, val, test, callbacks=callbacks, **trainer_options).fit()  # type: ignore[arg-type]
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
