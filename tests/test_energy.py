"""Energy and memory metering: NVML against a fake at the pynvml boundary, CodeCarbon faked except in the
no-network run, which uses the real offline tracker."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import localearn as ll
from localearn.data import DataSplit
from localearn.energy import (
    EnergyCallback,
    EnergyMeter,
    Measurement,
    MemoryCallback,
    TrainingPeak,
    peak_memory,
)
from localearn.energy.nvml import PowerSampler, trapezoid

CPU = torch.device("cpu")


# -- fakes ---------------------------------------------------------------------------------------------------
def fake_pynvml(steps_mj=(1000, 3000), watts=(150.0, 250.0), counter=True, init_error=False):
    """Two GPUs: each counter read adds steps_mj[i]; power is constant. Records calls in ``nv.calls``."""
    nv = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 (pynvml's name)
        pass

    nv.NVMLError, nv.NVMLError_NotSupported = NVMLError, NVMLError_NotSupported
    nv.energy, nv.calls = [0, 0], []
    uuids = ["GPU-aaaa", "GPU-bbbb"]

    def init():
        if init_error:
            raise NVMLError("Driver Not Loaded")

    def energy(h):
        nv.calls.append(("energy", h))
        if not counter:
            raise NVMLError_NotSupported("Not Supported")
        nv.energy[h] += steps_mj[h]
        return nv.energy[h]

    def power(h):
        nv.calls.append(("power", h))
        return int(watts[h] * 1000)

    nv.nvmlInit, nv.nvmlShutdown = init, lambda: None
    nv.nvmlDeviceGetCount = lambda: 2
    nv.nvmlDeviceGetHandleByIndex = lambda i: [0, 1][i]
    nv.nvmlDeviceGetHandleByUUID = lambda u: uuids.index(u)
    nv.nvmlDeviceGetTotalEnergyConsumption = energy
    nv.nvmlDeviceGetPowerUsage = power
    return nv


class CPU_:  # CodeCarbon's hardware classes are told apart by name
    _mode = "cpu_load"


class RAM:
    pass


CPU_.__name__ = "CPU"


class FakeTracker:
    """OfflineEmissionsTracker's surface that the meter uses: 10 W CPU, 5 W RAM, 0.4 kg CO2 per kWh."""

    instances = []

    def __init__(self, **kwargs):
        self.kwargs, self._hardware, self.t0 = kwargs, [RAM(), CPU_()], None
        FakeTracker.instances.append(self)

    def get_detected_hardware(self):
        return {}

    def start_task(self, name):
        self.t0 = time.perf_counter()

    def stop_task(self):
        s = time.perf_counter() - self.t0
        cpu, ram = 10 * s / 3.6e6, 5 * s / 3.6e6
        return types.SimpleNamespace(
            cpu_energy=cpu, ram_energy=ram, energy_consumed=cpu + ram, emissions=0.4 * (cpu + ram)
        )

    def stop(self):
        pass


@pytest.fixture
def codecarbon(monkeypatch):
    import codecarbon

    FakeTracker.instances.clear()
    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", FakeTracker)
    return FakeTracker


def use_nvml(monkeypatch, **kw):
    nv = fake_pynvml(**kw)
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return nv


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# -- sources -------------------------------------------------------------------------------------------------
def test_counter_deltas_summed_over_two_gpus(monkeypatch, codecarbon):
    use_nvml(monkeypatch)
    meter = EnergyMeter(device=CPU, gpu_indices=[0, 1])
    assert meter.source == "nvml-counter+codecarbon"
    with meter.window("train") as w:
        busy(0.01)
    assert isinstance(w, Measurement) and w.seconds > 0
    assert w.by_source["gpu"] == pytest.approx(4.0)  # (1000 + 3000) mJ
    cpu, ram = w.by_source["cpu"], w.by_source["ram"]
    assert cpu == pytest.approx(10 * w.seconds, rel=0.2) and ram == pytest.approx(5 * w.seconds, rel=0.2)
    assert w.joules == pytest.approx(4.0 + cpu + ram)
    assert w.co2_kg == pytest.approx(w.joules / 3.6e6 * 0.4)
    assert w.measured_by_source == {"gpu": True, "cpu": False, "ram": False}
    assert w.measured is False and w.too_short is False
    assert w.methods == {"gpu": "nvml-counter", "cpu": "codecarbon:cpu_load", "ram": "codecarbon:ram_model"}
    kw = codecarbon.instances[
        0
    ].kwargs  # settings that keep it offline and file-free, whatever the config says
    assert kw["country_iso_code"] == "USA" and kw["output_methods"] == [] and kw["emissions_endpoint"] is None
    assert kw["electricitymaps_api_token"] == "" and kw["allow_multiple_runs"] is True


@pytest.mark.parametrize("visible", ["1", "GPU-bbbb", "1,0"])
def test_cuda_visible_devices_meters_only_that_gpu(monkeypatch, codecarbon, visible):
    nv = use_nvml(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    meter = EnergyMeter(device=CPU, gpu_indices=[0])
    with meter.window() as w:
        pass
    assert w.by_source["gpu"] == pytest.approx(3.0)  # GPU 1's step
    assert {h for _, h in nv.calls} == {1}


def test_invisible_gpu_is_not_metered(monkeypatch, codecarbon):
    use_nvml(monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    meter = EnergyMeter(device=CPU, gpu_indices=[1])
    assert meter.gpu is None and meter.source == "codecarbon"


def test_no_counter_falls_back_to_power_sampling(monkeypatch, codecarbon):
    nv = use_nvml(monkeypatch, counter=False)
    meter = EnergyMeter(device=CPU, gpu_indices=[0, 1], sampling_interval=0.01)
    assert meter.source == "nvml-sampling+codecarbon" and meter.measured_by_source["gpu"] is True
    with meter.window() as w:
        time.sleep(0.2)
    assert sum(c == "power" for c, _ in nv.calls) >= 2 * 6  # edges plus samples from the thread
    assert w.by_source["gpu"] == pytest.approx(400.0 * w.seconds, rel=0.05)  # 150 W + 250 W, constant
    assert not w.too_short


def test_without_nvml_cpu_then_null(monkeypatch, codecarbon):
    use_nvml(monkeypatch, init_error=True)
    meter = EnergyMeter(device=CPU, gpu_indices=[0])
    assert meter.source == "codecarbon" and meter.gpu is None
    with meter.window() as w:
        busy(0.01)
    assert w.by_source["gpu"] is None and w.joules == pytest.approx(w.by_source["cpu"] + w.by_source["ram"])

    monkeypatch.setitem(sys.modules, "codecarbon", None)  # not installed: import fails
    meter = EnergyMeter(device=CPU, gpu_indices=[0])
    with meter.window() as w:
        busy(0.01)
    assert meter.source == "none" and w.source == "none"
    assert w.joules is None and w.measured is False and w.seconds > 0 and w.co2_kg is None
    assert w.by_source == {"gpu": None, "cpu": None, "ram": None}


def test_window_shorter_than_counter_update_is_flagged_not_zero(monkeypatch, codecarbon):
    use_nvml(monkeypatch, steps_mj=(0, 0))  # the counter has not moved
    meter = EnergyMeter(device=CPU, gpu_indices=[0, 1])
    with meter.window() as w:
        pass
    assert w.too_short is True
    assert w.by_source["gpu"] is None and w.joules is None and w.co2_kg is None


def test_windows_do_not_nest(codecarbon):
    meter = EnergyMeter(device=CPU)
    with meter.window("outer"), pytest.raises(RuntimeError, match="still open"):
        meter.begin("inner")


# -- integration ---------------------------------------------------------------------------------------------
def test_trapezoid_against_known_traces():
    ramp_t = [i * 0.5 for i in range(21)]  # 0..10 s
    assert trapezoid(ramp_t, [100 + 10 * t for t in ramp_t]) == pytest.approx(1500.0)
    # A step from 100 W to 300 W at 1 s (two samples at the same instant), held to 3 s: 100 + 600 J.
    assert trapezoid([0, 1, 1, 3], [100, 100, 300, 300]) == pytest.approx(700.0)
    assert trapezoid([5.0], [100]) == 0.0


def test_sampler_includes_edge_samples(monkeypatch):
    nv = fake_pynvml(counter=False, watts=(100.0, 0.0))
    sampler = PowerSampler(nv, [0], interval=10.0)  # no sample from the thread inside a short window
    token = sampler.begin()
    time.sleep(0.05)
    joules = sampler.end(token)
    samples = token[0]
    assert len(samples) == 2 and joules == pytest.approx(100.0 * (samples[1][0] - samples[0][0]))


# -- the Trainer callback ------------------------------------------------------------------------------------
def blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    centers = torch.randn(4, 20, generator=torch.Generator().manual_seed(0)) * 3
    x = centers[y] + torch.randn(n, 20, generator=g)
    return DataSplit(x, y, ["a", "b", "c", "d"], "blobs")


def fit(callback, epochs=3, callbacks_extra=(), **kw):
    torch.manual_seed(0)
    algo = ll.make("backprop", ll.models.mlp(20, [16], 4), 4)
    splits = blobs(300, 1), blobs(60, 2), blobs(60, 3)
    kw.setdefault("progress", False)
    callbacks = [*callbacks_extra, callback]
    trainer = ll.Trainer(algo, *splits, epochs=epochs, patience=None, callbacks=callbacks, **kw)
    return trainer.fit()


def test_callback_records_totals_and_state(tmp_path, codecarbon):
    cb = EnergyCallback(EnergyMeter(device=CPU))
    result = fit(cb, run_dir=tmp_path / "run")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        assert r["energy_joules"] > 0 and r["energy_measured"] is False and r["energy_too_short"] is False
        assert r["energy_by_source"]["gpu"] is None and r["energy_by_source"]["cpu"] > 0
    extra = result.extra
    assert extra["energy_joules"] == pytest.approx(sum(r["energy_joules"] for r in records))
    assert list(extra).index("energy_joules") < list(extra).index("co2_kg")  # joules first, CO2 second
    assert extra["energy_source"] == "codecarbon" and extra["energy_measured"] is False
    assert extra["co2_kg"] == pytest.approx(extra["energy_joules"] / 3.6e6 * 0.4)
    assert extra["co2_country"] == "USA" and extra["energy_joules_by_source"]["gpu"] is None
    assert "per-epoch validation" in extra["energy_window"]
    # The checkpoint keeps the totals, so a resumed run goes on counting from them.
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["callbacks"]["EnergyCallback"]
    assert saved == cb.state_dict() and saved["windows"] == 3
    again = EnergyCallback(cb.meter)
    again.load_state_dict(saved)
    assert again.state_dict() == cb.state_dict()
    resumed = types.SimpleNamespace(extra={})
    again.on_fit_end(types.SimpleNamespace(algo=types.SimpleNamespace(device=CPU)), resumed)
    assert resumed.extra["energy_joules"] == pytest.approx(extra["energy_joules"])


def test_lifetime_peak_on_cpu_is_process_peak_rss():
    peak, kind = peak_memory(CPU)
    assert kind == "process_peak_rss" and peak > 10 * 2**20  # torch alone is bigger than 10 MiB


class Allocate(ll.Callback):
    """Holds ``mib`` MiB for a moment in every epoch, as a rule's training would."""

    def __init__(self, mib):
        self.mib = mib

    def on_epoch_end(self, trainer, record):
        held = torch.ones(self.mib * 2**18)  # float32: 4 bytes each
        time.sleep(0.1)  # long enough for a sampler to see it
        del held


@pytest.mark.parametrize("reset", ["high-water mark", "sampled"])
def test_peak_memory_is_the_trainings_own(reset, monkeypatch):
    """What was resident before the fit (here 300 MiB, a data set say) is not the training's; what the
    training holds (here 120 MiB in each epoch) is. The process's lifetime peak stays beside it, named."""
    if reset == "sampled":  # no /proc/self/clear_refs: RSS sampled by a thread
        monkeypatch.setattr(TrainingPeak, "CLEAR_REFS", Path("/nonexistent/clear_refs"))
    resident = torch.ones(300 * 2**18)
    result = fit(MemoryCallback(), epochs=2, callbacks_extra=[Allocate(120)])
    extra = result.extra
    assert extra["peak_memory_kind"] == (
        "rss_peak_above_start" if reset != "sampled" else "rss_sampled_peak_above_start"
    )
    assert 100 * 2**20 < extra["peak_memory_bytes"] < 250 * 2**20
    assert extra["process_lifetime_peak_kind"] == "process_peak_rss"
    assert extra["process_lifetime_peak_bytes"] > 400 * 2**20
    del resident


def test_metered_fit_opens_no_socket(monkeypatch):
    """The real offline CodeCarbon tracker over a real fit: not one socket is created."""
    # urllib3 probes for IPv6 at import by binding a socket to ::1 (no connection). CodeCarbon imports it
    # lazily through requests; import it before the guard so the guard sees only what metering does.
    import codecarbon.core.emissions  # noqa: F401

    made = []

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            made.append(args)
            raise OSError("localearn.energy must not open sockets")

    def refuse(*args, **kwargs):
        made.append(args)
        raise OSError("localearn.energy must not open connections")

    monkeypatch.setattr(socket, "socket", NoSocket)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    meter = EnergyMeter(device=CPU, country_iso_code="FRA")
    result = fit(EnergyCallback(meter), epochs=2)
    meter.close()
    assert made == []
    assert meter.cpu is not None, "the real CodeCarbon tracker did not start"
    extra = result.extra
    assert extra["energy_source"] == "codecarbon" and extra["energy_joules"] > 0
    assert extra["co2_kg"] > 0 and extra["co2_country"] == "FRA"
    assert extra["energy_methods"]["cpu"].startswith("codecarbon:")
    assert extra["energy_measured"] is False  # CodeCarbon's RAM figure is a model, whatever the CPU's is


def test_cuda_device_is_synchronised_and_metered_by_default(monkeypatch, codecarbon):
    nv = use_nvml(monkeypatch)
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: syncs.append(device))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 123)
    meter = EnergyMeter(device="cuda:1")  # gpu_indices=None: the device's own GPU
    with meter.window() as w:
        assert len(syncs) == 1  # the opening edge
    assert syncs == [torch.device("cuda:1")] * 2
    assert w.by_source["gpu"] == pytest.approx(3.0) and {h for _, h in nv.calls} == {1}
    assert peak_memory("cuda:1") == (123, "cuda_max_memory_allocated")


def test_callback_total_is_none_when_a_window_had_no_gpu_figure(monkeypatch, codecarbon):
    use_nvml(monkeypatch, steps_mj=(0, 0))
    result = fit(EnergyCallback(EnergyMeter(device=CPU, gpu_indices=[0])), epochs=2)
    extra = result.extra
    assert extra["energy_too_short_windows"] == 2
    assert extra["energy_joules"] is None and extra["co2_kg"] is None and extra["co2_country"] is None
    assert extra["energy_joules_by_source"]["gpu"] is None and extra["energy_joules_by_source"]["cpu"] > 0


def test_cpu_energy_is_this_processs_own_on_a_busy_machine():
    """Another process burns a core while this one sleeps: the default figure (this process's) stays near
    zero, the machine's does not. So a run on a busy machine, or one of two tune workers side by side, is
    charged for its own work only."""
    burner = subprocess.Popen(  # not our child: the shell exits, the loop is adopted by init
        ["sh", "-c", f"{sys.executable} -c 'while True: pass' > /dev/null 2>&1 & echo $!"],
        stdout=subprocess.PIPE,
        text=True,
    )
    pid = int(burner.stdout.readline())
    burner.wait()
    try:
        joules, scopes = {}, {}
        for scope in ("process", "machine"):
            meter = EnergyMeter(device=CPU, scope=scope)
            if meter.cpu is None or meter.cpu.cpu_method != "cpu_load":
                pytest.skip(
                    "CPU energy here is not CodeCarbon's load-based estimate (RAPL covers the machine)"
                )
            with meter.window() as w:
                time.sleep(2.5)
            meter.close()
            joules[scope], scopes[scope] = w.by_source["cpu"], meter.scope["cpu"]
    finally:
        os.kill(pid, signal.SIGKILL)
    assert scopes == {"process": "process", "machine": "machine"}
    assert joules["process"] < 0.2 * joules["machine"], joules
