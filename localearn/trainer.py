"""The one training loop shared by every algorithm.

    fit
     |- check inputs (shapes, classes, devices)            nothing is written before this passes
     |- algo.prepare(train)                                data-dependent initialisation
     |- run directory: write config.json, or resume from checkpoint.pt (rundir.py does the files)
     |- on_fit_start(trainer)
     |- for each epoch:
     |    |- on_epoch_start(trainer)
     |    |- for each of the rule's passes over the data: algo.enter(stage, pass), then for each shuffled
     |    |  batch: algo.set_progress(...); algo.train_step(x, y); on_batch_end(trainer, stats)
     |    |- validation accuracy and loss with algo.predict (after algo.begin_evaluation)
     |    |- the stopping rule (same for all algorithms; applied per stage for staged rules)
     |    '- on_epoch_end(trainer, record)                 meters, metrics.jsonl, checkpoint.pt, progress
     |- restore the best-validation state; test set, once
     '- on_fit_end(trainer, result); result.json

Metering, logging, checkpointing, progress and pruning are callbacks; none of it lives in an algorithm, and
no file is opened here. ``train_seconds`` counts training and per-epoch validation only (not checkpoint
I/O, not the test set). Epochs and data passes are both counted: a rule whose epoch is several passes
over the data (one block per pass) is compared with others at matched passes.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .algorithms.base import Algorithm
from .callbacks import Callback, Checkpointer, MetricsLogger, ProgressBar
from .rundir import RunDirectory, environment_info
from .splits import DataSplit, check_fit, check_splits, iterate_batches

log = logging.getLogger(__name__)

MONITORS = {"val_accuracy": "max", "val_loss": "min"}
# The loop's own state, saved in every checkpoint.
LOOP_STATE = "epoch stage_epoch data_passes best_metric best_epoch best_val_accuracy bad_epochs".split()
LOOP_STATE += ["train_seconds", "finished", "stop_reason", "resumes", "seconds_lost"]


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss."""


@dataclasses.dataclass
class Result:
    algorithm: str
    dataset: str
    model: str
    epochs: int  # epochs run, summed over stages
    data_passes: int  # passes over the training data: epochs x the rule's passes per epoch
    best_epoch: int
    seed: int
    device: str
    test_accuracy: float
    test_loss: float
    best_val_accuracy: float | None
    train_seconds: float
    stop_reason: str
    hyperparameters: dict[str, Any]
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # added by callbacks (energy, memory)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(d.pop("extra"))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Result:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        d = {"data_passes": d.get("epochs"), **d}  # results written before passes were counted: 1 per epoch
        return cls(**{k: d[k] for k in names}, extra={k: v for k, v in d.items() if k not in names})


class Trainer:
    """Train ``algo`` on device-resident splits under one stopping rule; see the module docstring.

    Args:
        epochs: epoch cap (per stage for staged rules).
        patience: epochs without improvement of ``monitor`` (by more than ``min_delta``) before stopping;
            None disables early stopping (the cap alone ends the run).
        run_dir: a directory (or a ``RunDirectory``) for config.json, metrics.jsonl, checkpoint.pt and
            result.json; None writes nothing.
        resume: continue from run_dir's checkpoint (a finished run returns its saved result).
        run_info: descriptive entries for config.json and result.json (dataset, model, the run's spec).
    """

    def __init__(
        self,
        algo: Algorithm,
        train: DataSplit,
        val: DataSplit,
        test: DataSplit,
        *,
        epochs: int = 20,
        batch_size: int = 128,
        patience: int | None = 10,
        min_delta: float = 0.0,
        monitor: str = "val_accuracy",
        seed: int = 0,
        run_dir: str | os.PathLike | RunDirectory | None = None,
        resume: bool = False,
        callbacks: Sequence[Callback] = (),
        progress: bool = True,
        eval_batch_size: int = 1024,
        run_info: dict[str, Any] | None = None,
    ) -> None:
        check_splits(train=train, val=val, test=test)
        valid = [m for m in MONITORS if m in algo.monitors]
        if monitor not in valid:
            raise ValueError(
                f"monitor={monitor!r} is not valid for {algo.name}; choose one of: {', '.join(valid)}"
                + (f" ({algo.monitor_note})" if algo.monitor_note else "")
            )
        for name, value in dict(
            epochs=epochs, batch_size=batch_size, eval_batch_size=eval_batch_size
        ).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if patience is not None and patience < 1:
            raise ValueError(f"patience={patience!r} must be >= 1, or None to disable early stopping")
        self.algo, self.train_split, self.val_split, self.test_split = algo, train, val, test
        self.epochs, self.batch_size, self.eval_batch_size = epochs, batch_size, eval_batch_size
        self.patience, self.min_delta, self.monitor, self.seed = patience, min_delta, monitor, seed
        self.batches_per_pass = -(-len(train) // batch_size)
        if run_dir is not None and not isinstance(run_dir, RunDirectory):
            run_dir = RunDirectory(run_dir, resume)
        self.run_dir = run_dir
        self.run_info = dict(run_info or {})
        self.run_info.setdefault("dataset", train.name)
        self.run_info.setdefault("model", type(algo.net).__name__)

        # User callbacks run first so that what they add to a record reaches metrics.jsonl and the checkpoint.
        self.callbacks: list[Callback] = list(callbacks)
        if self.run_dir is not None:
            self.callbacks += [MetricsLogger(self.run_dir), Checkpointer(self.run_dir)]
        if progress:
            self.callbacks.append(ProgressBar())

        # Loop state: everything here goes into the checkpoint.
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = self.stage_epoch = self.data_passes = 0  # epochs (all stages; this stage), data passes
        self.best_metric: float | None = None
        self.best_epoch = self.bad_epochs = 0
        self.best_val_accuracy: float | None = None
        self.best_state: dict[str, Any] | None = None
        self.train_seconds, self.finished, self.stop_reason = 0.0, False, ""
        self.resumes, self.seconds_lost = 0, 0.0  # restarts from a checkpoint, training time they dropped

    # -- configuration -------------------------------------------------------------------------------
    def stopping_rule(self) -> dict[str, Any]:
        """The one rule, as every config and result states it."""
        return {
            "monitor": self.monitor,
            "mode": MONITORS[self.monitor],
            "patience": self.patience,
            "min_delta": self.min_delta,
            "epoch_cap": self.epochs,
            "restore_best": True,
        }

    def config(self) -> dict[str, Any]:
        """Everything needed to rerun this run (config.json); the caller's run_info says how it was asked
        for (the command line puts the run's spec there)."""
        algo = self.algo
        return {
            **self.run_info,
            "algorithm": algo.name,
            "hyperparameters": algo.hyperparameters(),
            "seed": self.seed,
            "device": str(algo.device),
            "data": {
                "dataset": self.train_split.name,
                "train": len(self.train_split),
                "val": len(self.val_split),
                "test": len(self.test_split),
                "input_shape": list(self.train_split.input_shape),
                "num_classes": self.train_split.num_classes,
                "augment": "crop+flip" if self.train_split.augment else "none",
            },
            "trainer": {
                "epochs": self.epochs,
                "epochs_apply_to": "each stage" if algo.num_stages > 1 else "the run",
                "num_stages": algo.num_stages,
                "passes_per_epoch": algo.passes_per_epoch,
                "batch_size": self.batch_size,
                "stopping_rule": self.stopping_rule(),
                # Beside the rule, not in it: reports compare rules, and a note is not a difference.
                **({"stopping_rule_note": algo.monitor_note} if algo.monitor_note else {}),
            },
            "versions": environment_info(),
        }

    # -- the loop ----------------------------------------------------------------------------------------
    def fit(self) -> Result:
        check_fit(self.algo, self.train_split, self.val_split, self.test_split)
        self.algo.prepare(self.train_split)  # before a resume, whose saved state then replaces it
        if self.run_dir is not None:
            saved, state = self.run_dir.open(self.config())
            if saved is not None:
                return Result.from_dict(saved)
            if state is not None:
                self.load_state_dict(state)
                self.resumes, self.seconds_lost = self.resumes + 1, self.seconds_lost + state["seconds_lost"]
                if self.finished and self.stage_epoch < self.epochs:  # its cap was raised (RunDirectory.open)
                    self.finished, self.stop_reason = False, ""
        for cb in self.callbacks:
            cb.on_fit_start(self)
        while not self.finished:
            self._run_epoch()
        if self.best_state is not None:
            self.algo.load_state_dict(self.best_state)
        test_accuracy, test_loss = self.evaluate(self.test_split)
        result = Result(
            algorithm=self.algo.name,
            dataset=str(self.run_info["dataset"]),
            model=str(self.run_info["model"]),
            epochs=self.epoch,
            data_passes=self.data_passes,
            best_epoch=self.best_epoch,
            seed=self.seed,
            device=str(self.algo.device),
            test_accuracy=test_accuracy,
            test_loss=test_loss,
            best_val_accuracy=self.best_val_accuracy,
            train_seconds=self.train_seconds,
            stop_reason=self.stop_reason,
            hyperparameters=self.algo.hyperparameters(),
            extra={
                "batch_size": self.batch_size,
                "augment": "crop+flip" if self.train_split.augment else "none",
                "stopping_rule": self.stopping_rule(),
                "passes_per_epoch": self.algo.passes_per_epoch,
                # A resumed run trains the epoch a kill cut short again: those seconds (and their joules)
                # are not in train_seconds.
                "resumes": self.resumes,
                "seconds_lost": self.seconds_lost,
            },
        )
        for cb in self.callbacks:
            cb.on_fit_end(self, result)
        if self.run_dir is not None:
            self.run_dir.write_result(result.to_dict())
        log.info(
            "%s on %s: %s accuracy %.4f, %d epochs, %d data passes, %.1f s", result.algorithm, result.dataset,
            self.run_info.get("test_split", "test"), test_accuracy, self.epoch, self.data_passes,
            self.train_seconds,
        )  # fmt: skip
        return result

    def _run_epoch(self) -> None:
        algo = self.algo
        self.epoch += 1
        self.stage_epoch += 1
        for cb in self.callbacks:
            cb.on_epoch_start(self)
        _sync(algo.device)
        start = time.perf_counter()
        algo.train(True)
        sums: dict[str, torch.Tensor | float] = {}
        counts: dict[str, int] = {}
        steps_per_epoch = self.batches_per_pass * algo.passes_per_epoch
        budget = self.epochs * steps_per_epoch  # the learning-rate schedule's horizon (per stage)
        step = (self.stage_epoch - 1) * steps_per_epoch
        for data_pass in range(algo.passes_per_epoch):
            algo.enter(algo.stage, data_pass)
            for x, y in iterate_batches(
                self.train_split, self.batch_size, shuffle=True, generator=self.generator
            ):
                algo.set_progress(step / budget)
                stats = algo.train_step(x, y)
                step += 1
                for k, v in stats.items():  # tensors stay on the device: no sync per step
                    sums[k] = sums.get(k, 0.0) + (v.detach() if isinstance(v, torch.Tensor) else v)
                    counts[k] = counts.get(k, 0) + 1
                for cb in self.callbacks:
                    cb.on_batch_end(self, stats)
            self.data_passes += 1
        train_stats = {f"train_{k}": float(v) / counts[k] for k, v in sums.items()}
        train_stats.update({f"train_{k}": v for k, v in algo.epoch_stats().items()})
        bad = {k: v for k, v in train_stats.items() if not math.isfinite(v)}
        if bad:
            raise DivergenceError(
                f"{algo.name} diverged in epoch {self.epoch}: {bad}; try a smaller lr "
                f"(now {algo.hyperparameters().get('lr')}). Files written so far are kept"
                + (f" in {self.run_dir.path}" if self.run_dir else "")
            )
        val_start = time.perf_counter()  # the float()s above waited for the device
        val_accuracy, val_loss = self.evaluate(self.val_split) if len(self.val_split) else (None, None)
        _sync(algo.device)
        seconds = time.perf_counter() - start
        self.train_seconds += seconds
        record: dict[str, Any] = {
            "epoch": self.epoch,
            "stage": algo.stage + 1,
            "stage_epoch": self.stage_epoch,
            "data_passes": self.data_passes,
            **train_stats,
            "val_accuracy": val_accuracy,
            "val_loss": val_loss,
            "seconds": seconds,
            "val_seconds": seconds - (val_start - start),  # the part of ``seconds`` spent validating
        }
        self._apply_stopping_rule(record)
        for cb in self.callbacks:
            cb.on_epoch_end(self, record)

    def _apply_stopping_rule(self, record: dict[str, Any]) -> None:
        """One rule for every algorithm; staged rules start the next stage where a run would stop."""
        metric = record[self.monitor]
        if metric is None:  # no validation split: the cap alone decides, the last state is kept
            improved = True
        elif self.best_metric is None:
            improved = True
        elif MONITORS[self.monitor] == "max":
            improved = metric > self.best_metric + self.min_delta
        else:
            improved = metric < self.best_metric - self.min_delta
        record["improved"] = improved
        if improved:
            self.best_metric, self.best_epoch, self.bad_epochs = metric, self.epoch, 0
            self.best_val_accuracy = record["val_accuracy"]
            if metric is not None:
                self.best_state = on_cpu(self.algo.state_dict())
        else:
            self.bad_epochs += 1
        if self.patience is not None and self.bad_epochs >= self.patience:
            reason = f"no improvement of {self.monitor} for {self.patience} epochs"
        elif self.stage_epoch >= self.epochs:
            reason = f"epoch cap {self.epochs}" + (" per stage" if self.algo.num_stages > 1 else "")
        else:
            return
        if self.algo.stage + 1 < self.algo.num_stages:
            log.info("stage %d ends (%s); best epoch %d", self.algo.stage + 1, reason, self.best_epoch)
            record["stage_end"] = reason
            if self.best_state is not None:
                self.algo.load_state_dict(self.best_state)
            self.algo.enter(self.algo.stage + 1)
            # The next stage is judged on its own: its readout is a different classifier.
            self.stage_epoch, self.best_metric, self.bad_epochs, self.best_state = 0, None, 0, None
        else:
            self.finished, self.stop_reason = True, reason

    @torch.no_grad()
    def evaluate(self, split: DataSplit) -> tuple[float, float]:
        """Accuracy and mean cross-entropy of ``algo.predict``'s scores on a split."""
        self.algo.train(False)
        self.algo.begin_evaluation()
        correct = torch.zeros((), dtype=torch.long, device=split.device)
        loss = torch.zeros((), device=split.device)
        for x, y in iterate_batches(split, self.eval_batch_size):
            scores = self.algo.predict(x)
            correct += (scores.argmax(1) == y).sum()
            loss += F.cross_entropy(scores.float(), y, reduction="sum")
        n = len(split)
        return correct.item() / n, loss.item() / n

    # -- the state a checkpoint holds --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "algo": self.algo.state_dict(),
            "best_state": self.best_state,
            "loop": {k: getattr(self, k) for k in LOOP_STATE},
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            # By class name, so that a resumed run may attach a different set (say, without a progress bar).
            "callbacks": {type(cb).__name__: cb.state_dict() for cb in self.callbacks},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.algo.load_state_dict(state["algo"])
        self.best_state = state["best_state"]
        for k, v in state["loop"].items():
            setattr(self, k, v)
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        for cb in self.callbacks:
            if type(cb).__name__ in state["callbacks"]:
                cb.load_state_dict(state["callbacks"][type(cb).__name__])


def on_cpu(state: Any) -> Any:
    """A copy of ``state`` with every tensor on the CPU. The best state waits there, so that peak device
    memory is what training needs, not that plus a copy of the model and its optimizer state."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: on_cpu(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(on_cpu(v) for v in state)
    return copy.deepcopy(state)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
