"""What a reader needs to judge a comparison, as sentences read from the runs themselves: the stopping
rule, the seeds, the metered window, the devices, where each energy figure comes from (one sentence per
source), memory, batch and augmentation; and the hyperparameters of every rule, in a table of their own.
Anything that differs between runs where it should not is said in capitals.
"""

from __future__ import annotations

import json
from typing import Any

MISSING = "missing"
# One sentence per energy source: what it is, and whether it is measured or estimated.
SOURCES = {
    "nvml-counter": "the GPU's own energy counter read through NVML: measured, for the whole GPU "
    "(any other work on it included)",
    "nvml-sampling": "NVML power readings sampled during the run and integrated: measured, for the "
    "whole GPU, though a reading covers only part of each sampling interval on some GPUs",
    "codecarbon:intel_rapl": "the CPU package's RAPL energy counters through CodeCarbon: measured, for "
    "the whole machine",
    "codecarbon:cpu_load": "CodeCarbon's estimate from the CPU's TDP scaled by the process's share of "
    "CPU load: an estimate, not a measurement",
    "codecarbon:constant": "CodeCarbon's constant estimate, half the CPU's TDP throughout: an estimate, "
    "not a measurement",
    "codecarbon:ram_model": "CodeCarbon's model of RAM power from the memory in use: an estimate",
}


def _distinct(values: list[Any]) -> tuple[Any, bool]:
    """(the value, True) when all agree, else (a '; '-joined list of the distinct values, False)."""
    unique = sorted({json.dumps(v, sort_keys=True, default=str) for v in values})
    if len(unique) == 1:
        return (MISSING if values[0] is None else values[0]), True
    return "; ".join(unique), False


def _stopping_rule(runs: list[Any]) -> str:
    """The stopping rule every run had, or DIFFERS. Where some rule's epoch is several data passes
    (NoProp-DT, DiffusionBlocks), patience and cap are compared in passes: 5 epochs of 3 passes are 15
    epochs of one."""
    rules = [r.result.get("stopping_rule") for r in runs]
    per_epoch = [r.result.get("passes_per_epoch") or 1 for r in runs]
    in_passes = any(p != 1 for p in per_epoch) and all(isinstance(rule, dict) for rule in rules)
    if in_passes:
        rules = [
            {
                **rule,
                "patience": rule.get("patience") and rule["patience"] * p,
                "epoch_cap": rule.get("epoch_cap") and rule["epoch_cap"] * p,
            }
            for rule, p in zip(rules, per_epoch, strict=True)
        ]
    unit = "data passes" if in_passes else "epochs"
    rule, same = _distinct(rules)
    if not same:
        return f"Stopping rule: DIFFERS between runs (in {unit}): {rule}."
    if not isinstance(rule, dict):
        return f"Stopping rule: {MISSING}."
    rule = {k: rule.get(k, MISSING) for k in ("monitor", "min_delta", "patience", "epoch_cap")}
    patience = (
        f"no gain in {rule['monitor']} greater than {rule['min_delta']} for {rule['patience']} {unit}"
        if rule["patience"]
        else "no early stopping"
    )
    return (
        f"Stopping rule: every run stopped at the first of {patience} and the cap of {rule['epoch_cap']} "
        f"{unit} (per stage for staged schedules"
        + (
            "; an epoch of a rule that makes several passes per epoch counts as its passes"
            if in_passes
            else ""
        )
        + "); the best-validation state was restored and the test set scored once."
    )


def _energy(runs: list[Any]) -> list[str]:
    methods: dict[str, set[str]] = {}
    for r in runs:
        for part, method in (r.result.get("energy_methods") or {}).items():
            if method:
                scope = (r.result.get("energy_scope") or {}).get(part)
                methods.setdefault(f"{part}: {method}", set()).add(scope or MISSING)
    if not methods:
        return ["Energy: not metered in these runs."]
    lines = []
    for key in sorted(methods):
        part, method = key.split(": ", 1)
        scopes = ", ".join(sorted(methods[key]))
        told = SOURCES.get(method, f"{method} (as CodeCarbon or NVML names it)")
        lines.append(f"Energy, {part.upper()}: {told}; covers: {scopes}.")
    measured = [r.result.get("energy_measured") for r in runs]
    metered = {m for m in measured if m is not None}
    lines.append(
        "Every energy figure here is measured."
        if metered == {True}
        else "At least part of every energy figure here is estimated: read joules as estimates, and ratios "
        "between rules as ratios of estimates."
    )
    if None in measured:
        lines.append(
            f"{measured.count(None)} of {len(runs)} runs were not metered: their joules are missing."
        )
    return lines


def sentences(runs: list[Any]) -> list[str]:
    """The protocol, one sentence (or a few) per point."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for r in runs:
        groups.setdefault(r.group, []).append(r.result["seed"])
    repeated = [
        f"{label} on {ds}" for (ds, _, label), seeds in sorted(groups.items()) if len(set(seeds)) < len(seeds)
    ]
    window, same_window = _distinct([r.result.get("energy_window", MISSING) for r in runs])
    devices, same_device = _distinct([r.result["device"] for r in runs])
    memory, _ = _distinct([r.result.get("peak_memory_kind", MISSING) for r in runs])
    batch, same_batch = _distinct([r.result.get("batch_size") for r in runs])
    augment, same_augment = _distinct([r.result.get("augment") for r in runs])
    country, _ = _distinct([r.result.get("co2_country") for r in runs])
    return [
        _stopping_rule(runs),
        "Seeds: distinct within every row."
        if not repeated
        else f"Seeds: REPEATED within {', '.join(repeated)}: their spread is not a spread over seeds.",
        f"Metered window: {window}." if same_window else f"Metered window: DIFFERS between runs: {window}.",
        f"Device: {devices}." if same_device else f"Devices: DIFFER between runs: {devices}.",
        *_energy(runs),
        f"CO2 from the country tables of: {country}.",
        f"Peak memory: {memory}.",
        (f"Batch size {batch}" if same_batch else f"Batch size DIFFERS: {batch}")
        + (f"; augmentation: {augment}." if same_augment else f"; augmentation DIFFERS: {augment}."),
    ]


def hyperparameter_table(runs: list[Any]) -> list[str]:
    """A Markdown table: a row per hyperparameter, a column per rule (its label); where a rule's runs
    differ, their values joined by ' / '; '-' where the rule has no such hyperparameter."""
    labels = sorted({r.label for r in runs})
    values: dict[str, dict[str, set[str]]] = {}
    for r in runs:
        for name, value in (r.result.get("hyperparameters") or {}).items():
            values.setdefault(name, {}).setdefault(r.label, set()).add(str(value))
    lines = ["| hyperparameter | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name in sorted(values):
        cells = [" / ".join(sorted(values[name].get(label, {"-"}))) for label in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines
