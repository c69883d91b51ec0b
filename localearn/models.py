"""Reference networks, each an ``nn.Sequential`` whose children are the units of locality.

A local rule may cut the graph between two children and nowhere else, so a unit holds everything that
belongs to one layer (linear map, activation, pooling). The last child maps the previous unit's output to
class scores.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}
CNN_CHANNELS = (64, 128, 256)  # cnn's default, here and for the spec "cnn"
INITS = ("torch", "he")  # mlp's initialisations; "he" is also a spec option (mlp:1000,1000:he)


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; valid: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(
    in_features: int,
    hidden: Sequence[int],
    num_classes: int,
    activation: str = "relu",
    bias: bool = True,
    init: str = "torch",
) -> nn.Sequential:
    """A multilayer perceptron: one unit per hidden layer (Linear + activation), then a Linear head.

    The first unit flattens its input, so image tensors [N, C, H, W] go in as they are. ``init``: "torch"
    (nn.Linear's own) or "he", the Mono-Forward reference study's (``MF_MLP``): hidden weights He-uniform
    for ReLU (bound sqrt(6 / fan_in)), the head N(0, 0.01), every bias zero.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
    if in_features < 1 or num_classes < 2 or any(h < 1 for h in hidden):
        raise ValueError(
            f"mlp needs in_features >= 1, hidden sizes >= 1 and num_classes >= 2; "
            f"got in_features={in_features}, hidden={list(hidden)}, num_classes={num_classes}"
        )
    units: list[nn.Module] = []
    width = in_features
    for i, size in enumerate(hidden):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(width, size, bias=bias), _activation(activation)]
        units.append(nn.Sequential(*layers))
        width = size
    head: list[nn.Module] = [] if hidden else [nn.Flatten()]
    units.append(nn.Sequential(*head, nn.Linear(width, num_classes, bias=bias)))
    if init == "he":
        linears = [m for unit in units for m in unit if isinstance(m, nn.Linear)]
        for layer in linears[:-1]:
            nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
        nn.init.normal_(linears[-1].weight, std=0.01)
        for layer in linears:
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return nn.Sequential(*units)


def cnn(
    in_channels: int,
    num_classes: int,
    channels: Sequence[int] = CNN_CHANNELS,
    image_size: int = 32,
    activation: str = "relu",
) -> nn.Sequential:
    """A small VGG-style CNN: each unit is Conv3x3 -> activation -> 2x2 average pool; a Linear head.

    Average pooling follows the Mono-Forward CNN (research notes, anchors_ff_mf.md section 2a).
    """
    if image_size < 2 ** len(channels):
        raise ValueError(f"image_size {image_size} is too small for {len(channels)} pooling units")
    units: list[nn.Module] = []
    width = in_channels
    for out in channels:
        units.append(
            nn.Sequential(nn.Conv2d(width, out, 3, padding=1), _activation(activation), nn.AvgPool2d(2))
        )
        width = out
    side = image_size
    for _ in channels:
        side //= 2  # AvgPool2d(2) floors odd sizes (28 -> 14 -> 7 -> 3)
    units.append(nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, num_classes)))
    return nn.Sequential(*units)


# -- model specs: ``kind[:sizes][:option...]``, built through a table of kinds ---------------------------


@dataclasses.dataclass(frozen=True)
class ModelKind:
    """How a spec's kind becomes a network: ``build(input_shape, num_classes, sizes, options)``."""

    build: Callable[[Sequence[int], int, list[int], list[str]], nn.Module]
    default_sizes: tuple[int, ...]  # the one place a kind's default widths are written
    options: tuple[str, ...]  # what may follow the sizes
    sizes_help: str  # how the sizes read, for error messages


def activation_of(options: Sequence[str]) -> str:
    """The activation a spec's options name (relu where none does)."""
    return next((o for o in options if o in ACTIVATIONS), "relu")


def _mlp_from_spec(
    input_shape: Sequence[int], num_classes: int, sizes: list[int], options: list[str]
) -> nn.Module:
    activation = activation_of(options)
    return mlp(
        math.prod(input_shape),
        sizes,
        num_classes,
        activation=activation,
        bias="nobias" not in options,
        init="he" if "he" in options else "torch",
    )


def _cnn_from_spec(
    input_shape: Sequence[int], num_classes: int, sizes: list[int], options: list[str]
) -> nn.Module:
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"cnn needs square images [C, H, H]; the data has input shape {tuple(input_shape)}")
    activation = activation_of(options)
    return cnn(input_shape[0], num_classes, sizes, image_size=input_shape[1], activation=activation)


MODEL_KINDS: dict[str, ModelKind] = {
    "mlp": ModelKind(
        _mlp_from_spec, (1000, 1000), (*ACTIVATIONS, "nobias", "he"), "hidden sizes, e.g. mlp:1000,1000"
    ),
    "cnn": ModelKind(_cnn_from_spec, CNN_CHANNELS, tuple(ACTIVATIONS), "channels, e.g. cnn:64,128,256"),
}


def register_model(name: str, kind: ModelKind) -> None:
    """Make ``name[:sizes][:options]`` a model spec (a rule's own block structure, say)."""
    if MODEL_KINDS.get(name, kind) is not kind:
        raise ValueError(f"model kind {name!r} is already registered")
    MODEL_KINDS[name] = kind


def parse_spec(spec: str) -> tuple[str, list[int] | None, list[str]]:
    """``kind[:sizes][:option...]`` -> (kind, sizes or None, options), each checked against the kind."""
    kind_name, *fields = spec.split(":")
    if kind_name not in MODEL_KINDS:
        valid = "; ".join(f"{k}[:{v.sizes_help.split(', e.g. ')[0]}]" for k, v in MODEL_KINDS.items())
        raise ValueError(f"unknown model {spec!r}; valid kinds: {valid}, then :option ...")
    kind = MODEL_KINDS[kind_name]
    sizes, options = (fields[0], fields[1:]) if fields else ("", [])
    try:
        widths = [int(s) for s in sizes.split(",")] if sizes else None
    except ValueError:
        raise ValueError(
            f"model {spec!r}: sizes must be integers separated by commas ({kind.sizes_help})"
        ) from None
    for option in options:
        if option not in kind.options:
            raise ValueError(f"model {spec!r}: unknown option {option!r}; valid: {', '.join(kind.options)}")
    return kind_name, widths, options


def canonical_spec(spec: str, like: str | None = None) -> str:
    """The spec with its sizes written out, so that results name them. A kind without sizes takes those of
    ``like`` (a preset's spec) when that is of the same kind (and its options too, where it names none),
    else the kind's defaults."""
    kind, sizes, options = parse_spec(spec)
    if sizes is None:
        like_kind, like_sizes, like_options = parse_spec(like) if like is not None else (None, None, [])
        if like_kind == kind and like_sizes is not None:
            sizes, options = like_sizes, options or like_options
        else:
            sizes = list(MODEL_KINDS[kind].default_sizes)
    return ":".join([kind, ",".join(map(str, sizes)), *options])


def from_spec(spec: str, input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """Build a network from a text spec: ``kind[:sizes][:option...]``.

    ``mlp:1000,1000`` (hidden sizes), ``cnn:64,128,256`` (channels); options after the sizes name the
    activation (relu, the default, tanh, elu, gelu), ``nobias`` and ``he`` (MLP only: no biases; the
    Mono-Forward reference's initialisation, see ``mlp``), e.g. ``mlp:256,256:tanh`` or
    ``mlp:1024,1024:elu:nobias``. The spec is recorded in every result so the run can be rebuilt.
    """
    kind, sizes, options = parse_spec(spec)
    spec_kind = MODEL_KINDS[kind]
    return spec_kind.build(
        input_shape, num_classes, sizes if sizes is not None else list(spec_kind.default_sizes), options
    )
