"""NoProp's structure-matched backprop baseline: its chain with each block's softmax (the paper's u_hat, the
default) against the same chain passing logits (``--model noprop:W:logits``), trained end to end on a
subset of MNIST, validation accuracy after every epoch. A diagnostic of why the baseline learns slowly.

    LOCALEARN_DATA=../shared/data python benchmarks/noprop_chain.py [--width 64] [--train 6000] [--epochs 4]
"""

from __future__ import annotations

import argparse

import torch

import localearn as ll
from localearn.algorithms import make


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--train", type=int, default=6000, help="training images (the first ones)")
    p.add_argument("--epochs", type=int, default=4)
    args = p.parse_args()
    train, val, _ = ll.load_dataset("mnist")
    x, y = train.x[: args.train], train.y[: args.train]
    vx, vy = val.x[:2000], val.y[:2000]
    for model in (f"noprop:{args.width}", f"noprop:{args.width}:logits"):
        torch.manual_seed(0)
        algo = make(
            "backprop",
            model,
            10,
            input_shape=train.input_shape,
            optimizer="adamw",
            lr=1e-3,
            weight_decay=1e-3,
        )
        order = torch.Generator().manual_seed(0)
        for epoch in range(1, args.epochs + 1):
            algo.train(True)
            perm = torch.randperm(len(x), generator=order)
            for i in range(0, len(x), 128):
                algo.train_step(x[perm[i : i + 128]], y[perm[i : i + 128]])
            algo.train(False)
            with torch.no_grad():
                accuracy = (algo.predict(vx).argmax(1) == vy).float().mean().item()
            print(f"{model}: epoch {epoch}, validation accuracy {accuracy:.4f}", flush=True)


if __name__ == "__main__":
    main()
