"""NoProp (Li, Teh and Pascanu 2025, arXiv 2503.24322): blocks that learn to denoise a label embedding.

No block passes a gradient or an activation to another: block t sees the raw input x and a noisy label
embedding z_{t-1}, and learns to predict the clean embedding. Time runs from noise to label: z_0 is pure
noise, z_T is nearly clean, so alpha_bar_t *increases* with t (the usual mistake of ports is the DDPM
direction, alpha_bar_0 = 1). With u_y = W_embed[y] and SNR(t) = alpha_bar_t / (1 - alpha_bar_t):

    q(z_t | y) = N(sqrt(alpha_bar_t) u_y, (1 - alpha_bar_t) I)
    u_hat_t(z, x) = softmax(block_t(x, z)) @ W_embed                     (the block emits class logits)
    NoProp-DT (Eq. 8), training block t on a batch (z_{t-1} ~ q(z_{t-1} | y), z_T ~ q(z_T | y)):
      L = CE(classifier(z_T), y) + KL(q(z_0 | y) || N(0, I))
          + (T / 2) eta (SNR(t) - SNR(t-1)) ||u_hat_t(z_{t-1}, x) - u_y||^2
      block t learns from its own term only; the classifier (and a learned embedding) from every step.
    inference (Eq. 3): z_0 ~ N(0, I), z_t = a_t u_hat_t(z_{t-1}, x) + b_t z_{t-1} + sqrt(c_t) eps_t,
      a_t = sqrt(alpha_bar_t) (1 - alpha_{t-1}) / (1 - alpha_bar_{t-1}),
      b_t = sqrt(alpha_{t-1}) (1 - alpha_bar_t) / (1 - alpha_bar_{t-1}),
      c_t = (1 - alpha_bar_t) (1 - alpha_{t-1}) / (1 - alpha_bar_{t-1}),
      alpha_{t-1} = alpha_bar_{t-1} / alpha_bar_t
      (the posterior q(z_t | z_{t-1}, u_y) with u_y replaced by the block's u_hat), then classifier(z_T).
    NoProp-CT: one network u_hat(z_t, x, t), t ~ U(0, 1), a learned monotone schedule
      SNR(t) = exp(-gamma(t)); L = CE + KL + (1/2) eta SNR'(t) ||u_hat(z_t, x, t) - u_y||^2; inference
      as above on the grid t_k = k / T.
    NoProp-FM: z_t = t u_y + (1 - t) eps; the network emits the velocity v_hat(z_t, x, t);
      L = ||v_hat - (u_y - eps)||^2 + CE(classifier(z_t + (1 - t) v_hat), y); Euler steps from noise.

The DT schedule is Nichol and Dhariwal's cosine schedule over T + 1 steps (betas clipped at 0.999) read
backwards, so alpha_bar_0 is small but not zero (the KL term is defined) and alpha_bar_T < 1 (SNR(T) is
finite). The CT schedule's ends are fixed (gamma from +6 at t = 0 to -6 at t = 1); its shape is a monotone
network as in variational diffusion models. There is no official code; the block follows the paper's
Fig. 6 (widths 256 and 128 are ours). The same module, chained as in inference and trained end to end,
is the paper's structure-matched backprop baseline: the model spec ``noprop`` (``--algo backprop --model
noprop``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from ..splits import DataSplit
from .base import (
    Algorithm,
    HyperparameterError,
    OptimizerConfig,
    ParameterGroups,
    check_choice,
    check_positive,
    sinusoidal_features,
)

VARIANTS = ("dt", "ct", "fm")
EMBEDDINGS = ("onehot", "learned", "prototype")
ORDERS = ("sequential", "random")
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
    ) -> None:
        super().__init__()
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
        return logits.softmax(1) @ self.embedding

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
        for k in range(1, self.steps + 1):
            if self.variant == "fm":
                t = grid[k - 1].expand(n)
                z = z + self.blocks[0](x, z, time_features(t)) / self.steps
                continue
            if self.variant == "dt":
                u_hat = self.u_hat(k - 1, x, z)
                prev, nxt = self.alpha_bar[k - 1], self.alpha_bar[k]
            else:
                u_hat = self.u_hat(0, x, z, grid[k - 1].expand(n))
                prev, nxt = self.schedule.alpha_bar(grid[k - 1 : k + 1])
            a, b, c = chain_coefficients(prev, nxt)
            z = a * u_hat + b * z + c.sqrt() * noise(z)
        return self.classifier(z)

    def train(self, mode: bool = True) -> NoPropNetwork:
        self._eval_generator = None  # evaluation noise restarts: predictions are a function of the weights
        return super().train(mode)


def _baseline_from_spec(
    input_shape: Sequence[int], num_classes: int, sizes: list[int], options: list[str]
) -> nn.Module:
    return NoPropNetwork(input_shape, num_classes, block_factory(f"noprop:{sizes[0]}", input_shape))


models.register_model(
    "noprop",
    models.ModelKind(_baseline_from_spec, (WIDTH,), (), "block width, e.g. noprop:256 (T = 10 DT blocks)"),
)


# -- the rule ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class NoPropConfig(OptimizerConfig):
    optimizer: str = "adamw"
    weight_decay: float = 1e-3
    variant: str = "dt"  # dt | ct | fm
    steps: int = 10  # T: DT's blocks; CT's and FM's inference steps
    eta: float = 0.1  # the weight of the denoising term (DT, CT)
    embedding: str = "onehot"  # onehot (fixed) | learned | prototype (class-mean images at the start)
    embedding_dim: int = 20  # learned embeddings only
    order: str = "sequential"  # DT: pass t trains block t (the paper) | random: one random block per batch

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("variant", self.variant, VARIANTS)
        check_choice("embedding", self.embedding, EMBEDDINGS)
        check_choice("order", self.order, ORDERS)
        check_positive("eta", self.eta)
        for name in ("steps", "embedding_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise HyperparameterError(f"{name}={getattr(self, name)!r} must be a positive integer")


class NoProp(Algorithm):
    name = "noprop"
    Config = NoPropConfig
    default_model = "noprop"

    @classmethod
    def build_network(
        cls, model: str, input_shape: Sequence[int], num_classes: int, config: Any
    ) -> nn.Module:
        return NoPropNetwork(
            input_shape,
            num_classes,
            block_factory(model, input_shape),
            variant=config.variant,
            steps=config.steps,
            embedding=config.embedding,
            embedding_dim=config.embedding_dim,
        )

    @classmethod
    def search_space(cls, trial: Any, config: Any) -> dict[str, Any]:
        return {
            **super().search_space(trial, config),
            "eta": trial.suggest_float("eta", 1e-2, 10.0, log=True),
        }

    def __init__(self, net: nn.Module, num_classes: int, **kwargs: Any) -> None:
        super().__init__(net, num_classes, **kwargs)
        if not isinstance(net, NoPropNetwork):
            raise TypeError(
                "noprop needs the blocks it builds itself (each sees x and a noisy label embedding): pass a "
                f"model spec such as 'noprop' or 'mlp:256,256' or a NoPropNetwork, not a {type(net).__name__}"
            )
        c = self.config
        built = {"variant": net.variant, "steps": net.steps, "embedding": net.embedding_kind}
        wrong = {k: v for k, v in built.items() if getattr(c, k) != v}
        if wrong:
            raise ValueError(
                f"the network was built with {wrong}, but the hyperparameters say "
                f"{ {k: getattr(c, k) for k in wrong} }"
            )
        # DT and its T blocks are local; CT and FM train one network over all t (not blockwise).
        self.locality = "local" if c.variant == "dt" else "global"
        self.passes_per_epoch = c.steps if c.variant == "dt" else 1
        shared = [*net.classifier.parameters(), *([net.embedding] if c.embedding != "onehot" else [])]
        shared += list(net.schedule.parameters()) if net.schedule is not None else []
        self.optimizers = [self.make_optimizer(block.parameters()) for block in net.blocks]
        self.optimizers.append(self.make_optimizer(shared))
        for module in net.modules():
            if isinstance(module, Dropout):
                module.generator = self.generator

    def parameter_groups(self) -> ParameterGroups:
        net = self.net
        shared = {"classifier": list(net.classifier.parameters())}
        if self.config.embedding != "onehot":
            shared["label_embedding"] = [net.embedding]
        if net.schedule is not None:
            shared["noise_schedule"] = list(net.schedule.parameters())
        if self.config.variant != "dt":
            return ParameterGroups({"network": list(net.blocks[0].parameters())}, shared)
        return ParameterGroups(
            {f"block{t + 1}": list(b.parameters()) for t, b in enumerate(net.blocks)}, shared
        )

    def prepare(self, train: DataSplit) -> None:
        """Prototype embeddings start as the class-mean training inputs."""
        if self.net.prototypes_ready:
            return
        x = train.x.flatten(1).to(self.device)
        sums = torch.zeros(self.num_classes, x.shape[1], device=self.device).index_add_(
            0, train.y.to(self.device), x
        )
        counts = torch.bincount(train.y.to(self.device), minlength=self.num_classes).clamp(min=1)
        with torch.no_grad():
            self.net.embedding.copy_(sums / counts.unsqueeze(1))
        self.net.prototypes_ready = True

    # -- the losses, in the order of the rule ---------------------------------------------------------
    def _noise(self, shape: Sequence[int]) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator, device=self.device)

    def _readout_and_kl(
        self,
        u: torch.Tensor,
        y: torch.Tensor,
        alpha_bar_0: torch.Tensor,
        alpha_bar_end: torch.Tensor,
        noise_end: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CE of the classifier on z_T ~ q(z_T | y) and KL(q(z_0 | y) || N(0, I)), means over the batch."""
        z_end = alpha_bar_end.sqrt() * u + (1 - alpha_bar_end).sqrt() * noise_end
        ce = F.cross_entropy(self.net.classifier(z_end), y)
        d = u.shape[1]
        kl = 0.5 * (alpha_bar_0 * u.pow(2).sum(1) - d * alpha_bar_0 - d * torch.log1p(-alpha_bar_0)).mean()
        return ce, kl

    def dt_losses(
        self, x: torch.Tensor, y: torch.Tensor, t: int, noise_in: torch.Tensor, noise_end: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Eq. 8's terms for block t (1..T) with the given standard-normal noise for z_{t-1} and z_T."""
        net, T = self.net, self.config.steps
        u = net.embedding[y]
        alpha_bar = net.alpha_bar
        snr = alpha_bar / (1 - alpha_bar)
        z_prev = alpha_bar[t - 1].sqrt() * u + (1 - alpha_bar[t - 1]).sqrt() * noise_in
        error = (net.u_hat(t - 1, x, z_prev) - u).pow(2).sum(1).mean()
        denoise = T / 2 * self.config.eta * (snr[t] - snr[t - 1]) * error
        ce, kl = self._readout_and_kl(u, y, alpha_bar[0], alpha_bar[T], noise_end)
        return {"loss": ce + kl + denoise, "denoise": denoise, "ce": ce, "kl": kl}

    def ct_losses(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, noise_end: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        net, schedule = self.net, self.net.schedule
        u = net.embedding[y]
        t = t.detach().requires_grad_(True)
        gamma = schedule.gamma(t)
        (gamma_prime,) = torch.autograd.grad(gamma.sum(), t, create_graph=True)
        snr_prime = -gamma_prime * torch.exp(-gamma)  # > 0: SNR rises from noise to label
        alpha_bar = torch.sigmoid(-gamma).unsqueeze(1)
        z_t = alpha_bar.sqrt() * u + (1 - alpha_bar).sqrt() * noise
        error = (net.u_hat(0, x, z_t, t) - u).pow(2).sum(1)
        denoise = (0.5 * self.config.eta * snr_prime * error).mean()
        ends = schedule.alpha_bar(torch.tensor([0.0, 1.0], device=x.device))
        ce, kl = self._readout_and_kl(u, y, ends[0], ends[1], noise_end)
        return {"loss": ce + kl + denoise, "denoise": denoise, "ce": ce, "kl": kl}

    def fm_losses(
        self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, noise: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        net = self.net
        u = net.embedding[y]
        z_t = t.unsqueeze(1) * u + (1 - t.unsqueeze(1)) * noise
        velocity = net.blocks[0](x, z_t, time_features(t))
        flow = (velocity - (u - noise)).pow(2).sum(1).mean()
        ce = F.cross_entropy(net.classifier(z_t + (1 - t.unsqueeze(1)) * velocity), y)
        return {"loss": flow + ce, "flow": flow, "ce": ce}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.net.prototypes_ready:
            raise RuntimeError(
                "noprop with embedding=prototype starts from the class means: call algo.prepare(train_split) "
                "first (the Trainer does)"
            )
        c, dim = self.config, self.net.embedding.shape[1]
        block = 0
        if c.variant == "dt":
            block = self.data_pass if c.order == "sequential" else self.random_choice(c.steps)
            losses = self.dt_losses(x, y, block + 1, self._noise((len(x), dim)), self._noise((len(x), dim)))
        else:
            t = torch.rand(len(x), generator=self.generator, device=self.device)
            if c.variant == "ct":
                losses = self.ct_losses(x, y, t, self._noise((len(x), dim)), self._noise((len(x), dim)))
            else:
                losses = self.fm_losses(x, y, t, self._noise((len(x), dim)))
        block_optimizer, shared_optimizer = self.optimizers[block], self.optimizers[-1]
        block_optimizer.zero_grad(set_to_none=True)
        shared_optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()  # block's term reaches only its block; CE and KL only the shared parts
        block_optimizer.step()
        shared_optimizer.step()
        stats = {k: v.detach() for k, v in losses.items()}
        if c.variant == "dt":
            stats[f"loss_block{block + 1}"] = stats["denoise"]
        return stats

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, generator=self.eval_generator)

    def extra_state(self) -> dict[str, Any]:
        return {"prototypes_ready": self.net.prototypes_ready}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.net.prototypes_ready = state["prototypes_ready"]
