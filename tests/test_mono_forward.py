"""Mono-Forward: the local rule, its locality, and both schedules."""

import copy

import pytest
import torch
import torch.nn.functional as F

import localearn as ll
from localearn.algorithms import make


def mf(hidden=(8, 8), features=6, classes=3, **hp):
    torch.manual_seed(0)
    return make(
        "mono_forward", ll.models.mlp(features, list(hidden), classes), classes, input_shape=(features,), **hp
    )


def test_update_equals_hand_computed_local_gradients():
    """One SGD step: unit 1 and M_1 follow dL_1 only, unit 2 and the head follow dL_2 only."""
    algo = mf(lr=0.5, optimizer="sgd", momentum=0.0)
    net, proj = algo.net, algo.projections[0][1]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 6, generator=g), torch.tensor([0, 1, 2, 1, 0])
    W1, b1, M1 = net[0][1].weight.clone(), net[0][1].bias.clone(), proj.weight.clone()
    W2, b2 = net[1][0].weight.clone(), net[1][0].bias.clone()
    Wh, bh = net[2][0].weight.clone(), net[2][0].bias.clone()
    # By hand: softmax cross-entropy gradient (p - onehot)/B through the ReLU, unit by unit.
    onehot = F.one_hot(y, 3).float()
    z1 = x @ W1.T + b1
    a1 = z1.clamp(min=0)
    e1 = (torch.softmax(a1 @ M1.T, 1) - onehot) / 5
    gM1 = e1.T @ a1
    d1 = (e1 @ M1) * (z1 > 0)
    gW1, gb1 = d1.T @ x, d1.sum(0)
    z2 = a1 @ W2.T + b2
    a2 = z2.clamp(min=0)
    e2 = (torch.softmax(a2 @ Wh.T + bh, 1) - onehot) / 5
    gWh, gbh = e2.T @ a2, e2.sum(0)
    d2 = (e2 @ Wh) * (z2 > 0)
    gW2, gb2 = d2.T @ a1, d2.sum(0)
    algo.train_step(x, y)
    for new, old, grad in [
        (net[0][1].weight, W1, gW1),
        (net[0][1].bias, b1, gb1),
        (proj.weight, M1, gM1),
        (net[1][0].weight, W2, gW2),
        (net[1][0].bias, b2, gb2),
        (net[2][0].weight, Wh, gWh),
        (net[2][0].bias, bh, gbh),
    ]:
        torch.testing.assert_close(new, old - 0.5 * grad)


def test_projection_shapes_and_head_is_last_projection():
    algo = mf(hidden=(8, 5, 7), classes=3)
    assert [p[1].weight.shape for p in algo.projections] == [(3, 8), (3, 5)]
    assert algo.groups[-1][1] is algo.net[3]  # M_L is the network's head


def test_sum_prediction_adds_every_units_scores():
    algo = mf(prediction="sum")
    x = torch.randn(4, 6)
    a1 = algo.net[0](x)
    a2 = algo.net[1](a1)
    expected = algo.projections[0](a1) + algo.net[2](a2)
    torch.testing.assert_close(algo.predict(x), expected)
    last = mf(prediction="last")
    torch.testing.assert_close(last.predict(x), last.net(x))


def test_sequential_schedule_trains_one_unit_at_a_time():
    algo = mf(schedule="sequential", lr=0.1)
    assert algo.num_stages == 2
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    before = copy.deepcopy(algo.net.state_dict())
    algo.train_step(x, y)
    after = algo.net.state_dict()
    assert not torch.equal(after["0.1.weight"], before["0.1.weight"])
    assert torch.equal(after["1.0.weight"], before["1.0.weight"])  # unit 2 waits for its stage
    # Stage 1 predicts with its own readout M_1.
    torch.testing.assert_close(algo.predict(x), algo.projections[0](algo.net[0](x)))
    algo.enter(1)
    frozen = algo.net[0][1].weight.clone()
    algo.train_step(x, y)
    assert torch.equal(algo.net[0][1].weight, frozen)  # unit 1 is frozen now
    assert not torch.equal(algo.net.state_dict()["1.0.weight"], before["1.0.weight"])
    torch.testing.assert_close(algo.predict(x), algo.net(x))
    with pytest.raises(ValueError, match="cannot enter 2"):
        algo.enter(2)
    with pytest.raises(ValueError, match="cannot enter 0"):  # stages only ever go forward
        algo.enter(0)


def test_sequential_schedule_through_the_trainer(blobs):
    train, val, test = blobs
    torch.manual_seed(0)
    algo = make("mono_forward", ll.models.mlp(20, [16, 16, 16], 4), 4, schedule="sequential", lr=1e-2)
    result = ll.Trainer(algo, train, val, test, epochs=3, batch_size=32, patience=2, progress=False).fit()
    assert algo.stage == 2 and result.epochs >= 3 * 2  # every stage ran at least patience epochs
    assert result.test_accuracy > 0.9


def test_convolutional_units_get_flattened_projections(image_blobs):
    torch.manual_seed(0)
    net = ll.models.cnn(3, 4, channels=(4, 6), image_size=8)
    algo = make("mono_forward", net, 4, input_shape=(3, 8, 8))
    assert algo.projections[0][1].weight.shape == (4, 4 * 4 * 4)
    with pytest.raises(ValueError, match="input_shape"):
        make("mono_forward", ll.models.cnn(3, 4, channels=(4, 6), image_size=8), 4)


def test_bias_free_last_projection():
    """last_projection='bias_free': the head is the reference's M_L, G_L = a_L M_L^T with no bias, drawn
    afresh as the other projections, and it learns."""
    algo = mf(last_projection="bias_free", lr=0.1, optimizer="sgd")
    head = algo.net[2][0]
    assert head.bias is None and "net.2.0.bias" not in {f"net.{k}" for k in algo.net.state_dict()}
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 1, 0])
    a = algo.net[1](algo.net[0](x))
    assert torch.allclose(algo.predict(x), a @ head.weight.T)
    before = head.weight.clone()
    algo.train_step(x, y)
    assert not torch.equal(head.weight, before)
    # A state saved from it restores into a rule built the same way.
    again = mf(last_projection="bias_free", lr=0.1, optimizer="sgd")
    again.load_state_dict(algo.state_dict())
    assert torch.equal(again.net[2][0].weight, head.weight)
