"""The tune command: an Optuna study over one algorithm's search space (the mechanics are in tuning.py,
where the study lives in study_storage.py).

    python -m localearn.experiments tune DATASET --algo NAME --trials N [--workers K] [run options]

The study is described by a TuneSpec (the RunSpec every trial starts from, the study's name and storage,
what the user fixed). With ``--workers K`` this command writes one worker file per process and starts
``python -m localearn.experiments.tune FILE`` for each: the worker reads its study and its run from the
file, never from a rebuilt command line. Every worker, here or on another machine sharing a database
study, runs trials until the study holds ``--trials`` finished ones (tuning.run_trials), so the same
command on any number of machines ends with exactly that many.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..data import resolve_device
from ..energy import EnergyCallback, EnergyMeter, MemoryCallback
from ..rundir import atomic_write_json
from ..trainer import Trainer
from .spec import RunSpec
from .train import build_algorithm, load_splits, trainer_options

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TuneSpec:
    run: RunSpec  # what every trial runs, before the trial's own suggestions
    study: str
    storage: str  # an Optuna storage URL, or a journal file
    trials: int  # finished trials the study should hold
    workers: int
    multi_objective: bool
    fixed: dict[str, Any]  # hyperparameters the user set (--lr, --hp): held, and left out of the search

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "run": self.run.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TuneSpec:
        return cls(**{**d, "run": RunSpec.from_dict(d["run"])})

    @property
    def root(self) -> Path:
        return Path(self.run.out) / "tuning"


def resolve(
    run: RunSpec, *, trials: int, workers: int, study: str | None, storage: str | None, multi_objective: bool
) -> TuneSpec:
    """The study's description; every trial's settings are checked here, before any work."""
    if trials < 1 or workers < 1:
        raise ValueError(f"--trials {trials} and --workers {workers} must be at least 1")
    if multi_objective and not run.energy:
        raise ValueError("--multi-objective minimises joules: it cannot run with --no-energy")
    name = study or f"{run.dataset_label}-{run.algorithm}"
    fixed = {k: v for k, v in run.hyperparameters.items() if run.sources.get(k) in ("flag", "hp")}
    return TuneSpec(
        run=run,
        study=name,
        storage=storage or str(Path(run.out) / "tuning" / f"{name}.journal"),
        trials=trials,
        workers=workers,
        multi_objective=multi_objective,
        fixed=fixed,
    )


def main(spec: TuneSpec, quiet: bool = False) -> int:
    from .. import study_storage, tuning  # optuna is imported only by the commands that use it

    storage, journal = study_storage.open_storage(spec.storage, spec.root, spec.study)
    study = tuning.load_study(spec.study, storage, spec.multi_objective)
    tuning.record_fixed(study, spec.fixed)
    if journal:  # trials a killed worker left running can never finish
        tuning.fail_stale_trials(study)
    remaining = spec.trials - tuning.finished_trials(study)
    if remaining > 0 and spec.workers == 1:
        work(spec, study, storage)
    elif remaining > 0:
        start_workers(spec, min(spec.workers, remaining), quiet)
    # The best parameters over what the presets and the user set (not the rule's defaults), for --params;
    # written from the study wherever it lives, so on a database any machine gets them by running the same
    # command (with the study done, it runs no trial).
    base = {k: v for k, v in spec.run.hyperparameters.items() if spec.run.sources.get(k) != "default"}
    best_path = spec.root / f"{spec.study}.best.json"
    best = tuning.write_best(study, best_path, base)
    print(
        f"tune {spec.study}: {tuning.finished_trials(study)} finished trials; best -> {best_path}: "
        f"{json.dumps(best.get('params', best.get('pareto_front')))}"
    )
    return 0


def start_workers(spec: TuneSpec, n: int, quiet: bool) -> None:
    """Run ``n`` worker processes on the study, each with a sampler stream of its own (its index), and
    wait for them."""
    workers = []
    codes: list[int] = []
    try:
        for index in range(1, n + 1):
            path = spec.root / "workers" / f"{spec.study}-{index}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            job = {"tune": spec.to_dict(), "index": index, "quiet": quiet, "parent": os.getpid()}
            atomic_write_json(path, job)
            command = [sys.executable, "-m", "localearn.experiments.tune", str(path)]
            workers.append(subprocess.Popen(command))
        codes = [w.wait() for w in workers]
    finally:  # an error or Ctrl-C here stops the workers too (kill -9: see die_with_parent)
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
    if any(codes):
        raise RuntimeError(f"tune: workers exited with {codes}; run the same command again to continue")


def work(spec: TuneSpec, study: Any, storage: Any) -> None:
    """Run trials of the study in this process until it holds ``spec.trials`` finished ones."""
    from .. import study_storage, tuning
    from ..algorithms import get_algorithm

    run = spec.run
    device = resolve_device(run.device)
    train, val, _ = load_splits(run, device)  # the test split never enters a trial
    meter = EnergyMeter(device, country_iso_code=run.country) if run.energy else None
    cls = get_algorithm(run.algorithm)
    config = cls.Config(**run.hyperparameters)

    def build_trainer(params: dict[str, Any], callbacks: list[Any]) -> Trainer:
        return Trainer(
            build_algorithm(run, train, device, **params),
            train,
            val,
            val,  # the Trainer scores a "test" split at the end: here the validation set again
            **trainer_options(run),
            progress=False,
            run_info={"test_split": "validation"},  # a trial's final score is on validation: no test split
            callbacks=[MemoryCallback(), *([EnergyCallback(meter)] if meter else []), *callbacks],
        )

    try:
        tuning.run_trials(
            study,
            build_trainer,
            lambda trial: cls.search_space(trial, config),
            spec.trials,
            spec.multi_objective,
            fixed=spec.fixed,
            lock=study_storage.ask_lock(storage, spec.storage, spec.root, spec.study),
            poll=study_storage.poll_seconds(storage),
        )
    finally:
        if meter:
            meter.close()


def die_with_parent(parent: int) -> None:
    """A worker must not outlive the command that started it, even when that command is killed with
    kill -9 (a rerun would fail the worker's trial while it still runs). On Linux the kernel sends the
    worker SIGKILL when its parent dies (PR_SET_PDEATHSIG); elsewhere a thread watches the parent."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    else:

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)


def worker_main(path: str | os.PathLike) -> int:
    """A worker started by ``main``: its study and run come from the file at ``path``."""
    from .. import study_storage, tuning

    job = json.loads(Path(path).read_text())
    die_with_parent(job["parent"])
    logging.basicConfig(
        level=logging.WARNING if job["quiet"] else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    spec = TuneSpec.from_dict(job["tune"])
    storage, _ = study_storage.open_storage(spec.storage, spec.root, spec.study)
    study = tuning.load_study(spec.study, storage, spec.multi_objective, worker=job["index"])
    work(spec, study, storage)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1]))
