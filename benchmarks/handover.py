"""The epoch's handover in a two-stage run (issue 18): stage 2's state to stage 1, as torch.distributed's
``gather_object`` sent it, against the tensors' bytes in one buffer (``localearn.parallel.link``).

Mono-Forward on the MNIST 2x1000 preset: stage 2 holds unit 2 (1000x1000 and its 1000x10 projection) with
its Adam state after a few steps on synthetic data, one thread per process, gloo on this machine. Each
repeat times both ways, one after the other, from a barrier to stage 1 holding the state; printed: each
repeat's milliseconds and the medians.

    python benchmarks/handover.py [--repeats 7]
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
from localearn.parallel.link import recv_handover, send_handover
from localearn.parallel.stages import Stage


def worker(rank: int, port: int, repeats: int) -> None:
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
    wire, times = torch.device("cpu"), {"gather_object": [], "one buffer": []}
    for _ in range(repeats):
        for way in times:
            dist.barrier()
            start = time.perf_counter()
            report = stage.handover() if rank == 1 else None
            if way == "gather_object":
                out: list = [None, None]
                dist.gather_object(report or {}, out if rank == 0 else None, dst=0)
            elif rank == 1:
                send_handover(report, wire)
            else:
                recv_handover(1, wire)
            times[way].append((time.perf_counter() - start) * 1e3)
            stage.sums, stage.steps = {"loss": torch.tensor(1.0)}, 1  # the next handover has its means
    if rank == 0:
        for way, ms in times.items():
            each = ", ".join(f"{t:.1f}" for t in ms)
            print(f"{way}: {each} ms; median {statistics.median(ms):.1f} ms")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    mp.spawn(worker, args=(parallel._free_port(), args.repeats), nprocs=2)


if __name__ == "__main__":
    main()
