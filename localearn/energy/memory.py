"""Peak memory of the training itself: what a fit adds on top of what was resident when it started.

A process's lifetime peak (peak RSS, or CUDA's max_memory_allocated without a reset) counts the data set,
the interpreter and the libraries, so every rule shows about the same figure and none can be compared.
``TrainingPeak`` takes a baseline at fit start and reports the peak above it:

    CUDA   max_memory_allocated after reset_peak_memory_stats, minus memory_allocated at the start
    Linux  VmHWM after resetting it through /proc/self/clear_refs ("5"), minus the RSS at the start
    other  RSS sampled every 20 ms by a thread, minus the RSS at the start (may miss a short spike)

Each figure is recorded with its kind, and the lifetime figure stays beside it under a name that says so.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import torch

from ..callbacks import Callback

if TYPE_CHECKING:
    from ..trainer import Result, Trainer


def lifetime_peak(device: torch.device | str) -> tuple[int, str]:
    """The process's peak since it started (or since the last CUDA reset), in bytes, and what it is."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    try:
        import resource
    except ImportError:  # Windows
        return psutil.Process().memory_info().peak_wset, "process_peak_rss"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak * (1 if sys.platform == "darwin" else 1024), "process_peak_rss"  # KiB on Linux


class TrainingPeak:
    """``start()`` at fit start, ``stop()`` at its end: (peak bytes above the start, kind)."""

    STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.baseline = 0
        self.kind = ""
        self._sampled = 0
        self._stop: threading.Event | None = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline, self.kind = (
                torch.cuda.memory_allocated(self.device),
                "cuda_allocated_peak_above_start",
            )
            return
        try:  # Linux: reset the resident high-water mark to the current RSS
            self.CLEAR_REFS.write_text("5")
            self.baseline, self.kind = self._vm("VmRSS"), "rss_peak_above_start"
            return
        except OSError:
            pass
        self.baseline = self._sampled = psutil.Process().memory_info().rss
        self.kind, self._stop = "rss_sampled_peak_above_start", threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def stop(self) -> tuple[int, str]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._stop is None:
            peak = self._vm("VmHWM")
        else:
            self._stop.set()
            peak = max(self._sampled, psutil.Process().memory_info().rss)
        return max(peak - self.baseline, 0), self.kind

    def _sample(self) -> None:
        process = psutil.Process()
        while self._stop is not None and not self._stop.wait(0.02):
            self._sampled = max(self._sampled, process.memory_info().rss)

    def _vm(self, field: str) -> int:
        match = re.search(rf"^{field}:\s+(\d+) kB", self.STATUS.read_text(), re.M)
        if match is None:
            raise OSError(f"no {field} in {self.STATUS}")
        return int(match.group(1)) * 1024


class MemoryCallback(Callback):
    """Records the training's own peak memory (``peak_memory_bytes``, ``peak_memory_kind``) and, beside it,
    the process's lifetime peak (``process_lifetime_peak_bytes`` and its kind). A resumed run's peak covers
    the part after the resume."""

    def __init__(self) -> None:
        self.peak: TrainingPeak | None = None

    def on_fit_start(self, trainer: Trainer) -> None:
        self.peak = TrainingPeak(trainer.algo.device)
        self.peak.start()

    def on_fit_end(self, trainer: Trainer, result: Result) -> None:
        extra: dict[str, Any] = {}
        if self.peak is not None:
            extra["peak_memory_bytes"], extra["peak_memory_kind"] = self.peak.stop()
        lifetime, kind = lifetime_peak(trainer.algo.device)
        extra.update(process_lifetime_peak_bytes=lifetime, process_lifetime_peak_kind=kind)
        result.extra.update(extra)
