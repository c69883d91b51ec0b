"""What two stage processes can get from this machine (issue 18): the bound on the two-stage speed-up.

Mono-Forward on the MNIST 2x1000 preset, batch 128, synthetic data of MNIST's shape, one thread per
process. Each stage's step (the rule's ``train_units`` on its unit, as a stage runs it) is timed alone, then
both at once in two processes, as a two-stage run has them. Stage 2's input is stage 1's output on the same
batch. Printed: milliseconds per step of each, alone and at once, and the bound

    (stage 1 alone + stage 2 alone) / max(stage 1 at once, stage 2 at once)

that is, a one-process step (the two units' steps, one after the other, on one core) over the slower
stage's step while both cores work: what a two-stage run would reach with no cost of its own (no
messages, no waiting, no Trainer loop, no validation). Each timing is the median of ``--repeats`` runs of
``--seconds`` seconds.

    python benchmarks/two_cores.py [--seconds 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.multiprocessing as mp

from localearn.algorithms import AlgorithmFactory

BATCH = 128


def stage_loop(unit: int, seconds: float, start: float | None = None) -> float:
    """Milliseconds per step of unit ``unit``'s update, over ``seconds`` (from wall-clock ``start``)."""
    torch.set_num_threads(1)
    algo = AlgorithmFactory("mono_forward", "mlp:1000,1000", 10, (1, 28, 28), 0, {})("cpu")
    g = torch.Generator().manual_seed(0)
    x = algo.pipeline_input(torch.randn(BATCH, 1, 28, 28, generator=g), None)
    y = torch.randint(10, (BATCH,), generator=g)
    with torch.no_grad():
        a = algo.pipeline_units()[0][0](x) if unit else x  # unit 1's output: unit 2's input
    for _ in range(10):  # warm-up: allocations, the optimizer's state
        algo.train_units(a, y, range(unit, unit + 1))
    if start is not None:
        while time.time() < start:  # both processes start their timing together
            time.sleep(0.001)
    steps, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        algo.train_units(a, y, range(unit, unit + 1))
        steps += 1
    return (time.perf_counter() - begin) / steps * 1e3


def _worker(unit: int, seconds: float, start: float, results: mp.Queue) -> None:
    results.put((unit, stage_loop(unit, seconds, start)))


def at_once(seconds: float) -> dict[int, float]:
    context = mp.get_context("spawn")
    results = context.Queue()
    start = time.time() + 8  # time for both to start and warm up
    workers = [context.Process(target=_worker, args=(u, seconds, start, results)) for u in (0, 1)]
    for w in workers:
        w.start()
    out = dict(results.get() for _ in workers)
    for w in workers:
        w.join()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for _ in range(args.repeats):  # alone and at once interleaved: a slow spell falls on both
        alone = {u: stage_loop(u, args.seconds) for u in (0, 1)}
        rows.append((alone, at_once(args.seconds)))
    for alone, both in rows:
        print(
            f"ms per step: stage 1 alone {alone[0]:.2f}, stage 2 alone {alone[1]:.2f}; at once: stage 1 "
            f"{both[0]:.2f}, stage 2 {both[1]:.2f}; bound {(alone[0] + alone[1]) / max(both.values()):.2f}"
        )
    bounds = [(a[0] + a[1]) / max(b.values()) for a, b in rows]
    balance = [(a[0] + a[1]) / max(a.values()) for a, _ in rows]
    print(
        f"median over {args.repeats} repeats: bound on the two-stage speed-up "
        f"{statistics.median(bounds):.2f} "
        f"(with no slowdown from sharing the machine, the stages' balance alone would allow "
        f"{statistics.median(balance):.2f})"
    )


if __name__ == "__main__":
    main()
