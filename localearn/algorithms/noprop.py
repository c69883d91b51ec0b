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

The network (schedules, the paper's block, the chain that prediction runs, and the structure-matched
backprop baseline ``--algo backprop --model noprop``) is ``noprop_network.py``; this file is the rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from ..splits import DataSplit
from .base import Algorithm, ParameterGroups
from .config import HyperparameterError, OptimizerConfig, check_choice, check_positive
from .noprop_network import EMBEDDINGS, VARIANTS, Dropout, NoPropNetwork, block_factory, time_features

ORDERS = ("sequential", "random")


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
        if "logits" in models.parse_spec(model)[2]:
            raise ValueError(
                f"model {model!r}: 'logits' is an option of the backprop baseline's chain; NoProp's blocks "
                "denoise the label embedding through softmax(logits) @ W_embed, as the paper's"
            )
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

    def parallel_refusal(self) -> str | None:
        # DT's blocks do not feed one another, and all of them share the label embedding and the classifier.
        return (
            "noprop's blocks share the label embedding and the classifier, which learn from every block's "
            "loss: stages would have to exchange those gradients, which localearn.parallel does not do"
        )

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
        ends = torch.sigmoid(-torch.tensor(schedule.ends, device=x.device))  # the fixed ends' alpha_bar
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
