"""DiffusionBlocks (Shing, Akiba et al., arXiv 2506.14202; ICLR 2026: "Block-wise Neural Network Training via
Diffusion Interpretation"): the L residual layers of a network, split into B blocks, each trained alone as
a denoiser of the label embedding over its own range of noise levels.

    noise levels: ln sigma ~ N(P_mean = -1.2, P_std = 1.2) truncated to [0.002, 80];
      block boundaries of equal probability under the *truncated* law:
      q_b = Phi(lo) + (b / B) (Phi(hi) - Phi(lo)),  sigma_b = exp(P_mean + P_std Phi^-1(q_b))
      (partition=uniform: equal steps in ln sigma); block 0 holds the highest noise.
    one step: a block b drawn uniformly; its range widened by gamma of its log-range on each side (clamped);
      sigma by inverse CDF of the truncated log-normal within it; y = E[label] / ||E[label]||;
      z = y + sigma eps; EDM preconditioning with sigma_data = 0.5 and s2 = sigma^2 + sigma_data^2:
      c_in = 1/sqrt(s2), c_skip = sigma_data^2/s2, c_out = sigma sigma_data/sqrt(s2), c_noise = ln(sigma)/4
      F = layers_b(c_in z; stem(x) + e(c_noise))   (only block b's layers run: a residual MLP whose state
                                                    is the label, FiLM-conditioned on the image and sigma)
      logits = head(adaLN(c_out F + c_skip z; c_noise))                 (as the official code's denoise)
      L = w(sigma) CE(logits, label),  w(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2
      a backward through block b and the shared parts (stem, embeddings, head) only.
    inference: z = sqrt(1 + sigma_max^2) eps (the code; sigma_max eps in the paper), Euler steps on the
      equi-probability grid, z <- z + (sigma' - sigma) (z - D) / sigma, D = softmax(logits) @ E_normalised,
      each step calling only the block whose range holds sigma; the logits of a last denoise at sigma_min.

One epoch is B passes over the data (each block sees the data once on average), as the reference code's
"epochs x B". The skip connection c_skip z lets the head read a nearly clean z directly, so that with the
weight w(sigma) = 1 / c_out^2 every noise level's loss reaches the layers at a comparable scale.
The label embedding is L2-normalised in training and in inference alike (the code decodes with the raw
weights at inference, a mismatch the research notes flag). The same network as an ordinary classifier (x
in, logits out, every layer, no noise) is the backprop baseline: ``--algo backprop --model resmlp``. The
networks and EDM's coefficients are ``diffusion_blocks_network.py``; this file is the rule.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from .base import Algorithm, ParameterGroups
from .config import HyperparameterError, OptimizerConfig, check_choice
from .diffusion_blocks_network import Denoiser, ResidualMLP, edm_coefficients

P_MEAN, P_STD = -1.2, 1.2
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0
PARTITIONS = ("equiprobable", "uniform")
ORDERS = ("random", "cyclic")
INIT_NOISES = ("code", "paper")


# -- noise levels ---------------------------------------------------------------------------------------
def _cdf(sigma: float) -> float:
    return float(torch.special.ndtr(torch.tensor((math.log(sigma) - P_MEAN) / P_STD, dtype=torch.float64)))


def _sigma_at(q: torch.Tensor) -> torch.Tensor:
    return torch.exp(P_MEAN + P_STD * torch.special.ndtri(q))


def block_boundaries(blocks: int, partition: str = "equiprobable") -> list[float]:
    """sigma_0 < ... < sigma_B: equal probability under the truncated log-normal, or equal log steps."""
    if partition == "uniform":
        steps = torch.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), blocks + 1, dtype=torch.float64)
        return steps.exp().tolist()
    q = torch.linspace(_cdf(SIGMA_MIN), _cdf(SIGMA_MAX), blocks + 1, dtype=torch.float64)
    sigmas = _sigma_at(q)
    sigmas[0], sigmas[-1] = SIGMA_MIN, SIGMA_MAX  # exact ends, not their round trip through Phi
    return sigmas.tolist()


def training_ranges(boundaries: Sequence[float], gamma: float) -> list[tuple[float, float]]:
    """Each block's range, block 0 the highest noise, widened by gamma of its log-range on each side."""
    ranges = []
    for lo, hi in reversed(list(zip(boundaries[:-1], boundaries[1:], strict=True))):
        spread = gamma * (math.log(hi) - math.log(lo))
        ranges.append((max(SIGMA_MIN, lo * math.exp(-spread)), min(SIGMA_MAX, hi * math.exp(spread))))
    return ranges


# -- the rule ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class DiffusionBlocksConfig(OptimizerConfig):
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    blocks: int = 3  # B
    gamma: float = 0.05  # each block's range widened by this share of its log-range on each side
    partition: str = "equiprobable"  # equiprobable | uniform (equal steps in ln sigma; the ablation)
    order: str = "random"  # random: a block drawn per batch (the paper) | cyclic: pass b trains block b
    # Points of the inference grid (0: B, as the code; 2 where B = 1). A fine grid follows the probability
    # flow to a label drawn from the model's belief; 2 points jump to its mean and keep the likeliest label.
    inference_steps: int = 0
    init_noise: str = "code"  # code: sqrt(1 + sigma_max^2) | paper: sigma_max

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("partition", self.partition, PARTITIONS)
        check_choice("order", self.order, ORDERS)
        check_choice("init_noise", self.init_noise, INIT_NOISES)
        if not isinstance(self.blocks, int) or self.blocks < 1:
            raise HyperparameterError(f"blocks={self.blocks!r} must be a positive integer")
        if not 0 <= self.gamma < 1:
            raise HyperparameterError(f"gamma={self.gamma!r} must lie in [0, 1)")
        if self.inference_steps == 1 or self.inference_steps < 0:
            raise HyperparameterError(f"inference_steps={self.inference_steps!r} must be 0 (B) or >= 2")


class DiffusionBlocks(Algorithm):
    name = "diffusion_blocks"
    Config = DiffusionBlocksConfig
    default_model = "resmlp"
    convolutional = False

    @classmethod
    def build_network(
        cls, model: str, input_shape: Sequence[int], num_classes: int, config: Any
    ) -> nn.Module:
        kind, sizes, _ = models.parse_spec(model)
        if kind == "mlp":  # mlp:W,...,W describes one block: that many residual layers of width W in each
            sizes = sizes or list(models.MODEL_KINDS["mlp"].default_sizes)
            if len(set(sizes)) > 1:
                raise ValueError(f"diffusion_blocks' residual layers share one width; got {model!r}")
            return ResidualMLP(input_shape, num_classes, width=sizes[0], layers=len(sizes) * config.blocks)
        if kind not in ("resmlp", "vit"):
            raise ValueError(
                "diffusion_blocks needs residual layers (a spec such as resmlp:256,6 or vit:192,6,4); "
                f"got {model!r}"
            )
        return models.from_spec(model, input_shape, num_classes)

    @classmethod
    def example_network(cls, input_shape: Sequence[int], num_classes: int) -> nn.Module:
        return ResidualMLP(input_shape, num_classes, width=16, layers=6)

    def __init__(self, net: nn.Module, num_classes: int, **kwargs: Any) -> None:
        super().__init__(net, num_classes, **kwargs)
        c = self.config
        if not isinstance(net, Denoiser):
            raise TypeError(
                "diffusion_blocks needs a network of residual layers conditioned on the noise level: "
                "pass a model spec such as 'resmlp:256,6' or 'vit:192,6,4', or a Denoiser, "
                f"not a {type(net).__name__}"
            )
        layers = len(net.layers)
        if layers % c.blocks:
            raise HyperparameterError(
                f"the network's {layers} residual layers do not split into blocks={c.blocks} equal blocks"
            )
        per_block = layers // c.blocks
        self.block_layers = [range(b * per_block, (b + 1) * per_block) for b in range(c.blocks)]
        self.boundaries = block_boundaries(c.blocks, c.partition)
        self.ranges = training_ranges(self.boundaries, c.gamma)
        self.range_cdfs = [(_cdf(lo), _cdf(hi)) for lo, hi in self.ranges]  # for sample_sigma, every step
        # B points (the code's), but never one: from sigma_max straight to the final denoise at sigma_min,
        # the network would read pure noise as a nearly clean label (B = 1 predicted at chance).
        steps = c.inference_steps or max(c.blocks, 2)
        grid = block_boundaries(steps - 1, c.partition)
        self.inference_grid = list(reversed(grid))  # sigma_max ... sigma_min
        self.passes_per_epoch = c.blocks
        self.optimizers = [
            self.make_optimizer(p for i in block for p in net.layers[i].parameters())
            for block in self.block_layers
        ]
        self.optimizers.append(self.make_optimizer(p for _, p in self._shared()))

    def _shared(self) -> list[tuple[str, nn.Parameter]]:
        """Everything outside the residual layers: (the module's name, a parameter)."""
        return [(n.split(".")[0], p) for n, p in self.net.named_parameters() if not n.startswith("layers.")]

    def parallel_refusal(self) -> str | None:
        return (
            "diffusion_blocks' blocks share the stem, the label embedding and the head, which learn on every "
            "step: stages would have to exchange those gradients, which localearn.parallel does not do"
        )

    def parameter_groups(self) -> ParameterGroups:
        shared: dict[str, list[nn.Parameter]] = {}
        for name, p in self._shared():
            shared.setdefault(name, []).append(p)
        local = {
            f"block{b + 1}": [p for i in block for p in self.net.layers[i].parameters()]
            for b, block in enumerate(self.block_layers)
        }
        return ParameterGroups(local, shared)

    def block_of(self, sigma: float) -> int:
        """The block whose (unwidened) range holds sigma: block 0 has the highest noise."""
        above = sum(1 for b in self.boundaries[1:-1] if sigma >= b)
        return self.config.blocks - 1 - above

    def sample_sigma(self, block: int, n: int) -> torch.Tensor:
        """n noise levels in the block's widened range, by inverse CDF of the truncated log-normal."""
        lo, hi = self.range_cdfs[block]
        u = lo + (hi - lo) * torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64)
        return _sigma_at(u).clamp(*self.ranges[block]).float()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        c = self.config
        if c.order == "cyclic":
            block = self.data_pass
        else:
            block = self.random_choice(c.blocks)
        sigma = self.sample_sigma(block, len(x))
        clean = self.net.embeddings()[y]
        noise = torch.randn(clean.shape, generator=self.generator, device=self.device)
        logits = self.net.denoise(x, clean + sigma.unsqueeze(1) * noise, sigma, self.block_layers[block])
        weighted = edm_coefficients(sigma)["weight"] * F.cross_entropy(logits, y, reduction="none")
        loss = weighted.mean()
        block_optimizer, shared_optimizer = self.optimizers[block], self.optimizers[-1]
        block_optimizer.zero_grad(set_to_none=True)
        shared_optimizer.zero_grad(set_to_none=True)
        loss.backward()  # only block b's layers ran: nothing else but the shared parts has a gradient
        block_optimizer.step()
        shared_optimizer.step()
        return {"loss": loss.detach(), f"loss_block{block + 1}": loss.detach()}

    def starting_noise(self, x: torch.Tensor) -> torch.Tensor:
        """The state inference starts from for the batch x, from the evaluation generator."""
        scale = math.sqrt(1 + SIGMA_MAX**2) if self.config.init_noise == "code" else SIGMA_MAX
        shape = (len(x), self.net.label_embedding.embedding_dim)
        return scale * torch.randn(shape, generator=self.eval_generator, device=x.device)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        net, grid = self.net, self.inference_grid
        embeddings = net.embeddings()
        z = self.starting_noise(x)
        for sigma, sigma_next in zip(grid[:-1], grid[1:], strict=True):
            level = torch.full((len(x),), sigma, device=x.device)
            logits = net.denoise(x, z, level, self.block_layers[self.block_of(sigma)])
            denoised = logits.softmax(1) @ embeddings
            z = z + (sigma_next - sigma) * (z - denoised) / sigma
        level = torch.full((len(x),), SIGMA_MIN, device=x.device)
        return net.denoise(x, z, level, self.block_layers[self.block_of(SIGMA_MIN)])
