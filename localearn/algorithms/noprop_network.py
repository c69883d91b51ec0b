"""NoProp's network (Li, Teh and Pascanu 2025): the noise schedules, the block of the paper's Fig. 6, and
the chain of blocks that prediction runs (Eq. 3). The rule that trains it is ``noprop.py``.

Trained end to end by backprop, the same chain is the paper's structure-matched baseline: this module
registers it as the model spec ``noprop[:WIDTH]`` (``--algo backprop --model noprop``).

The DT schedule is Nichol and Dhariwal's cosine schedule over T + 1 steps (betas clipped at 0.999) read
backwards, so alpha_bar increases with t, alpha_bar_0 is small but not zero (the KL term is defined) and
alpha_bar_T < 1 (SNR(T) is finite). The CT schedule's ends are fixed (gamma from +6 at t = 0 to -6 at
t = 1); its shape is a monotone network as in variational diffusion models. There is no official code; the
block follows the paper's Fig. 6 (widths 256 and 128 are ours).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from .config import check_choice
from .units import sinusoidal_features

VARIANTS = ("dt", "ct", "fm")
EMBEDDINGS = ("onehot", "learned", "prototype")
WIDTH = 256  # the block's fully connected width (the merge narrows to WIDTH // 2 before the classes)
TIME_FEATURES = 64  # the sinusoidal time embedding of CT and FM
CT_GAMMA_ENDS = (6.0, -6.0)  # gamma(0) (noise) and gamma(1) (nearly clean): SNR = exp(-gamma)


# -- schedules and the inference chain's coefficients -------------------------------------------------
def cosine_alpha_bar(steps: int, offset: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """alpha_bar_0 .. alpha_bar_T, increasing: the cosine schedule over T + 1 steps, read backwards."""
    k = torch.arange(steps + 2, dtype=torch.float64) / (steps + 1)
    f = torch.cos((k + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    forward = torch.cumprod(1 - betas, 0)  # DDPM's alpha_bar_1 .. alpha_bar_{T+1}, decreasing
    return forward.flip(0).float()


def chain_coefficients(
    alpha_bar_prev: torch.Tensor, alpha_bar_next: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(a, b, c) of Eq. 3 for a step from alpha_bar_{t-1} to alpha_bar_t."""
    alpha = alpha_bar_prev / alpha_bar_next
    a = alpha_bar_next.sqrt() * (1 - alpha) / (1 - alpha_bar_prev)
    b = alpha.sqrt() * (1 - alpha_bar_next) / (1 - alpha_bar_prev)
    c = (1 - alpha_bar_next) * (1 - alpha) / (1 - alpha_bar_prev)
    return a, b, c


class MonotoneSchedule(nn.Module):
    """NoProp-CT's learned gamma(t), decreasing from gamma(0) to gamma(1) (fixed ends), its shape a
    network with positive weights as in variational diffusion models (Kingma et al. 2021)."""

    def __init__(self, hidden: int = 1024, ends: tuple[float, float] = CT_GAMMA_ENDS) -> None:
        super().__init__()
        self.ends = ends
        self.linear = nn.Parameter(torch.ones(1))
        self.inner = nn.Linear(1, hidden)
        self.outer = nn.Parameter(torch.randn(hidden) / hidden)

    def _shape(self, t: torch.Tensor) -> torch.Tensor:
        h = self.linear.abs() * t
        inner = F.linear(h.unsqueeze(-1), self.inner.weight.abs(), self.inner.bias)
        return h + (2 * (torch.sigmoid(inner) - 0.5)) @ self.outer.abs()

    def gamma(self, t: torch.Tensor) -> torch.Tensor:
        ends = self._shape(torch.tensor([0.0, 1.0], device=t.device))
        normalised = (self._shape(t) - ends[0]) / (ends[1] - ends[0])
        return self.ends[0] + (self.ends[1] - self.ends[0]) * normalised

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(-self.gamma(t))


def time_features(t: torch.Tensor) -> torch.Tensor:
    """The sinusoidal embedding of t in [0, 1] (scaled to [0, 1000], as diffusion models do)."""
    return sinusoidal_features(t, TIME_FEATURES, scale=1000.0)


# -- the block (Fig. 6 left) and the network --------------------------------------------------------
class Dropout(nn.Module):
    """nn.Dropout drawing its masks from ``generator`` when one is set (the rule sets its own, so that a
    saved state continues exactly), else from torch's global generator."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p, self.generator = p, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.generator)
        return x * keep / (1 - self.p)


def conv_image_path(input_shape: Sequence[int], channels: Sequence[int], width: int) -> nn.Module:
    """conv 3x3 -> ReLU -> max-pool per channel count, dropout 0.2, flatten, linear, batch norm."""
    layers: list[nn.Module] = []
    in_channels, side = input_shape[0], input_shape[1]
    for out in channels:
        layers += [nn.Conv2d(in_channels, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        in_channels, side = out, side // 2
    if side < 1:
        raise ValueError(f"images of shape {tuple(input_shape)} are too small for {len(channels)} poolings")
    flat = in_channels * side * side
    return nn.Sequential(*layers, Dropout(0.2), nn.Flatten(), nn.Linear(flat, width), nn.BatchNorm1d(width))


def mlp_image_path(features: int, hidden: Sequence[int]) -> nn.Module:
    """For flat inputs: linear -> ReLU per hidden size, the last one linear -> batch norm as the conv path."""
    layers: list[nn.Module] = [nn.Flatten()]
    for size in hidden[:-1]:
        layers += [nn.Linear(features, size), nn.ReLU()]
        features = size
    return nn.Sequential(*layers, Dropout(0.2), nn.Linear(features, hidden[-1]), nn.BatchNorm1d(hidden[-1]))


def _linear_bn_relu(n_in: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out), nn.ReLU())


class NoPropBlock(nn.Module):
    """(x, z[, time features]) -> out: an image path, a z path (two linear-BN-ReLU stages with a skip),
    concatenated (with the time features' projection for CT and FM), two linear-BN-ReLU stages, a linear."""

    def __init__(
        self, image_path: nn.Module, width: int, z_features: int, out_features: int, time_dim: int = 0
    ) -> None:
        super().__init__()
        self.image_path = image_path
        self.z_in, self.z_hidden = _linear_bn_relu(z_features, width), _linear_bn_relu(width, width)
        self.time = nn.Sequential(nn.Linear(time_dim, width), nn.ReLU()) if time_dim else None
        merged = width * (3 if time_dim else 2)
        self.merge = nn.Sequential(
            _linear_bn_relu(merged, width),
            _linear_bn_relu(width, width // 2),
            nn.Linear(width // 2, out_features),
        )

    def forward(self, x: torch.Tensor, z: torch.Tensor, time: torch.Tensor | None = None) -> torch.Tensor:
        z_in = self.z_in(z)
        parts = [self.image_path(x), z_in + self.z_hidden(z_in)]
        if self.time is not None:
            parts.append(self.time(time))
        return self.merge(torch.cat(parts, 1))


# block_factory(z_features, out_features, time_dim) -> a module mapping (x, z[, time features]) -> out
BlockFactory = Callable[[int, int, int], nn.Module]


def block_factory(model: str, input_shape: Sequence[int]) -> BlockFactory:
    """The blocks a model spec names: ``noprop[:WIDTH]`` (the paper's conv 32, 64, 128 image path, or two
    WIDTH-wide layers for flat inputs), ``cnn:C1,..`` (that conv image path) or ``mlp:H1,..`` (that MLP)."""
    kind, sizes, _ = models.parse_spec(model)
    flat = len(input_shape) != 3
    if kind not in ("noprop", "cnn", "mlp"):
        raise ValueError(f"noprop builds its blocks from a noprop, cnn or mlp spec; got {model!r}")
    if kind == "cnn" and flat:
        raise ValueError(f"a cnn block needs images [C, H, W]; the data has input shape {tuple(input_shape)}")
    width = sizes[0] if kind == "noprop" and sizes else WIDTH
    if kind == "mlp" or flat:
        hidden = (sizes or list(models.MODEL_KINDS["mlp"].default_sizes)) if kind == "mlp" else [width, width]
        width = hidden[-1]

        def image_path() -> nn.Module:
            return mlp_image_path(math.prod(input_shape), hidden)
    else:
        channels = (32, 64, 128) if kind == "noprop" else (sizes or list(models.CNN_CHANNELS))

        def image_path() -> nn.Module:
            return conv_image_path(input_shape, channels, width)

    return lambda z_features, out_features, time_dim: NoPropBlock(
        image_path(), width, z_features, out_features, time_dim
    )


class NoPropNetwork(nn.Module):
    """The blocks (T for DT, one for CT and FM), the label embedding, the classifier on z_T, the schedule.

    ``forward(x)`` is the inference chain; trained end to end by backprop, it is the structure-matched
    baseline. Its noise: ``generator`` when given, else torch's global generator while training and, in
    evaluation mode, a generator of the module's own, restarted each time the module enters that mode.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        block_factory: BlockFactory,
        *,
        variant: str = "dt",
        steps: int = 10,
        embedding: str = "onehot",
        embedding_dim: int = 20,
        chain_logits: bool = False,
    ) -> None:
        super().__init__()
        # The backprop baseline's option: each block passes logits @ W_embed down the chain instead of
        # softmax(logits) @ W_embed (see _baseline_from_spec).
        self.chain_logits = chain_logits
        check_choice("variant", variant, VARIANTS)
        check_choice("embedding", embedding, EMBEDDINGS)
        self.variant, self.steps, self.embedding_kind = variant, steps, embedding
        dim = {"onehot": num_classes, "learned": embedding_dim, "prototype": math.prod(input_shape)}[
            embedding
        ]
        if embedding == "onehot":
            self.register_buffer("embedding", torch.eye(num_classes))
        else:
            self.embedding = nn.Parameter(torch.empty(num_classes, dim))
            nn.init.orthogonal_(self.embedding)  # prototypes: replaced by the class means (NoProp.prepare)
        self.prototypes_ready = embedding != "prototype"
        time_dim = 0 if variant == "dt" else TIME_FEATURES
        out = dim if variant == "fm" else num_classes
        self.blocks = nn.ModuleList(
            block_factory(dim, out, time_dim) for _ in range(steps if variant == "dt" else 1)
        )
        self.classifier = nn.Linear(dim, num_classes)
        if variant == "dt":
            self.register_buffer("alpha_bar", cosine_alpha_bar(steps))
        self.schedule = MonotoneSchedule() if variant == "ct" else None
        with torch.random.fork_rng(devices=[]):
            self.eval_seed = int(torch.randint(2**62, ()))
        self._eval_generator: torch.Generator | None = None

    def u_hat(
        self, block: int, x: torch.Tensor, z: torch.Tensor, t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The block's estimate of the clean embedding: softmax(logits) @ W_embed."""
        logits = self.blocks[block](x, z) if t is None else self.blocks[block](x, z, time_features(t))
        return (logits if self.chain_logits else logits.softmax(1)) @ self.embedding

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if generator is None and not self.training:
            if self._eval_generator is None or self._eval_generator.device != x.device:
                self._eval_generator = torch.Generator(device=x.device).manual_seed(self.eval_seed)
            generator = self._eval_generator

        def noise(like: torch.Tensor) -> torch.Tensor:
            return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

        n = len(x)
        z = noise(torch.empty(n, self.embedding.shape[1], device=x.device, dtype=self.embedding.dtype))
        grid = torch.linspace(0, 1, self.steps + 1, device=x.device)
        if self.variant == "fm":
            for k in range(self.steps):
                z = z + self.blocks[0](x, z, time_features(grid[k].expand(n))) / self.steps
            return self.classifier(z)
        alpha_bar = self.alpha_bar if self.variant == "dt" else self.schedule.alpha_bar(grid)
        for k in range(1, self.steps + 1):
            if self.variant == "dt":
                u_hat = self.u_hat(k - 1, x, z)
            else:
                u_hat = self.u_hat(0, x, z, grid[k - 1].expand(n))
            a, b, c = chain_coefficients(alpha_bar[k - 1], alpha_bar[k])
            z = a * u_hat + b * z + c.sqrt() * noise(z)
        return self.classifier(z)

    def train(self, mode: bool = True) -> NoPropNetwork:
        self._eval_generator = None  # evaluation noise restarts: predictions are a function of the weights
        return super().train(mode)


def _baseline_from_spec(
    input_shape: Sequence[int], num_classes: int, sizes: list[int], options: list[str]
) -> nn.Module:
    """The structure-matched baseline. With the option ``logits`` the chain passes each block's logits,
    not their softmax: trained end to end, ten softmaxes in a row learn slowly here (benchmarks/
    noprop_chain.py; RESULTS.md)."""
    blocks = block_factory(f"noprop:{sizes[0]}", input_shape)
    return NoPropNetwork(input_shape, num_classes, blocks, chain_logits="logits" in options)


models.register_model(
    "noprop",
    models.ModelKind(
        _baseline_from_spec, (WIDTH,), ("logits",), "block width, e.g. noprop:256 (T = 10 DT blocks)"
    ),
)
