"""Forward gradients (Baydin et al., "Gradients without backpropagation", 2022; Ren et al., "Scaling
forward gradient with local losses", ICLR 2023).

``variant="weight"`` (default; Baydin's FG-W): the end-to-end loss's gradient is estimated from
directional derivatives along random tangents on the weights, each from one forward-mode pass
(torch.func.jvp). No reverse pass runs at all:

    v_k ~ N(0, I), shaped like every parameter, one per step shared by the whole batch (k = 1..K)
    (L, L'(v_k)) = jvp(L, theta; v_k)          L'(v) = grad L . v
    g = (1/K) sum_k L'(v_k) v_k                 unbiased: E[v v^T] = I
    theta <- optimizer_step(theta, g)

``variant="local_activity"`` (Ren et al.'s LG-FG-A idea on a plain stack): every hidden unit has its own
classifier head and loss, and the noise goes on the unit's pre-activations, independently per example,
through the unit's activation and its head only (stop-gradient between units):

    z_i = pre_i(h_{i-1}.detach())               the unit up to its last layer with weights
    h_i = post_i(z_i)                           the parameter-free rest: activation, pooling
    L_i,n = CE(head_i(post_i(z_i,n)), y_n)      per example n
    u_n,k ~ N(0, I), times the ReLU mask        inactive units get no credit (Ren, Sec. 3.6)
    u_n,k,g = u_n,k restricted to feature group g = 1..G (``groups``, contiguous, channels first)
    g_z,n = (1/K) sum_k sum_g (grad_z L_i,n . u_n,k,g) u_n,k,g / N     (N: the mean over the batch)
    theta_i: g_z backpropagated through pre_i only (for a linear map, dW_i = g_z^T h_{i-1})
    head_i: its exact local gradient

With G > 1 each group is credited only for its own perturbation, as Ren et al.'s replicated group-wise
losses with stop-gradient: the estimate stays unbiased and its variance falls with the number of features
each directional derivative covers (G jvps per tangent, through the activation and the head only). G = 1
is plain activity perturbation; at G = the unit's width every feature gets its exact derivative times
u^2, so only the scale is noisy.

How the K x G derivatives are computed: for a unit whose activation acts feature by feature and whose
head starts with a linear map W (an MLP's), the activation's tangent is taken once per tangent and W's
tangent for all G groups is one grouped product; otherwise one forward-mode pass per (tangent, group)
runs through the activation and the head. Both give the same numbers (tests/test_forward_gradient.py).

The heads of hidden units 1..L-1 are auxiliary bias-free linear maps; the network's own head is the head
of the last hidden unit and makes the prediction (as Mono-Forward's M_L). The weight variant's tangents come
from the rule's training generator (the base class's); local_activity gives each unit a generator of its
own, seeded from it, so that a unit's noise does not depend on the units below (a layer-parallel stage
draws what one process draws). All are saved with the state, so a resumed run draws the same tangents.

BatchNorm is refused: its running statistics are written in place, which torch.func.jvp does not allow
(research notes, anchors_ccl_dfa_fg_noprop_db.md section 3d); LayerNorm and GroupNorm work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jvp, vmap

from .base import Algorithm, ParameterGroups
from .config import HyperparameterError, OptimizerConfig, check_choice
from .units import last_unit_loss, linear_readout, unit_output_shapes, units_of

VARIANTS = ("weight", "local_activity")


@dataclasses.dataclass
class ForwardGradientConfig(OptimizerConfig):
    variant: str = "weight"  # weight: tangents on all weights | local_activity: on each unit's activity
    num_tangents: int = 1  # K: tangents averaged per step
    groups: int = 1  # local_activity: G groups of a unit's features, each perturbed on its own

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("variant", self.variant, VARIANTS)
        if not isinstance(self.num_tangents, int) or self.num_tangents < 1:
            raise HyperparameterError(f"num_tangents={self.num_tangents!r} must be an integer >= 1")
        if not isinstance(self.groups, int) or self.groups < 1:
            raise HyperparameterError(f"groups={self.groups!r} must be an integer >= 1")


def split_unit(unit: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(pre, post): the unit up to and including its last child with parameters, and the rest."""
    children = list(unit.children()) if isinstance(unit, nn.Sequential) else [unit]
    with_weights = [i for i, child in enumerate(children) if any(True for _ in child.parameters())]
    if not with_weights:
        raise ValueError(f"forward_gradient needs units with weights; this one has none: {unit}")
    last = with_weights[-1]
    return nn.Sequential(*children[: last + 1]), nn.Sequential(*children[last + 1 :])


def local_losses(z: torch.Tensor, post: nn.Module, head: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """L_i,n: each example's loss from its pre-activations, through the activation and the unit's head."""
    return F.cross_entropy(head(post(z)), y, reduction="none")


@functools.lru_cache(maxsize=16)
def feature_groups(features: int, groups: int, device: torch.device) -> torch.Tensor:
    """[features]: the group of each feature, G contiguous blocks as tensor_split makes them; cached."""
    sizes = [len(block) for block in torch.arange(features).tensor_split(groups)]
    return torch.repeat_interleave(torch.arange(groups), torch.tensor(sizes)).to(device)


@functools.lru_cache(maxsize=16)
def feature_group_masks(features: int, groups: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[groups, features] 0/1 masks of the blocks of ``feature_groups``."""
    index = feature_groups(features, groups, device)
    return (index == torch.arange(groups, device=device).unsqueeze(1)).to(dtype)


@functools.lru_cache(maxsize=16)
def padded_group_layout(features: int, groups: int, device: torch.device) -> torch.Tensor:
    """[G, S] feature indices of each group (S the largest group's size), padded with ``features`` (an index
    one past the end, which points at a zero column added for it)."""
    blocks = torch.arange(features).tensor_split(groups)
    layout = torch.full((groups, max(len(b) for b in blocks)), features, dtype=torch.long)
    for g, block in enumerate(blocks):
        layout[g, : len(block)] = block
    return layout.to(device)


ELEMENTWISE = (nn.ReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.LeakyReLU, nn.SiLU, nn.Identity)


def linear_head_split(
    post: nn.Module, head: nn.Module, z: torch.Tensor
) -> tuple[nn.Linear, nn.Module] | None:
    """(W, the rest of the head) when a flat unit's activation acts feature by feature and its head starts
    with a linear map; None otherwise (then every group's derivative runs through the whole head)."""
    if z.dim() != 2 or not all(isinstance(m, ELEMENTWISE) for m in post.children()):
        return None
    children = head.children() if isinstance(head, nn.Sequential) else [head]
    modules = [m for m in children if not isinstance(m, nn.Flatten)]
    if not modules or not isinstance(modules[0], nn.Linear):
        return None
    return modules[0], nn.Sequential(*modules[1:])


def directional_derivative(u: Any, f: Any, at: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(at), grad f(at) . u), by one forward-mode pass."""
    return jvp(f, (at,), (u,))


class GeneratorState(nn.Module):
    """A generator's state in a module's state_dict (nn.Module's extra state)."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def get_extra_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_extra_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


@contextlib.contextmanager
def quiet_jvp() -> Iterator[None]:
    """torch.func.jvp's first call scripts a decomposition inside torch, which warns that torch.jit.script
    is deprecated: torch's own business, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated", category=FutureWarning)
        yield


class ForwardGradient(Algorithm):
    name = "forward_gradient"
    Config = ForwardGradientConfig

    def __init__(self, net: nn.Module, num_classes: int, **kwargs: Any) -> None:
        super().__init__(net, num_classes, **kwargs)
        batch_norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if batch_norms:
            raise ValueError(
                f"forward_gradient needs a network without BatchNorm (its running statistics change in "
                f"place, which torch.func.jvp forbids); found {type(batch_norms[0]).__name__}. "
                "Use LayerNorm or GroupNorm."
            )
        self.readouts = nn.ModuleList()
        self.unit_generators: list[torch.Generator] = []  # local_activity's, one per unit
        if self.config.variant == "local_activity":
            units = units_of(net, self.name)
            shapes = unit_output_shapes(units, self.input_shape, num_classes, self.name)
            self.readouts.extend(linear_readout(shapes[i], num_classes) for i in range(len(units) - 2))
            self.readouts.to(self.device)
            heads = [*self.readouts, units[-1]] if len(units) >= 2 else [nn.Identity()]
            hidden = units[:-1] if len(units) >= 2 else units
            # (pre, post, head) per hidden unit: where the noise goes, what it passes through, its loss.
            self.local_units = [(*split_unit(unit), head) for unit, head in zip(hidden, heads, strict=True)]
            # A tangent generator per unit, seeded from the rule's: a unit's noise does not depend on what
            # the units below it drew, so a layer-parallel stage draws what the one-process run draws.
            seeds = torch.randint(2**62, (len(hidden),), generator=self.generator, device=self.device)
            self.unit_generators = [torch.Generator(self.device).manual_seed(s) for s in seeds.tolist()]
        self.aux["readouts"] = self.readouts
        self.optimizers = [self.make_optimizer([*self.net.parameters(), *self.readouts.parameters()])]

    @classmethod
    def sgd_lr_range(cls, config: Any) -> tuple[float, float]:
        # The weight variant's estimate grows with the parameter count, so its SGD steps are tiny (the
        # orobix port: 2e-4 to 5e-4 at batch 1024; 3e-5 diverged here at batch 128); local_activity with
        # SGD is Ren et al.'s scale (0.05-0.1).
        return (1e-6, 1e-3) if config.variant == "weight" else (1e-3, 0.3)

    def parameter_groups(self) -> ParameterGroups:
        if self.config.variant == "weight":
            return super().parameter_groups()
        # local_activity: each hidden unit with its head (the network's own head for the last one).
        return ParameterGroups(
            {
                f"unit{i + 1}": [*pre.parameters(), *head.parameters()]
                for i, (pre, _, head) in enumerate(self.local_units)
            }
        )

    @property
    def locality(self) -> str:
        # FG-W perturbs every weight at once: its directional derivative runs through the later weights.
        return "global" if self.config.variant == "weight" else "local"

    def group_masks(self, z: torch.Tensor) -> torch.Tensor:
        """[G, *features]: 0/1 masks over one example's activity, G blocks of contiguous features."""
        masks = feature_group_masks(z[0].numel(), self.config.groups, z.device, z.dtype)
        return masks.view(self.config.groups, *z.shape[1:])

    def tangent_like(
        self, t: torch.Tensor, count: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``count`` standard normal tangents shaped like ``t``, stacked: [count, *t.shape]."""
        generator = generator or self.generator
        return torch.randn((count, *t.shape), generator=generator, device=t.device, dtype=t.dtype)

    # -- variant "weight": tangents on every parameter, K of them in one batched forward-mode pass -------
    def weight_gradients(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        params = {name: p.detach() for name, p in self.net.named_parameters()}
        buffers = dict(self.net.named_buffers())

        def loss_of(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return F.cross_entropy(functional_call(self.net, (p, buffers), (x,)), y)

        # All K tangents at once: one batched forward-mode pass (vmap over the tangents).
        k = self.config.num_tangents
        tangents = {name: self.tangent_like(p, k) for name, p in params.items()}
        losses, derivatives = vmap(functools.partial(directional_derivative, f=loss_of, at=params))(tangents)
        loss = losses[0]
        estimate = {
            name: torch.tensordot(derivatives, v, dims=1) / k  # (1/K) sum_k L'(v_k) v_k
            for name, v in tangents.items()
        }
        for name, p in self.net.named_parameters():
            p.grad = estimate[name]
        return {"loss": loss}

    # -- variant "local_activity": per-example tangents on each unit's pre-activations -----------------
    def activity_gradients(
        self, x: torch.Tensor, y: torch.Tensor, units: range | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gradients of ``units`` (all by default) from input ``x`` of the first; the last one's output."""
        stats: dict[str, torch.Tensor] = {}
        h = x
        k, groups = self.config.num_tangents, self.config.groups
        outputs, output_grads = [], []  # each unit's graph and what flows into it: one backward for all
        for i in range(len(self.local_units)) if units is None else units:
            pre, post, head = self.local_units[i]
            z = pre(h.detach())  # the unit boundary: nothing flows to earlier units
            z_point = z.detach()
            # Only active ReLU units can change the loss; perturbing the others only adds variance.
            mask = (z_point > 0).to(z.dtype) if len(post) and isinstance(post[0], nn.ReLU) else None
            u = self.tangent_like(z_point, k, self.unit_generators[i])  # [K, N, ...]
            if mask is not None:
                u = u * mask
            with torch.no_grad():
                linear_head = linear_head_split(post, head, z_point)
                if linear_head is not None:
                    derivatives = self.group_derivatives_linear_head(z_point, u, post, *linear_head, y)
                else:
                    derivatives = self.group_derivatives(z_point, u, post, head, y)  # [K, G, N]
            # sum_k sum_g d_kgn (u_kn restricted to group g) / K: each feature is credited with its own
            # group's derivative only.
            credit = derivatives.transpose(1, 2)  # [K, N, G]
            credit = credit.index_select(2, feature_groups(z_point[0].numel(), groups, z.device))
            grad_z = (credit.view(u.shape) * u).sum(0) / (k * len(y))  # the mean loss over the batch
            h = post(z_point)
            loss = F.cross_entropy(head(h.detach()), y)  # exact local gradient for the head
            outputs += [z, loss]  # the unit's weights learn from grad_z, its head from its own loss
            output_grads += [grad_z, None]
            stats[f"loss_unit{i + 1}"] = loss.detach()
        torch.autograd.backward(outputs, output_grads)  # disjoint graphs: cut at every unit's input
        return h, stats

    def group_derivatives(
        self, z: torch.Tensor, u: torch.Tensor, post: nn.Module, head: nn.Module, y: torch.Tensor
    ) -> torch.Tensor:
        """[K, G, N]: the derivative of each example's loss along each tangent restricted to each group, by
        one forward-mode pass per (tangent, group) through the activation and the head (vmap over them)."""
        k, groups = self.config.num_tangents, self.config.groups
        split = (u.unsqueeze(1) * self.group_masks(z).unsqueeze(1)).flatten(0, 1)  # [K * G, N, ...]
        per_example_loss = functools.partial(local_losses, post=post, head=head, y=y)
        _, derivatives = vmap(functools.partial(directional_derivative, f=per_example_loss, at=z))(split)
        return derivatives.view(k, groups, len(z))

    def group_derivatives_linear_head(
        self,
        z: torch.Tensor,
        u: torch.Tensor,
        post: nn.Module,
        linear: nn.Linear,
        rest: nn.Module,
        y: torch.Tensor,
    ) -> torch.Tensor:
        """``group_derivatives`` when the activation acts feature by feature and the head starts with a
        linear map W (an MLP's units): the same forward-mode derivatives, in fewer operations. The
        activation's tangent is taken once per tangent (restricting to a group commutes with it), and W's
        tangent for group g is W[:, g] t[g]: all G at once are one grouped product, the cost of one."""
        k, groups = self.config.num_tangents, self.config.groups
        h_point = post(z)
        _, t = vmap(functools.partial(directional_derivative, f=post, at=z))(u)  # [K, N, F]
        layout = padded_group_layout(z.shape[1], groups, z.device)  # [G, S]; F marks padding
        t_padded = F.pad(t, (0, 1))[..., layout]  # [K, N, G, S]
        w_padded = F.pad(linear.weight, (0, 1))[:, layout]  # [C, G, S]
        tangents = torch.einsum("kngs,cgs->kgnc", t_padded, w_padded).flatten(0, 1)  # [K * G, N, C]
        per_example_loss = functools.partial(local_losses, post=rest, head=nn.Identity(), y=y)
        at = linear(h_point)
        _, derivatives = vmap(functools.partial(directional_derivative, f=per_example_loss, at=at))(tangents)
        return derivatives.view(k, groups, len(z))

    def compute_gradients(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Fill ``.grad`` of every trained parameter with this step's forward-gradient estimate."""
        with quiet_jvp():
            if self.config.variant == "weight":
                return self.weight_gradients(x, y)
            _, stats = self.activity_gradients(x, y)
        return {**stats, "loss": self.step_loss(stats)}

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        (optimizer,) = self.optimizers
        optimizer.zero_grad(set_to_none=True)
        stats = self.compute_gradients(x, y)
        optimizer.step()
        return stats

    # -- layer-parallel runs of local_activity (localearn.parallel) ----------------------------------------
    def parallel_refusal(self) -> str | None:
        return super().parallel_refusal() if self.config.variant == "weight" else None

    def pipeline_units(self) -> list[nn.Module]:
        # Each unit's tangent generator travels with its weights (as the module's extra state).
        return [
            nn.ModuleList([*local_unit, GeneratorState(generator)])
            for local_unit, generator in zip(self.local_units, self.unit_generators, strict=True)
        ]

    def train_units(
        self, a: torch.Tensor, y: torch.Tensor, units: range
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        (optimizer,) = self.optimizers
        optimizer.zero_grad(set_to_none=True)
        with quiet_jvp():
            out, stats = self.activity_gradients(a, y, units)
        optimizer.step()  # units outside ``units`` have no gradient: the optimizer leaves them as they are
        return out, stats

    def step_loss(self, stats: dict[str, torch.Tensor]) -> torch.Tensor:
        return last_unit_loss(stats)  # the last unit's head is the network's, which predicts

    def extra_state(self) -> dict[str, Any]:
        return {"unit_generators": [g.get_state() for g in self.unit_generators]}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        # Checkpoints written before the per-unit generators existed have none: theirs start afresh.
        saved = state.get("unit_generators", [])
        for generator, generator_state in zip(self.unit_generators, saved, strict=False):
            generator.set_state(generator_state)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
