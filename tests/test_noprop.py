"""NoProp: the schedule's direction, Eq. 3's coefficients, Eq. 8's loss by hand, block locality, inference
noise, prototype embeddings, the CT and FM variants and the structure-matched backprop baseline."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import localearn as ll
from localearn.algorithms import HyperparameterError, make
from localearn.algorithms.noprop_network import (
    MonotoneSchedule,
    NoPropNetwork,
    block_factory,
    chain_coefficients,
    cosine_alpha_bar,
)
from localearn.experiments import spec as run_spec


def test_the_schedule_runs_from_noise_to_label():
    """alpha_bar increases with t (z_0 noise, z_T nearly clean): not the DDPM direction."""
    for steps in (1, 3, 10, 100):
        alpha_bar = cosine_alpha_bar(steps)
        assert alpha_bar.shape == (steps + 1,)
        snr = alpha_bar / (1 - alpha_bar)
        assert torch.all(snr[1:] - snr[:-1] > 0)
        assert alpha_bar[0] < 1e-3 and alpha_bar[-1] < 1
        assert steps < 3 or alpha_bar[-1] > 0.8


def test_the_schedule_values_for_three_steps():
    """Nichol and Dhariwal's cosine schedule over T + 1 = 4 steps (betas clipped at 0.999), read backwards."""

    def f(k):
        return math.cos((k / 4 + 0.008) / 1.008 * math.pi / 2) ** 2

    ddpm = [f(k) / f(0) for k in range(1, 4)]  # alpha_bar_1..3 of the forward (noising) direction
    ddpm.append(ddpm[-1] * (1 - 0.999))  # beta_4 = 1 - f(4)/f(3) = 1, clipped
    expected = list(reversed(ddpm))
    assert cosine_alpha_bar(3).tolist() == pytest.approx(expected, rel=1e-5)
    assert cosine_alpha_bar(3).tolist() == pytest.approx([1.4427e-4, 0.14427, 0.49384, 0.84701], rel=1e-4)


def test_chain_coefficients_for_three_steps():
    """a_t, b_t, c_t of Eq. 3 by hand, and what makes them right: with the block's estimate equal to u_y, a
    step from q(z_{t-1} | y) lands exactly on q(z_t | y) (its mean and its variance)."""
    alpha_bar = cosine_alpha_bar(3).double()
    for t in (1, 2, 3):
        prev, nxt = float(alpha_bar[t - 1]), float(alpha_bar[t])
        alpha = prev / nxt
        a, b, c = (float(v) for v in chain_coefficients(alpha_bar[t - 1], alpha_bar[t]))
        assert a == pytest.approx(math.sqrt(nxt) * (1 - alpha) / (1 - prev), rel=1e-12)
        assert b == pytest.approx(math.sqrt(alpha) * (1 - nxt) / (1 - prev), rel=1e-12)
        assert c == pytest.approx((1 - nxt) * (1 - alpha) / (1 - prev), rel=1e-12)
        assert a + b * math.sqrt(prev) == pytest.approx(
            math.sqrt(nxt), rel=1e-12
        )  # the mean, per unit of u_y
        assert b * b * (1 - prev) + c == pytest.approx(1 - nxt, rel=1e-12)  # the variance
    # t = 1 starts from (nearly) pure noise: z_0 contributes almost nothing.
    a, b, c = chain_coefficients(alpha_bar[0], alpha_bar[1])
    assert float(b) < 0.05 and float(a) == pytest.approx(math.sqrt(float(alpha_bar[1])), rel=1e-3)


class LinearBlock(nn.Module):
    """A user's block: (x, z) -> logits by one linear map of [x, z]."""

    def __init__(self, features, z_features, out_features):
        super().__init__()
        self.linear = nn.Linear(features + z_features, out_features)

    def forward(self, x, z):
        return self.linear(torch.cat([x, z], 1))


def linear_network(features=3, classes=3, steps=3, **kwargs):
    return NoPropNetwork(
        (features,),
        classes,
        lambda z_features, out, time_dim: LinearBlock(features, z_features, out),
        steps=steps,
        **kwargs,
    )


def test_the_dt_loss_by_hand():
    """Eq. 8 for block t = 2 of T = 3, one example, the noise given: computed here term by term."""
    torch.manual_seed(0)
    algo = make("noprop", linear_network(), 3, steps=3, eta=0.1)
    x, y = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([1])
    noise_in, noise_end = torch.tensor([[0.3, -0.7, 1.1]]), torch.tensor([[-0.2, 0.4, 0.9]])
    losses = algo.dt_losses(x, y, 2, noise_in, noise_end)

    ab = [float(v) for v in cosine_alpha_bar(3)]
    snr = [v / (1 - v) for v in ab]
    u = [0.0, 1.0, 0.0]
    z1 = [math.sqrt(ab[1]) * u[i] + math.sqrt(1 - ab[1]) * float(noise_in[0, i]) for i in range(3)]
    w, bias = algo.net.blocks[1].linear.weight.tolist(), algo.net.blocks[1].linear.bias.tolist()
    inputs = x[0].tolist() + z1
    logits = [sum(w[k][j] * inputs[j] for j in range(6)) + bias[k] for k in range(3)]
    probs = [math.exp(v) / sum(math.exp(v) for v in logits) for v in logits]
    denoise = 3 / 2 * 0.1 * (snr[2] - snr[1]) * sum((probs[i] - u[i]) ** 2 for i in range(3))
    z3 = [math.sqrt(ab[3]) * u[i] + math.sqrt(1 - ab[3]) * float(noise_end[0, i]) for i in range(3)]
    cw, cb = algo.net.classifier.weight.tolist(), algo.net.classifier.bias.tolist()
    scores = [sum(cw[k][j] * z3[j] for j in range(3)) + cb[k] for k in range(3)]
    ce = -scores[1] + math.log(sum(math.exp(s) for s in scores))
    kl = 0.5 * (ab[0] * 1.0 + 3 * (1 - ab[0]) - 3 - 3 * math.log(1 - ab[0]))
    losses = {k: v.detach() for k, v in losses.items()}
    assert float(losses["denoise"]) == pytest.approx(denoise, rel=1e-5)
    assert float(losses["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(losses["kl"]) == pytest.approx(kl, rel=1e-4)
    assert float(losses["loss"]) == pytest.approx(denoise + ce + kl, rel=1e-5)


def float64_rule(**hp):
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(0)
        return make("noprop", "mlp:8,8", 3, input_shape=(6,), optimizer="sgd", momentum=0.0, lr=0.1, **hp)
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("embedding", ["onehot", "learned"])
def test_a_blocks_update_ignores_every_other_block(embedding):
    """Block t's update on a batch is the same when every other block's weights are changed (the earlier and
    the later ones): no block sees another's output or gradient. Also with a learned (shared) embedding."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (8,), generator=g)

    def update(t, perturb):
        algo = float64_rule(embedding=embedding, steps=4)
        if perturb:
            with torch.no_grad():
                for other, block in enumerate(algo.net.blocks):
                    if other != t:
                        for p in block.parameters():
                            p.mul_(-3.0).add_(0.5)
        before = [p.detach().clone() for p in algo.net.blocks[t].parameters()]
        algo.enter(0, t)
        algo.train_step(x, y)
        return [p.detach() - b for p, b in zip(algo.net.blocks[t].parameters(), before, strict=True)]

    for t in (0, 2, 3):
        plain, perturbed = update(t, False), update(t, True)
        assert all(torch.any(d != 0) for d in plain)
        assert all(
            torch.allclose(a, b, rtol=1e-12, atol=1e-15) for a, b in zip(plain, perturbed, strict=True)
        )


def test_sequential_order_trains_block_t_in_pass_t_and_random_order_any():
    torch.manual_seed(0)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    algo = make("noprop", "mlp:8", 3, input_shape=(6,), steps=4)
    assert algo.passes_per_epoch == 4
    for t in range(4):
        before = [copy.deepcopy(b.state_dict()) for b in algo.net.blocks]
        algo.enter(0, t)
        stats = algo.train_step(x, y)
        assert f"loss_block{t + 1}" in stats
        changed = [
            any(not torch.equal(v, before[i][k]) for k, v in b.state_dict().items())
            for i, b in enumerate(algo.net.blocks)
        ]
        assert changed == [i == t for i in range(4)]
    random = make("noprop", "mlp:8", 3, input_shape=(6,), steps=4, order="random")
    assert random.passes_per_epoch == 4  # the same budget: T passes an epoch, one random block per batch
    trained = {next(k for k in random.train_step(x, y) if k.startswith("loss_block")) for _ in range(30)}
    assert trained == {f"loss_block{t}" for t in range(1, 5)}


@pytest.mark.parametrize("variant", ["dt", "ct", "fm"])
def test_inference_is_a_function_of_the_weights_and_the_evaluation_seed(variant):
    torch.manual_seed(0)
    algo = make("noprop", "mlp:8", 3, input_shape=(6,), variant=variant, steps=4)
    algo.train(False)
    x = torch.randn(10, 6)
    algo.begin_evaluation()
    global_state = torch.get_rng_state()
    first = algo.predict(x)
    assert torch.equal(torch.get_rng_state(), global_state)  # no draw from the global stream
    algo.predict(x)  # the evaluation noise moves on within an evaluation...
    algo.begin_evaluation()
    assert torch.equal(algo.predict(x), first)  # ...and restarts with the next one
    algo.eval_seed += 1
    algo.begin_evaluation()
    assert not torch.equal(algo.predict(x), first)


def test_prototype_embeddings_start_as_the_class_means(blobs):
    train, val, test = blobs
    torch.manual_seed(0)
    algo = make("noprop", "mlp:16", 4, input_shape=(20,), embedding="prototype", steps=3)
    with pytest.raises(RuntimeError, match="prepare"):
        algo.train_step(train.x[:8], train.y[:8])
    algo.prepare(train)
    means = torch.stack([train.x[train.y == c].mean(0) for c in range(4)])
    assert torch.allclose(algo.net.embedding, means, atol=1e-6)
    assert algo.parameter_groups().shared["label_embedding"] == [algo.net.embedding]
    # The Trainer prepares the rule; the prototypes then learn with every step.
    result = ll.Trainer(algo, train, val, test, epochs=1, batch_size=32, progress=False).fit()
    assert result.test_accuracy > 0.25 and not torch.allclose(algo.net.embedding, means)


@pytest.mark.parametrize(
    "hp",
    [{"variant": "ct"}, {"variant": "fm"}, {"embedding": "learned"}, {"order": "random"}],
    ids=["ct", "fm", "dt-learned", "dt-random"],
)
def test_the_other_variants_learn_above_chance(hp, blobs):
    train, val, test = blobs
    torch.manual_seed(0)
    steps = hp.get("variant") and 10 or 4
    algo = make("noprop", "mlp:32,32", 4, input_shape=(20,), lr=1e-2, steps=steps, **hp)
    epochs = 4 if "variant" not in hp else 10
    result = ll.Trainer(algo, train, val, test, epochs=epochs, batch_size=32, progress=False).fit()
    assert result.test_accuracy > 0.9  # chance is 0.25


@pytest.mark.parametrize("variant", ["ct", "fm"])
def test_ct_and_fm_are_one_network_and_continue_from_a_saved_state(variant, blobs):
    train = blobs[0]
    a = make("noprop", "mlp:16", 4, input_shape=(20,), variant=variant, steps=5)
    assert a.passes_per_epoch == 1 and a.locality == "global" and len(a.net.blocks) == 1
    assert list(a.parameter_groups().local) == ["network"]
    for i in range(3):
        a.train_step(train.x[i * 32 : (i + 1) * 32], train.y[i * 32 : (i + 1) * 32])
    b = make("noprop", "mlp:16", 4, input_shape=(20,), variant=variant, steps=5)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert torch.equal(
        a.train_step(train.x[:64], train.y[:64])["loss"], b.train_step(train.x[:64], train.y[:64])["loss"]
    )
    a.begin_evaluation()
    b.begin_evaluation()
    assert torch.equal(a.predict(train.x), b.predict(train.x))


def test_the_ct_schedule_is_monotone_with_fixed_ends():
    torch.manual_seed(0)
    schedule = MonotoneSchedule()
    with torch.no_grad():
        for p in schedule.parameters():
            p.normal_()  # any weights: the schedule stays monotone
    t = torch.linspace(0, 1, 101, requires_grad=True)
    gamma = schedule.gamma(t)
    (slope,) = torch.autograd.grad(gamma.sum(), t)
    assert torch.all(slope < 0)  # SNR = exp(-gamma) rises from noise to label: SNR'(t) > 0
    assert gamma[0].item() == pytest.approx(6.0) and gamma[-1].item() == pytest.approx(-6.0)


def test_the_structure_matched_baseline_is_the_chain_trained_end_to_end(blobs):
    """--algo backprop --model noprop: the NoProp blocks chained as in inference; a loss on the output reaches
    every block, and evaluation draws its noise from the module's own restarted generator."""
    train, val, test = blobs
    torch.manual_seed(0)
    kind = ll.models.from_spec("noprop:32", (20,), 4)
    assert isinstance(kind, NoPropNetwork) and len(kind.blocks) == 10 and kind.embedding_kind == "onehot"
    algo = make("backprop", NoPropNetwork((20,), 4, block_factory("mlp:16", (20,)), steps=10), 4, lr=1e-2)
    F.cross_entropy(algo.net(train.x[:16]), train.y[:16]).backward()
    assert all(b.merge[-1].weight.grad is not None for b in algo.net.blocks)
    algo.net.zero_grad()
    result = ll.Trainer(algo, train, val, test, epochs=4, batch_size=32, progress=False).fit()
    # Above chance (0.25); the chain learns more slowly than a plain MLP (the classes reach the classifier as
    # probability vectors with noise added after every block).
    assert result.test_accuracy > 0.6
    algo.train(False)
    first = algo.predict(test.x)
    algo.train(False)
    assert torch.equal(algo.predict(test.x), first)


def test_the_baseline_may_pass_logits_down_its_chain(blobs):
    """noprop:W:logits: each block's logits (not their softmax) go into the chain; the same blocks and
    noise otherwise. The NoProp rule keeps the paper's softmax and refuses the option."""
    torch.manual_seed(0)
    net = ll.models.from_spec("noprop:16:logits", (20,), 4)
    assert net.chain_logits and len(net.blocks) == 10
    net.eval()  # no dropout, batch norm on its running statistics: the same logits on every call
    x = blobs[0].x[:8]
    logits = net.blocks[0](x, torch.zeros(8, 4))
    assert torch.equal(net.u_hat(0, x, torch.zeros(8, 4)), logits @ net.embedding)
    net.chain_logits = False
    assert torch.allclose(net.u_hat(0, x, torch.zeros(8, 4)), logits.softmax(1))
    with pytest.raises(ValueError, match="option of the backprop baseline"):
        make("noprop", "noprop:16:logits", 4, input_shape=(20,))


def test_presets_and_the_baseline_on_the_command_line():
    dt = run_spec.resolve("mnist", "noprop")
    assert dt.model == "noprop:256" and dt.batch_size == 128 and dt.augment is False and dt.epochs == 100
    hp = dt.hyperparameters
    assert (hp["steps"], hp["eta"], hp["optimizer"], hp["lr"], hp["weight_decay"]) == (
        10,
        0.1,
        "adamw",
        1e-3,
        1e-3,
    )
    assert hp["embedding"] == "onehot" and hp["variant"] == "dt"
    ct = run_spec.resolve("mnist", "noprop", hp=["variant=ct"]).hyperparameters
    assert (ct["optimizer"], ct["eta"], ct["steps"]) == ("adam", 1.0, 1000)
    cifar = run_spec.resolve("cifar10", "noprop")
    assert cifar.epochs == 150 and cifar.augment is False
    baseline = run_spec.resolve("mnist", "backprop", model="noprop")
    assert baseline.model == "noprop:256" and baseline.hyperparameters["optimizer"] == "adamw"


def test_errors_name_what_is_wrong():
    with pytest.raises(TypeError, match="needs the blocks it builds itself"):
        make("noprop", ll.models.mlp(6, [8], 3), 3)
    with pytest.raises(ValueError, match=r"built with \{'steps': 3\}"):
        make("noprop", linear_network(steps=3), 3, steps=10)
    with pytest.raises(ValueError, match="needs images"):
        make("noprop", "cnn:8", 3, input_shape=(6,))
    with pytest.raises(HyperparameterError, match="dt, ct, fm"):
        make("noprop", "mlp:8", 3, input_shape=(6,), variant="sde")
    with pytest.raises(HyperparameterError, match="onehot, learned, prototype"):
        make("noprop", "mlp:8", 3, input_shape=(6,), embedding="random")
    with pytest.raises(HyperparameterError, match="steps=0"):
        make("noprop", "mlp:8", 3, input_shape=(6,), steps=0)
