"""Energy (joules first, CO2 second) and peak memory, each figure with its source; see meter.py, memory.py."""

from .memory import MemoryCallback, TrainingPeak, lifetime_peak
from .meter import EnergyCallback, EnergyMeter, Measurement

peak_memory = lifetime_peak  # the process's lifetime peak; the training's own: TrainingPeak, MemoryCallback

__all__ = [
    "EnergyCallback",
    "EnergyMeter",
    "Measurement",
    "MemoryCallback",
    "TrainingPeak",
    "lifetime_peak",
    "peak_memory",
]
