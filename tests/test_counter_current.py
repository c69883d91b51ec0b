"""Counter-current learning: pair losses by the formula, what each loss may update, stop-gradient in both
networks, per-network clipping."""

import copy

import pytest
import torch
import torch.nn.functional as F

import localearn as ll
from localearn.algorithms import HyperparameterError, make
from localearn.algorithms.counter_current import pair_loss


def ccl(hidden=(8, 8), features=6, classes=3, **hp):
    torch.manual_seed(0)
    net = ll.models.mlp(features, list(hidden), classes, activation="elu", bias=False)
    return make("counter_current", net, classes, input_shape=(features,), **hp)


def test_code_loss_of_an_mlp_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # N = 2 examples, d = 2
    b = torch.tensor([[1.0, 1.0], [0.0, 1.0], [2.0, 0.0]])  # C = 3 class prototypes
    y = torch.tensor([0, 2])
    # A B^T = [[1, 0, 2], [2, 2, 0]] against onehot(y) = [[1, 0, 0], [0, 0, 1]]: squared errors sum to 13.
    expected = 13 / 6 / 2 * 0.5 * 256
    assert torch.isclose(pair_loss(a, b, y, "code", normalised=False), torch.tensor(expected))


def test_normalised_code_loss_and_paper_loss_by_hand():
    a = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # rows normalise to (0.6, 0.8) and (0, 1)
    b = torch.tensor([[1.0, 0.0], [0.0, 5.0]])  # (1, 0) and (0, 1)
    y = torch.tensor([1, 0])
    # a^ b^^T = [[0.6, 0.8], [0, 1]] against onehot(y) = [[0, 1], [1, 0]]: 0.36 + 0.04 + 1 + 1 = 2.4.
    # a^ a^^T = [[1, 0.8], [0.8, 1]] against I: 1.28; b^ b^^T = I exactly: 0.
    expected = 2.4 / 4 + 0.5 * (1.28 / 4 + 0.0)
    assert torch.isclose(pair_loss(a, b, y, "code", normalised=True), torch.tensor(expected))
    # Paper, Eq. 2: a^ b^^T against I_N = [[1, 0], [0, 1]]: 0.16 + 0.64 + 0 + 0 = 0.8, per example / 2.
    assert torch.isclose(pair_loss(a, b, y, "paper", normalised=False), torch.tensor(0.8 / 2))


@pytest.mark.parametrize("loss", ["code", "paper"])
def test_step_reports_the_formula_on_the_right_pairs(loss):
    """Pair l is (a_l, b_l): forward activations against the feedback network's output at the same level."""
    algo = ccl(loss=loss)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 6, generator=g), torch.tensor([0, 1, 2, 1, 0])
    net, fb = algo.net, algo.feedback
    with torch.no_grad():
        a1 = net[0](x)
        a2 = net[1](a1)
        targets = torch.eye(3) if loss == "code" else F.one_hot(y, 3).float()
        b2 = fb[2](targets)
        b1 = fb[1](b2)
        b0 = fb[0](b1)
        assert b0.shape == (len(targets), 6) and b1.shape == (len(targets), 8)
        expected = [pair_loss(a, b, y, loss, normalised=False) for a, b in ((x, b0), (a1, b1), (a2, b2))]
        ce = F.cross_entropy(net[2](a2), y)
    stats = algo.train_step(x, y)
    for i, value in enumerate(expected):
        assert torch.isclose(stats[f"loss_pair{i}"], value), i
    assert torch.isclose(stats["loss"], ce)


def test_each_loss_reaches_only_its_own_units():
    """pair l updates forward unit l and feedback unit l+1; CE only the head; the feedback network gets
    nothing from CE."""
    algo = ccl()
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    losses = algo.losses(x, y)
    modules = {"f1": algo.net[0], "f2": algo.net[1], "head": algo.net[2]}
    modules.update({f"g{i + 1}": unit for i, unit in enumerate(algo.feedback)})
    reaches = {
        "ce": {"head"},
        "pair0": {"g1"},  # x has no parameters
        "pair1": {"f1", "g2"},
        "pair2": {"f2", "g3"},
    }
    for name, loss in losses.items():
        for module_name, module in modules.items():
            params = list(module.parameters())
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            touched = any(g is not None and torch.any(g != 0) for g in grads)
            assert touched == (module_name in reaches[name]), (name, module_name)


def feedback_deltas(mutate, x, y):
    algo = ccl(hidden=(8, 8, 8), clip=0.0)
    mutate(algo)
    before = copy.deepcopy(algo.feedback.state_dict())
    algo.train_step(x, y)
    return {k: algo.feedback.state_dict()[k] - before[k] for k in before}


def test_stop_gradient_in_the_feedback_network():
    """Change the lowest feedback unit g_1: the higher feedback units make the same update (without the
    stop-gradient, pair 0's gradient would run up through b_1 into g_2, g_3, ...)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)

    def perturb_g1(algo):
        with torch.no_grad():
            algo.feedback[0][1].weight.mul_(-2.0).add_(0.3)

    plain = feedback_deltas(lambda algo: None, x, y)
    perturbed = feedback_deltas(perturb_g1, x, y)
    assert not torch.allclose(plain["0.1.weight"], perturbed["0.1.weight"])
    for key in ("1.1.weight", "2.1.weight", "3.1.weight"):
        assert torch.any(plain[key] != 0) and torch.allclose(plain[key], perturbed[key]), key


def test_two_optimizers_and_clipping_per_network():
    algo = ccl(clip=1e-3, lr=1.0, feedback_lr=1.0)
    assert len(algo.optimizers) == 2
    forward_before = torch.cat([p.detach().flatten().clone() for p in algo.net.parameters()])
    feedback_before = torch.cat([p.detach().flatten().clone() for p in algo.feedback.parameters()])
    algo.train_step(torch.randn(16, 6), torch.randint(0, 3, (16,)))
    forward_step = torch.cat([p.detach().flatten() for p in algo.net.parameters()]) - forward_before
    feedback_step = torch.cat([p.detach().flatten() for p in algo.feedback.parameters()]) - feedback_before
    # Each network's step is clipped to norm 1e-3 on its own (a joint clip would give sqrt(2) less each).
    assert forward_step.norm() == pytest.approx(1e-3, rel=1e-3)
    assert feedback_step.norm() == pytest.approx(1e-3, rel=1e-3)
    # The feedback network has its own learning rate.
    slow = ccl(clip=0.0, feedback_lr=1e-3)
    assert (
        slow.optimizers[1].param_groups[0]["lr"] == 1e-3 and slow.optimizers[0].param_groups[0]["lr"] == 1.0
    )


def test_convolutional_form():
    torch.manual_seed(0)
    net = ll.models.cnn(3, 4, channels=(4, 8), image_size=8)
    algo = make("counter_current", net, 4, input_shape=(3, 8, 8))
    assert algo.normalised  # the code's CNN loss
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    losses = algo.losses(x, y)
    assert set(losses) == {"ce", "pair0", "pair1", "pair2"}
    # Feedback units mirror the forward ones: upsample + 3x3 conv back to the unit's input shape.
    b = algo.feedback[2](torch.eye(4))
    assert b.shape == (4, 8, 2, 2)
    assert algo.feedback[1](b).shape == (4, 4, 4, 4) and algo.feedback[0](algo.feedback[1](b)).shape == (
        4,
        3,
        8,
        8,
    )


def test_errors():
    # The input size comes from the first Linear; a convolutional first unit needs it said.
    assert make("counter_current", ll.models.mlp(6, [8], 3), 3).feedback[0][1].out_features == 6
    with pytest.raises(ValueError, match="input_shape"):
        make("counter_current", ll.models.cnn(3, 3, channels=(4,), image_size=8), 3)
    with pytest.raises(HyperparameterError, match="code, paper"):
        ccl(loss="identity")
    with pytest.raises(HyperparameterError, match="feedback_activation"):
        ccl(feedback_activation="swish")
