"""What the link between two CPU stage processes costs (issue 18), on Mono-Forward's MNIST 2x1000 preset,
one thread per process, gloo on this machine; each figure measured in the same two processes, interleaved.

1. A batch: stage 1 sends ``--messages`` batches through the link (``localearn.parallel.link``,
   ``--in-flight 8``) that stage 2 receives: Mono-Forward's (a 128 x 1000 float32 activation and the
   labels), and a batch of one number (what a message costs whatever it carries). Printed: CPU
   milliseconds per batch of both processes together (all their threads, gloo's own included), and wall
   milliseconds per batch.
2. The epoch's handover: stage 2's state (unit 2, 1000x1000 and its 1000x10 projection, with its Adam
   state after a few steps) to stage 1, as torch.distributed's ``gather_object`` sent it, against the
   tensors' bytes in one buffer. Printed: milliseconds from a barrier to stage 1 holding the state.

Each figure per repeat, then the medians.

    python benchmarks/link_costs.py [--repeats 5] [--messages 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from localearn import parallel
from localearn.algorithms import AlgorithmFactory
from localearn.parallel.link import BATCH, STOP, Link, recv_handover, send_handover
from localearn.parallel.stages import Stage

SHAPES = {"Mono-Forward's batch": (128, 1000), "a batch of one number": (1, 1)}
HANDOVERS = ("gather_object", "one buffer")


def batches(rank: int, count: int, shape: tuple[int, int]) -> tuple[float, float]:
    """CPU and wall milliseconds per batch, of ``count`` batches of activations of ``shape``."""
    link = Link(rank, torch.device("cpu"), 8)
    a, y = torch.randn(shape), torch.randint(10, shape[:1])
    dist.barrier()
    cpu, wall = time.process_time(), time.perf_counter()
    if rank == 0:
        for _ in range(count):
            link.send(BATCH, a, y, 0.5)
        link.send(STOP)
        link.flush()
    else:
        while link.recv()[0] != STOP:
            pass
    return (time.process_time() - cpu) / count * 1e3, (time.perf_counter() - wall) / count * 1e3


def handover(rank: int, stage: Stage, way: str) -> float:
    """Milliseconds from a barrier to stage 1 holding stage 2's state, sent ``way``."""
    dist.barrier()
    start = time.perf_counter()
    report = stage.handover() if rank == 1 else None
    if way == "gather_object":
        out: list = [None, None]
        dist.gather_object(report or {}, out if rank == 0 else None, dst=0)
    elif rank == 1:
        send_handover(report, torch.device("cpu"))
    else:
        recv_handover(1, torch.device("cpu"))
    stage.sums, stage.steps = {"loss": torch.tensor(1.0)}, 1  # the next handover has its means too
    return (time.perf_counter() - start) * 1e3


def worker(rank: int, port: int, repeats: int, messages: int) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    algo = AlgorithmFactory("mono_forward", "mlp:1000,1000", 10, (1, 28, 28), 0, {})("cpu")
    stage = Stage(algo, parallel.plan(algo, 2), rank)
    if rank == 1:  # unit 2 with its optimizer's state, as at an epoch's end
        g = torch.Generator().manual_seed(0)
        a, y = torch.randn(128, 1000, generator=g), torch.randint(10, (128,), generator=g)
        for _ in range(3):
            stage.step(a, y, 0.0)
    per_batch: dict[str, list[tuple[float, float]]] = {name: [] for name in SHAPES}
    handovers: dict[str, list[float]] = {way: [] for way in HANDOVERS}
    for _ in range(repeats):
        for name, figures in per_batch.items():
            figures.append(batches(rank, messages, SHAPES[name]))
        for way, times in handovers.items():
            times.append(handover(rank, stage, way))
    cpu_ms = torch.tensor(
        [[cpu for cpu, _ in figures] for figures in per_batch.values()], dtype=torch.float64
    )
    dist.all_reduce(cpu_ms)  # both processes' CPU time
    if rank == 0:
        for (name, figures), cpus in zip(per_batch.items(), cpu_ms.tolist(), strict=True):
            walls = [wall for _, wall in figures]
            each = ", ".join(f"{cpu:.3f} ({wall:.3f})" for cpu, wall in zip(cpus, walls, strict=True))
            median = f"{statistics.median(cpus):.3f} ({statistics.median(walls):.3f})"
            print(f"{name}: CPU (wall) ms per batch, both processes: {each}; median {median}")
        for way, times in handovers.items():
            each = ", ".join(f"{t:.1f}" for t in times)
            print(f"the handover by {way}: {each} ms; median {statistics.median(times):.1f} ms")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    mp.spawn(worker, args=(parallel._free_port(), args.repeats, args.messages), nprocs=2)


if __name__ == "__main__":
    main()
