"""On a GPU: the NVML energy counter beside NVML power sampling over the same windows, and peak CUDA memory.

Trains mono_forward and backprop on MNIST (2x1000 MLP, preset settings) through the Trainer. Every epoch is
one window read by both GPU sources at once, so the two figures cover exactly the same work; they should
agree within a few percent (ml.energy's guidance; A100/H100 power readings sample only part of the time).

Before the first window, both sources read the idle GPU for ``--idle`` seconds: the power it draws doing
nothing, which every figure of a run includes.

    LOCALEARN_DATA=../shared/data python benchmarks/nvml_crosscheck.py [--epochs 10] [--interval 0.1]
        [--idle 5]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import localearn as ll
from localearn.energy import EnergyCallback, EnergyMeter, MemoryCallback
from localearn.energy.nvml import EnergyCounter, PowerSampler, nvml_handles
from localearn.experiments.spec import resolve
from localearn.experiments.train import build_algorithm


class BothGpuSources(ll.Callback):
    """Opens the counter and the sampler on the same epoch windows; CUDA synchronised at both edges."""

    def __init__(self, counter: EnergyCounter, sampler: PowerSampler) -> None:
        self.counter, self.sampler = counter, sampler
        self.joules = {"counter": 0.0, "sampling": 0.0}
        self.short_windows = 0

    def on_epoch_start(self, trainer: ll.Trainer) -> None:
        torch.cuda.synchronize()
        self.tokens = (self.counter.begin(), self.sampler.begin())

    def on_epoch_end(self, trainer: ll.Trainer, record: dict) -> None:
        torch.cuda.synchronize()
        counted = self.counter.end(self.tokens[0])
        sampled = self.sampler.end(self.tokens[1])
        if counted is None:
            self.short_windows += 1
        else:
            self.joules["counter"] += counted
            self.joules["sampling"] += sampled
        record.update(gpu_joules_counter=counted, gpu_joules_sampling=sampled)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--interval", type=float, default=0.1, help="seconds between power samples")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of idle GPU read before training")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    device = torch.device("cuda")
    nvml, handles = nvml_handles([torch.cuda.current_device()])
    limit_watts = sum(nvml.nvmlDeviceGetEnforcedPowerLimit(h) for h in handles) / 1000
    print(
        f"{torch.cuda.get_device_name(device)}, driver {nvml.nvmlSystemGetDriverVersion()}, torch "
        f"{torch.__version__}, power limit (TDP) {limit_watts:.0f} W, sampling every {args.interval} s"
    )
    train, val, test = ll.load_dataset("mnist", device=device)
    torch.cuda.synchronize()
    counter, sampler = EnergyCounter(nvml, handles), PowerSampler(nvml, handles, args.interval)
    tokens = counter.begin(), sampler.begin()
    time.sleep(args.idle)
    counted, sampled = counter.end(tokens[0]), sampler.end(tokens[1])
    print(
        f"idle for {args.idle:.0f} s: counter {'-' if counted is None else f'{counted / args.idle:.1f}'} W, "
        f"sampling {sampled / args.idle:.1f} W"
    )
    for name in ("mono_forward", "backprop"):
        spec = resolve("mnist", name, device=str(device))  # the preset's network and settings
        algo = build_algorithm(spec, train, device)
        both = BothGpuSources(EnergyCounter(nvml, handles), PowerSampler(nvml, handles, args.interval))
        meter = EnergyMeter(device)
        result = ll.Trainer(
            algo,
            train,
            val,
            test,
            epochs=args.epochs,
            batch_size=spec.batch_size,
            patience=None,
            callbacks=[both, EnergyCallback(meter), MemoryCallback()],
            progress=False,
        ).fit()
        meter.close()
        c, s = both.joules["counter"], both.joules["sampling"]
        watts, peak = c / result.train_seconds, result.extra["peak_memory_bytes"] / 2**20
        print(
            f"{name}: test accuracy {result.test_accuracy:.4f}, {result.epochs} epochs, "
            f"{result.train_seconds:.1f} s; GPU joules counter {c:.1f}, sampling {s:.1f} "
            f"(sampling/counter {s / c if c else float('nan'):.3f}; {both.short_windows} windows too short "
            f"for the counter); meter total {result.extra['energy_joules']} J "
            f"({result.extra['energy_source']}); training's peak {peak:.1f} MiB "
            f"({result.extra['peak_memory_kind']}); average power while training {watts:.1f} W, "
            f"{100 * watts / limit_watts:.0f} % of the limit"
        )


if __name__ == "__main__":
    main()
