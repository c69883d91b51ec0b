"""Forward gradients: no reverse pass for FG-W, unbiased estimates for both variants, clear refusals."""

import copy

import pytest
import torch
import torch.nn.functional as F

import localearn as ll
from localearn.algorithms import HyperparameterError, make


def fg(hidden=(8,), features=6, classes=3, **hp):
    torch.manual_seed(0)
    net = ll.models.mlp(features, list(hidden), classes)
    return make("forward_gradient", net, classes, input_shape=(features,), **hp)


def flat_grads(params):
    return torch.cat([p.grad.flatten() for p in params])


def cosine(a, b):
    return float(F.cosine_similarity(a, b, dim=0))


def forbid_reverse_mode(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a reverse pass ran")

    monkeypatch.setattr(torch.autograd, "backward", refuse)
    monkeypatch.setattr(torch.autograd, "grad", refuse)
    monkeypatch.setattr(torch.Tensor, "backward", refuse)


def test_weight_variant_trains_with_no_reverse_pass_at_all(blobs, monkeypatch):
    train, val, test = blobs
    torch.manual_seed(0)
    algo = make("forward_gradient", ll.models.mlp(20, [32, 32], 4), 4, lr=1e-2, num_tangents=8)
    forbid_reverse_mode(monkeypatch)
    result = ll.Trainer(algo, train, val, test, epochs=8, batch_size=32, progress=False).fit()
    assert result.test_accuracy > 0.9
    # The patch bites: the local_activity variant, which backpropagates within a unit, is stopped by it.
    other = make("forward_gradient", ll.models.mlp(20, [32], 4), 4, variant="local_activity")
    with pytest.raises(AssertionError, match="reverse pass"):
        other.train_step(train.x[:8], train.y[:8])


def test_weight_variant_is_unbiased(monkeypatch):
    """Averaged over many tangents, the estimate lines up with the true gradient; one tangent does not."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    exact = fg()
    F.cross_entropy(exact.net(x), y).backward()
    true = flat_grads(exact.net.parameters())
    cosines = {}
    for tangents in (1, 4000):
        algo = fg(num_tangents=tangents)
        algo.compute_gradients(x, y)
        cosines[tangents] = cosine(flat_grads(algo.net.parameters()), true)
    assert cosines[4000] > 0.95
    assert cosines[1] < 0.6  # 83 parameters: a single tangent's estimate is mostly noise


def local_gradients(algo, x, y):
    """True local gradients: unit 1 with its readout, unit 2 (its input detached) with the network's head."""
    net, readout = algo.net, algo.readouts[0]
    h1 = net[0](x)
    loss1 = F.cross_entropy(readout(h1), y)
    loss2 = F.cross_entropy(net[2](net[1](h1.detach())), y)
    true1 = torch.autograd.grad(loss1, [*net[0].parameters(), *readout.parameters()])
    true2 = torch.autograd.grad(loss2, [*net[1].parameters(), *net[2].parameters()])
    return (
        torch.cat([t.flatten() for t in true1[:2]]),
        torch.cat([t.flatten() for t in true2[:2]]),
        true1,
        true2,
    )


@pytest.mark.parametrize("groups", [1, 4])
def test_local_activity_is_unbiased_for_each_units_local_loss(groups):
    """The estimate of unit i is the gradient of its own local loss (not the end-to-end one); heads exact."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    algo = fg(hidden=(8, 8), variant="local_activity", num_tangents=4000, groups=groups)
    unit1_true, unit2_true, true1, true2 = local_gradients(algo, x, y)
    algo.compute_gradients(x, y)
    assert cosine(flat_grads(algo.net[0].parameters()), unit1_true) > 0.95
    assert cosine(flat_grads(algo.net[1].parameters()), unit2_true) > 0.95
    # The heads get their exact local gradients.
    assert torch.allclose(algo.readouts[0][1].weight.grad, true1[2], atol=1e-6)
    assert torch.allclose(algo.net[2][0].weight.grad, true2[2], atol=1e-6)


@pytest.mark.parametrize("groups, tangents", [(1, 1), (3, 2), (8, 1)])
def test_the_grouped_linear_head_gives_the_same_gradients(groups, tangents, monkeypatch):
    """An MLP's units take the shortcut (one grouped product for W's tangent); with it turned off, every
    (tangent, group) runs through the head on its own. Same seed, same gradients, to rounding error."""
    from localearn.algorithms import forward_gradient

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)

    def gradients():
        algo = fg(hidden=(8, 7), variant="local_activity", num_tangents=tangents, groups=groups)
        algo.compute_gradients(x, y)
        return [p.grad for p in [*algo.net.parameters(), *algo.readouts.parameters()]]

    fast = gradients()
    shortcut = forward_gradient.linear_head_split
    monkeypatch.setattr(forward_gradient, "linear_head_split", lambda *args: None)
    slow = gradients()
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(fast, slow, strict=True))
    assert not all(torch.equal(a, torch.zeros_like(a)) for a in fast)
    # The shortcut is taken for these units (a ReLU, then a head that starts with a linear map).
    algo = fg(hidden=(8, 7), variant="local_activity", groups=groups)
    pre, post, head = algo.local_units[0]
    assert shortcut(post, head, torch.zeros(2, 8)) is not None


def test_groups_reduce_the_variance_of_one_tangent():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)
    mean_cosine = {}
    for groups in (1, 8):
        algo = fg(hidden=(8, 8), variant="local_activity", groups=groups)
        true = local_gradients(algo, x, y)[1]
        cosines = []
        for _ in range(30):
            algo.net.zero_grad()
            algo.compute_gradients(x, y)
            cosines.append(cosine(flat_grads(algo.net[1].parameters()), true))
        mean_cosine[groups] = sum(cosines) / len(cosines)
    assert mean_cosine[8] > mean_cosine[1] + 0.1  # seen: 0.47 against 0.30


def test_local_activity_draws_noise_per_example():
    """Two copies of one example in a batch get different perturbations: the estimate for the duplicated
    batch is not the single-example estimate (as it would be with one tangent shared by the batch)."""
    algo = fg(variant="local_activity")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(1, 6, generator=g), torch.tensor([2])
    state = algo.extra_state()  # the units' tangent generators
    algo.compute_gradients(x.repeat(2, 1), y.repeat(2))
    pair = algo.net[0][1].weight.grad.clone()
    algo.net.zero_grad()
    algo.load_extra_state(state)
    algo.compute_gradients(x, y)
    assert not torch.allclose(pair, algo.net[0][1].weight.grad)


def test_locality_follows_the_variant():
    assert fg().locality == "global"
    assert fg(variant="local_activity").locality == "local"


def test_refuses_batch_norm_and_bad_hyperparameters():
    net = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4)), torch.nn.Linear(4, 2)
    )
    with pytest.raises(ValueError, match="BatchNorm1d.*LayerNorm"):
        make("forward_gradient", net, 2)
    with pytest.raises(HyperparameterError, match="weight, local_activity"):
        fg(variant="node")
    with pytest.raises(HyperparameterError, match="num_tangents=0"):
        fg(num_tangents=0)
    with pytest.raises(HyperparameterError, match="groups=0"):
        fg(groups=0)


@pytest.mark.parametrize("variant", ["weight", "local_activity"])
def test_resume_draws_the_same_tangents(variant, blobs):
    train = blobs[0]
    a = fg(hidden=(16,), features=20, classes=4, variant=variant)
    a.train_step(train.x[:32], train.y[:32])
    b = fg(hidden=(16,), features=20, classes=4, variant=variant)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # Adam's state tensors would be shared otherwise
    a.train_step(train.x[32:64], train.y[32:64])
    b.train_step(train.x[32:64], train.y[32:64])
    assert torch.equal(a.net[0][1].weight, b.net[0][1].weight)


def test_users_see_no_warning_from_inside_torch():
    """torch.func.jvp's first call warns that torch.jit.script is deprecated (torch's own use of it): a
    fresh process, every warning shown, sees none of it from a forward-gradient step."""
    import subprocess
    import sys

    code = (
        "import torch, localearn as ll\n"
        "for variant in ('weight', 'local_activity'):\n"
        "    algo = ll.make('forward_gradient', ll.models.mlp(4, [4], 2), 2, variant=variant)\n"
        "    algo.train_step(torch.randn(3, 4), torch.tensor([0, 1, 0]))\n"
    )
    done = subprocess.run([sys.executable, "-W", "always", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "jit.script" not in done.stderr
