"""The comparison report: run directories in, a table, a CSV, plots and one HTML page out.

It reads run directories only (config.json, metrics.jsonl, result.json), so any set of finished runs can be
reported again later. Runs are grouped by (dataset, model, algorithm variant); a variant is the algorithm
plus any choice-valued hyperparameter that differs from its default (say, ``schedule=sequential``) and any
numeric one that differs between its runs there (say, ``lr=0.01``). The baseline is found by name: its
only configuration on that dataset and model, else its default one.
The report opens with its verdicts (verdicts.py: the most accurate rule, the cheapest to a target accuracy,
the cheapest per data pass, each with a 95 % interval and Welch's test against the baseline), then the
protocol in sentences and the hyperparameters (protocol.py), the table, and the plots (plots.py). In the
table every figure is a mean over the group's runs with its sample standard deviation and its ratio to
the baseline's mean on the same dataset and model. A figure a run did not record is shown as missing,
never 0.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import json
import logging
import statistics
from collections.abc import Collection
from pathlib import Path
from typing import Any

from ..algorithms import ALGORITHMS
from . import plots as plotting
from . import protocol, verdicts

log = logging.getLogger(__name__)

MISSING = "missing"
# (column, result.json key, format) for the figures averaged over a group's runs.
FIGURES = [
    ("test accuracy", "test_accuracy", "{:.4f}"),
    ("epochs", "epochs", "{:.1f}"),
    ("data passes", "data_passes", "{:.1f}"),  # epochs x the rule's passes per epoch: the honest budget
    ("seconds", "train_seconds", "{:.1f}"),
    ("joules", "energy_joules", "{:.0f}"),
    ("peak memory MiB", "peak_memory_mib", "{:.0f}"),
]


@dataclasses.dataclass
class Run:
    path: Path
    config: dict[str, Any]
    result: dict[str, Any]
    metrics: list[dict[str, Any]]
    label: str = ""  # set by load_runs: the algorithm and whatever tells its configurations apart

    @property
    def recipe(self) -> str:
        """The paper's recipe the run was made under ("" for none, and for runs written before recipes)."""
        return self.config.get("spec", {}).get("recipe", "")

    @property
    def place(self) -> str:
        """Where runs are compared: on one model, or under one paper's recipe (each rule on the network
        that paper gave it, as the CCL paper's tanh backprop beside CCL's ELU network)."""
        return f"recipe {self.recipe}" if self.recipe else self.result["model"]

    @property
    def group(self) -> tuple[str, str, str]:
        return (self.result["dataset"], self.place, self.label)


def variant_label(
    algorithm: str, hparams: dict[str, Any], varying: Collection[str] = (), recipe: str = ""
) -> str:
    """The algorithm, with its recipe (a paper's comparison settings), its non-default choices (string
    hyperparameters) and the numbers among ``varying``, the hyperparameters that differ between its runs
    on one dataset and model, so that two configurations are never averaged as if they were seeds of one."""
    cls = ALGORITHMS.get(algorithm)
    defaults = {f.name: f.default for f in dataclasses.fields(cls.Config)} if cls is not None else {}
    changed = [
        f"{k}={v}"
        for k, v in hparams.items()
        if (k in varying and not isinstance(v, str))
        or (k in defaults and isinstance(v, str) and v != defaults[k])
    ]
    name = f"{algorithm} [{recipe}]" if recipe else algorithm
    return f"{name} ({', '.join(changed)})" if changed else name


def _label_runs(runs: list[Run]) -> None:
    by_algorithm: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        key = (run.result["dataset"], run.place, run.result["algorithm"])
        by_algorithm.setdefault(key, []).append(run)
    for members in by_algorithm.values():
        hparams = [r.result.get("hyperparameters", {}) for r in members]
        keys = {k for h in hparams for k in h}
        varying = {k for k in keys if len({json.dumps(h.get(k), sort_keys=True) for h in hparams}) > 1}
        for run, hp in zip(members, hparams, strict=True):
            run.label = variant_label(run.result["algorithm"], hp, varying, run.recipe)


def load_runs(runs_dir: Path) -> tuple[list[Run], list[Path]]:
    """Finished runs under runs_dir (any depth), and the directories of unfinished ones."""
    runs, unfinished = [], []
    for config_path in sorted(runs_dir.rglob("config.json")):
        d = config_path.parent
        if not (d / "result.json").exists():
            unfinished.append(d)
            continue
        result = _read_json(d / "result.json")
        if result.get("peak_memory_bytes") is not None:
            result["peak_memory_mib"] = result["peak_memory_bytes"] / 2**20
        metrics_path = d / "metrics.jsonl"
        metrics = (
            [_read_json(metrics_path, ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
            if (metrics_path.exists())
            else []
        )
        runs.append(Run(d, _read_json(config_path), result, metrics))
    _label_runs(runs)
    return runs, unfinished


def _read_json(path: Path, text: str | None = None) -> Any:
    """A run's JSON (or one line of it); a damaged file is named, with where it breaks."""
    try:
        return json.loads(path.read_text() if text is None else text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); repair or remove that run directory") from None


def _mean_sd(values: list[Any]) -> tuple[float | None, float | None]:
    """Mean and sample SD; None when any run lacks the figure (a partial mean would mislead)."""
    if not values or any(v is None for v in values):
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def summarise(runs: list[Run], baseline: str) -> list[dict[str, Any]]:
    """One row per (dataset, model or recipe, variant), with ratios to the baseline on the same data and
    model (or recipe)."""
    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    rows = []
    for (dataset, place, label), members in sorted(groups.items()):
        seeds = sorted(r.result["seed"] for r in members)
        row: dict[str, Any] = {
            "name": members[0].result["algorithm"],
            "algorithm": label,
            "dataset": dataset,
            "place": place,
            "model": ", ".join(sorted({r.result["model"] for r in members})),
            "runs": len(members),
            "seeds": " ".join(map(str, seeds)),
        }
        if len(set(seeds)) < len(seeds):
            log.warning(
                "%s on %s repeats a seed (%s): its spread is not a spread over seeds", label, dataset, seeds
            )
        for column, key, _ in FIGURES:
            row[column], row[f"{column} sd"] = _mean_sd([r.result.get(key) for r in members])
        measured = [r.result.get("energy_measured") for r in members]
        row["energy measured"] = None if None in measured else all(measured)
        rows.append(row)
    for row in rows:
        # The baseline on the same data and model (or recipe): its only configuration there, else its
        # default one (verdicts.baseline_label).
        here = {
            label: members
            for (dataset, place, label), members in groups.items()
            if (dataset, place) == (row["dataset"], row["place"])
        }
        base_label = verdicts.baseline_label(here, baseline)
        base = next(
            (
                b
                for b in rows
                if (b["dataset"], b["place"], b["algorithm"]) == (row["dataset"], row["place"], base_label)
            ),
            None,
        )
        for column, _, _ in FIGURES:
            mine, theirs = row[column], base[column] if base else None
            row[f"{column} x{baseline}"] = mine / theirs if mine is not None and theirs else None
    return rows


def _fmt(value: Any, spec: str = "{:.3f}") -> str:
    if value is None:
        return MISSING
    return spec.format(value) if isinstance(value, float) else str(value)


def csv_columns(baseline: str) -> list[str]:
    """Row keys in CSV order: identity, each figure and its spread, then the ratios to the baseline."""
    cols = ["algorithm", "dataset", "model", "runs", "seeds"]
    for column, _, _ in FIGURES:
        cols += [column, f"{column} sd"]
    return cols + [f"{column} x{baseline}" for column, _, _ in FIGURES] + ["energy measured"]


def display_table(rows: list[dict[str, Any]], baseline: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells for reading: each figure as "mean ± sd (ratio to the baseline)"."""
    header = ["algorithm", "dataset", "model", "seeds"] + [c for c, _, _ in FIGURES] + ["energy measured"]
    cells = []
    for row in rows:
        line = [row["algorithm"], row["dataset"], row["model"], row["seeds"]]
        for column, _, spec in FIGURES:
            sd, ratio = row[f"{column} sd"], row[f"{column} x{baseline}"]
            text = _fmt(row[column], spec) + (f" ± {spec.format(sd)}" if sd is not None else "")
            line.append(text + (f" ({ratio:.2f}×)" if ratio is not None and row["name"] != baseline else ""))
        cells.append(line + [_fmt(row["energy measured"])])
    return header, cells


def markdown_table(rows: list[dict[str, Any]], baseline: str) -> str:
    header, cells = display_table(rows, baseline)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in cells])


def comparisons(
    runs: list[Run], baseline: str, target: float | None = None, passes: int | None = None
) -> list[verdicts.Comparison]:
    """The verdicts' comparison of each dataset and model."""
    by_place: dict[tuple[str, str], dict[str, list[Run]]] = {}
    for run in runs:
        dataset, model, label = run.group
        by_place.setdefault((dataset, model), {}).setdefault(label, []).append(run)
    return [
        verdicts.compare(dataset, model, groups, baseline, target, passes)
        for (dataset, model), groups in sorted(by_place.items())
    ]


def main(
    runs_dir: str | Path,
    baseline: str = "backprop",
    report_dir: str | Path | None = None,
    target: float | None = None,
    passes: int | None = None,
) -> int:
    """The report command: ``python -m localearn.experiments report RUNS_DIR [--baseline NAME]``."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ValueError(f"runs directory {runs_dir} does not exist")
    out = write_report(runs_dir, baseline=baseline, out=report_dir, target=target, passes=passes)
    print(f"report: {out / 'report.md'}, {out / 'report.html'}, {out / 'report.csv'}")
    return 0


def write_report(
    runs_dir: str | Path,
    baseline: str = "backprop",
    out: str | Path | None = None,
    target: float | None = None,
    passes: int | None = None,
) -> Path:
    """Write report.md, report.csv, report.html and the plots into ``out`` (default RUNS_DIR/report):
    first the verdicts (``target``: a validation accuracy, default a fraction of the baseline's best;
    ``passes``: the matched data passes, default the smallest run's), then the protocol and the table."""
    runs_dir = Path(runs_dir)
    runs, unfinished = load_runs(runs_dir)
    if not runs:
        raise ValueError(f"no finished runs (directories with result.json) under {runs_dir}")
    out = Path(out) if out is not None else runs_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(runs, baseline)
    if not any(r["name"] == baseline for r in rows):
        log.warning("baseline %r has no runs here: ratio columns are missing", baseline)
    table = markdown_table(rows, baseline)
    lines = protocol.sentences(runs)
    if unfinished:
        lines.append(
            f"Unfinished runs left out: {', '.join(str(p.relative_to(runs_dir)) for p in unfinished)}."
        )

    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.writer(f)
        cols = csv_columns(baseline)
        writer.writerow(cols)
        writer.writerows([["" if row[c] is None else row[c] for c in cols] for row in rows])
    plots = plotting.draw(runs, out)
    hyperparameters = protocol.hyperparameter_table(runs)
    verdict_lines = [
        ln for c in comparisons(runs, baseline, target, passes) for ln in verdicts.markdown(c) + [""]
    ]
    md = [
        f"# localearn report: {runs_dir}",
        "",
        "## Verdict",
        "",
        *verdict_lines,
        "## Protocol",
        "",
        *[f"- {ln}" for ln in lines],
        "",
        "## Results",
        "",
        f"Mean ± sample SD over seeds; in brackets, the ratio to `{baseline}` on the same dataset and model.",
        "",
        table,
        "",
        "## Hyperparameters",
        "",
        *hyperparameters,
        "",
    ]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    (out / "report.md").write_text("\n".join(md) + "\n")
    (out / "report.html").write_text(
        _html(runs_dir, verdict_lines, lines, rows, baseline, plots, hyperparameters)
    )
    log.info("report of %d runs written to %s", len(runs), out)
    return out


def _html(
    runs_dir: Path,
    verdict_lines: list[str],
    lines: list[str],
    rows: list[dict[str, Any]],
    baseline: str,
    plots: list[Path],
    hyperparameters: list[str],
) -> str:
    """One self-contained page: the verdicts, the tables and the plots inlined as data URIs."""
    from html import escape

    header, cells = display_table(rows, baseline)
    head = "".join(f"<th>{escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in line) + "</tr>" for line in cells)
    images = "".join(
        f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for p in plots
    )
    items = "".join(f"<li>{escape(ln)}</li>" for ln in lines)
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #bbb;padding:3px 6px;text-align:right}img{max-width:48%;margin:4px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>localearn report</title>"
        f"<style>{style}</style></head><body><h1>localearn report: {escape(str(runs_dir))}</h1>"
        f"<h2>Verdict</h2>{_markdown_html(verdict_lines)}"
        f"<h2>Protocol</h2><ul>{items}</ul><h2>Results</h2><p>Mean ± sample SD over seeds; in brackets, "
        f"the ratio to {escape(baseline)} on the "
        f"same dataset and model.</p><table><tr>{head}</tr>{body}</table>"
        f"<h2>Hyperparameters</h2>{_markdown_html(hyperparameters)}<h2>Plots</h2>{images}"
        "</body></html>\n"
    )


def _markdown_html(lines: list[str]) -> str:
    """The verdict section's Markdown (headings, bullets, paragraphs, pipe tables) as HTML."""
    from html import escape

    html, table, bullets = [], [], []

    def flush() -> None:
        if bullets:
            html.append("<ul>" + "".join(f"<li>{escape(b)}</li>" for b in bullets) + "</ul>")
            bullets.clear()
        if table:
            rows = [r for r in table if not set(r) <= {"|", "-"}]
            cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows]
            head = "".join(f"<th>{escape(c)}</th>" for c in cells[0])
            body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in r) + "</tr>" for r in cells[1:])
            html.append(f"<table><tr>{head}</tr>{body}</table>")
            table.clear()

    for line in lines:
        if line.startswith("|"):
            table.append(line)
            continue
        if line.startswith("- "):
            bullets.append(line[2:])
            continue
        flush()
        if line.startswith("### "):
            html.append(f"<h3>{escape(line[4:])}</h3>")
        elif line:
            html.append(f"<p>{escape(line)}</p>")
    flush()
    return "".join(html)
