"""DiffusionBlocks: one trained run's best state, evaluated on other inference grids (issue 14).

Training does not depend on ``inference_steps`` (only ``predict`` reads the grid), so a run's checkpoint
can be read again with any number of grid points: the run's own setting (0: B points, as the reference
code) reproduces its recorded accuracy, and the others say whether a finer or coarser Euler path would have
done better. The evaluation noise is the run's (the rule's evaluation generator, restarted per split).

A second table reads the first step alone: block 1's prediction at sigma_max from the starting noise, where
the image decides. Its most likely label, and the accuracy a label drawn from its softmax would have (the
mean probability of the true label): an Euler path that follows the model's probability flow ends on such
a draw, not on the most likely label, so a fine grid should score near the second figure.

    python benchmarks/db_inference_steps.py RUN_DIR [--steps 2,3,4,8,16]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from localearn.algorithms.diffusion_blocks import SIGMA_MAX, DiffusionBlocks
from localearn.experiments.spec import RunSpec
from localearn.experiments.train import build_algorithm, load_splits
from localearn.splits import DataSplit, iterate_batches
from localearn.trainer import Trainer


@torch.no_grad()
def first_step(algo: DiffusionBlocks, split: DataSplit) -> tuple[float, float]:
    """Accuracy of block 1's most likely label at sigma_max, and the mean probability of the true label."""
    algo.train(False)
    algo.begin_evaluation()  # the same starting noise as predict's
    correct, probability = 0, 0.0
    for x, y in iterate_batches(split, 1024):
        level = torch.full((len(x),), SIGMA_MAX)
        p = algo.net.denoise(x, algo.starting_noise(x), level, algo.block_layers[algo.block_of(SIGMA_MAX)])
        p = p.softmax(1)
        correct += int((p.argmax(1) == y).sum())
        probability += float(p.gather(1, y.unsqueeze(1)).sum())
    return correct / len(split), probability / len(split)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", default="2,3,4,8,16", help="comma-separated points of the grid (>= 2)")
    parser.add_argument("--data-dir", default=None, help="where the dataset is ($LOCALEARN_DATA otherwise)")
    args = parser.parse_args()
    config = json.loads((args.run_dir / "config.json").read_text())
    if config["algorithm"] != "diffusion_blocks":
        parser.error(f"{args.run_dir} is a {config['algorithm']} run, not diffusion_blocks")
    spec = RunSpec.from_dict({**config["spec"], **config["invocation"]})
    if args.data_dir:
        spec = spec.replace(data_dir=args.data_dir)
    device = torch.device("cpu")
    train, val, test = load_splits(spec, device)
    best = torch.load(args.run_dir / "checkpoint.pt", weights_only=False, map_location=device)["best_state"]
    print(f"{args.run_dir.name}: {spec.model}, blocks={spec.hyperparameters['blocks']}, best state")
    print("| inference_steps | val accuracy | test accuracy |")
    print("|---|---|---|")
    for steps in (int(s) for s in args.steps.split(",")):
        algo = build_algorithm(spec, train, device, inference_steps=steps)
        algo.load_state_dict(best)
        trainer = Trainer(algo, train, val, test, epochs=1, progress=False)
        (val_accuracy, _), (test_accuracy, _) = trainer.evaluate(val), trainer.evaluate(test)
        print(f"| {steps} | {val_accuracy:.4f} | {test_accuracy:.4f} |", flush=True)
    (val_top, val_draw), (test_top, test_draw) = first_step(algo, val), first_step(algo, test)
    print("| block 1 at sigma_max | val | test |")
    print("|---|---|---|")
    print(f"| most likely label | {val_top:.4f} | {test_top:.4f} |")
    print(f"| a label drawn from its softmax (expected) | {val_draw:.4f} | {test_draw:.4f} |")


if __name__ == "__main__":
    main()
