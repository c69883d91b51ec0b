"""Papers' baselines as recipes (--recipe NAME): what each sets, how the report compares under one, and
backprop's gradient clipping, which the CCL paper's baseline needs."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_report import make_run

import localearn as ll
from localearn.algorithms import make
from localearn.experiments import presets
from localearn.experiments.__main__ import main
from localearn.experiments.report import load_runs, summarise, write_report
from localearn.experiments.spec import RunSpec, resolve


def test_backprop_clips_the_whole_gradient_by_hand():
    """With clip c, one plain SGD step moves the parameters by -lr * g * min(1, c / ||g||), ||g|| over the
    whole network; clip 0 leaves the gradient as it is."""
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])

    def step(clip):
        torch.manual_seed(0)
        algo = make("backprop", ll.models.mlp(4, [5], 3), 3, optimizer="sgd", momentum=0.0, lr=1.0, clip=clip)
        before = [p.detach().clone() for p in algo.net.parameters()]
        grads = torch.autograd.grad(F.cross_entropy(algo.net(x), y), list(algo.net.parameters()))
        algo.train_step(x, y)
        return before, grads, [p.detach() for p in algo.net.parameters()]

    before, grads, after = step(0.0)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    assert all(torch.allclose(a, b - g) for a, b, g in zip(after, before, grads, strict=True))
    clip = float(norm) / 4  # the norm is above the clip: the step shrinks to a quarter
    before, grads, after = step(clip)
    assert all(
        torch.allclose(a, b - g * clip / norm, atol=1e-6)
        for a, b, g in zip(after, before, grads, strict=True)
    )
    with pytest.raises(ll.algorithms.HyperparameterError, match="clip"):
        make("backprop", ll.models.mlp(4, [5], 3), 3, clip=-1.0)


def test_ccl_paper_recipe_gives_backprop_the_papers_setting():
    spec = resolve("mnist", "backprop", recipe="ccl_paper")
    assert spec.model == "mlp:256,256,256,256,256:tanh"
    assert (spec.batch_size, spec.augment) == (256, False)
    hp = spec.hyperparameters
    assert (hp["optimizer"], hp["momentum"]) == ("sgd", 0.0) and hp["clip"] > 0
    assert spec.sources["clip"] == "recipe:ccl_paper" and spec.recipe == "ccl_paper"
    assert spec.name == "mnist-backprop-mlp256x256x256x256x256-tanh-ccl_paper-s0"
    cifar = resolve("cifar10", "backprop", recipe="ccl_paper")
    assert cifar.model == "mlp:1024,1024,1024:tanh" and not cifar.augment
    # The rules the paper compared keep their presets (already the paper's); the command line still wins.
    assert (
        resolve("mnist", "counter_current", recipe="ccl_paper").model
        == resolve("mnist", "counter_current").model
    )
    assert resolve("mnist", "backprop", recipe="ccl_paper", lr=0.3).hyperparameters["lr"] == 0.3
    # The spec keeps its recipe through JSON, and specs written before recipes still load.
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "recipe"}
    assert RunSpec.from_dict(old).recipe == ""


def test_mf_reference_recipe():
    mf = resolve("mnist", "mono_forward", recipe="mf_reference")
    bp = resolve("mnist", "backprop", recipe="mf_reference")
    assert mf.model == bp.model == "mlp:1000,1000:he"
    assert mf.hyperparameters["last_projection"] == "bias_free"
    assert mf.hyperparameters["optimizer"] == bp.hyperparameters["optimizer"] == "adamw"
    assert mf.hyperparameters["lr"] == resolve("mnist", "mono_forward").hyperparameters["lr"]
    assert resolve("cifar10", "backprop", recipe="mf_reference").model == "mlp:2000,2000,2000:he"


def test_every_recipe_entry_is_a_valid_run():
    """Each recipe resolves and validates for every rule it covers, on every named dataset."""
    for recipe, rules in presets.RECIPES.items():
        for algorithm in rules:
            for dataset in presets.DATASETS:
                resolve(dataset, algorithm, recipe=recipe, energy=False)


@pytest.mark.parametrize(
    "recipe, algorithm, message",
    [
        ("nope", "backprop", "unknown recipe 'nope'; valid: ccl_paper, mf_reference"),
        (
            "ccl_paper",
            "mono_forward",
            "has no settings for mono_forward; it covers: backprop, counter_current, dfa",
        ),
    ],
)
def test_recipe_errors(recipe, algorithm, message):
    with pytest.raises(ValueError, match=message):
        resolve("mnist", algorithm, recipe=recipe)


def test_recipe_errors_on_the_command_line(tmp_path, capsys):
    assert main(["mnist", "--algo", "backprop", "--recipe", "nope", "--out", str(tmp_path)]) == 2
    assert "error: unknown recipe 'nope'; valid: ccl_paper, mf_reference" in capsys.readouterr().err
    # compare checks every rule against the recipe before it starts any run.
    args = [
        "compare",
        "mnist",
        "--algos",
        "backprop,mono_forward",
        "--recipe",
        "ccl_paper",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 2
    assert "has no settings for mono_forward" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_report_compares_a_recipe_across_its_networks(tmp_path):
    """Under a recipe each rule runs on the network its paper gave it (CCL's ELU net, backprop's tanh net):
    the report compares them with each other, named by the recipe, and never with runs outside it."""
    root = tmp_path / "runs"

    def run(name, algorithm, seed, accuracy, joules, model, recipe=""):
        d = make_run(root, name, algorithm, seed, accuracy, joules)
        result = json.loads((d / "result.json").read_text())
        (d / "result.json").write_text(json.dumps({**result, "model": model}))
        config = {"algorithm": algorithm, "seed": seed, "spec": {"recipe": recipe}}
        (d / "config.json").write_text(json.dumps(config))

    run("ccl", "counter_current", 0, 0.98, 300.0, "mlp:256:elu:nobias", "ccl_paper")
    run("bp-tanh", "backprop", 0, 0.97, 100.0, "mlp:256:tanh", "ccl_paper")
    run("bp-elu", "backprop", 0, 0.99, 50.0, "mlp:256:elu:nobias")  # the same network, no recipe
    rows = {r["algorithm"]: r for r in summarise(load_runs(root)[0], "backprop")}
    assert set(rows) == {"counter_current [ccl_paper]", "backprop [ccl_paper]", "backprop"}
    ccl = rows["counter_current [ccl_paper]"]
    assert ccl["place"] == "recipe ccl_paper" and ccl["model"] == "mlp:256:elu:nobias"
    assert ccl["joules xbackprop"] == pytest.approx(3.0)  # against the recipe's backprop, not the ELU one
    assert rows["backprop"]["place"] == "mlp:256:elu:nobias"
    md = (write_report(root) / "report.md").read_text()
    assert "### mnist, recipe ccl_paper" in md
    assert "| counter_current [ccl_paper] | mnist | mlp:256:elu:nobias |" in md
