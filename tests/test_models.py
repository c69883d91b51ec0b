import pytest
import torch
from torch import nn

from localearn import models


def test_mlp_units_and_shapes():
    net = models.mlp(784, [1000, 1000], 10)
    assert len(net) == 3  # two hidden units and the head
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert isinstance(net[0][0], torch.nn.Flatten)


def test_cnn_units_and_odd_image_sizes():
    net = models.cnn(1, 10, channels=(8, 16, 32), image_size=28)  # 28 -> 14 -> 7 -> 3
    assert len(net) == 4
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    "spec, shape, units",
    [("mlp:64,32", (3, 8, 8), 3), ("cnn:4,8", (3, 8, 8), 3), ("mlp", (20,), 3), ("cnn", (3, 32, 32), 4)],
)
def test_from_spec(spec, shape, units):
    net = models.from_spec(spec, shape, 5)
    assert len(net) == units
    assert net(torch.zeros(2, *shape)).shape == (2, 5)


@pytest.mark.parametrize(
    "spec, shape, match",
    [
        ("resnet", (20,), "unknown model"),
        ("mlp:a,b", (20,), "integers"),
        ("cnn", (20,), "square images"),
        ("mlp:10", (20,), None),
        ("mlp:10:swish", (20,), "unknown option 'swish'; valid: relu, tanh, elu, gelu, nobias"),
        ("cnn:4:nobias", (3, 8, 8), "valid: relu, tanh, elu, gelu$"),
    ],
)
def test_from_spec_errors(spec, shape, match):
    if match is None:
        models.from_spec(spec, shape, 2)
        return
    with pytest.raises(ValueError, match=match):
        models.from_spec(spec, shape, 2)


def test_bad_sizes_and_activation():
    with pytest.raises(ValueError, match="hidden"):
        models.mlp(10, [0], 2)
    with pytest.raises(ValueError, match="relu, tanh"):
        models.mlp(10, [4], 2, activation="swish")


def test_from_spec_options():
    net = models.from_spec("mlp:8,8:tanh:nobias", (6,), 3)
    assert isinstance(net[0][2], torch.nn.Tanh) and net[0][1].bias is None and net[2][0].bias is None
    assert isinstance(models.from_spec("cnn:4:elu", (3, 8, 8), 3)[0][1], torch.nn.ELU)
    # No options: ReLU with biases, as before.
    net = models.from_spec("mlp:8", (6,), 3)
    assert isinstance(net[0][2], torch.nn.ReLU) and net[0][1].bias is not None


def test_he_initialisation():
    """mlp:...:he is the Mono-Forward reference's: He-uniform hidden weights, head N(0, 0.01), zero biases."""
    torch.manual_seed(0)
    net = models.from_spec("mlp:1000,1000:he", (1, 28, 28), 10)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for layer in linears:
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    for layer in linears[:-1]:
        bound = (6 / layer.in_features) ** 0.5
        assert layer.weight.abs().max() <= bound
        assert layer.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.02)  # uniform's SD
    assert linears[-1].weight.std().item() == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError, match="unknown init 'xavier'; valid: torch, he"):
        models.mlp(4, [3], 2, init="xavier")
