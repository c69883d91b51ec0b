"""Reference networks, each an ``nn.Sequential`` whose children are the units of locality.

A local rule may cut the graph between two children and nowhere else, so a unit holds everything that
belongs to one layer (linear map, activation, pooling). The last child maps the previous unit's output to
class scores.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


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
) -> nn.Sequential:
    """A multilayer perceptron: one unit per hidden layer (Linear + activation), then a Linear head.

    The first unit flattens its input, so image tensors [N, C, H, W] go in as they are.
    """
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
    return nn.Sequential(*units)


def cnn(
    in_channels: int,
    num_classes: int,
    channels: Sequence[int] = (64, 128, 256),
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


MODEL_KINDS = ("mlp", "cnn")


def from_spec(spec: str, input_shape: Sequence[int], num_classes: int) -> nn.Sequential:
    """Build a network from a text spec: ``kind[:sizes][:option...]``.

    ``mlp:1000,1000`` (hidden sizes), ``cnn:64,128,256`` (channels); options after the sizes name the
    activation (relu, the default, tanh, elu, gelu) and ``nobias`` (MLP only), e.g. ``mlp:256,256:tanh``
    or ``mlp:1024,1024:elu:nobias``. The spec is recorded in every result so the run can be rebuilt.
    """
    kind, *fields = spec.split(":")
    if kind not in MODEL_KINDS:
        raise ValueError(
            f"unknown model {spec!r}; valid: mlp:H1,H2,... or cnn:C1,C2,..., then :activation or :nobias"
        )
    sizes, options = (fields[0], fields[1:]) if fields else ("", [])
    try:
        widths = [int(s) for s in sizes.split(",")] if sizes else None
    except ValueError:
        raise ValueError(
            f"model {spec!r}: sizes must be integers separated by commas, e.g. {kind}:1000,1000"
        ) from None
    activation, bias = "relu", True
    for option in options:
        if option in ACTIVATIONS:
            activation = option
        elif option == "nobias" and kind == "mlp":
            bias = False
        else:
            valid = [*ACTIVATIONS, *(["nobias"] if kind == "mlp" else [])]
            raise ValueError(f"model {spec!r}: unknown option {option!r}; valid: {', '.join(valid)}")
    if kind == "mlp":
        features = 1
        for d in input_shape:
            features *= d
        hidden = widths if widths is not None else [1000, 1000]
        return mlp(features, hidden, num_classes, activation=activation, bias=bias)
    if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
        raise ValueError(f"cnn needs square images [C, H, H]; the data has input shape {tuple(input_shape)}")
    channels, side = input_shape[0], input_shape[1]
    return cnn(
        channels,
        num_classes,
        widths if widths is not None else (64, 128, 256),
        image_size=side,
        activation=activation,
    )
