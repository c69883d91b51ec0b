"""Seconds per epoch of forward_gradient local_activity on MNIST (its preset: 2x1024 MLP, 32 groups, Adam),
with and without the grouped linear head (``linear_head_split``), beside backprop on the same network.

Without the shortcut every (tangent, group) pair runs its own directional derivative through the
activation and the head (vmap over K x G), as before issue 15; with it, the activation's tangent is taken
once and W's tangent for all groups is one grouped product. The estimates are the same (tests/
test_forward_gradient.py). The three are run in turn, ``--repeats`` times each, one epoch per run (training
steps and the validation pass), and the medians are printed.

    LOCALEARN_DATA=../shared/data python benchmarks/fg_activity.py [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import localearn as ll
from localearn.algorithms import forward_gradient
from localearn.experiments.spec import resolve
from localearn.experiments.train import build_algorithm

SHORTCUT = forward_gradient.linear_head_split


def one_epoch(algorithm: str, splits: tuple, device: torch.device, shortcut: bool) -> float:
    forward_gradient.linear_head_split = SHORTCUT if shortcut else (lambda *args: None)
    hp = ["variant=local_activity"] if algorithm == "forward_gradient" else []
    spec = resolve("mnist", algorithm, hp=hp, model="mlp:1024,1024", device=str(device))
    train, val, test = splits
    algo = build_algorithm(spec, train, device)
    trainer = ll.Trainer(
        algo, train, val, test, epochs=1, batch_size=spec.batch_size, patience=None, progress=False
    )
    return trainer.fit().train_seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    splits = ll.load_dataset("mnist", device=device)
    runs = {"without the shortcut": [], "with the shortcut": [], "backprop": []}
    for _ in range(args.repeats):
        runs["without the shortcut"].append(one_epoch("forward_gradient", splits, device, shortcut=False))
        runs["with the shortcut"].append(one_epoch("forward_gradient", splits, device, shortcut=True))
        runs["backprop"].append(one_epoch("backprop", splits, device, shortcut=True))
    bp = statistics.median(runs["backprop"])
    print(f"{device}, {torch.get_num_threads()} threads, median of {args.repeats} one-epoch runs each")
    for name, seconds in runs.items():
        median = statistics.median(seconds)
        print(
            f"{name}: {median:.1f} s per epoch ({median / bp:.2f}x backprop); "
            f"runs {[round(s, 1) for s in seconds]}"
        )


if __name__ == "__main__":
    main()
