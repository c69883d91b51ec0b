"""Training throughput and step memory of every rule beside backprop on the same network, in one process.

Synthetic tensors of the dataset's shape (throughput and memory need no real data), each rule with its
preset for the dataset. The MLP rules run on the dataset's MLP preset (MNIST 2x1000, CIFAR 3x2000); NoProp
and DiffusionBlocks on their own preset networks, each with a backprop row on that same network. Per rule
and batch size: warm-up steps, then ``--repeats`` timed runs of ``--steps`` steps each (synchronised on a
GPU), and the median. Printed per row:

- ``samples/s``: training examples per second of training steps (no validation); ``x bp`` is the ratio to
  backprop on the same network and batch. A rule whose epoch is P passes over the data (NoProp-DT trains one
  block per pass, DiffusionBlocks B) takes P times as many steps per epoch: ``epoch x bp`` is the ratio of
  epochs per second.
- memory: on a GPU, the peak CUDA memory of the timed steps above what was allocated before them (weights,
  optimizer state and batch stay resident) and that resident amount; everywhere, the bytes a step saves for
  its backward passes (activations held for a gradient: what local rules are meant to shrink).

    python benchmarks/throughput.py [--device cuda] [--datasets mnist,cifar10] [--batches 128,1024]
        [--rules all] [--steps 20] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch

import localearn as ll
from localearn.algorithms import ALGORITHMS
from localearn.experiments.spec import resolve
from localearn.experiments.train import build_algorithm

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
OWN_NETWORK = ("noprop", "diffusion_blocks")  # rules whose preset is a network of their own
VARIANTS = {"forward_gradient": [["variant=local_activity"]]}  # rows beside the rule's default


def synthetic_split(dataset: str, n: int, device: torch.device) -> ll.DataSplit:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *SHAPES[dataset], generator=g)
    y = torch.randint(10, (n,), generator=g)
    return ll.DataSplit(x.to(device), y.to(device), [str(i) for i in range(10)], f"synthetic-{dataset}")


@contextlib.contextmanager
def saved_bytes(counter: list[int], params: set[int]):
    """Adds to counter[0] the bytes of every tensor saved for a backward pass while inside, weights apart
    (a layer saves its weight, or a view of it, for the input's gradient; the weight is resident anyway):
    ``params`` holds the storages of the weights."""

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            counter[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(algo: ll.Algorithm, data: ll.DataSplit, batch: int, steps: int, repeats: int) -> dict:
    device, passes = algo.device, algo.passes_per_epoch
    x, y = data.x[:batch], data.y[:batch]
    algo.train(True)

    def run(n: int, start: int = 0) -> None:
        for i in range(start, start + n):
            algo.enter(algo.stage, i % passes)  # every block of a one-block-per-pass rule in turn
            algo.train_step(x, y)

    run(max(3, passes))  # warm-up: optimizer state, kernels, autotuning
    counter = [0]
    weights = [*algo.net.parameters(), *algo.aux.parameters()]
    with saved_bytes(counter, {w.untyped_storage().data_ptr() for w in weights}):
        run(1)
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
    seconds = []
    for r in range(repeats):
        sync(device)
        start = time.perf_counter()
        run(steps, r * steps)
        sync(device)
        seconds.append((time.perf_counter() - start) / steps)
    row = {
        "samples_per_s": batch / statistics.median(seconds),
        "passes_per_epoch": passes,
        "saved_for_backward_mib": counter[0] / 2**20,
    }
    if device.type == "cuda":
        row["peak_above_resident_mib"] = (torch.cuda.max_memory_allocated(device) - resident) / 2**20
        row["resident_mib"] = resident / 2**20
    return row


def rows_for(dataset: str, rules: list[str], device: torch.device):
    """(label, model, spec) in table order: each network's backprop row first, then the rules on it (and
    the variants in VARIANTS beside their rule's default)."""
    mlp = resolve(dataset, "backprop").model
    models = [mlp] + [resolve(dataset, r).model for r in rules if r in OWN_NETWORK]
    for model in dict.fromkeys(models):
        on_it = [r for r in rules if (resolve(dataset, r).model if r in OWN_NETWORK else mlp) == model]
        if not on_it:
            continue
        for rule in ["backprop", *(r for r in on_it if r != "backprop")]:
            for hp in [[], *VARIANTS.get(rule, [])]:
                spec = resolve(
                    dataset, rule, hp=hp, model=model, device=str(device), energy=False, progress=False
                )
                yield " ".join([rule, *(h.split("=")[1] for h in hp)]), model, spec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--datasets", default="mnist,cifar10")
    p.add_argument("--batches", default="128,1024")
    p.add_argument("--rules", default="all", help="comma-separated registry names, or all")
    p.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()
    device = torch.device(args.device)
    rules = sorted(ALGORITHMS) if args.rules == "all" else args.rules.split(",")
    unknown = sorted(set(rules) - set(ALGORITHMS))
    if unknown:
        sys.exit(f"unknown rules {unknown}; choose from {sorted(ALGORITHMS)}")
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"{name}, torch {torch.__version__}; median of {args.repeats} x {args.steps} steps\n")
    print(
        "| dataset | model | rule | batch | samples/s | x bp | epoch x bp "
        "| saved MiB | peak MiB | resident MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    table = []
    for dataset in args.datasets.split(","):
        for batch in map(int, args.batches.split(",")):
            data = synthetic_split(dataset, batch, device)
            baseline = None
            for label, model, spec in rows_for(dataset, rules, device):
                algo = build_algorithm(spec, data, device)
                algo.prepare(data)
                row = {"dataset": dataset, "model": model, "rule": label, "batch": batch}
                row |= measure(algo, data, batch, args.steps, args.repeats)
                if label == "backprop":
                    baseline = row
                row["x_backprop"] = row["samples_per_s"] / baseline["samples_per_s"]
                row["epoch_x_backprop"] = (
                    row["x_backprop"] / row["passes_per_epoch"] * baseline["passes_per_epoch"]
                )
                table.append(row)
                gpu = [
                    f"{row[k]:.1f}" if k in row else "-" for k in ("peak_above_resident_mib", "resident_mib")
                ]
                print(
                    f"| {dataset} | {model} | {label} | {batch} | {row['samples_per_s']:.0f} | "
                    f"{row['x_backprop']:.2f} | {row['epoch_x_backprop']:.2f} | "
                    f"{row['saved_for_backward_mib']:.1f} | {' | '.join(gpu)} |",
                    flush=True,
                )
                del algo
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": table}, f, indent=1)


if __name__ == "__main__":
    main()
