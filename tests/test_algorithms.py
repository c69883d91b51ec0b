"""The contract every registered algorithm keeps; a new algorithm is tested by this file with no edits.

The registry includes the test rule ``noisy_label_blocks`` (tests/noisy_label_blocks.py, registered as a
plugin in conftest.py), which builds its own blocks and trains one block per pass over the data.
"""

import contextlib
import copy

import pytest
import torch
from torch import nn

import localearn as ll
from localearn.algorithms import ALGORITHMS, HyperparameterError, make

ALL = sorted(ALGORITHMS)
# Steps large enough to learn the toy task in a few short epochs (FF's default suits 100-epoch MNIST runs).
QUICK = {
    "forward_forward": {"lr": 1e-2},
    "dfa": {"lr": 3e-3},
    "forward_gradient": {"lr": 1e-2, "num_tangents": 8},  # FG-W's estimate is noisy: average 8 tangents
    # Pass b trains block b, so that one step per pass moves every block (the paper's random draw is tested
    # in test_diffusion_blocks.py).
    "diffusion_blocks": {"order": "cyclic"},
}


def build(name, features=20, hidden=(32, 32), classes=4, **hp):
    """The rule on the network it builds from an MLP spec (a stack of units, or its own blocks)."""
    torch.manual_seed(0)
    model = "mlp:" + ",".join(map(str, hidden))
    return make(name, model, classes, input_shape=(features,), **{**QUICK.get(name, {}), **hp})


def one_update(algo, x, y):
    """One step in every pass of an epoch, so that a rule that trains one block per pass moves them all."""
    for data_pass in range(algo.passes_per_epoch):
        algo.enter(algo.stage, data_pass)
        algo.train_step(x, y)


@pytest.mark.parametrize("name", ALL)
def test_train_step_and_predict_shapes(name, blobs):
    train, _, _ = blobs
    algo = build(name)
    stats = algo.train_step(train.x[:32], train.y[:32])
    assert "loss" in stats and torch.isfinite(torch.as_tensor(stats["loss"]))
    scores = algo.predict(train.x[:5])
    assert scores.shape == (5, 4)
    assert not scores.requires_grad


# Every registered rule with its defaults, plus the variants whose locality differs from the default's.
# Counter-current learning clips each network's gradient norm as its reference code does, which couples the
# units by one scalar; locality is about where gradients flow, so these tests turn clipping off.
# DiffusionBlocks draws a block per batch, so within one_update a later block may train first and move the
# shared parts (stem, head) that an earlier block then reads: blocks couple through the shared parts' history,
# not through any gradient. The cyclic order (pass b trains block b) keeps that history the same.
LOCALITY_HP = {"counter_current": {"clip": 0.0}, "diffusion_blocks": {"order": "cyclic"}}
CASES = [(name, LOCALITY_HP.get(name, {})) for name in ALL] + [
    ("forward_gradient", {"variant": "local_activity"})
]
CASE_IDS = [name + "".join(f"-{v}" for v in hp.values()) for name, hp in CASES]
PERTURBED = 2  # the third local group is changed; the groups before it are watched


def sgd_rule(name, hp, net=None):
    """The rule on its example network (float64, plain SGD), so that updates compare to rounding error."""
    torch.manual_seed(0)
    net = ALGORITHMS[name].example_network((6,), 3) if net is None else net
    return make(name, net, 3, input_shape=(6,), lr=0.1, optimizer="sgd", momentum=0.0, **hp)


@contextlib.contextmanager
def float64():
    """Float64 by default inside, so that "the same update" can be asserted to rounding error."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


def group_updates(name, hp, x, y, perturb):
    """(locality, the update of every parameter of each local group) on one batch, after ``perturb``
    changed the network's parameters in group PERTURBED (a fresh rule each time)."""
    with float64():
        algo = sgd_rule(name, hp)
        groups = list(algo.parameter_groups().local.values())
        assert len(groups) > PERTURBED, f"{name}'s example network needs at least {PERTURBED + 1} groups"
        if perturb:
            in_net = {id(p) for p in algo.net.parameters()}
            with torch.no_grad():
                for p in groups[PERTURBED]:
                    if id(p) in in_net:  # the network's own weights, not what the rule attaches to them
                        p.mul_(-3.0).add_(0.5)
        before = [[p.detach().clone() for p in g] for g in groups]
        one_update(algo, x, y)
        return algo.locality, [
            [p.detach() - b for p, b in zip(g, gb, strict=True)] for g, gb in zip(groups, before, strict=True)
        ]


def batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def assert_earlier_groups(plain, perturbed, same):
    for i in range(PERTURBED):
        for a, b in zip(plain[i], perturbed[i], strict=True):
            assert torch.any(a != 0), f"group {i + 1} did not move"
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12) == same, f"group {i + 1}"


@pytest.mark.parametrize("name, hp", CASES, ids=CASE_IDS)
def test_locality_earlier_update_ignores_later_weights(name, hp):
    """Change the third group's weights: under a local rule, the groups before it make the same update on
    the same batch; under any other (the output, and so its error, changes too) they do not. The test can
    fail both ways."""
    x, y = batch()
    locality, plain = group_updates(name, hp, x, y, perturb=False)
    _, perturbed = group_updates(name, hp, x, y, perturb=True)
    assert_earlier_groups(plain, perturbed, same=locality == "local")


# Rules that train a stack of units whose last child is a linear head: the head can be refitted.
STACKED = [(n, hp) for n, hp in CASES if isinstance(ALGORITHMS[n].example_network((6,), 3), nn.Sequential)]


@pytest.mark.parametrize(
    "name, hp", STACKED, ids=[n + "".join(f"-{v}" for v in hp.values()) for n, hp in STACKED]
)
def test_no_weight_transport(name, hp):
    """Change unit 3's weights and refit the head so that the network's output on the batch is unchanged:
    the earlier units' update is unchanged unless the rule carries the error back through the later
    weights ("global": backprop, forward gradients of the end-to-end loss). DFA must pass this."""
    x, y = batch()

    def updates(perturb):
        with float64():
            torch.manual_seed(0)
            net = ALGORITHMS[name].example_network((6,), 3)
            if perturb:
                with torch.no_grad():
                    hidden = net[1](net[0](x))
                    output = net[3](net[2](hidden))
                    net[2][0].weight.mul_(-3.0).add_(0.5)
                    h3 = net[2](hidden)  # [8, 32]: rank 8, so the refit below is exact
                    head = net[3][0]
                    head.weight.copy_((torch.linalg.pinv(h3) @ (output - head.bias)).T)
                    assert torch.allclose(net(x), output, atol=1e-10)
            algo = sgd_rule(name, hp, net)
            before = copy.deepcopy(net.state_dict())
            one_update(algo, x, y)
            return algo.locality, {k: net.state_dict()[k] - before[k] for k in before}

    locality, plain = updates(False)
    _, perturbed = updates(True)
    for key in ("0.1.weight", "0.1.bias", "1.0.weight"):  # units 1 and 2
        assert torch.any(plain[key] != 0), key
        assert torch.allclose(plain[key], perturbed[key], rtol=1e-9, atol=1e-12) == (locality != "global"), (
            key
        )


@pytest.mark.parametrize("name", ALL)
def test_an_update_moves_every_group_that_trains(name, blobs):
    """One step per pass moves every local group (staged rules: the first group) and nothing frozen."""
    train, _, _ = blobs
    algo = build(name)
    groups = list(algo.parameter_groups().local.values())
    before = [[p.detach().clone() for p in g] for g in groups]
    one_update(algo, train.x[:64], train.y[:64])
    moved = [
        any(not torch.equal(p, b) for p, b in zip(g, gb, strict=True))
        for g, gb in zip(groups, before, strict=True)
    ]
    assert moved == ([True] * len(groups) if algo.num_stages == 1 else [True] + [False] * (len(groups) - 1))


@pytest.mark.parametrize("name", ALL)
def test_learns_above_chance(name, blobs):
    train, val, test = blobs
    result = ll.Trainer(build(name), train, val, test, epochs=8, batch_size=32, progress=False).fit()
    assert result.test_accuracy > 0.9  # chance is 0.25


@pytest.mark.parametrize("name", ALL)
def test_learns_on_a_cnn(name, image_blobs):
    train, val, test = image_blobs
    torch.manual_seed(0)
    if not ALGORITHMS[name].convolutional:  # it must refuse, saying what it needs
        with pytest.raises((ValueError, TypeError), match="needs"):
            make(name, "cnn:8,8", 4, input_shape=train.input_shape)
        return
    algo = make(name, "cnn:8,8", 4, input_shape=train.input_shape, **QUICK.get(name, {}))
    result = ll.Trainer(algo, train, val, test, epochs=6, batch_size=32, progress=False).fit()
    assert result.test_accuracy > 0.6


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_continues_identically(name, blobs):
    """Save after a few steps, load into a fresh instance: the next steps and predictions are identical."""
    train, _, _ = blobs
    a = build(name)
    for i in range(3):
        a.train_step(train.x[i * 32 : (i + 1) * 32], train.y[i * 32 : (i + 1) * 32])
    state = copy.deepcopy(a.state_dict())
    b = build(name)
    b.load_state_dict(state)
    xb, yb = train.x[100:164], train.y[100:164]
    a.train_step(xb, yb)
    b.train_step(xb, yb)
    a.begin_evaluation()
    b.begin_evaluation()
    assert torch.equal(a.predict(train.x), b.predict(train.x))


@pytest.mark.parametrize("name", ALL)
def test_unknown_hyperparameter_lists_valid_ones(name):
    with pytest.raises(HyperparameterError, match="valid: .*lr"):
        build(name, not_a_hparam=1)


@pytest.mark.parametrize("name", ALL)
def test_bad_hyperparameter_values(name):
    with pytest.raises(HyperparameterError, match="lr"):
        build(name, lr=-1.0)
    with pytest.raises(HyperparameterError, match="adam, adamw, sgd"):
        build(name, optimizer="rmsprop")
    with pytest.raises(HyperparameterError, match="constant, cosine, linear_cooldown"):
        build(name, lr_schedule="step")


@pytest.mark.parametrize("name", ALL)
def test_search_space_gives_accepted_hyperparameters(name):
    optuna = pytest.importorskip("optuna")
    cls = ALGORITHMS[name]
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = cls.search_space(trial, cls.Config())
    assert params and set(params) == set(trial.params)
    build(name, **params)  # accepted by make


@pytest.mark.parametrize("name", ["backprop", "mono_forward"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizer_choice(name, optimizer, blobs):
    algo = build(name, optimizer=optimizer)
    assert all(type(o).__name__.lower() == optimizer for o in algo.optimizers)
    algo.train_step(blobs[0].x[:16], blobs[0].y[:16])


@pytest.mark.parametrize("name", ALL)
def test_the_device_is_recorded(name):
    algo = build(name, device="cpu")
    assert algo.device == torch.device("cpu")
    assert all(p.device == algo.device for p in algo.net.parameters())


@pytest.mark.parametrize(
    "name", [n for n in ALL if isinstance(ALGORITHMS[n].example_network((6,), 3), nn.Sequential)]
)
def test_the_input_shape_comes_from_a_first_linear(name):
    """No stacked rule demands input_shape when the network's first layer is an nn.Linear."""
    torch.manual_seed(0)
    algo = make(name, ll.models.mlp(20, [16, 16], 4), 4, **QUICK.get(name, {}))
    assert algo.input_shape == (20,)
    assert algo.predict(torch.randn(3, 20)).shape == (3, 4)


def test_a_convolutional_first_unit_needs_the_input_shape_and_says_so():
    for name in ("mono_forward", "counter_current", "dfa"):
        with pytest.raises(ValueError, match=r"cannot be inferred .* pass input_shape"):
            make(name, ll.models.cnn(3, 4, channels=(4, 6), image_size=8), 4)


def test_unknown_algorithm_lists_valid_ones():
    with pytest.raises(KeyError, match="backprop"):
        make("no_such_rule", ll.models.mlp(4, [4], 2), 2)


def test_local_rule_refuses_a_non_sequential_network():
    class Net(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="nn.Sequential"):
        make("mono_forward", Net(), 2)


def test_a_rule_that_builds_its_own_blocks_refuses_a_users_stack():
    with pytest.raises(TypeError, match="needs the blocks it builds itself"):
        make("noisy_label_blocks", ll.models.mlp(4, [4], 2), 2)
    with pytest.raises(ValueError, match="needs input_shape"):
        make("noisy_label_blocks", "mlp:8", 2)


def test_backprop_trains_any_module(blobs):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(20, 16), torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    train, val, test = blobs
    torch.manual_seed(0)
    algo = make("backprop", Net(), 4)
    assert (
        ll.Trainer(algo, train, val, test, epochs=5, batch_size=32, progress=False).fit().test_accuracy > 0.9
    )
