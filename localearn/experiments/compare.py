"""The compare command: every algorithm with N distinct seeds under the same stopping rule, then the report.

    python -m localearn.experiments compare DATASET --algos a,b --seeds N [run options]

Every run is resolved to a RunSpec here, and all of them are checked before the first one starts. Each
spec is written to ROOT/specs/NAME.json and run in a process of its own (``train --spec FILE``): no run
inherits another's caches, allocator state or peak memory (a process's peak RSS only ever grows). Runs that
already finished are kept; running the same command again continues where it stopped.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ..algorithms import get_algorithm
from .report import write_report
from .spec import RunSpec

log = logging.getLogger(__name__)


def plan(
    algorithms: Sequence[str],
    seeds: Sequence[int],
    root: Path,
    resolve_run: Callable[[str, int], RunSpec],
) -> list[RunSpec]:
    """One spec per (algorithm, seed), named ALGO-sSEED under ``root``, each resumable."""
    for algorithm in algorithms:
        get_algorithm(algorithm)
    if not seeds:
        raise ValueError("--seeds 0: need at least one seed per algorithm")
    return [
        resolve_run(algorithm, seed).replace(out=str(root), name=f"{algorithm}-s{seed}", resume=True)
        for algorithm in algorithms
        for seed in seeds
    ]


def main(
    specs: Sequence[RunSpec],
    root: Path,
    baseline: str,
    quiet: bool = False,
    target: float | None = None,
    passes: int | None = None,
) -> int:
    spec_files = [spec.save(root / "specs" / f"{spec.name}.json") for spec in specs]
    for i, (spec, path) in enumerate(zip(specs, spec_files, strict=True), 1):
        log.info("compare: run %d of %d: %s (%s)", i, len(specs), spec.name, path)
        command = [sys.executable, "-m", "localearn.experiments", "train", "--spec", str(path)]
        done = subprocess.run(command + (["-q"] if quiet else []))
        if done.returncode != 0:
            raise RuntimeError(f"run {i} of {len(specs)} failed (exit code {done.returncode}): {spec.name}")
    out = write_report(root, baseline=baseline, target=target, passes=passes)
    print(f"report: {out / 'report.md'}, {out / 'report.html'}, {out / 'report.csv'}")
    return 0
