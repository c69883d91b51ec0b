"""The report's answers, per dataset and model: which rule is the most accurate, which reaches the target
accuracy for the fewest joules, which is cheapest per data pass, and whether each difference from the
baseline is real at this number of seeds (Welch's test, stats.py).

The target is a validation accuracy: ``target`` if given, else ``TARGET_FRACTION`` of the baseline's mean
best validation accuracy. Matched passes are ``passes`` if given, else the smallest run's total. A rule
whose runs did not all reach the target is "not reached" there, never given a number.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

from ..algorithms import ALGORITHMS
from .budget import at_passes, matched_passes, to_target
from .stats import mean_interval, verdict

TARGET_FRACTION = 0.99
# How a lower and a higher figure than the baseline's read (seconds, joules and joules per pass: cheaper,
# dearer).
WORDS = {
    "test_accuracy": ("less accurate", "more accurate"),
    "val_accuracy": ("less accurate", "more accurate"),
    "epoch": ("sooner", "later"),
    "data_passes": ("sooner", "later"),
}


@dataclasses.dataclass
class Figure:
    """One figure over a variant's runs: the values, their mean and 95 % interval, and the verdict against
    the baseline's values (None for the baseline itself, or where the figure is missing)."""

    values: list[float]
    verdict: str | None = None

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    def text(self, spec: str) -> str:
        mean, lo, hi = mean_interval(self.values)
        interval = f" [{spec.format(lo)}, {spec.format(hi)}]" if lo is not None else ""
        return spec.format(mean) + interval


@dataclasses.dataclass
class Variant:
    label: str
    runs: int
    accuracy: Figure
    target: dict[str, Figure] | None  # epochs, data passes, seconds, joules; None: not all runs reached it
    reached: int  # how many runs reached the target
    at_passes: dict[str, Figure]  # val_accuracy, seconds, joules, joules per pass (those every run has)
    passes_exact: bool  # every run had an epoch end at exactly the matched passes


@dataclasses.dataclass
class Comparison:
    dataset: str
    model: str
    baseline: str | None  # the baseline's variant label here
    target: float | None
    target_source: str
    passes: int | None
    variants: list[Variant]

    def by_label(self, label: str | None) -> Variant | None:
        return next((v for v in self.variants if v.label == label), None)


def _figure(values: Sequence[Any]) -> Figure | None:
    """A figure every run has, else None (a partial mean would mislead)."""
    if not values or any(v is None for v in values):
        return None
    return Figure([float(v) for v in values])


def _best_val_accuracy(run: Any) -> float:
    best = run.result.get("best_val_accuracy")
    if best is None:
        best = max((m["val_accuracy"] for m in run.metrics if m.get("val_accuracy") is not None), default=0.0)
    return best


def baseline_label(groups: dict[str, list[Any]], baseline: str) -> str | None:
    """The baseline's variant here: its only configuration, else its default one: the plain name, or the
    one whose hyperparameters that differ between its configurations all have the rule's default values
    (FF beside FF with peer normalisation: the run without it, whose label names peer_normalisation=0.0)."""
    candidates = [label for label, runs in groups.items() if runs[0].result["algorithm"] == baseline]
    if len(candidates) == 1:
        return candidates[0]
    if baseline in candidates:
        return baseline
    cls = ALGORITHMS.get(baseline)
    if cls is None or not candidates:
        return None
    defaults = {f.name: f.default for f in dataclasses.fields(cls.Config)}
    hparams = {label: groups[label][0].result.get("hyperparameters", {}) for label in candidates}
    varying = {k for k in defaults if len({repr(h.get(k)) for h in hparams.values()}) > 1}
    plain = [label for label, h in hparams.items() if all(h.get(k) == defaults[k] for k in varying)]
    return plain[0] if len(plain) == 1 else None


def compare(
    dataset: str,
    model: str,
    groups: dict[str, list[Any]],
    baseline: str,
    target: float | None = None,
    passes: int | None = None,
) -> Comparison:
    """The comparison on one dataset and model; ``groups``: variant label -> its runs (report.Run)."""
    base_label = baseline_label(groups, baseline)
    base_runs = groups.get(base_label, []) if base_label else []
    if target is not None:
        source = f"validation accuracy {target:.4f} (given)"
    elif base_runs:
        best = statistics.fmean(_best_val_accuracy(r) for r in base_runs)
        target = TARGET_FRACTION * best
        source = f"validation accuracy {target:.4f}: {TARGET_FRACTION:.0%} of {base_label}'s mean best "
        source += f"({best:.4f})"
    else:
        source = "none (no baseline runs here, and no --target)"
    if passes is None:
        passes = matched_passes([r.metrics for members in groups.values() for r in members])
    variants = []
    for label, members in groups.items():
        accuracy = _figure([r.result["test_accuracy"] for r in members])
        spent = [to_target(r.metrics, target) for r in members] if target is not None else []
        reached = sum(s is not None for s in spent)
        on_target = None
        if target is not None and reached == len(members):
            on_target = {
                key: f
                for key in ("epoch", "data_passes", "seconds", "joules")
                if (f := _figure([s[key] for s in spent]))
            }
        at = [at_passes(r.metrics, passes) for r in members] if passes is not None else []
        at_figures = {}
        if at and all(a is not None for a in at):
            at_figures = {
                key: f
                for key in ("val_accuracy", "seconds", "joules", "joules_per_pass")
                if (f := _figure([a[key] for a in at]))
            }
        variants.append(
            Variant(
                label,
                len(members),
                accuracy,
                on_target,
                reached,
                at_figures,
                bool(at) and all(a is not None and a["exact"] for a in at),
            )
        )
    _judge(variants, base_label)
    return Comparison(dataset, model, base_label, target, source, passes, variants)


def _judge(variants: list[Variant], baseline: str | None) -> None:
    """Each figure's verdict against the baseline's same figure."""
    base = next((v for v in variants if v.label == baseline), None)
    if base is None:
        return
    for v in variants:
        if v is base:
            continue
        v.accuracy.verdict = verdict(v.accuracy.values, base.accuracy.values, *WORDS["test_accuracy"])
        pairs = [(v.target or {}, base.target or {}), (v.at_passes, base.at_passes)]
        for mine, theirs in pairs:
            for key, figure in mine.items():
                if key in theirs:
                    lower, higher = WORDS.get(key, ("cheaper", "dearer"))
                    figure.verdict = verdict(figure.values, theirs[key].values, lower, higher)


def headline(comparison: Comparison) -> list[str]:
    """The verdict lines a reader sees first: the most accurate rule, the cheapest to the target, the
    cheapest per pass, each with its ratio to the baseline and its interval."""
    base = comparison.by_label(comparison.baseline)
    lines = []

    def ratio(mine: Figure, theirs: Figure | None) -> str:
        return f", {mine.mean / theirs.mean:.2f}x {comparison.baseline}" if theirs and theirs.mean else ""

    best = max(comparison.variants, key=lambda v: v.accuracy.mean)
    lines.append(
        f"Most accurate: {best.label}, test accuracy {best.accuracy.text('{:.4f}')}"
        + ratio(best.accuracy, base.accuracy if base else None)
        + (f"; against {comparison.baseline}: {best.accuracy.verdict}" if best.accuracy.verdict else "")
    )
    key = (
        "joules"
        if all(v.target and "joules" in v.target for v in comparison.variants if v.target)
        else "seconds"
    )
    reached = [v for v in comparison.variants if v.target and key in v.target]
    if comparison.target is None:
        lines.append("Cheapest to the target: no target (no baseline runs here; give --target)")
    elif not reached:
        lines.append("Cheapest to the target: no rule reached it in all its runs")
    else:
        cheapest = min(reached, key=lambda v: v.target[key].mean)
        figure = cheapest.target[key]
        lines.append(
            f"Cheapest to the target: {cheapest.label}, {figure.text('{:.1f}')} {key}"
            + ratio(figure, base.target.get(key) if base and base.target else None)
            + (f"; against {comparison.baseline}: {figure.verdict}" if figure.verdict else "")
        )
        missed = [v.label for v in comparison.variants if v.target is None]
        if missed:
            lines[-1] += f" (not reached in every run: {', '.join(missed)})"
    per_pass = [v for v in comparison.variants if "joules_per_pass" in v.at_passes]
    if per_pass:
        cheapest = min(per_pass, key=lambda v: v.at_passes["joules_per_pass"].mean)
        figure = cheapest.at_passes["joules_per_pass"]
        lines.append(
            f"Cheapest per data pass: {cheapest.label}, {figure.text('{:.1f}')} J per pass"
            + ratio(figure, base.at_passes.get("joules_per_pass") if base else None)
            + (f"; against {comparison.baseline}: {figure.verdict}" if figure.verdict else "")
        )
    else:
        lines.append("Cheapest per data pass: no joules recorded for every run")
    return lines


def markdown(comparison: Comparison) -> list[str]:
    """The section of one dataset and model: its verdict lines, then the figures behind them."""
    c = comparison
    lines = [f"### {c.dataset}, {c.model}", ""]
    lines += [f"- {line}" for line in headline(c)]
    exact = all(v.passes_exact for v in c.variants)
    lines += [
        "",
        f"Target: {c.target_source}. Matched data passes: {c.passes}"
        + ("" if exact else " (where an epoch of several passes does not end there, its last epoch before)")
        + ". Means over seeds with 95 % intervals; against the baseline "
        + (f"(`{c.baseline}`)" if c.baseline else "(none here)")
        + ", Welch's test at p < 0.05.",
        "",
        "| rule | runs | test accuracy | to target: passes | seconds | joules | against baseline "
        f"| at {c.passes} passes: val accuracy | joules | joules per pass | against baseline |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in c.variants:
        target = v.target or {}
        accuracy = v.accuracy.text("{:.4f}") + (f"; {v.accuracy.verdict}" if v.accuracy.verdict else "")
        cells = [v.label, str(v.runs), accuracy]
        if v.target is None:
            reached = f"not reached ({v.reached} of {v.runs} runs)" if c.target is not None else "no target"
            cells += [reached, "", "", ""]
        else:
            cells += [_text(target.get("data_passes"), "{:.1f}"), _text(target.get("seconds"), "{:.1f}")]
            cells += [_text(target.get("joules"), "{:.0f}")]
            cells += [_verdict(target.get("joules") or target.get("seconds"))]
        at = v.at_passes
        cells += [_text(at.get("val_accuracy"), "{:.4f}"), _text(at.get("joules"), "{:.0f}")]
        cells += [_text(at.get("joules_per_pass"), "{:.1f}"), _verdict(at.get("joules_per_pass"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _text(figure: Figure | None, spec: str) -> str:
    return figure.text(spec) if figure is not None else "missing"


def _verdict(figure: Figure | None) -> str:
    return (figure.verdict or "") if figure is not None else ""
