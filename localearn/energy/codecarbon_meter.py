"""CPU and RAM energy from CodeCarbon's OfflineEmissionsTracker, one CodeCarbon task per window.

Never the online ``EmissionsTracker``: it looks the machine up over HTTP (geo-IP, cloud metadata).

Scope: by default the tracker counts this process (and its children), not the machine, so a run on a busy
machine, or one of two tune workers side by side, is charged for its own work only. That is possible where
CodeCarbon estimates CPU power from load (TDP times this process's share of CPU time) and for its RAM model
(this process's resident memory); a hardware counter (RAPL) reads the whole package and cannot be split by
process, so such a figure covers the machine and says so.
"""

from __future__ import annotations

import logging
import tempfile

log = logging.getLogger(__name__)

# CPU modes that read a hardware energy counter; the others (cpu_load, constant) are TDP-based estimates.
MEASURED_CPU_MODES = {"intel_rapl", "windows_emi", "intel_power_gadget", "apple_powermetrics", "raspberry"}
KWH = 3.6e6  # joules


class CodeCarbonMeter:
    """Builds the tracker and detects the hardware at once, so neither cost falls inside a window."""

    def __init__(
        self, country_iso_code: str, measure_power_secs: float = 1.0, scope: str = "process"
    ) -> None:
        import codecarbon

        if scope not in ("process", "machine"):
            raise ValueError(f"energy scope {scope!r} is not valid; choose one of: process, machine")

        # Its constructor logs before it reads log_level.
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        # CodeCarbon also reads ~/.codecarbon.config, ./.codecarbon.config and CODECARBON_* variables; every
        # setting that could change a figure, write a file or call a server is passed here so they cannot.
        # output_methods=[] is the current spelling of save_to_file=False (and no API, Prometheus, Logfire);
        # an Electricity Maps token of "" overrides a configured one and is falsy, so CO2 comes from the
        # bundled country tables; allow_multiple_runs=True means no lock file.
        self.tracker = codecarbon.OfflineEmissionsTracker(
            country_iso_code=country_iso_code,
            region=None,
            cloud_provider=None,
            cloud_region=None,
            output_methods=[],
            emissions_endpoint=None,
            electricitymaps_api_token="",
            allow_multiple_runs=True,
            output_dir=tempfile.gettempdir(),  # only Intel Power Gadget writes here, never the working dir
            measure_power_secs=measure_power_secs,
            log_level="error",
            tracking_mode=scope,
            pue=1.0,
            force_cpu_power=None,
            force_ram_power=None,
            force_mode_cpu_load=False,
            force_carbon_intensity_g_co2e_kwh=None,
            rapl_include_dram=False,
            rapl_prefer_psys=False,
            project_name="localearn",
        )
        # The constructor swallows its own exceptions; a half-built tracker fails here instead.
        self.tracker.get_detected_hardware()
        self.cpu_method, self.cpu_measured, self.ram_method, self.ram_measured = self._methods()
        # What each figure covers: CodeCarbon splits its load-based CPU estimate and its RAM model by
        # process; a counter (RAPL, ...) or a constant share of TDP covers the machine whatever the mode.
        self.cpu_scope = scope if self.cpu_method == "cpu_load" else "machine"
        self.ram_scope = scope if self.ram_method == "ram_model" else "machine"
        self.windows = 0

    def _methods(self) -> tuple[str, bool, str, bool]:
        """Which CodeCarbon method gave the CPU and RAM figures, and whether each reads a counter."""
        cpu_method, ram_method, ram_measured = "unknown", "unknown", False
        for hw in getattr(self.tracker, "_hardware", []):
            kind, part = type(hw).__name__, getattr(hw, "chip_part", None)
            if kind == "CPU":
                cpu_method = getattr(hw, "_mode", "unknown")
            elif kind == "AppleSiliconChip" and part in ("CPU", "Processor"):
                cpu_method = "apple_powermetrics"
            elif kind == "Raspberry" and part == "CPU":
                cpu_method = "raspberry"
            elif kind == "Raspberry" and part == "RAM":
                ram_method, ram_measured = "raspberry_pmic", True
            elif kind == "RAM":  # a heuristic from installed memory (CodeCarbon's methodology.md)
                ram_method = "ram_model"
        return cpu_method, cpu_method in MEASURED_CPU_MODES, ram_method, ram_measured

    def begin(self) -> None:
        self.windows += 1
        self.tracker.start_task(f"localearn-{self.windows}")

    def end(self) -> tuple[float, float, float | None]:
        """CPU joules, RAM joules, and the grid's kg CO2 per kWh (None when no energy was counted)."""
        data = self.tracker.stop_task()
        intensity = data.emissions / data.energy_consumed if data.energy_consumed > 0 else None
        return data.cpu_energy * KWH, data.ram_energy * KWH, intensity

    def close(self) -> None:
        self.tracker.stop()
