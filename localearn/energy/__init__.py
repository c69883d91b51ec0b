"""Energy (joules first, CO2 second) and peak memory, each figure with its source; see meter.py."""

from .meter import EnergyCallback, EnergyMeter, Measurement, peak_memory

__all__ = ["EnergyCallback", "EnergyMeter", "Measurement", "peak_memory"]
