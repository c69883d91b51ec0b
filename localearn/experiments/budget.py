"""What a run had spent by a given point, read from its per-epoch records (metrics.jsonl): up to the first
epoch whose validation accuracy reached a target, and up to a number of data passes. Seconds and joules
are summed over the epochs up to that point; data passes are the records' own count (a rule whose epoch
is several passes, or a staged rule, is counted in passes, not epochs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _spent(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sums up to and including the last of ``records``; joules are None if any epoch lacks them."""
    joules = [r.get("energy_joules") for r in records]
    last = records[-1]
    return {
        "epoch": last["epoch"],
        "data_passes": last["data_passes"],
        "val_accuracy": last.get("val_accuracy"),
        "seconds": sum(r["seconds"] for r in records),
        "joules": None if any(j is None for j in joules) else sum(joules),
    }


def to_target(records: Sequence[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The spend up to the first epoch whose validation accuracy is at least ``target``; None if no
    epoch reached it (the report says "not reached", never a number)."""
    for i, record in enumerate(records):
        accuracy = record.get("val_accuracy")
        if accuracy is not None and accuracy >= target:
            return _spent(records[: i + 1])
    return None


def at_passes(records: Sequence[dict[str, Any]], passes: int) -> dict[str, Any] | None:
    """The spend and validation accuracy at the last epoch that ends within ``passes`` data passes, with
    joules per pass; None if the run's first epoch already went beyond it. ``exact`` says whether an
    epoch ended at exactly that many passes (a rule whose epoch is several passes may not stop there)."""
    within = [r for r in records if r["data_passes"] <= passes]
    if not within:
        return None
    spent = _spent(records[: len(within)])
    spent["exact"] = spent["data_passes"] == passes
    spent["joules_per_pass"] = None if spent["joules"] is None else spent["joules"] / spent["data_passes"]
    return spent


def matched_passes(runs_records: Sequence[Sequence[dict[str, Any]]]) -> int | None:
    """The number of data passes every run reached: the smallest run's total."""
    totals = [records[-1]["data_passes"] for records in runs_records if records]
    return min(totals) if totals else None
