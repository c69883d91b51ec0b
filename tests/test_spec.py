"""The run spec: resolved once from presets, --params, flags and --hp (in that order), validated once,
JSON in and out; the presets as tables; every preset value inside its rule's search space."""

import json

import optuna
import pytest

from localearn.algorithms import ALGORITHMS, HyperparameterError
from localearn.experiments import presets
from localearn.experiments.spec import RunSpec, resolve


@pytest.mark.parametrize(
    "dataset, algorithm, hp, flags, model, expected",
    [
        ("mnist", "dfa", [], {}, "mlp:256,256,256,256,256:tanh", {"optimizer": "sgd", "lr": 0.1}),
        (
            "mnist",
            "forward_gradient",
            [],
            {},
            "mlp:1024,1024",
            {"optimizer": "sgd", "lr": 1e-4, "momentum": 0.0},
        ),
        ("cifar10", "counter_current", [], {}, "mlp:1024,1024,1024:elu:nobias", {"lr": 0.5, "clip": 0.5}),
        # A variant brings its own preset, over the dataset's; the command line still wins.
        (
            "mnist",
            "forward_gradient",
            ["variant=local_activity"],
            {"lr": 1e-3},
            "mlp:1024,1024",
            {"variant": "local_activity", "optimizer": "adam", "lr": 1e-3, "groups": 32},
        ),
        # A bare kind takes the preset's sizes where the kinds agree, else the kind's defaults.
        ("mnist", "dfa", [], {"model": "mlp"}, "mlp:256,256,256,256,256:tanh", {}),
        ("mnist", "dfa", [], {"model": "cnn"}, "cnn:64,128,256", {}),
        # A kind another rule's preset gives on this dataset takes its sizes there: one backbone for both.
        ("cifar10", "backprop", [], {"model": "resmlp"}, "resmlp:512,6", {}),
        ("mnist", "noprop", [], {"model": "mlp"}, "mlp:1000,1000", {}),
    ],
)
def test_presets_follow_the_algorithm_and_variant(dataset, algorithm, hp, flags, model, expected):
    spec = resolve(dataset, algorithm, hp=hp, **flags)
    assert spec.model == model
    assert {k: spec.hyperparameters[k] for k in expected} == expected


def test_precedence_presets_params_flags_hp(tmp_path):
    """Each layer overrides the one below it, and the spec says which layer set each value."""
    params = tmp_path / "tuned.json"
    params.write_text(json.dumps({"params": {"lr": 0.3, "weight_decay": 1e-4}}))
    spec = resolve("mnist", "mono_forward")
    assert (spec.hyperparameters["lr"], spec.sources["lr"]) == (1.570e-3, "preset:mnist")
    assert spec.sources["weight_decay"] == "default" and spec.sources["epochs"] == "dataset"
    spec = resolve("mnist", "mono_forward", params=str(params))
    assert (spec.hyperparameters["lr"], spec.sources["lr"]) == (0.3, "params")
    spec = resolve("mnist", "mono_forward", params=str(params), lr=0.2, epochs=3)
    assert (spec.hyperparameters["lr"], spec.sources["lr"]) == (0.2, "flag")
    assert (spec.epochs, spec.sources["epochs"]) == (3, "flag")
    spec = resolve("mnist", "mono_forward", params=str(params), lr=0.2, hp=["lr=0.1"])
    assert (spec.hyperparameters["lr"], spec.sources["lr"]) == (0.1, "hp")
    assert spec.hyperparameters["weight_decay"] == 1e-4


def test_choice_presets_are_keyed_by_any_choice(monkeypatch):
    """Not only `variant`: any choice-valued hyperparameter may key a preset, whichever layer chose it."""
    monkeypatch.setitem(presets.PRESETS, "mono_forward", {"schedule=sequential": {"lr": 0.05, "epochs": 7}})
    assert resolve("mnist", "mono_forward").hyperparameters["lr"] == 1e-3  # the entry does not apply
    spec = resolve("mnist", "mono_forward", hp=["schedule=sequential"])
    assert (spec.hyperparameters["lr"], spec.epochs) == (0.05, 7)
    assert spec.sources["lr"] == "preset:schedule=sequential"


def test_the_networks_kind_keys_presets_too():
    """Counter-current learning's lr 1 leaves this repository's CNNs at chance: a convolutional network gets
    its own preset (under the command line's values)."""
    spec = resolve("mnist", "counter_current", model="cnn:32,64")
    assert (spec.hyperparameters["lr"], spec.sources["lr"]) == (0.01, "preset:model=cnn")
    assert resolve("mnist", "counter_current").hyperparameters["lr"] == 1.0
    assert resolve("mnist", "counter_current", model="cnn", lr=0.5).hyperparameters["lr"] == 0.5


def test_a_rule_with_its_own_network_kind_is_not_given_the_datasets(monkeypatch):
    cls = ALGORITHMS["noisy_label_blocks"]
    monkeypatch.setattr(cls, "default_model", "mlp:24")
    spec = resolve("mnist", "noisy_label_blocks")
    assert (spec.model, spec.sources["model"]) == ("mlp:24", "rule")


def test_a_spec_is_json_in_and_out(tmp_path):
    spec = resolve("mnist", "counter_current", hp=["loss=paper"], seed=3, out=str(tmp_path))
    again = RunSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert RunSpec.load(spec.save(tmp_path / "spec.json")) == spec
    assert spec.name == "mnist-counter_current-mlp256x256x256x256x256-elu-nobias-s3"
    with pytest.raises(AttributeError):
        spec.seed = 4  # frozen
    with pytest.raises(ValueError, match="not a run spec"):
        RunSpec.from_dict({**spec.to_dict(), "extra": 1})


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"hp": ["schedule=greedy"]}, HyperparameterError, "simultaneous, sequential"),
        ({"hp": ["momentun=0.5"]}, HyperparameterError, "unknown hyperparameter 'momentun'"),
        ({"model": "resnet"}, ValueError, "unknown model 'resnet'"),
        ({"model": "mlp:32:sigmoid"}, ValueError, "unknown option 'sigmoid'"),
        ({"epochs": 0}, ValueError, "epochs=0"),
        ({"monitor": "val_f1"}, ValueError, "val_accuracy, val_loss"),
        ({"val_fraction": 1.5}, ValueError, "val_fraction"),
        ({"device": "cuda:7"}, ValueError, "valid: auto, cpu"),
    ],
)
def test_a_bad_spec_fails_before_any_work(kwargs, error, message):
    if kwargs.get("device") == "cuda:7" and __import__("torch").cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(error, match=message):
        resolve("mnist", "mono_forward", **kwargs)


def preset_cases():
    for algorithm, table in presets.PRESETS.items():
        for key in table:
            if key.startswith("model="):
                yield algorithm, "mnist", [], {"model": key.split("=")[1]}
            elif "=" in key:
                yield algorithm, "mnist", [key], {}
            elif key != "*":
                yield algorithm, key, [], {}


@pytest.mark.parametrize("algorithm, dataset, hp, flags", list(preset_cases()))
def test_every_preset_value_lies_in_its_rules_search_space(algorithm, dataset, hp, flags):
    """Tuning can reach every value a preset holds (for example CCL's lr 0.5 with SGD, not only Adam's)."""
    spec = resolve(dataset, algorithm, hp=hp, **flags)
    cls = ALGORITHMS[algorithm]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    cls.search_space(trial, cls.Config(**spec.hyperparameters))
    for name, dist in trial.distributions.items():
        if not spec.sources[name].startswith("preset"):
            continue
        value = spec.hyperparameters[name]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            assert value in dist.choices, (name, value, dist)
        else:
            assert dist.low <= value <= dist.high, (name, value, dist)
