"""Where a layer-parallel run's units go: stages of consecutive units, balanced by parameter count, and the
backend between their devices; what cannot run so is refused here, with the reason."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import torch

from ..algorithms.base import Algorithm

MODES = ("units", "wavefront")


class ParallelError(RuntimeError):
    """A stage died, refused, or did not answer within the timeout."""


def timeout_seconds() -> float:
    return float(os.environ.get("LOCALEARN_PARALLEL_TIMEOUT", 600))


@dataclasses.dataclass(frozen=True)
class Layout:
    """Which units each stage trains ([start, stop) into the rule's pipeline_units) and where it runs:
    ``units``, a process per stage; ``wavefront``, a CUDA stream per stage in one process (wavefront.py)."""

    stages: tuple[tuple[int, int], ...]
    devices: tuple[str, ...]
    in_flight: int
    mode: str = "units"

    @property
    def world_size(self) -> int:
        return len(self.stages)

    def units(self, rank: int) -> range:
        return range(*self.stages[rank])

    def to_dict(self) -> dict[str, Any]:
        stages = [
            {"units": [f"unit{i + 1}" for i in self.units(r)], "device": d}
            for r, d in enumerate(self.devices)
        ]
        if self.mode == "wavefront":  # one batch between two stages, always; streams only on a GPU
            return {"mode": self.mode, "world_size": self.world_size, "stages": stages,
                    "streams": torch.device(self.devices[0]).type == "cuda"}  # fmt: skip
        return {
            "mode": self.mode,
            "world_size": self.world_size,
            "stages": stages,
            "in_flight": self.in_flight,
            "backend": backend(self.devices),
        }


def balanced_split(costs: Sequence[int], stages: int) -> list[tuple[int, int]]:
    """Consecutive units in ``stages`` non-empty groups, the costliest group as cheap as it can be."""

    @functools.cache
    def best(n: int, k: int) -> tuple[int, tuple[int, ...]]:  # the first n units in k groups
        if k == 1:
            return sum(costs[:n]), (0,)
        return min(
            (max(best(s, k - 1)[0], sum(costs[s:n])), best(s, k - 1)[1] + (s,)) for s in range(k - 1, n)
        )

    starts = best(len(costs), stages)[1]
    return list(zip(starts, (*starts[1:], len(costs)), strict=True))


def plan(
    algo: Algorithm,
    world_size: int | None = None,
    devices: Sequence[str] = (),
    in_flight: int = 2,
    mode: str = "units",
) -> Layout:
    """The layout of ``algo``'s units over ``world_size`` stages (or one per device), balanced by parameter
    count (a dense unit's step costs about that, times the batch). Refuses what cannot run so, saying why.
    ``mode="wavefront"``: every stage on algo's device, one per unit unless ``world_size`` says."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not valid; choose one of: {', '.join(MODES)}")
    why = algo.parallel_refusal()
    if why is not None:
        raise ValueError(f"{algo.name} cannot train layer-parallel: {why}")
    if algo.num_stages > 1 or algo.passes_per_epoch > 1:
        raise ValueError(f"{algo.name} trains its parts one after another; nothing to run side by side")
    if mode == "wavefront":
        if devices:
            raise ValueError(f"the wavefront schedule runs on one device, the rule's: got devices={devices}")
        world_size = world_size or len(algo.pipeline_units())
    if devices and world_size not in (None, len(devices)):
        raise ValueError(f"world_size={world_size} but {len(devices)} devices: give one or match them")
    world_size = len(devices) if devices else world_size
    units = algo.pipeline_units()
    if world_size is None or not 2 <= world_size <= len(units):
        raise ValueError(
            f"world_size={world_size!r}: a layer-parallel run of {algo.name} on this network needs 2 to "
            f"{len(units)} stages (one unit or more each)"
        )
    if in_flight < 1:
        raise ValueError(f"in_flight={in_flight!r} must be >= 1")
    costs = [sum(p.numel() for p in unit.parameters()) for unit in units]
    devices = tuple(devices) or (str(algo.device),) * world_size
    return Layout(tuple(balanced_split(costs, world_size)), devices, in_flight, mode)


def backend(devices: Sequence[str]) -> str:
    """NCCL between distinct GPUs; gloo otherwise (CPU, or stages sharing a GPU, which NCCL refuses)."""
    cuda = [torch.device(d) for d in devices if torch.device(d).type == "cuda"]
    return "nccl" if len(cuda) == len(devices) and len(set(cuda)) == len(cuda) else "gloo"
