"""Each paper's network and training settings per dataset, so that one command gives a paper-grade run.

A preset is the default; every entry can be overridden on the command line. The per-algorithm entries
hold the learning rates that the reference studies found (research notes, anchors_ff_mf.md section 4d).
"""

from __future__ import annotations

from typing import Any

# Settings shared by every algorithm on a dataset. The networks are Mono-Forward's native MLPs
# (2x1000 for MNIST-like data, 3x2000 for CIFAR), which backprop trains as the baseline.
DATASET_PRESETS: dict[str, dict[str, Any]] = {
    "mnist": {"model": "mlp:1000,1000", "epochs": 100, "batch_size": 128, "augment": False, "patience": 10},
    "fashion_mnist": {
        "model": "mlp:1000,1000",
        "epochs": 100,
        "batch_size": 128,
        "augment": False,
        "patience": 10,
    },
    "cifar10": {
        "model": "mlp:2000,2000,2000",
        "epochs": 100,
        "batch_size": 128,
        "augment": True,
        "patience": 10,
    },
    "cifar100": {
        "model": "mlp:2000,2000,2000",
        "epochs": 100,
        "batch_size": 128,
        "augment": True,
        "patience": 10,
    },
}
# Any other dataset (an ImageFolder path).
GENERIC_PRESET: dict[str, Any] = {
    "model": "mlp:1000,1000",
    "epochs": 50,
    "batch_size": 128,
    "augment": False,
    "patience": 10,
}

# Per (algorithm, dataset): run settings that differ from the dataset's (a paper's own network) and
# hyperparameters. Spyra (2025) tuned Mono-Forward's Adam learning rate per dataset. Forward-Forward uses
# the 3x1000 MLP and batch 100 of loeweX/Forward-Forward and Spyra's FF runs; Adam lr 3e-4 beat 1e-3 on
# MNIST (benchmarks/RESULTS.md).
RUN_SETTINGS = ("model", "epochs", "batch_size", "augment", "patience")
ALGORITHM_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("forward_forward", "mnist"): {"model": "mlp:1000,1000,1000", "batch_size": 100, "lr": 3e-4},
    ("forward_forward", "fashion_mnist"): {"model": "mlp:1000,1000,1000", "batch_size": 100, "lr": 3e-4},
    ("forward_forward", "cifar10"): {"batch_size": 100, "lr": 3e-4},
    ("forward_forward", "cifar100"): {"batch_size": 100, "lr": 3e-4},
    ("mono_forward", "mnist"): {"lr": 1.570e-3},
    ("mono_forward", "fashion_mnist"): {"lr": 3.873e-4},
    ("mono_forward", "cifar10"): {"lr": 3.242e-4},
    ("mono_forward", "cifar100"): {"lr": 1.728e-4},
    ("backprop", "mnist"): {"lr": 1e-3},
    ("backprop", "fashion_mnist"): {"lr": 1e-3},
    ("backprop", "cifar10"): {"lr": 1e-4},
    ("backprop", "cifar100"): {"lr": 1e-4},
}


def preset_for(dataset: str, algorithm: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run settings, algorithm hyperparameters) for a dataset name or path."""
    settings = dict(DATASET_PRESETS.get(dataset, GENERIC_PRESET))
    specific = ALGORITHM_PRESETS.get((algorithm, dataset), {})
    settings.update({k: v for k, v in specific.items() if k in RUN_SETTINGS})
    return settings, {k: v for k, v in specific.items() if k not in RUN_SETTINGS}
