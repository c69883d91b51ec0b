"""Trainer overhead: backprop through localearn's Trainer against a plain hand-written PyTorch loop.

Same network (MNIST 2x1000 MLP), same device-resident tensors, same batch size, optimizer and per-epoch
validation pass. The two are run alternately, several repeats each, and the median seconds per epoch are
compared. Two Trainer figures are printed: the loop alone (progress bar on, no run directory) and a full run
with a run directory (metrics.jsonl and checkpoint.pt written after every epoch).

    LOCALEARN_DATA=../shared/data python benchmarks/overhead.py [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import localearn as ll
from localearn.data import iterate_batches


def plain_loop(train, val, epochs: int, batch_size: int) -> float:
    """What one writes by hand: shuffle, slice, forward, backward, step; then a validation pass."""
    torch.manual_seed(0)
    net = ll.models.mlp(784, [1000, 1000], 10)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(train.y), generator=g)
        for i in range(0, len(perm), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(net(train.x[idx]), train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            correct = sum((net(x).argmax(1) == y).sum().item() for x, y in iterate_batches(val, 1024))
        assert correct > 0
    return (time.perf_counter() - start) / epochs


def trainer_loop(train, val, test, epochs: int, batch_size: int, run_dir: str | None) -> float:
    torch.manual_seed(0)
    algo = ll.make("backprop", ll.models.mlp(784, [1000, 1000], 10), 10, lr=1e-3)
    trainer = ll.Trainer(
        algo,
        train,
        val,
        test,
        epochs=epochs,
        batch_size=batch_size,
        patience=None,
        run_dir=run_dir,
        progress=True,
    )
    start = time.perf_counter()
    trainer.fit()
    fit_seconds = time.perf_counter() - start
    # Take off the one test-set pass inside fit, which the plain loop does not do (timed once more here).
    test_start = time.perf_counter()
    trainer.evaluate(test)
    return (fit_seconds - (time.perf_counter() - test_start)) / epochs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    train, val, test = ll.load_dataset("mnist", device="cpu")
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {args.epochs} epochs x {args.repeats}"
    )
    times: dict[str, list[float]] = {"plain": [], "trainer": [], "trainer+run_dir": []}
    for r in range(args.repeats):
        times["plain"].append(plain_loop(train, val, args.epochs, args.batch_size))
        times["trainer"].append(trainer_loop(train, val, test, args.epochs, args.batch_size, None))
        with tempfile.TemporaryDirectory() as d:
            times["trainer+run_dir"].append(
                trainer_loop(train, val, test, args.epochs, args.batch_size, d + "/run")
            )
        print(
            f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s/epoch" for k, v in times.items()), flush=True
        )
    plain = statistics.median(times["plain"])
    for k, v in times.items():
        m = statistics.median(v)
        print(f"{k:>16}: median {m:.3f} s/epoch  ({m / plain:.3f}x plain)")


if __name__ == "__main__":
    main()
