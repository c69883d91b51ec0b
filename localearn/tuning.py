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
  studies). On a database the host and process go into the seed too (workers of one index on several
  machines). Every trial records the host and process that ran it.
- Storage (study_storage.py): a journal file under the run root by default (embedded, no server, one
  host), or any Optuna storage URL: PostgreSQL (psycopg 3, the ``postgres`` extra) for a study shared by
  several machines. The same command continues the study. Trials that a killed worker left RUNNING are
  marked FAIL: on a journal file when the next command starts (this machine owns it; a trial whose process
  is still alive is waited for, never failed under it) or when a sibling worker of this host sees its
  process gone; on a database through Optuna's heartbeats (other machines' trials may be running), after
  a grace period.
- Exactly N finished trials, whatever the number of workers and machines: every worker loops until the
  study holds N finished trials, and "count the finished and running trials, and ask for one more if they
  are fewer than N" runs under a lock (study_storage.ask_lock: a PostgreSQL advisory lock, else a file
  lock beside the storage).
  A worker whose count is reached waits while others' trials run, since one of them may die and its slot
  must be run again.
- Multi-objective (validation accuracy up, joules down): NSGA-II and no pruning, since Optuna's pruners
  judge one objective only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import optuna
import psutil
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import get_heartbeat_thread, is_heartbeat_enabled
from optuna.trial import TrialState

from .callbacks import Callback
from .rundir import atomic_write_json
from .trainer import Trainer

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_FAILED_IN_A_ROW = 3  # a worker whose own trials keep failing stops rather than loop on


def sampler_seed(study_name: str, worker: int = 0, progress: int = 0) -> int:
    """A seed from the study's name, the worker's index and how many trials the study holds: distinct
    studies, workers and continuations, distinct streams of suggestions; the same command, the same one."""
    key = study_name if (worker, progress) == (0, 0) else f"{study_name}/{worker}/{progress}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big")


def load_study(study_name: str, storage: Any, multi_objective: bool = False, worker: int = 0) -> optuna.Study:
    """Create or open the study, with a sampler seeded for this worker and this point of the study.

    A sampler seeded from the name alone would replay its first suggestions whenever a study is continued
    (its random start-up trials come from the seed, not from the stored trials), and parallel workers with
    one seed would suggest the very same parameters. On a database, workers of the same index may run on
    other machines, started at the same point of the study: their host and process go into the seed too."""
    if multi_objective:
        pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
        directions = ["maximize", "minimize"]
    else:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
        directions = ["maximize"]
    study = optuna.create_study(
        study_name=study_name, storage=storage, pruner=pruner, directions=directions, load_if_exists=True
    )
    progress = len(study.get_trials(deepcopy=False))
    if isinstance(storage, RDBStorage):
        seed = sampler_seed(f"{study_name}/{socket.gethostname()}/{os.getpid()}", worker, progress)
    else:
        seed = sampler_seed(study_name, worker, progress)
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
    lock: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext,
    poll: float = 1.0,
) -> int:
    """Run trials in this process until the study holds ``n_trials`` finished ones (complete or pruned),
    beside any number of other workers, here or on other machines; return how many this process ran.
    ``search_space(trial)`` suggests a trial's hyperparameters (``fixed`` ones are held),
    ``build_trainer(params, callbacks)`` makes its Trainer, ``lock()`` serializes asking for trials (see
    ask_lock), and a worker with nothing to start looks again every ``poll`` seconds."""

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        params = search_space(HoldFixed(trial, fixed or {}))
        trainer = build_trainer(params, [TrialCallback(trial, prune=not multi_objective)])
        result = trainer.fit()
        joules = result.extra.get("energy_joules")
        trial.set_user_attr("energy_source", result.extra.get("energy_source"))
        accuracy = result.best_val_accuracy if result.best_val_accuracy is not None else math.nan
        if multi_objective:
            return accuracy, (joules if joules is not None else math.nan)
        return accuracy

    ran = failed_in_a_row = 0
    while True:
        trial, done = next_trial(study, n_trials, lock)
        if done:
            return ran
        if trial is None:  # the rest of the study is running elsewhere: one of those may die
            time.sleep(poll)
            continue
        state = run_trial(study, trial, objective)
        ran += 1
        failed_in_a_row = failed_in_a_row + 1 if state == TrialState.FAIL else 0
        if failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise RuntimeError(
                f"study {study.study_name}: this worker's last {failed_in_a_row} trials failed "
                "(no validation accuracy, or marked failed for late heartbeats); see the log above"
            )


def next_trial(
    study: optuna.Study, n_trials: int, lock: Callable[[], AbstractContextManager[Any]]
) -> tuple[optuna.Trial | None, bool]:
    """Under the lock: fail dead workers' trials, count, and ask for a trial if the finished and running
    ones are fewer than ``n_trials``. (trial, False): run it; (None, True): the study is done; (None,
    False): the remaining slots are running in other workers, wait.

    The trial records its host and process, and on a database its first heartbeat, before the lock is
    released: a worker killed at once is still recognised as dead (Optuna never fails a running trial
    that has no heartbeat), and a sibling never mistakes a just-asked trial for a dead one."""
    with lock():
        fail_dead_trials(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = sum(s in FINISHED for s in states)
        if finished >= n_trials:
            return None, True
        if finished + states.count(TrialState.RUNNING) >= n_trials:
            return None, False
        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for its optimize loop
            warnings.filterwarnings("ignore", message="Heartbeat of storage")
            trial = study.ask()
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        if is_heartbeat_enabled(study._storage):
            study._storage.record_heartbeat(trial._trial_id)
    return trial, False


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark FAIL the running trials whose worker died. On a database: those without a heartbeat for the
    grace period, whichever machine ran them (Optuna's fail_stale_trials, which calls _log_stale_trial).
    Elsewhere (a journal file, one host): those of this host whose process is gone."""
    if is_heartbeat_enabled(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return
    here = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("host") == here and "pid" in t.user_attrs and not _alive_here(t):
            with contextlib.suppress(UpdateFinishedTrialError):  # another worker got there first
                study.tell(t.number, state=TrialState.FAIL)
                log.warning(
                    "marked trial %d, whose process %s died, as failed", t.number, t.user_attrs["pid"]
                )


def run_trial(
    study: optuna.Study, trial: optuna.Trial, objective: Callable[[optuna.Trial], Any]
) -> TrialState:
    """Run one asked trial, sending heartbeats on a database, and tell the study how it ended (as Optuna's
    own optimize loop does; it cannot be used here because it asks for trials itself, outside our lock).
    An error in the objective fails the trial and is raised. A trial failed under a live worker (heartbeats
    held up longer than the grace period) is left failed: its slot has been given to another worker."""
    values, state = None, None
    try:
        with get_heartbeat_thread(trial._trial_id, study._storage):
            try:
                values = objective(trial)
            except optuna.TrialPruned as e:
                state = TrialState.PRUNED
                log.info("trial %d pruned: %s", trial.number, e)
            except UpdateFinishedTrialError:
                raise
            except BaseException:
                with contextlib.suppress(UpdateFinishedTrialError):
                    study.tell(trial, state=TrialState.FAIL)
                raise
        frozen = study.tell(trial, values, state=state)
    except UpdateFinishedTrialError:
        log.warning(
            "trial %d was marked failed while it ran (its heartbeats were late); its result is dropped",
            trial.number,
        )
        return TrialState.FAIL
    if frozen.state == TrialState.COMPLETE:
        log.info("trial %d: %s with %s", trial.number, frozen.values, frozen.params)
    return frozen.state


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
