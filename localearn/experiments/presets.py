"""Each paper's network and training settings, per dataset and per algorithm, as tables.

``DATASETS`` holds what every algorithm gets on a dataset; ``PRESETS`` holds, per algorithm, what differs
(RL Zoo's per-algorithm hyperparameter files are the model). An algorithm's table is keyed by

    "*"             every dataset, named or a path
    a dataset name  that dataset (over "*")
    "NAME=VALUE"    a choice of the rule's (any choice-valued hyperparameter: a variant, a schedule) or
                    of the network's kind (``model=cnn``), on every dataset, when the run's final value of
                    NAME is VALUE (over the dataset entries)

and each entry mixes run settings (``RUN_SETTINGS``) and the rule's hyperparameters. How these layers
combine with ``--params``, flags and ``--hp`` is stated once, in spec.py. A new rule adds a table here and
nothing else; a rule with a network of its own names it in its ``default_model``.

``RECIPES`` holds the settings of one paper's comparison (``--recipe NAME``): for each rule that paper
compared, what differs from the presets, keyed as above. A comparison with a paper's table runs every rule
under that paper's recipe, so the baseline is the one the paper used, and the report names the recipe.
"""

from __future__ import annotations

from typing import Any

RUN_SETTINGS = ("model", "epochs", "batch_size", "augment", "patience")

# Settings shared by every algorithm on a dataset. The networks are Mono-Forward's native MLPs
# (2x1000 for MNIST-like data, 3x2000 for CIFAR), which backprop trains as the baseline.
_MNIST_LIKE = {"model": "mlp:1000,1000", "epochs": 100, "batch_size": 128, "augment": False, "patience": 10}
_CIFAR = {"model": "mlp:2000,2000,2000", "epochs": 100, "batch_size": 128, "augment": True, "patience": 10}
DATASETS: dict[str, dict[str, Any]] = {
    "mnist": _MNIST_LIKE,
    "fashion_mnist": _MNIST_LIKE,
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
}
GENERIC = {**_MNIST_LIKE, "epochs": 50}  # any other dataset (an ImageFolder path)


def _each(datasets: tuple[str, ...], entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict.fromkeys(datasets, entry)


MNIST_LIKE, CIFAR = ("mnist", "fashion_mnist"), ("cifar10", "cifar100")

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "backprop": {
        **_each(MNIST_LIKE, {"lr": 1e-3}),
        **_each(CIFAR, {"lr": 1e-4}),
        # The NoProp chain (--model noprop) trained end to end: NoProp's structure-matched baseline, with
        # NoProp-DT's optimizer and no augmentation, as the paper compares them.
        "model=noprop": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-3, "augment": False},
        # DiffusionBlocks' backbone as an ordinary classifier, with its optimizer (the official defaults).
        "model=resmlp": {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01},
    },
    # Spyra (2025) tuned Mono-Forward's Adam learning rate per dataset.
    "mono_forward": {
        "mnist": {"lr": 1.570e-3},
        "fashion_mnist": {"lr": 3.873e-4},
        "cifar10": {"lr": 3.242e-4},
        "cifar100": {"lr": 1.728e-4},
    },
    # The 3x1000 MLP and batch 100 of loeweX/Forward-Forward and Spyra's FF runs; Adam lr 3e-4 beat 1e-3 on
    # MNIST (benchmarks/RESULTS.md).
    "forward_forward": {
        **_each(MNIST_LIKE, {"model": "mlp:1000,1000,1000", "batch_size": 100, "lr": 3e-4}),
        **_each(CIFAR, {"batch_size": 100, "lr": 3e-4}),
    },
    # The networks of the CCL paper's Table 1 (tanh; 784-256x5-10, 3072-1024x3-10, no augmentation), SGD as
    # there; the learning rates are ours (benchmarks/RESULTS.md).
    "dfa": {
        **_each(MNIST_LIKE, {"model": "mlp:256,256,256,256,256:tanh", "optimizer": "sgd", "lr": 0.1}),
        **_each(
            CIFAR, {"model": "mlp:1024,1024,1024:tanh", "augment": False, "optimizer": "sgd", "lr": 0.01}
        ),
    },
    # Weight variant: the 1024-1024 MLP of the orobix/fwdgrad port, plain SGD (momentum 0, as the port) at a
    # small step (the estimate's norm grows with the parameter count: with momentum 0.9, 3e-5 diverged on
    # MNIST and 1e-5 did not; 1e-4 without momentum is the same step in the long run). local_activity:
    # Adam 1e-4 (3e-4 stalled near 96 % on MNIST), 32 features per directional derivative as Ren et al.'s
    # M/1/16 mixer.
    "forward_gradient": {
        **_each(
            (*MNIST_LIKE, *CIFAR), {"model": "mlp:1024,1024", "optimizer": "sgd", "momentum": 0.0, "lr": 1e-4}
        ),
        "variant=local_activity": {"optimizer": "adam", "lr": 1e-4, "groups": 32},
    },
    # The reference code's MLPs (ELU, no bias; 784-256x5-10 and 3072-1024x3-10), batch 256, no augmentation;
    # SGD lr 1 for both networks and clip 1 (the reference yaml) are the rule's own defaults. On CIFAR those
    # stalled near 33 %; lr 0.5 and clip 0.5, from the paper's grid, reached 50 % (benchmarks/RESULTS.md).
    # Convolutional networks: the reference's CNN runs rely on batch norm and the normalised loss; on this
    # repository's CNNs (no batch norm) lr 1 and 0.1 stay at chance on MNIST and 0.01 learns (RESULTS.md).
    "counter_current": {
        "model=cnn": {"lr": 0.01},
        **_each(MNIST_LIKE, {"model": "mlp:256,256,256,256,256:elu:nobias", "batch_size": 256}),
        **_each(
            CIFAR,
            {
                "model": "mlp:1024,1024,1024:elu:nobias",
                "batch_size": 256,
                "augment": False,
                "lr": 0.5,
                "clip": 0.5,
            },
        ),
    },
    # The official defaults (B 3, gamma 0.05, AdamW 1e-3, wd 0.01, batch 128) are the rule's own; the
    # residual MLP is 256 wide on MNIST-like data and 512 on CIFAR, 6 layers (2 per block).
    "diffusion_blocks": {
        **_each(MNIST_LIKE, {"model": "resmlp:256,6"}),
        **_each(CIFAR, {"model": "resmlp:512,6"}),
    },
    # The paper's settings (research notes, section 4): DT with T = 10, eta 0.1, AdamW 1e-3 / wd 1e-3, batch
    # 128, no augmentation, 100 epochs on MNIST and 150 on CIFAR. The embedding is the rule's default,
    # one-hot: the paper's best column (prototypes) learns them, and on MNIST they drew together within the
    # first epoch here (64.8 % validation after it; benchmarks/RESULTS.md). CT: Adam, eta 1, 1000 inference
    # steps (its MNIST epochs; the paper ran CIFAR-10 500 and CIFAR-100 1000).
    "noprop": {
        **_each(CIFAR, {"epochs": 150, "augment": False}),
        "variant=ct": {"optimizer": "adam", "eta": 1.0, "steps": 1000},
    },
}


# The CCL paper's Table 1 (Kao & Hariharan 2024; research notes section 1c): backprop on the tanh MLPs (no
# augmentation), plain SGD at batch 256 as CCL, learning rate and gradient clip chosen from the paper's grid
# (lr 0.4 ... 0.01, clip 0.5 or 1) on validation after 5 epochs: lr 0.4 and clip 1 on both datasets
# (benchmarks/ccl_bp_grid.sh, RESULTS.md). DFA's and CCL's presets are already the paper's networks and
# settings.
RECIPES: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "ccl_paper": {
        "backprop": {
            "*": {
                "batch_size": 256,
                "augment": False,
                "optimizer": "sgd",
                "momentum": 0.0,
                "lr": 0.4,
                "clip": 1.0,
            },
            **_each(MNIST_LIKE, {"model": "mlp:256,256,256,256,256:tanh"}),
            **_each(CIFAR, {"model": "mlp:1024,1024,1024:tanh"}),
        },
        "counter_current": {"*": {}},
        "dfa": {"*": {}},
    },
    # The Mono-Forward reference study's MLPs (Spyra's MF_MLP; research notes anchors_ff_mf.md section 2),
    # for both rules: He-uniform hidden weights, zero biases, AdamW (weight decay 0, as the study's MF runs);
    # MF's last projection M_L without bias (Kaiming-uniform, as its other projections). Each rule keeps its
    # preset learning rate (MF's is the study's tuned one).
    "mf_reference": {
        algorithm: {
            "*": {"model": "mlp:1000,1000:he", "optimizer": "adamw", "weight_decay": 0.0, **extra},
            **_each(CIFAR, {"model": "mlp:2000,2000,2000:he"}),
        }
        for algorithm, extra in (("mono_forward", {"last_projection": "bias_free"}), ("backprop", {}))
    },
}


def recipe_layers(recipe: str, algorithm: str, dataset: str) -> list[tuple[str, dict[str, Any]]]:
    """The recipe's layer for this rule and dataset: its "*" entry, with the dataset's entry over it. An
    unknown recipe, or one that does not cover the rule, is refused with what is valid."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    table = RECIPES[recipe].get(algorithm)
    if table is None:
        covered = ", ".join(sorted(RECIPES[recipe]))
        raise ValueError(f"recipe {recipe!r} has no settings for {algorithm}; it covers: {covered}")
    entries = [table.get("*", {}), table.get(dataset, {})]
    return [(f"recipe:{recipe}", {**entries[0], **entries[1]})]


def dataset_preset(dataset: str) -> dict[str, Any]:
    """The run settings every algorithm gets on ``dataset`` (a name, or any path)."""
    return dict(DATASETS.get(dataset, GENERIC))


def preset_model_of_kind(kind: str, dataset: str) -> str | None:
    """The model of this kind that the dataset's preset gives, else that some rule's preset gives on
    ``dataset`` (the rule whose network kind it is: DiffusionBlocks' resmlp), else on every dataset; None
    where no preset names one."""
    tables = [{dataset: dataset_preset(dataset)}, *PRESETS.values()]
    for key in (dataset, "*"):
        for table in tables:
            model = table.get(key, {}).get("model")
            if model is not None and model.split(":")[0] == kind:
                return model
    return None


def algorithm_layers(
    algorithm: str, dataset: str, choices: dict[str, Any]
) -> list[tuple[str, dict[str, Any]]]:
    """The algorithm's entries that apply, lowest precedence first, each named for the run's record."""
    table = PRESETS.get(algorithm, {})
    layers = [("preset:*", table.get("*", {})), (f"preset:{dataset}", table.get(dataset, {}))]
    layers += [(f"preset:{key}", entry) for key, entry in table.items() if _matches(key, choices)]
    return [(name, dict(entry)) for name, entry in layers if entry]


def _matches(key: str, choices: dict[str, Any]) -> bool:
    name, sep, value = key.partition("=")
    return bool(sep) and name in choices and str(choices[name]) == value
