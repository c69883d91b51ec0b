"""GPU energy from NVML: the cumulative energy counter where the GPU has one, else power samples integrated.

``pynvml`` is the import name of nvidia-ml-py. It is imported when a meter is built, not with localearn, so a
machine without the NVIDIA driver still imports the package (and tests can put a fake in ``sys.modules``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


def nvml_handles(indices: Sequence[int]) -> tuple[Any, list[Any]]:
    """Initialise NVML; return the module and a handle for each CUDA-visible GPU index in ``indices``.

    Visible index i is the i-th entry of CUDA_VISIBLE_DEVICES when that is set: an NVML index, or a full
    ``GPU-<uuid>``. Integers are CUDA's numbering, which is NVML's (PCI bus) order under
    CUDA_DEVICE_ORDER=PCI_BUS_ID or when the GPUs are alike; torch.cuda assumes the same.
    """
    import pynvml

    pynvml.nvmlInit()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = None if env is None else [v.strip() for v in env.split(",") if v.strip()]
    handles = []
    for i in indices:
        if visible is None:
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(i))
        elif i >= len(visible):
            raise ValueError(f"GPU {i} is not visible: CUDA_VISIBLE_DEVICES={env!r}")
        elif visible[i].isdigit():
            handles.append(pynvml.nvmlDeviceGetHandleByIndex(int(visible[i])))
        elif visible[i].startswith("GPU-"):
            handles.append(pynvml.nvmlDeviceGetHandleByUUID(visible[i]))
        else:  # MIG-...: an instance has no energy counter or power reading of its own
            raise ValueError(f"cannot meter CUDA_VISIBLE_DEVICES entry {visible[i]!r} with NVML")
    return pynvml, handles


class EnergyCounter:
    """Sum over GPUs of ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver load; Volta and newer)."""

    name = "nvml-counter"

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self.nvml, self.handles = nvml, handles
        self.read()  # raises NVMLError (NotSupported, say) where the GPU has no counter

    def read(self) -> list[int]:
        return [self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]

    def begin(self) -> list[int]:
        return self.read()

    def end(self, start: list[int]) -> float | None:
        deltas = [b - a for a, b in zip(start, self.read(), strict=True)]
        # The counter moves every 20-100 ms. An idle GPU still draws tens of watts, so an unchanged counter
        # means the window was too short to see, never that it used 0 J: report None, not 0.
        if any(d <= 0 for d in deltas):
            return None
        return sum(deltas) / 1000.0


def trapezoid(times: Sequence[float], watts: Sequence[float]) -> float:
    """Joules under a power trace sampled at ``times`` (s), by the trapezoidal rule."""
    return sum((times[i + 1] - times[i]) * (watts[i] + watts[i + 1]) / 2 for i in range(len(times) - 1))


class PowerSampler:
    """Sum over GPUs of ``nvmlDeviceGetPowerUsage`` (mW), read every ``interval`` s in a daemon thread while a
    window is open and integrated over it, the readings at both edges included. For GPUs without a counter.
    """

    name = "nvml-sampling"

    def __init__(self, nvml: Any, handles: list[Any], interval: float) -> None:
        self.nvml, self.handles, self.interval = nvml, handles, interval
        self.watts()  # raises NVMLError where power cannot be read either

    def watts(self) -> float:
        return sum(self.nvml.nvmlDeviceGetPowerUsage(h) for h in self.handles) / 1000.0

    def begin(self) -> tuple[list[tuple[float, float]], threading.Event, threading.Thread]:
        samples = [(time.perf_counter(), self.watts())]
        stop = threading.Event()
        thread = threading.Thread(target=self._run, args=(samples, stop), name="localearn-nvml", daemon=True)
        thread.start()
        return samples, stop, thread

    def _run(self, samples: list[tuple[float, float]], stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            try:
                samples.append((time.perf_counter(), self.watts()))
            except Exception as e:  # the edge readings still bound the window; say what was lost
                log.warning("NVML power sampling stopped: %s", e)
                return

    def end(self, token: tuple[list[tuple[float, float]], threading.Event, threading.Thread]) -> float:
        samples, stop, thread = token
        stop.set()
        thread.join()  # after this only this thread touches samples
        samples.append((time.perf_counter(), self.watts()))
        return trapezoid([t for t, _ in samples], [w for _, w in samples])
