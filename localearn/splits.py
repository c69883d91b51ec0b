"""Data splits as device-resident tensors, checked when built, and the batches an epoch is made of.

A ``DataSplit`` holds float inputs and int64 class labels on one device; what could surface later from inside
torch as a confusing error (a label out of range, NaN inputs read as "diverged") is refused here, naming the
problem. An epoch is a loop over index slices of these tensors (``iterate_batches``): no DataLoader, no
per-epoch decoding; augmentation (``random_crop_flip``) runs on the device, per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["DataError", "DataSplit", "check_fit", "check_splits", "iterate_batches", "random_crop_flip"]


class DataError(ValueError):
    """A dataset, split or device that cannot be found, read or used as asked."""


@dataclass(eq=False)  # eq on tensors is ambiguous; splits compare by identity
class DataSplit:
    x: torch.Tensor  # float32 [N, C, H, W], normalised
    y: torch.Tensor  # int64 [N]
    classes: list[str]
    name: str
    augment: bool = False  # iterate_batches applies random_crop_flip per batch

    def __post_init__(self) -> None:
        """Refuse, naming the problem, what would otherwise fail later inside torch (or train on nonsense)."""
        where = f"data split {self.name!r}"
        if not isinstance(self.x, torch.Tensor) or not isinstance(self.y, torch.Tensor):
            raise DataError(
                f"{where}: x and y must be tensors; got {type(self.x).__name__}, {type(self.y).__name__}"
            )
        if not self.x.is_floating_point() or self.x.ndim < 2:
            raise DataError(
                f"{where}: x must be a floating-point tensor [N, ...] of (normalised) inputs; got "
                f"{self.x.dtype} of shape {tuple(self.x.shape)}"
            )
        if self.y.dtype != torch.int64 or self.y.ndim != 1:
            raise DataError(
                f"{where}: y must be a 1-D int64 tensor of class indices; got {self.y.dtype} of shape "
                f"{tuple(self.y.shape)} (use y.long())"
            )
        if len(self.x) != len(self.y):
            raise DataError(f"{where}: x has {len(self.x)} examples but y has {len(self.y)}")
        if self.x.device != self.y.device:
            raise DataError(f"{where}: x is on {self.x.device} but y is on {self.y.device}")
        if len(self.classes) < 2:
            raise DataError(f"{where}: needs at least 2 classes; got {list(self.classes)}")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= len(self.classes)):
            bad = self.y[(self.y < 0) | (self.y >= len(self.classes))][0]
            raise DataError(
                f"{where}: label {int(bad)} is outside 0..{len(self.classes) - 1} "
                f"({len(self.classes)} classes)"
            )
        finite = torch.isfinite(self.x.flatten(1)).all(1)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0])
            raise DataError(
                f"{where}: {int((~finite).sum())} examples have NaN or infinite inputs (the first: example "
                f"{first}); clean or drop them"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def __repr__(self) -> str:  # the default would print whole tensors
        return (
            f"DataSplit(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, device={self.device}, augment={self.augment})"
        )


def check_splits(**splits: Any) -> None:
    """Each argument a DataSplit (an empty one stands for none), or a TypeError naming it."""
    for name, split in splits.items():
        if not isinstance(split, DataSplit):
            raise TypeError(f"{name} must be a DataSplit (an empty one for none); got {type(split).__name__}")


def check_fit(algo: Any, train: DataSplit, val: DataSplit, test: DataSplit) -> None:
    """The splits agree with each other and with the algorithm: shapes, classes, device, and one dry
    prediction. Run before anything is written."""
    for split in (val, test):
        if split.input_shape != train.input_shape:
            raise ValueError(f"{split.name}: input shape {split.input_shape} != train {train.input_shape}")
    if train.num_classes != algo.num_classes:
        raise ValueError(
            f"the data has {train.num_classes} classes but the algorithm was built for {algo.num_classes}"
        )
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"empty split: train {len(train)}, test {len(test)} examples")
    if train.device != algo.device:
        raise ValueError(
            f"the data is on {train.device} but the algorithm is on {algo.device}; "
            "load the data and build the algorithm on the same device"
        )
    algo.train(False)
    try:
        scores = algo.predict(train.x[:2])
    except RuntimeError as e:
        raise ValueError(
            f"the network does not accept the data's inputs of shape {tuple(train.input_shape)}: {e}"
        ) from e
    if tuple(scores.shape) != (min(2, len(train)), algo.num_classes):
        raise ValueError(
            f"the network gives scores of shape {tuple(scores.shape)}, expected [batch, {algo.num_classes}]"
        )


def random_crop_flip(
    x: torch.Tensor, padding: int = 4, generator: torch.Generator | None = None, *, flip_prob: float = 0.5
) -> torch.Tensor:
    """Per-example random crop after reflect padding, then horizontal flip with probability flip_prob.

    Vectorised with gather on x.device. Random numbers are drawn on CPU with `generator`, so a seed gives the
    same augmentation on any device.
    """
    if x.ndim != 4:
        raise DataError(f"random_crop_flip expects [N, C, H, W], got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if not 0 <= padding < min(h, w):  # reflect padding needs padding < image side
        raise DataError(f"padding must be in [0, {min(h, w) - 1}] for {h}x{w} images, got {padding}")
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    flip = (torch.rand(n, generator=generator) < flip_prob).to(x.device)
    if n == 0:
        return x
    if padding:
        x = F.pad(x, (padding,) * 4, mode="reflect")
    rows = dy[:, None] + torch.arange(h, device=x.device)  # [n, h] source rows in the padded image
    cols = dx[:, None] + torch.arange(w, device=x.device)  # [n, w] source columns
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    x = x.gather(2, rows[:, None, :, None].expand(n, c, h, x.shape[3]))
    return x.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def iterate_batches(
    split: DataSplit, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches as index slices of the split's device tensors; the last partial batch is kept.

    shuffle draws the order on CPU with `generator` (a CPU generator), so runs repeat on any device. If
    split.augment, each x batch goes through random_crop_flip with the same generator.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.device) if shuffle else None
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = split.x[start : start + batch_size], split.y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            xb, yb = split.x[idx], split.y[idx]
        if split.augment:
            xb = random_crop_flip(xb, generator=generator)
        yield xb, yb
