"""The contract every registered algorithm keeps; a new algorithm is tested by this file with no edits."""

import copy

import pytest
import torch

import localearn as ll
from localearn.algorithms import ALGORITHMS, HyperparameterError, make

ALL = sorted(ALGORITHMS)
# Steps large enough to learn the toy task in a few short epochs (FF's default suits 100-epoch MNIST runs).
QUICK = {
    "forward_forward": {"lr": 1e-2},
    "dfa": {"lr": 3e-3},
    "forward_gradient": {"lr": 1e-2, "num_tangents": 8},  # FG-W's estimate is noisy: average 8 tangents
}


def build(name, features=20, hidden=(32, 32), classes=4, **hp):
    torch.manual_seed(0)
    net = ll.models.mlp(features, list(hidden), classes)
    return make(name, net, classes, input_shape=(features,), **{**QUICK.get(name, {}), **hp})


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
LOCALITY_HP = {"counter_current": {"clip": 0.0}}
CASES = [(name, LOCALITY_HP.get(name, {})) for name in ALL] + [
    ("forward_gradient", {"variant": "local_activity"})
]
CASE_IDS = [name + "".join(f"-{v}" for v in hp.values()) for name, hp in CASES]


def weight_deltas(name, hp, mutate, x, y):
    """Update of every parameter on one batch, after ``mutate`` has changed the freshly built network.

    Float64 throughout, so that "the same update" can be asserted to rounding error."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        net = ll.models.mlp(6, [8, 8, 32], 3)
        mutate(net)
        algo = make(name, net, 3, input_shape=(6,), lr=0.1, optimizer="sgd", momentum=0.0, **hp)
        before = copy.deepcopy(net.state_dict())
        algo.train_step(x, y)
        return algo.locality, {k: net.state_dict()[k] - before[k] for k in before}
    finally:
        torch.set_default_dtype(default)


def batch(n=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def perturb_unit3(net):
    with torch.no_grad():
        net[2][0].weight.mul_(-3.0).add_(0.5)


def assert_earlier_units(plain, perturbed, same):
    for key in ("0.1.weight", "0.1.bias", "1.0.weight"):  # units 1 and 2
        assert torch.any(plain[key] != 0), key
        assert torch.allclose(plain[key], perturbed[key], rtol=1e-9, atol=1e-12) == same, key


@pytest.mark.parametrize("name, hp", CASES, ids=CASE_IDS)
def test_locality_earlier_update_ignores_later_weights(name, hp):
    """Change unit 3's weights: under a local rule, units 1 and 2 make the same update on the same batch;
    under any other (the output, and so its error, changes too) they do not. The test can fail both ways."""
    x, y = batch()
    locality, plain = weight_deltas(name, hp, lambda net: None, x, y)
    _, perturbed = weight_deltas(name, hp, perturb_unit3, x, y)
    assert_earlier_units(plain, perturbed, same=locality == "local")


@pytest.mark.parametrize("name, hp", CASES, ids=CASE_IDS)
def test_no_weight_transport(name, hp):
    """Change unit 3's weights and refit the head so that the network's output on the batch is unchanged:
    the earlier units' update is unchanged unless the rule carries the error back through the later
    weights ("global": backprop, forward gradients of the end-to-end loss). DFA must pass this."""
    x, y = batch()

    def perturb_keeping_output(net):
        with torch.no_grad():
            hidden = net[1](net[0](x))
            output = net[3](net[2](hidden))
            perturb_unit3(net)
            h3 = net[2](hidden)  # [8, 32]: rank 8, so the refit below is exact
            head = net[3][0]
            head.weight.copy_((torch.linalg.pinv(h3) @ (output - head.bias)).T)
            assert torch.allclose(net(x), output, atol=1e-10)

    locality, plain = weight_deltas(name, hp, lambda net: None, x, y)
    _, perturbed = weight_deltas(name, hp, perturb_keeping_output, x, y)
    assert_earlier_units(plain, perturbed, same=locality != "global")


@pytest.mark.parametrize("name", ALL)
def test_train_step_changes_every_trainable_unit(name, blobs):
    train, _, _ = blobs
    algo = build(name)
    before = copy.deepcopy(algo.net.state_dict())
    algo.train_step(train.x[:64], train.y[:64])
    changed = {k for k, v in algo.net.state_dict().items() if not torch.equal(v, before[k])}
    # Every unit's weights move on a step (staged rules: the first unit at least).
    first_unit = {k for k in before if k.startswith("0.")}
    assert first_unit <= changed


@pytest.mark.parametrize("name", ALL)
def test_learns_above_chance(name, blobs):
    train, val, test = blobs
    result = ll.Trainer(build(name), train, val, test, epochs=8, batch_size=32, progress=False).fit()
    assert result.test_accuracy > 0.9  # chance is 0.25


@pytest.mark.parametrize("name", ALL)
def test_learns_on_a_cnn(name, image_blobs):
    train, val, test = image_blobs
    torch.manual_seed(0)
    net = ll.models.cnn(3, 4, channels=(8, 8), image_size=8)
    if not ALGORITHMS[name].convolutional:  # it must refuse, saying what it needs
        with pytest.raises(ValueError, match="needs"):
            make(name, net, 4, input_shape=train.input_shape)
        return
    algo = make(name, net, 4, input_shape=train.input_shape, **QUICK.get(name, {}))
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


@pytest.mark.parametrize("name", ALL)
def test_search_space_gives_accepted_hyperparameters(name):
    optuna = pytest.importorskip("optuna")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = ALGORITHMS[name].search_space(trial)
    assert params and set(params) == set(trial.params)
    build(name, **params)  # accepted by make


@pytest.mark.parametrize("name", ["backprop", "mono_forward"])
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_optimizer_choice(name, optimizer, blobs):
    algo = build(name, optimizer=optimizer)
    assert all(type(o).__name__.lower() == optimizer for o in algo.optimizers)
    algo.train_step(blobs[0].x[:16], blobs[0].y[:16])


def test_unknown_algorithm_lists_valid_ones():
    with pytest.raises(KeyError, match="backprop"):
        make("no_such_rule", ll.models.mlp(4, [4], 2), 2)


def test_local_rule_refuses_a_non_sequential_network():
    class Net(torch.nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="nn.Sequential"):
        make("mono_forward", Net(), 2)


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
