"""DiffusionBlocks' networks (Shing, Akiba et al. 2025): a residual MLP and a small ViT whose residual layers
the blocks split, conditioned on the noise level, with EDM's preconditioning. The rule that trains them is
``diffusion_blocks.py``. Each network's ``forward(x)`` is an ordinary classifier through every layer: the
backprop baseline on the same backbone (model specs ``resmlp:WIDTH,LAYERS`` and ``vit:WIDTH,LAYERS,PATCH``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import models
from .units import sinusoidal_features

SIGMA_DATA = 0.5
NOISE_FEATURES = 64


def edm_coefficients(sigma: torch.Tensor) -> dict[str, torch.Tensor]:
    """EDM's preconditioning (Karras et al. 2022) and the loss weight, at sigma_data = 0.5."""
    total = sigma**2 + SIGMA_DATA**2
    return {
        "c_skip": SIGMA_DATA**2 / total,
        "c_out": sigma * SIGMA_DATA / total.sqrt(),
        "c_in": 1 / total.sqrt(),
        "c_noise": sigma.log() / 4,
        "weight": total / (sigma * SIGMA_DATA) ** 2,
    }


# -- the networks: residual layers conditioned on the noise level -------------------------------------------
def noise_features(c_noise: torch.Tensor) -> torch.Tensor:
    return sinusoidal_features(c_noise, NOISE_FEATURES, scale=100.0)


class ResidualLayer(nn.Module):
    """h + MLP(FiLM(LN(h); c)): layer norm whose scale and shift come from the condition c (the image's
    features, plus the noise level's when denoising). The MLP's last layer starts at zero, so that each
    layer starts as the identity."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(width, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, h: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(condition).chunk(2, dim=1)
        return h + self.mlp(self.norm(h) * (1 + scale) + shift)


class Denoiser(nn.Module):
    """What every DiffusionBlocks network has: ``layers``, the residual layers the blocks split, and the
    parts all blocks share (everything else): the label embedding, the noise-level embedding, and the head
    behind a final norm that the noise level modulates (and each network's own input parts).

    ``forward(x)`` is an ordinary classifier through every layer (the backprop baseline); ``denoise(x, z,
    sigma, layers)`` runs only the given layers and returns class logits."""

    def __init__(self, num_classes: int, width: int, layers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.head_modulation = nn.Linear(width, 2 * width)  # the final norm's adaLN when denoising
        nn.init.zeros_(self.head_modulation.weight)
        nn.init.zeros_(self.head_modulation.bias)
        self.label_embedding = nn.Embedding(num_classes, width)
        self.noise_embedding = nn.Sequential(
            nn.Linear(NOISE_FEATURES, width), nn.SiLU(), nn.Linear(width, width)
        )

    def embeddings(self) -> torch.Tensor:
        """The label embeddings, each of unit length (the code's guard against their collapse)."""
        return F.normalize(self.label_embedding.weight, dim=1)

    def conditioning(self, sigma: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        c = edm_coefficients(sigma)
        return c, self.noise_embedding(noise_features(c["c_noise"]))

    def readout(
        self, state: torch.Tensor, z: torch.Tensor, c: dict[str, torch.Tensor], condition: torch.Tensor
    ) -> torch.Tensor:
        """Logits of the preconditioned output c_out F + c_skip z."""
        scale, shift = self.head_modulation(condition).chunk(2, dim=1)
        out = c["c_out"].unsqueeze(1) * state + c["c_skip"].unsqueeze(1) * z
        return self.head(self.norm(out) * (1 + scale) + shift)


class ResidualMLP(Denoiser):
    """L residual layers whose state is the noisy label embedding being denoised, each conditioned (FiLM)
    on the image through a shared stem and on the noise level, as the reference's MNIST example. As a
    classifier (the backprop baseline) the stem's features are both the first state and the condition."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, width: int = 256, layers: int = 6
    ) -> None:
        super().__init__(num_classes, width, [ResidualLayer(width) for _ in range(layers)])
        self.stem = nn.Sequential(
            nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.GELU(), nn.Linear(width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = image = self.stem(x)
        for layer in self.layers:
            h = layer(h, image)
        return self.head(self.norm(h))

    def denoise(self, x: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, layers: range) -> torch.Tensor:
        c, noise_level = self.conditioning(sigma)
        h, condition = c["c_in"].unsqueeze(1) * z, self.stem(x) + noise_level
        for i in layers:
            h = self.layers[i](h, condition)
        return self.readout(h, z, c, noise_level)


class TransformerLayer(nn.Module):
    """A pre-norm transformer layer whose two norms the noise level modulates (scale, shift and gate, zero
    at the start), as the official ViT's adaLN layers; without a noise level, a plain layer."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.modulation = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, tokens: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        mods: list[Any] = [0.0] * 6
        if condition is not None:
            mods = [m.unsqueeze(1) for m in self.modulation(condition).chunk(6, dim=1)]
        shift1, scale1, gate1, shift2, scale2, gate2 = mods
        a = self.norm1(tokens) * (1 + scale1) + shift1
        tokens = tokens + (1 + gate1) * self.attention(a, a, a, need_weights=False)[0]
        a = self.norm2(tokens) * (1 + scale2) + shift2
        return tokens + (1 + gate2) * self.mlp(a)


class ViT(Denoiser):
    """A small vision transformer in the official code's form: patch tokens with position embeddings; the
    noisy label embedding takes the class token's place, and the noise level enters through adaptive
    layer norm. As a classifier (the backprop baseline) a learned class token stands in that place."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, width: int = 192, layers: int = 6, patch: int = 4
    ) -> None:
        super().__init__(
            num_classes, width, [TransformerLayer(width, max(1, width // 64)) for _ in range(layers)]
        )
        if len(input_shape) != 3 or input_shape[1] % patch or input_shape[2] % patch:
            raise ValueError(
                f"vit needs images [C, H, W] with H and W multiples of {patch}; got {input_shape}"
            )
        self.patches = nn.Conv2d(input_shape[0], width, patch, stride=patch)
        self.state_in = nn.Linear(width, width)  # the noisy label embedding, in the class token's place
        count = (input_shape[1] // patch) * (input_shape[2] // patch)
        self.positions = nn.Parameter(torch.randn(1, count + 1, width) * 0.02)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))

    def _tokens(self, x: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
        patches = self.patches(x).flatten(2).transpose(1, 2)
        return torch.cat([first, patches], 1) + self.positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self._tokens(x, self.class_token.expand(len(x), -1, -1))
        for layer in self.layers:
            tokens = layer(tokens)
        return self.head(self.norm(tokens[:, 0]))

    def denoise(self, x: torch.Tensor, z: torch.Tensor, sigma: torch.Tensor, layers: range) -> torch.Tensor:
        c, condition = self.conditioning(sigma)
        tokens = self._tokens(x, self.state_in(c["c_in"].unsqueeze(1) * z).unsqueeze(1))
        for i in layers:
            tokens = self.layers[i](tokens, condition)
        return self.readout(tokens[:, 0], z, c, condition)


def _resmlp_from_spec(
    input_shape: Sequence[int], num_classes: int, sizes: list[int], options: list[str]
) -> nn.Module:
    if len(sizes) != 2:
        raise ValueError(f"resmlp takes a width and a number of layers, e.g. resmlp:256,6; got {sizes}")
    return ResidualMLP(input_shape, num_classes, width=sizes[0], layers=sizes[1])


def _vit_from_spec(
    input_shape: Sequence[int], num_classes: int, sizes: list[int], options: list[str]
) -> nn.Module:
    if len(sizes) not in (2, 3):
        raise ValueError(
            f"vit takes a width, a number of layers and a patch size, e.g. vit:192,6,4; got {sizes}"
        )
    return ViT(input_shape, num_classes, *sizes)


models.register_model(
    "resmlp", models.ModelKind(_resmlp_from_spec, (256, 6), (), "width and layers, e.g. resmlp:256,6")
)
models.register_model(
    "vit", models.ModelKind(_vit_from_spec, (192, 6, 4), (), "width, layers and patch size, e.g. vit:192,6,4")
)
