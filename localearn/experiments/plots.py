"""The report's plots, one set per dataset and model: validation accuracy against epochs, data passes and
cumulative joules (each seed a thin line with markers, each rule one colour, its mean a thick line with a
band of one standard deviation where it has two seeds or more), and a Pareto plot of test accuracy against
joules with the front of the rules' means marked. A figure a run did not record is left out, never drawn
at 0.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

CURVES = [
    ("val_accuracy_vs_epochs", "epoch", "epoch"),
    ("val_accuracy_vs_passes", "data passes", "data_passes"),
    ("val_accuracy_vs_joules", "cumulative energy (J)", "joules"),
]


def _xs(metrics: list[dict[str, Any]], key: str) -> list[float] | None:
    if key != "joules":
        return [m[key] for m in metrics]
    total, xs = 0.0, []
    for m in metrics:
        if m.get("energy_joules") is None:
            return None  # an epoch without a figure would put every later point in the wrong place
        total += m["energy_joules"]
        xs.append(total)
    return xs


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (joules, accuracy) points no other point beats on both (fewer joules and higher accuracy), in
    order of joules."""
    front: list[tuple[float, float]] = []
    for joules, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append((joules, accuracy))
    return front


def draw(runs: list[Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display here or on a cluster node
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    labels = sorted({r.label for r in runs})
    colours = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    paths = []
    for dataset, model in sorted({r.group[:2] for r in runs}):
        subset = [r for r in runs if r.group[:2] == (dataset, model)]
        prefix = f"{dataset}_{model}".replace(":", "").replace(",", "x").replace("/", "_")
        for name, xlabel, key in CURVES:
            fig, ax = plt.subplots(figsize=(6.4, 4.2))
            drawn = False
            for label in labels:
                members = [r for r in subset if r.label == label]
                curves = []
                for r in members:
                    ms = [m for m in r.metrics if m.get("val_accuracy") is not None]
                    xs = _xs(ms, key)
                    if not ms or xs is None:
                        continue
                    ys = [m["val_accuracy"] for m in ms]
                    ax.plot(xs, ys, color=colours[label], alpha=0.35, lw=1, marker="o", ms=3)
                    curves.append((xs, ys))
                if not curves:
                    continue
                drawn = True
                _mean_and_band(ax, curves, colours[label], label, by_index=key == "joules")
            ax.set(xlabel=xlabel, ylabel="validation accuracy", title=f"{dataset}, {model}")
            if key != "joules":
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if drawn:
                ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            paths.append(out / f"{prefix}_{name}.png")
            fig.savefig(paths[-1], dpi=120)
            plt.close(fig)
        paths.append(_pareto(plt, subset, labels, colours, out / f"{prefix}_pareto.png", dataset, model))
    return paths


def _mean_and_band(ax: Any, curves: list, colour: Any, label: str, by_index: bool) -> None:
    """The mean over seeds at each x every seed reached (for joules, at each epoch index, at the seeds'
    mean joules), and a band of one standard deviation where there are two seeds or more."""
    if by_index:
        n = min(len(xs) for xs, _ in curves)
        xs = [statistics.fmean(c[0][i] for c in curves) for i in range(n)]
        columns = [[c[1][i] for c in curves] for i in range(n)]
    else:
        shared = sorted(set.intersection(*(set(c[0]) for c in curves)))
        xs = shared
        columns = [[ys[list(cx).index(x)] for cx, ys in curves] for x in shared]
    means = [statistics.fmean(col) for col in columns]
    ax.plot(xs, means, color=colour, lw=2.2, label=f"{label} (mean of {len(curves)})")
    if len(curves) > 1:
        sds = [statistics.stdev(col) for col in columns]
        lo = [m - s for m, s in zip(means, sds, strict=True)]
        hi = [m + s for m, s in zip(means, sds, strict=True)]
        ax.fill_between(xs, lo, hi, color=colour, alpha=0.15, lw=0)


def _pareto(
    plt: Any, runs: list[Any], labels: list[str], colours: dict, path: Path, dataset: str, model: str
) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    means = []
    for label in labels:
        members = [r for r in runs if r.label == label and r.result.get("energy_joules") is not None]
        if not members:
            continue
        joules = [r.result["energy_joules"] for r in members]
        accuracy = [r.result["test_accuracy"] for r in members]
        ax.scatter(joules, accuracy, color=colours[label], alpha=0.4, s=18)
        mean = (statistics.fmean(joules), statistics.fmean(accuracy))
        ax.scatter(*mean, color=colours[label], s=80, marker="D", edgecolor="black", label=label)
        means.append(mean)
    front = pareto_front(means)
    if front:
        ax.plot(*zip(*front, strict=True), color="black", lw=1, ls="--", label="Pareto front (means)")
    ax.set(xlabel="energy to the end of training (J)", ylabel="test accuracy", title=f"{dataset}, {model}")
    ax.grid(alpha=0.3)
    if means:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
