"""Energy windows over the best sources this machine has, the Trainer callback, and peak memory.

    GPU        NVML energy counter  >  NVML power sampling  >  not metered
    CPU, RAM   CodeCarbon's offline tracker (RAPL where readable, else an estimate)  >  not metered
    none of it time only: joules None, source "none"

Every figure says where it came from and whether it was measured or estimated. Joules first; CO2 is derived
from them with the grid intensity of ``country_iso_code`` (CodeCarbon's bundled tables, never the network).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ..callbacks import Callback
from .codecarbon_meter import KWH, CodeCarbonMeter
from .nvml import EnergyCounter, PowerSampler, nvml_handles

if TYPE_CHECKING:
    from ..trainer import Result, Trainer

log = logging.getLogger(__name__)

PARTS = ("gpu", "cpu", "ram")
WINDOW = "training and per-epoch validation, per epoch (not data loading, checkpoints or the test set)"


@dataclasses.dataclass
class Measurement:
    """One window. ``by_source`` holds None for a part that is not metered or gave no figure."""

    name: str
    seconds: float | None = None
    joules: float | None = None  # None: no source, or a metered part gave no figure (see too_short)
    by_source: dict[str, float | None] = dataclasses.field(default_factory=dict)
    source: str = "none"
    measured: bool = False  # every metered part read a hardware counter or power sensor
    measured_by_source: dict[str, bool | None] = dataclasses.field(default_factory=dict)
    methods: dict[str, str | None] = dataclasses.field(default_factory=dict)
    too_short: bool = False  # shorter than the GPU counter's update period: its joules are None, not 0
    co2_kg: float | None = None
    _start: Any = dataclasses.field(default=None, repr=False, compare=False)  # readings at the opening edge


class EnergyMeter:
    """Meters named windows; ``with meter.window("train") as w: ...`` then read ``w.joules``.

    Args:
        device: the training device; CUDA is synchronised at window edges so queued kernels are counted.
        country_iso_code: 3-letter code of the grid for CO2 (CodeCarbon's offline tables).
        gpu_indices: CUDA-visible GPUs to meter; None meters the device's GPU, or none for a CPU device.
        sampling_interval: seconds between NVML power readings, where a GPU has no energy counter.
        scope: "process" (default): CPU and RAM energy of this process where the source can split it (see
            codecarbon_meter.py); "machine": the whole machine's. A GPU's figure covers the whole device.
    """

    def __init__(
        self,
        device: torch.device | str = "cpu",
        country_iso_code: str = "USA",
        gpu_indices: Sequence[int] | None = None,
        sampling_interval: float = 0.1,
        scope: str = "process",
    ) -> None:
        self.device = torch.device(device)
        self.country_iso_code = country_iso_code
        if gpu_indices is None and self.device.type == "cuda":
            index = self.device.index
            gpu_indices = [index if index is not None else torch.cuda.current_device()]
        self.gpu_indices = list(gpu_indices or [])
        self.nvml: Any = None
        self.gpu: EnergyCounter | PowerSampler | None = self._gpu_source(sampling_interval)
        self.cpu: CodeCarbonMeter | None = None
        try:
            self.cpu = CodeCarbonMeter(country_iso_code, scope=scope)
        except Exception as e:
            log.warning("CodeCarbon could not start (%s): CPU and RAM energy are not metered", e)
        cc = self.cpu
        self.methods = {
            "gpu": self.gpu.name if self.gpu else None,
            "cpu": f"codecarbon:{cc.cpu_method}" if cc else None,
            "ram": f"codecarbon:{cc.ram_method}" if cc else None,
        }
        self.measured_by_source = {
            "gpu": True if self.gpu else None,
            "cpu": cc.cpu_measured if cc else None,
            "ram": cc.ram_measured if cc else None,
        }
        # What each figure covers: this process, the machine, or the GPU device (everything running on it).
        self.scope = {
            "gpu": "device" if self.gpu else None,
            "cpu": cc.cpu_scope if cc else None,
            "ram": cc.ram_scope if cc else None,
        }
        metered = [v for v in self.measured_by_source.values() if v is not None]
        self.measured = bool(metered) and all(metered)
        self.source = "+".join(s for s in (self.methods["gpu"], "codecarbon" if cc else None) if s) or "none"
        self._open: Measurement | None = None
        log.info("energy: %s (%s; covers %s)", self.source, self.methods, self.scope)

    def _gpu_source(self, interval: float) -> EnergyCounter | PowerSampler | None:
        if not self.gpu_indices:
            return None
        try:
            self.nvml, handles = nvml_handles(self.gpu_indices)
        except Exception as e:  # no driver, no nvidia-ml-py, a MIG instance
            log.warning("NVML unavailable (%s): GPU energy is not metered", e)
            return None
        try:
            return EnergyCounter(self.nvml, handles)
        except self.nvml.NVMLError as e:  # NotSupported before Volta, on some vGPUs
            log.warning("no NVML energy counter (%s): sampling GPU power every %g s", e, interval)
        try:
            return PowerSampler(self.nvml, handles, interval)
        except self.nvml.NVMLError as e:
            log.warning("NVML cannot read GPU power either (%s): GPU energy is not metered", e)
            return None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def begin(self, name: str = "window") -> Measurement:
        # One window at a time: CodeCarbon's tasks cannot nest.
        if self._open is not None:
            raise RuntimeError(f"window {self._open.name!r} is still open; end it before {name!r}")
        self._sync()
        m = Measurement(name, source=self.source, measured=self.measured)
        m.measured_by_source, m.methods = dict(self.measured_by_source), dict(self.methods)
        gpu_start = self.gpu.begin() if self.gpu else None
        if self.cpu:
            self.cpu.begin()
        m._start = (time.perf_counter(), gpu_start)
        self._open = m
        return m

    def end(self, m: Measurement) -> Measurement:
        self._sync()
        t0, gpu_start = m._start
        m.seconds = time.perf_counter() - t0
        self._open, m._start = None, None
        parts: dict[str, float | None] = dict.fromkeys(PARTS)
        intensity = None
        if self.gpu:
            try:
                parts["gpu"] = self.gpu.end(gpu_start)
                m.too_short = parts["gpu"] is None
            except Exception as e:  # a metering fault must not end the training run
                log.warning("GPU energy reading failed: %s", e)
        if self.cpu:
            try:
                parts["cpu"], parts["ram"], intensity = self.cpu.end()
            except Exception as e:
                log.warning("CodeCarbon reading failed: %s", e)
        m.by_source = parts
        metered = [parts[k] for k in PARTS if self.measured_by_source[k] is not None]
        if metered and all(v is not None for v in metered):
            m.joules = sum(metered)
            m.co2_kg = m.joules / KWH * intensity if intensity is not None else None
        if m.too_short:
            log.warning("window %r (%.3f s) was shorter than the GPU counter update", m.name, m.seconds)
        return m

    @contextlib.contextmanager
    def window(self, name: str = "window") -> Iterator[Measurement]:
        m = self.begin(name)
        try:
            yield m
        finally:
            self.end(m)

    def close(self) -> None:
        if self.cpu:
            self.cpu.close()
        if self.nvml is not None:
            with contextlib.suppress(Exception):
                self.nvml.nvmlShutdown()


def _add(total: float | None, value: float | None) -> float | None:
    return None if total is None or value is None else total + value


class EnergyCallback(Callback):
    """Meters each epoch (training and validation) and puts totals and CO2 in ``result.extra`` (peak memory:
    memory.MemoryCallback).

    The window opens in on_epoch_start and closes in on_epoch_end, before the Trainer's own callbacks
    (metrics, checkpoint) run; data loading and the test pass fall outside by construction.
    """

    def __init__(self, meter: EnergyMeter) -> None:
        self.meter = meter
        self.window: Measurement | None = None
        self.totals: dict[str, Any] = self._zero()

    def _zero(self) -> dict[str, Any]:
        metered = self.meter.measured_by_source
        joules = {k: (0.0 if metered[k] is not None else None) for k in PARTS}
        return {"joules": joules, "co2_kg": 0.0 if self.meter.cpu else None, "windows": 0, "too_short": 0}

    def on_epoch_start(self, trainer: Trainer) -> None:
        if self.window is not None:  # left open by an epoch that raised
            self.meter.end(self.window)
        self.window = self.meter.begin(f"epoch {trainer.epoch}")

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if self.window is None:
            return
        m, self.window = self.meter.end(self.window), None
        t = self.totals
        for k in PARTS:  # a part with one missing window has no total: None rather than an undercount
            t["joules"][k] = _add(t["joules"][k], m.by_source[k])
        t["co2_kg"] = _add(t["co2_kg"], m.co2_kg)
        t["windows"] += 1
        t["too_short"] += m.too_short
        record.update(
            energy_joules=m.joules,
            energy_by_source=m.by_source,
            energy_measured=m.measured,
            energy_too_short=m.too_short,
        )

    def on_fit_end(self, trainer: Trainer, result: Result) -> None:
        meter, t = self.meter, self.totals
        parts = [v for k, v in t["joules"].items() if meter.measured_by_source[k] is not None]
        total = sum(parts) if parts and all(v is not None for v in parts) else None
        result.extra.update(
            energy_joules=total,
            energy_joules_by_source=dict(t["joules"]),
            energy_source=meter.source,
            energy_measured=meter.measured,
            energy_measured_by_source=dict(meter.measured_by_source),
            energy_methods=dict(meter.methods),
            energy_scope=dict(meter.scope),
            energy_window=WINDOW,
            energy_too_short_windows=t["too_short"],
            co2_kg=t["co2_kg"] if total is not None else None,
            co2_country=meter.country_iso_code if t["co2_kg"] is not None and total is not None else None,
        )

    def state_dict(self) -> dict[str, Any]:
        return {**self.totals, "joules": dict(self.totals["joules"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.totals = {**state, "joules": dict(state["joules"])}
