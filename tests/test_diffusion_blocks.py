"""DiffusionBlocks: the block boundaries and widened ranges against the reference values, the noise levels a
block draws, EDM's coefficients by hand, which parameters a step moves, inference's block order, the
paper's random block draw, and the backprop baseline on the same backbone."""

import copy
import math

import pytest
import torch

import localearn as ll
from localearn.algorithms import HyperparameterError, make
from localearn.algorithms.diffusion_blocks import P_MEAN, P_STD, block_boundaries, training_ranges
from localearn.algorithms.diffusion_blocks_network import ResidualMLP, edm_coefficients
from localearn.experiments import spec as run_spec


@pytest.mark.parametrize(
    "blocks, expected",
    [
        (2, [0.002, 0.3012, 80]),
        (3, [0.002, 0.1796, 0.5050, 80]),
        (4, [0.002, 0.1341, 0.3012, 0.6766, 80]),
        (6, [0.002, 0.0943, 0.1796, 0.3012, 0.5050, 0.9617, 80]),
    ],
)
def test_equiprobable_boundaries(blocks, expected):
    """Equal probability under the *truncated* log-normal (research notes, section 5: the code's formula)."""
    assert [round(s, 4) for s in block_boundaries(blocks)] == pytest.approx(expected, abs=1e-4)


def test_widened_ranges_and_uniform_partition():
    ranges = training_ranges(block_boundaries(3), gamma=0.05)
    # Block 0 holds the highest noise.
    expected = [(0.392, 80), (0.1706, 0.5318), (0.002, 0.2249)]
    for (lo, hi), (elo, ehi) in zip(ranges, expected, strict=True):
        assert (round(lo, 4), round(hi, 4)) == pytest.approx((elo, ehi), abs=1e-4)
    uniform = block_boundaries(3, "uniform")
    steps = [math.log(b) - math.log(a) for a, b in zip(uniform[:-1], uniform[1:], strict=True)]
    assert steps == pytest.approx([math.log(80 / 0.002) / 3] * 3)


def test_a_blocks_noise_levels_follow_the_truncated_law_within_its_range():
    torch.manual_seed(0)
    algo = make("diffusion_blocks", "resmlp:8,6", 3, input_shape=(5,))
    for block, (lo, hi) in enumerate(algo.ranges):
        sigma = algo.sample_sigma(block, 20000).double()
        assert lo <= float(sigma.min()) and float(sigma.max()) <= hi
        # Quantiles of ln sigma against the normal truncated to the range, by its inverse CDF.
        normal = torch.distributions.Normal(torch.tensor(P_MEAN, dtype=torch.float64), P_STD)
        a, b = normal.cdf(torch.tensor(math.log(lo))), normal.cdf(torch.tensor(math.log(hi)))
        probabilities = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
        expected = normal.icdf(a + probabilities * (b - a))
        assert torch.allclose(torch.quantile(sigma.log(), probabilities), expected, atol=0.03)


def test_edm_coefficients_by_hand():
    c = edm_coefficients(torch.tensor([0.5, 2.0], dtype=torch.float64))
    # sigma = 0.5: sigma^2 + sigma_data^2 = 0.5; sigma = 2: 4.25.
    assert c["c_skip"].tolist() == pytest.approx([0.25 / 0.5, 0.25 / 4.25])
    assert c["c_out"].tolist() == pytest.approx([0.25 / math.sqrt(0.5), 1.0 / math.sqrt(4.25)])
    assert c["c_in"].tolist() == pytest.approx([1 / math.sqrt(0.5), 1 / math.sqrt(4.25)])
    assert c["c_noise"].tolist() == pytest.approx([math.log(0.5) / 4, math.log(2.0) / 4])
    assert c["weight"].tolist() == pytest.approx([0.5 / 0.0625, 4.25 / 1.0])


def test_a_step_moves_only_the_chosen_block_and_the_shared_parts():
    torch.manual_seed(0)
    algo = make("diffusion_blocks", "resmlp:8,6", 3, input_shape=(5,))
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    groups = algo.parameter_groups()
    seen = set()
    for _ in range(12):
        before = {n: [p.detach().clone() for p in g] for n, g in {**groups.local, **groups.shared}.items()}
        stats = algo.train_step(x, y)
        (chosen,) = [k.removeprefix("loss_") for k in stats if k.startswith("loss_block")]
        seen.add(chosen)
        for name, params in {**groups.local, **groups.shared}.items():
            moved = any(not torch.equal(p, b) for p, b in zip(params, before[name], strict=True))
            # A block's layers and the shared parts move; the modulation of an unused noise level starts at
            # zero, so every shared part that the step runs through has a gradient.
            assert moved == (name == chosen or name in groups.shared), name
    assert seen == {"block1", "block2", "block3"}  # a uniform draw per batch reaches every block


def test_one_block_infers_in_one_euler_step_from_pure_noise():
    """B = 1: the grid is [sigma_max, sigma_min] (one Euler step, then the final denoise), not a jump from
    pure noise to the final denoise, which reads the noise as a nearly clean label and scores at chance."""
    torch.manual_seed(0)
    algo = make("diffusion_blocks", "resmlp:8,2", 3, input_shape=(5,), blocks=1)
    assert algo.inference_grid == pytest.approx([80, 0.002])


def test_inference_calls_blocks_from_high_to_low_noise():
    torch.manual_seed(0)
    algo = make("diffusion_blocks", "resmlp:8,6", 3, input_shape=(5,), inference_steps=4)
    assert algo.inference_grid == pytest.approx([80, 0.5050, 0.1796, 0.002], abs=1e-4)
    called = []
    for b, layers in enumerate(algo.block_layers):
        for i in layers:
            algo.net.layers[i].register_forward_hook(lambda *_, b=b: called.append(b))
    algo.predict(torch.randn(4, 5))
    order = [b for i, b in enumerate(called) if i == 0 or called[i - 1] != b]
    # 80 and 0.505 in block 0, 0.1796 in block 1, then 0.002 and the final denoise in block 2.
    assert order == [0, 1, 2]
    assert [algo.block_of(s) for s in (80, 0.6, 0.3, 0.18, 0.01, 0.002)] == [0, 0, 1, 1, 2, 2]


def test_inference_is_a_function_of_the_weights_and_the_evaluation_seed():
    torch.manual_seed(0)
    algo = make("diffusion_blocks", "resmlp:8,6", 3, input_shape=(5,))
    x = torch.randn(10, 5)
    algo.begin_evaluation()
    first = algo.predict(x)
    algo.begin_evaluation()
    assert torch.equal(algo.predict(x), first)
    paper = make("diffusion_blocks", copy.deepcopy(algo.net), 3, init_noise="paper")
    paper.eval_seed = algo.eval_seed
    paper.begin_evaluation()
    assert not torch.equal(paper.predict(x), first)  # sigma_max instead of sqrt(1 + sigma_max^2)


def test_random_order_learns_and_continues_from_a_saved_state(blobs):
    train, val, test = blobs
    torch.manual_seed(0)
    algo = make("diffusion_blocks", "resmlp:32,3", 4, input_shape=(20,), lr=3e-3)
    assert algo.passes_per_epoch == 3 and algo.config.order == "random"
    result = ll.Trainer(algo, train, val, test, epochs=4, batch_size=32, progress=False).fit()
    assert result.test_accuracy > 0.9 and result.data_passes == 12
    b = make("diffusion_blocks", "resmlp:32,3", 4, input_shape=(20,), lr=3e-3)
    b.load_state_dict(copy.deepcopy(algo.state_dict()))
    for _ in range(3):
        assert torch.equal(
            algo.train_step(train.x[:32], train.y[:32])["loss"],
            b.train_step(train.x[:32], train.y[:32])["loss"],
        )


def test_the_backprop_baseline_is_the_same_backbone_as_a_classifier(blobs):
    train, val, test = blobs
    torch.manual_seed(0)
    algo = make("backprop", "resmlp:32,3", 4, input_shape=(20,))
    assert isinstance(algo.net, ResidualMLP)
    result = ll.Trainer(algo, train, val, test, epochs=3, batch_size=32, progress=False).fit()
    assert result.test_accuracy > 0.9
    spec = run_spec.resolve("mnist", "diffusion_blocks")
    assert spec.model == "resmlp:256,6" and spec.batch_size == 128
    hp = spec.hyperparameters
    assert (hp["blocks"], hp["gamma"], hp["optimizer"], hp["lr"], hp["weight_decay"]) == (
        3,
        0.05,
        "adamw",
        1e-3,
        0.01,
    )
    assert run_spec.resolve("mnist", "backprop", model="resmlp").model == "resmlp:256,6"


def test_errors_name_what_is_wrong():
    with pytest.raises(HyperparameterError, match="6 residual layers do not split into blocks=4"):
        make("diffusion_blocks", "resmlp:8,6", 3, input_shape=(5,), blocks=4)
    with pytest.raises(TypeError, match="needs a network of residual layers"):
        make("diffusion_blocks", ll.models.mlp(5, [8], 3), 3)
    with pytest.raises(ValueError, match="share one width"):
        make("diffusion_blocks", "mlp:8,16", 3, input_shape=(5,))
    # An MLP spec describes one block: mlp:8,8 is two residual layers in each of the three blocks.
    assert len(make("diffusion_blocks", "mlp:8,8", 3, input_shape=(5,)).net.layers) == 6
    with pytest.raises(ValueError, match="width and a number of layers"):
        make("diffusion_blocks", "resmlp:8", 3, input_shape=(5,))
    with pytest.raises(HyperparameterError, match="equiprobable, uniform"):
        make("diffusion_blocks", "resmlp:8,6", 3, input_shape=(5,), partition="quantile")
    with pytest.raises(HyperparameterError, match="gamma"):
        make("diffusion_blocks", "resmlp:8,6", 3, input_shape=(5,), gamma=1.5)
