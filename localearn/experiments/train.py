"""The train command: one run of one RunSpec, from data loading to the printed result.

    python -m localearn.experiments [train] DATASET --algo NAME [options]
    python -m localearn.experiments train --spec FILE      a spec file, or a run's config.json

The pieces (``load_splits``, ``build_algorithm``, ``trainer_options``) are shared with tune's trials, so a
run and a trial build their data, network and stopping rule the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from .. import parallel
from ..algorithms import Algorithm, AlgorithmFactory
from ..data import DataSplit, load_dataset, resolve_device
from ..energy import EnergyCallback, EnergyMeter, MemoryCallback
from ..trainer import Result, Trainer
from .spec import RunSpec

log = logging.getLogger(__name__)


def load_splits(spec: RunSpec, device: torch.device) -> tuple[DataSplit, DataSplit, DataSplit]:
    """train, val, test as the spec asks (a single run, or every trial of a study)."""
    return load_dataset(
        spec.dataset,
        data_dir=spec.data_dir,
        device=device,
        val_fraction=spec.val_fraction,
        seed=spec.seed,
        augment=spec.augment,
        cache_dir=spec.cache_dir,
    )


def build_algorithm(spec: RunSpec, train: DataSplit, device: torch.device, **overrides: Any) -> Algorithm:
    """The seeded network of the spec's model, built by the rule, and the rule on it."""
    return algorithm_factory(spec, train, **overrides)(device)


def algorithm_factory(spec: RunSpec, train: DataSplit, **overrides: Any) -> AlgorithmFactory:
    """How to build the spec's algorithm in any process (a layer-parallel run's stages build it too)."""
    return AlgorithmFactory(
        spec.algorithm,
        spec.model,
        train.num_classes,
        tuple(train.input_shape),
        spec.seed,
        {**spec.hyperparameters, **overrides},
    )


def trainer_options(spec: RunSpec) -> dict[str, Any]:
    """The Trainer's loop and stopping rule: one place, so runs and trials share the rule."""
    return {
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "patience": spec.patience,
        "min_delta": spec.min_delta,
        "monitor": spec.monitor,
        "seed": spec.seed,
    }


def next_free(run_dir: Path) -> Path:
    """A used run directory gets a numbered suffix: a new run never writes into a finished one."""
    if not run_dir.exists():
        return run_dir
    n = 2
    while run_dir.with_name(f"{run_dir.name}-{n}").exists():
        n += 1
    return run_dir.with_name(f"{run_dir.name}-{n}")


class Interrupted(Exception):
    """Ctrl-C during a run; ``run_dir`` holds what it had saved, to be continued with --resume."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted: {run_dir}")
        self.run_dir = run_dir


def run(spec: RunSpec) -> tuple[Result, Path]:
    """Train the run ``spec`` describes; its directory is spec.out/spec.name (with --resume) or the next
    free name beside it, which the spec in config.json then names."""
    devices = [d for d in spec.devices.split(",") if d]
    device = resolve_device(devices[0] if devices else spec.device)
    train, val, test = load_splits(spec, device)
    run_dir = spec.run_dir if spec.resume else next_free(spec.run_dir)
    spec = spec.replace(name=run_dir.name)
    meter = EnergyMeter(device, country_iso_code=spec.country) if spec.energy else None
    options = dict(
        **trainer_options(spec),
        run_dir=run_dir,
        resume=spec.resume,
        progress=spec.progress,
        callbacks=[MemoryCallback(), *([EnergyCallback(meter)] if meter else [])],
        run_info={
            "dataset": spec.dataset_label,
            "model": spec.model,
            "spec": spec.computed(),
            "invocation": spec.invocation(),
        },
    )
    try:
        if spec.parallel:
            result = parallel.fit(
                algorithm_factory(spec, train),
                train,
                val,
                test,
                mode=spec.parallel,
                world_size=spec.world_size or None,
                devices=[str(resolve_device(d)) for d in devices],
                in_flight=spec.in_flight,
                **options,
            )
        else:
            result = Trainer(build_algorithm(spec, train, device), train, val, test, **options).fit()
    except KeyboardInterrupt:
        raise Interrupted(run_dir) from None
    finally:
        if meter:
            meter.close()
    return result, run_dir


def main(spec: RunSpec) -> int:
    result, run_dir = run(spec)
    joules = result.extra.get("energy_joules")
    passes = f" ({result.data_passes} data passes)" if result.data_passes != result.epochs else ""
    print(
        f"{result.algorithm} on {result.dataset} ({result.model}): test accuracy {result.test_accuracy:.4f}, "
        f"best val accuracy {result.best_val_accuracy}, {result.epochs} epochs{passes}, "
        f"{result.train_seconds:.1f} s"
        + (f", {joules:.0f} J ({result.extra['energy_source']})" if joules is not None else "")
        + f" on {result.device} -> {run_dir}"
    )
    return 0
