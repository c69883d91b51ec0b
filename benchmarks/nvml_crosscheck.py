"""On a GPU: the NVML energy counter beside NVML power sampling over the same windows, and peak CUDA memory.

Trains mono_forward and backprop on MNIST (2x1000 MLP, preset settings) through the Trainer. Every epoch is
one window read by both GPU sources at once, so the two figures cover exactly the same work; they should
agree within a few percent (ml.energy's guidance; A100/H100 power readings sample only part of the time).

    LOCALEARN_DATA=../shared/data python benchmarks/nvml_crosscheck.py [--epochs 10] [--interval 0.1]
"""

from __future__ import annotations

import argparse
import sys

import torch

import localearn as ll
from localearn.energy import EnergyCallback, EnergyMeter, peak_memory
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
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: this benchmark needs a GPU")
    device = torch.device("cuda")
    nvml, handles = nvml_handles([torch.cuda.current_device()])
    print(
        f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, sampling every {args.interval} s"
    )
    train, val, test = ll.load_dataset("mnist", device=device)
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
            callbacks=[both, EnergyCallback(meter)],
            progress=False,
        ).fit()
        meter.close()
        c, s = both.joules["counter"], both.joules["sampling"]
        peak, kind = peak_memory(device)
        print(
            f"{name}: test accuracy {result.test_accuracy:.4f}, {result.epochs} epochs, "
            f"{result.train_seconds:.1f} s; GPU joules counter {c:.1f}, sampling {s:.1f} "
            f"(sampling/counter {s / c:.3f}; {both.short_windows} windows too short for the counter); "
            f"meter total {result.extra['energy_joules']} J ({result.extra['energy_source']}); "
            f"peak {peak / 2**20:.1f} MiB ({kind})"
        )


if __name__ == "__main__":
    main()
