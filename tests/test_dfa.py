"""Direct feedback alignment: the update rule by hand, the feedback matrices, and zero-init learning."""

import math

import pytest
import torch
import torch.nn.functional as F

import localearn as ll
from localearn.algorithms import HyperparameterError, make


def test_update_equals_hand_computed_dfa_step():
    """A two-layer tanh network, one SGD step: the hidden unit follows B e through tanh', the head its
    true gradient."""
    torch.manual_seed(0)
    net = ll.models.mlp(3, [4], 2, activation="tanh")
    algo = make("dfa", net, 2, input_shape=(3,), lr=0.5, optimizer="sgd", momentum=0.0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(5, 3, generator=g), torch.tensor([0, 1, 1, 0, 1])
    W1, b1 = net[0][1].weight.clone(), net[0][1].bias.clone()
    W2, b2 = net[1][0].weight.clone(), net[1][0].bias.clone()
    B = algo.feedback_matrices[0].clone()
    assert B.shape == (4, 2)
    # By hand.
    h1 = torch.tanh(x @ W1.T + b1)
    logits = h1 @ W2.T + b2
    e = (torch.softmax(logits, 1) - F.one_hot(y, 2).float()) / 5
    delta1 = (e @ B.T) * (1 - h1**2)
    expected = {
        "0.1.weight": W1 - 0.5 * delta1.T @ x,
        "0.1.bias": b1 - 0.5 * delta1.sum(0),
        "1.0.weight": W2 - 0.5 * e.T @ h1,
        "1.0.bias": b2 - 0.5 * e.sum(0),
    }
    loss = algo.train_step(x, y)["loss"]
    assert torch.allclose(loss, F.cross_entropy(logits, y))
    for key, value in expected.items():
        assert torch.allclose(net.state_dict()[key], value, atol=1e-6), key
    # The hidden unit did not follow backprop's W2^T e (the test tells the two rules apart).
    delta_bp = (e @ W2) * (1 - h1**2)
    assert not torch.allclose(net.state_dict()["0.1.weight"], W1 - 0.5 * delta_bp.T @ x, atol=1e-4)


@pytest.mark.parametrize(
    "init, bound",
    [
        ("nokland", lambda n, c: 1 / math.sqrt(n)),
        ("unit", lambda n, c: 1.0),
        ("xavier", lambda n, c: math.sqrt(6 / (n + c))),
    ],
)
def test_feedback_matrices_scale_shape_and_fixed(init, bound, blobs):
    torch.manual_seed(0)
    algo = make("dfa", ll.models.mlp(20, [64, 32], 4), 4, feedback_init=init)
    matrices = [algo.feedback_matrices[i].clone() for i in range(2)]
    for matrix, n in zip(matrices, (64, 32), strict=True):
        assert matrix.shape == (n, 4) and not matrix.requires_grad
        assert bound(n, 4) * 0.9 < matrix.abs().max() <= bound(n, 4)  # uniform in [-bound, bound]
    assert not torch.allclose(matrices[0][:32], matrices[1])  # independent, not shared prefixes
    train = blobs[0]
    for i in range(3):
        algo.train_step(train.x[i * 32 : (i + 1) * 32], train.y[i * 32 : (i + 1) * 32])
    assert all(torch.equal(algo.feedback_matrices[i], matrices[i]) for i in range(2))  # never trained
    assert "feedback_matrices.unit1" in algo.state_dict()["aux"]  # saved with the run


def test_learns_from_zero_weights_with_tanh_where_backprop_cannot(blobs):
    train, val, test = blobs
    accuracy = {}
    for name in ("dfa", "backprop"):
        torch.manual_seed(0)
        net = ll.models.mlp(20, [32, 32], 4, activation="tanh")
        for p in net.parameters():
            torch.nn.init.zeros_(p)
        algo = make(name, net, 4, lr=3e-3)
        accuracy[name] = ll.Trainer(algo, train, val, test, epochs=8, batch_size=32, progress=False).fit()
    assert accuracy["dfa"].test_accuracy > 0.9
    # Backprop's hidden units get W^T e = 0 and never move: only the head's biases learn.
    assert accuracy["backprop"].test_accuracy < 0.4


def test_convolutional_unit_gets_the_projected_error_reshaped_to_its_output():
    torch.manual_seed(0)
    net = ll.models.cnn(3, 4, channels=(2, 3), image_size=8)
    algo = make("dfa", net, 4, input_shape=(3, 8, 8), lr=1.0, optimizer="sgd", momentum=0.0)
    assert algo.feedback_matrices[0].shape == (2 * 4 * 4, 4)
    assert algo.feedback_matrices[1].shape == (3 * 2 * 2, 4)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    conv = net[0][0]
    before = conv.weight.clone()
    with torch.no_grad():
        logits = net(x)
    e = (torch.softmax(logits, 1) - F.one_hot(y, 4).float()) / 6
    # The unit's own backward from B_1 e laid out as its [C, H, W] output.
    out = net[0](x)
    (expected_grad,) = torch.autograd.grad(
        out, conv.weight, (e @ algo.feedback_matrices[0].T).view(6, 2, 4, 4)
    )
    algo.train_step(x, y)
    assert torch.allclose(conv.weight, before - expected_grad, atol=1e-6)


def test_bad_feedback_init_lists_choices():
    with pytest.raises(HyperparameterError, match="nokland, unit, xavier"):
        make("dfa", ll.models.mlp(4, [4], 2), 2, feedback_init="gaussian")
