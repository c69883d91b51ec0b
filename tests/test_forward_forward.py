"""Forward-Forward: the loss by hand, negatives, goodness prediction, readout, schedules."""

import copy

import pytest
import torch
import torch.nn.functional as F

import localearn as ll
from localearn.algorithms import make
from localearn.algorithms.forward_forward import rms_normalise


def ff(hidden=(8, 8), features=6, classes=3, **hp):
    torch.manual_seed(0)
    return make("forward_forward", ll.models.mlp(features, list(hidden), classes), classes, **hp)


def test_negative_labels_follow_the_run_seed():
    """Repeats with distinct seeds draw distinct negatives; the same seed draws the same ones."""
    y = torch.arange(10).repeat(20)
    x = torch.randn(len(y), 20)

    def negatives(seed):
        torch.manual_seed(seed)
        algo = make("forward_forward", ll.models.mlp(20, [8], 10), 10)
        return algo.wrong_labels(x, y)

    assert torch.equal(negatives(0), negatives(0))
    assert not torch.equal(negatives(0), negatives(1))


@pytest.mark.parametrize("negatives", ["random", "hard"])
def test_negatives_never_carry_the_true_label(negatives):
    algo = ff(classes=10, features=20, negatives=negatives)
    y = torch.arange(10).repeat(500)
    x = torch.randn(len(y), 20)
    wrong = algo.wrong_labels(x, y)
    assert not torch.any(wrong == y)
    if (
        negatives == "random"
    ):  # uniform over the nine others: every one of them turns up about 1/9 of the time
        counts = torch.bincount(wrong[y == 3], minlength=10).float()
        assert counts[3] == 0 and torch.all(counts[torch.arange(10) != 3] > 500 / 9 * 0.6)


def test_label_embedding_and_neutral_label():
    algo = ff(classes=3, features=6)
    x = torch.randn(2, 6)
    pos = algo.embed(x, torch.tensor([2, 0]))
    torch.testing.assert_close(pos[:, :3], torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    torch.testing.assert_close(pos[:, 3:], x[:, 3:])  # the rest of the image is untouched
    torch.testing.assert_close(algo.embed(x, None)[:, :3], torch.full((2, 3), 1 / 3))


def test_loss_on_a_hand_made_case_equals_the_formula():
    """One unit, two classes (so the negative label is the other one): the loss is Hinton's, by hand."""
    torch.manual_seed(0)
    net = ll.models.mlp(4, [3], 2)
    algo = make("forward_forward", net, 2, lr=0.1, optimizer="sgd", momentum=0.0, threshold=0.5)
    W = torch.tensor([[1.0, -1.0, 0.5, 0.0], [0.0, 2.0, -1.0, 1.0], [-0.5, 0.5, 1.0, 1.0]])
    b = torch.tensor([0.1, -0.2, 0.0])
    with torch.no_grad():
        net[0][1].weight.copy_(W)
        net[0][1].bias.copy_(b)
    x, y = torch.tensor([[0.0, 0.0, 2.0, -1.0]]), torch.tensor([1])
    theta = 0.5 * 3  # threshold x width

    def goodness(v):
        v = v / v.pow(2).mean().sqrt()
        return torch.relu(W @ v + b).pow(2).sum()

    g_pos = goodness(torch.tensor([0.0, 1.0, 2.0, -1.0]))  # label 1 one-hot in the first two inputs
    g_neg = goodness(torch.tensor([1.0, 0.0, 2.0, -1.0]))  # the only wrong label, 0
    expected = F.softplus(theta - g_pos) + F.softplus(g_neg - theta)
    stats = algo.train_step(x, y)
    torch.testing.assert_close(stats["loss_unit1"], expected)


def test_goodness_prediction_picks_the_right_label():
    """A constructed net whose unit 2 is active only when the label agrees with the image."""
    net = ll.models.mlp(4, [4, 2], 2)
    with torch.no_grad():
        net[0][1].weight.copy_(torch.eye(4))
        net[0][1].bias.zero_()
        net[1][0].weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]]))  # label c and feature c together
        net[1][0].bias.fill_(-2.0)
    algo = make("forward_forward", net, 2)
    images = torch.tensor([[0.0, 0, 1, 0], [0, 0, 0, 1]])  # class 0 lights input 2, class 1 input 3
    scores = algo.predict(images)
    assert scores.argmax(1).tolist() == [0, 1]
    # The scores are the goodness of units 2..L only (unit 1's is left out, as Hinton does).
    for c in range(2):
        a1 = net[0](rms_normalise(algo.embed(images, torch.full((2,), c))))
        torch.testing.assert_close(scores[:, c], net[1](rms_normalise(a1)).pow(2).sum(1))


def test_readout_prediction_is_one_pass_on_units_2_to_L():
    algo = ff(hidden=(8, 5, 7), prediction="readout")
    assert algo.readout.in_features == 5 + 7
    x = torch.randn(4, 6)
    assert algo.predict(x).shape == (4, 3)
    torch.testing.assert_close(algo.predict(x), torch.zeros(4, 3))  # zero-initialised, as loeweX


def test_greedy_schedule_trains_one_unit_at_a_time():
    algo = ff(schedule="greedy", lr=0.1)
    assert algo.num_stages == 2
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    before = copy.deepcopy(algo.net.state_dict())
    algo.train_step(x, y)
    assert not torch.equal(algo.net.state_dict()["0.1.weight"], before["0.1.weight"])
    assert torch.equal(algo.net.state_dict()["1.0.weight"], before["1.0.weight"])
    algo.enter(1)
    frozen = algo.net[0][1].weight.clone()
    algo.train_step(x, y)
    assert torch.equal(algo.net[0][1].weight, frozen) and algo.net[0][1].weight.grad is None
    assert not torch.equal(algo.net.state_dict()["1.0.weight"], before["1.0.weight"])


@pytest.mark.parametrize("prediction", ["goodness", "readout"])
def test_learns_both_predictions(prediction, blobs):
    train, val, test = blobs
    algo = ff(hidden=(32, 32), features=20, classes=4, lr=1e-2, readout_lr=1e-2, prediction=prediction)
    result = ll.Trainer(algo, train, val, test, epochs=8, batch_size=32, progress=False).fit()
    assert result.test_accuracy > 0.9 and result.hyperparameters["prediction"] == prediction


@pytest.mark.parametrize("activation", ["tanh", "elu", "gelu"])
def test_refuses_activations_that_can_be_negative(activation):
    """Goodness is a sum of squares: a tanh network trained to below chance on MNIST without a word."""
    with pytest.raises(ValueError, match=f"never negative .* unit 1 has {activation.upper()[:1]}"):
        make("forward_forward", ll.models.mlp(20, [8, 8], 4, activation=activation), 4)
    make("forward_forward", ll.models.mlp(20, [8, 8], 4), 4)  # ReLU, Hinton's


def test_refuses_too_few_inputs_for_the_labels():
    with pytest.raises(ValueError, match="fewer than 10 labels"):
        make("forward_forward", ll.models.mlp(5, [8], 10), 10)


def test_stops_on_validation_accuracy_only_and_says_why(blobs):
    train, val, test = blobs
    algo = ff(hidden=(8,), features=20, classes=4)
    with pytest.raises(ValueError, match="not meaningful"):
        ll.Trainer(algo, train, val, test, monitor="val_loss")
    trainer = ll.Trainer(algo, train, val, test)
    assert "not meaningful" in trainer.config()["trainer"]["stopping_rule_note"]
    # The rule itself is the one every algorithm gets, so a report does not flag it as different.
    backprop = make("backprop", ll.models.mlp(20, [8], 4), 4)
    assert trainer.stopping_rule() == ll.Trainer(backprop, train, val, test).stopping_rule()


@pytest.mark.parametrize(
    "prediction, negatives, trained",
    [("goodness", "random", False), ("readout", "random", True), ("goodness", "hard", True)],
)
def test_readout_trains_only_where_something_uses_it(prediction, negatives, trained):
    algo = ff(prediction=prediction, negatives=negatives)
    algo.train_step(torch.randn(16, 6), torch.randint(0, 3, (16,)))
    assert bool(torch.any(algo.readout.weight != 0)) == trained


def test_peer_normalisation_by_hand_and_checkpointed():
    """loeweX's peer loss: the running mean takes 0.1 of this batch's mean activity per feature, and the loss
    is the spread of the features' running means; the running means travel with the rule's state."""
    algo = ff(hidden=(4, 4), peer_normalisation=0.03)
    h = torch.tensor([[1.0, 0.0, 2.0, 0.0], [3.0, 0.0, 0.0, 1.0]])
    running = 0.9 * 0.5 + 0.1 * h.mean(0)  # [0.65, 0.45, 0.55, 0.5]
    expected = ((running.mean() - running) ** 2).mean()
    assert torch.allclose(algo.peer_loss(0, h), expected)
    assert torch.allclose(algo.aux["peer_means"].unit1, running)
    assert torch.equal(algo.aux["peer_means"].unit2, torch.full((4,), 0.5))  # unit 2 untouched

    x, y = torch.randn(12, 6), torch.arange(12) % 3
    algo.train_step(x, y)
    copy_ = ff(hidden=(4, 4), peer_normalisation=0.03)
    copy_.load_state_dict(algo.state_dict())
    for name in ("unit1", "unit2"):
        assert torch.equal(getattr(copy_.aux["peer_means"], name), getattr(algo.aux["peer_means"], name))
    # Peer normalisation changes the step: the same start and batch without it end elsewhere (plain SGD:
    # Adam's first step is the gradient's sign, which the small peer term need not change).
    sgd = {"optimizer": "sgd", "lr": 0.1}
    with_peer, without = ff(peer_normalisation=0.03, **sgd), ff(**sgd)
    with_peer.train_step(x, y)
    without.train_step(x, y)
    assert not torch.equal(with_peer.net[0][1].weight, without.net[0][1].weight)


def test_loewex_initialisation():
    torch.manual_seed(0)
    algo = make("forward_forward", ll.models.mlp(784, [1000, 1000], 10), 10, init="loewex")
    for unit in algo.units:
        linear = [m for m in unit.modules() if isinstance(m, torch.nn.Linear)][0]
        assert torch.equal(linear.bias, torch.zeros_like(linear.bias))
        assert linear.weight.std().item() == pytest.approx(1000**-0.5, rel=0.02)
    with pytest.raises(ll.algorithms.HyperparameterError, match="init.*torch, loewex"):
        ff(init="xavier")
