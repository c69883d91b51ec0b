"""Hyperparameter tuning with Optuna, the same for every algorithm (DESIGN.md: Tuning, Fair comparison).

- Search space: the algorithm's ``search_space(trial, config)``, over the run's other hyperparameters. A
  value the user fixed (``--lr``, ``--hp``) is held: the space returns it without asking the sampler, so it
  is left out of the search, and the study records what was fixed.
- Objective: the best validation accuracy of one Trainer run. The test split never enters a trial.
- One pruner for every algorithm (a median pruner fed each epoch's validation accuracy by a Trainer
  callback), so no rule is tuned with a different budget (research notes, anchors_ff_mf.md 4d: the study
  that pruned only backprop).
- The sampler's seed is derived from the study name, the worker's index and how many trials the study
  already holds, so studies of different rules or datasets, the workers of one study, and each
  continuation of a study (a larger --trials, a rerun after kill -9) draw streams of their own: none
  replays the suggestions of an earlier command (the same notes: byte-identical "tuned" values across
  studies). Every trial records the host and process that ran it.
- Storage: a journal file under the run root by default (embedded, no server), or any Optuna storage URL
  (PostgreSQL for a study shared by several machines). The same command continues the study. Trials that
  a killed worker left RUNNING are marked FAIL: on a journal file when the next command starts (this
  machine owns it; a trial whose process is still alive is waited for, never failed under it), on a
  database through Optuna's heartbeats (other machines' trials may be running).
- Multi-objective (validation accuracy up, joules down): NSGA-II and no pruning, since Optuna's pruners
  judge one objective only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from .callbacks import Callback
from .rundir import atomic_write_json
from .trainer import Trainer

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def sampler_seed(study_name: str, worker: int = 0, progress: int = 0) -> int:
    """A seed from the study's name, the worker's index and how many trials the study holds: distinct
    studies, workers and continuations, distinct streams of suggestions; the same command, the same one."""
    key = study_name if (worker, progress) == (0, 0) else f"{study_name}/{worker}/{progress}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


def open_storage(storage: str | None, root: Path, study_name: str) -> tuple[Any, bool]:
    """(storage, is_journal_file): a URL as given, else a journal file (default: ROOT/STUDY.journal)."""
    if storage and "://" in storage:
        # A database (PostgreSQL, SQLite, ...): workers send heartbeats, and a trial whose worker stopped
        # sending them is marked FAIL by the next trial to start, on whichever machine.
        return optuna.storages.RDBStorage(storage, heartbeat_interval=60, grace_period=180), False
    path = Path(storage) if storage else root / f"{study_name}.journal"
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path))), True


def load_study(study_name: str, storage: Any, multi_objective: bool = False, worker: int = 0) -> optuna.Study:
    """Create or open the study, with a sampler seeded for this worker and this point of the study.

    A sampler seeded from the name alone would replay its first suggestions whenever a study is continued
    (its random start-up trials come from the seed, not from the stored trials), and parallel workers with
    one seed would suggest the very same parameters."""
    if multi_objective:
        pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
        directions = ["maximize", "minimize"]
    else:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
        directions = ["maximize"]
    study = optuna.create_study(
        study_name=study_name, storage=storage, pruner=pruner, directions=directions, load_if_exists=True
    )
    seed = sampler_seed(study_name, worker, len(study.get_trials(deepcopy=False)))
    study.sampler = (
        optuna.samplers.NSGAIISampler(seed=seed) if multi_objective else optuna.samplers.TPESampler(seed=seed)
    )
    return study


def fail_stale_trials(study: optuna.Study, wait: float = 30.0) -> list[int]:
    """Mark RUNNING trials FAIL: on a journal file this command owns, they belong to a killed worker. A
    trial whose process is still alive on this host is waited for (``wait`` seconds), never failed under
    it; if it outlives the wait, this refuses to go on, naming the process."""
    deadline = time.monotonic() + wait
    while True:
        running = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        alive = [t for t in running if _alive_here(t)]
        if not alive:
            break
        if time.monotonic() > deadline:
            pids = ", ".join(f"trial {t.number}: process {t.user_attrs['pid']}" for t in alive)
            raise RuntimeError(
                f"trials of study {study.study_name} are still running here ({pids}); "
                "stop those processes or wait for them, then run the command again"
            )
        time.sleep(0.5)
    stale = [t.number for t in running]
    for number in stale:
        study.tell(number, state=TrialState.FAIL)
    if stale:
        log.warning("marked trial(s) %s, left running by a killed worker, as failed", stale)
    return stale


def _alive_here(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether the process that runs the trial (its user attributes say which) is alive on this host: a
    process of that number that started after the trial did is another one."""
    attrs = trial.user_attrs
    if attrs.get("host") != socket.gethostname() or "pid" not in attrs:
        return False
    try:
        started = psutil.Process(attrs["pid"]).create_time()
    except psutil.NoSuchProcess:
        return False
    return trial.datetime_start is None or started <= trial.datetime_start.timestamp() + 1


def finished_trials(study: optuna.Study) -> int:
    return sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))


class HoldFixed:
    """A trial whose suggest_* return the user's fixed values for those names, without asking the sampler:
    a fixed hyperparameter is no dimension of the search. Everything else is the wrapped trial's."""

    def __init__(self, trial: optuna.Trial, fixed: dict[str, Any]) -> None:
        self._trial, self._fixed = trial, fixed

    def _suggest(self, method: str, name: str, *args: Any, **kwargs: Any) -> Any:
        if name in self._fixed:
            return self._fixed[name]
        return getattr(self._trial, method)(name, *args, **kwargs)

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._suggest("suggest_float", name, *args, **kwargs)

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._suggest("suggest_int", name, *args, **kwargs)

    def suggest_categorical(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self._suggest("suggest_categorical", name, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)


def record_fixed(study: optuna.Study, fixed: dict[str, Any]) -> None:
    """Write the fixed values into the study, or refuse to continue a study that held other ones (its trials
    would not be comparable with the new ones)."""
    recorded = study.user_attrs.get("fixed_hyperparameters")
    if recorded is None:
        study.set_user_attr("fixed_hyperparameters", fixed)
    elif json.dumps(recorded, sort_keys=True) != json.dumps(fixed, sort_keys=True):
        raise ValueError(
            f"study {study.study_name} was run with fixed hyperparameters {recorded}, not {fixed}; "
            "use the same --lr/--hp, or another --study name"
        )


class TrialCallback(Callback):
    """Each epoch: the trial's seconds, joules and epochs so far as user attributes (pruned trials keep
    them too), and, when pruning, the validation accuracy to the pruner, stopping the run if it says so."""

    def __init__(self, trial: optuna.Trial, prune: bool = True) -> None:
        self.trial, self.prune = trial, prune
        self.seconds, self.joules = 0.0, 0.0

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.seconds += record["seconds"]
        energy = record.get("energy_joules")
        self.joules = self.joules + energy if self.joules is not None and energy is not None else None
        self.trial.set_user_attr("train_seconds", self.seconds)
        self.trial.set_user_attr("energy_joules", self.joules)
        self.trial.set_user_attr("epochs", record["epoch"])
        value = record.get("val_accuracy")
        if not self.prune or value is None:
            return
        self.trial.report(value, step=record["epoch"])
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {record['epoch']} (val accuracy {value:.4f})")


def run_trials(
    study: optuna.Study,
    build_trainer: Callable[[dict[str, Any], list[Callback]], Trainer],
    search_space: Callable[[Any], dict[str, Any]],
    n_trials: int,
    multi_objective: bool = False,
    fixed: dict[str, Any] | None = None,
) -> None:
    """Run n_trials trials in this process. ``search_space(trial)`` suggests a trial's hyperparameters
    (``fixed`` ones are held), ``build_trainer(params, callbacks)`` makes its Trainer."""

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        params = search_space(HoldFixed(trial, fixed or {}))
        trainer = build_trainer(params, [TrialCallback(trial, prune=not multi_objective)])
        result = trainer.fit()
        joules = result.extra.get("energy_joules")
        trial.set_user_attr("energy_source", result.extra.get("energy_source"))
        accuracy = result.best_val_accuracy if result.best_val_accuracy is not None else math.nan
        if multi_objective:
            return accuracy, (joules if joules is not None else math.nan)
        return accuracy

    study.optimize(objective, n_trials=n_trials, catch=())


def write_best(study: optuna.Study, path: Path, base: dict[str, Any]) -> dict[str, Any]:
    """The best trial's hyperparameters (over the run's others, ``base``) as JSON, with what the user held
    fixed; with two objectives, the Pareto front."""
    fixed = study.user_attrs.get("fixed_hyperparameters", {})
    if len(study.directions) > 1:
        front = [
            {"number": t.number, "values": t.values, "params": {**base, **t.params}}
            for t in study.best_trials
        ]
        out: dict[str, Any] = {"study": study.study_name, "fixed": fixed, "pareto_front": front}
    else:
        best = study.best_trial
        out = {
            "study": study.study_name,
            "trial": best.number,
            "val_accuracy": best.value,
            "fixed": fixed,
            "params": {**base, **best.params},
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, out)
    return out
