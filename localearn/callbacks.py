"""Handlers attached to the Trainer's loop: the Callback base, metrics.jsonl, checkpoint.pt, progress.

The Trainer calls, in list order: on_fit_start, then per epoch on_epoch_start, on_batch_end after every
step and on_epoch_end with the epoch's record (a callback may add entries to it), then on_fit_end with the
Result. A callback with state (energy totals, say) returns it from state_dict so that a resumed run
continues its figures.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from .rundir import RunDirectory

if TYPE_CHECKING:  # only for annotations: the trainer imports this module, never the other way round
    from .trainer import Result, Trainer

log = logging.getLogger(__name__)


class Callback:
    """Hooks into the loop. Override what you need; a callback may add entries to an epoch's record."""

    def on_fit_start(self, trainer: Trainer) -> None: ...
    def on_epoch_start(self, trainer: Trainer) -> None: ...
    def on_batch_end(self, trainer: Trainer, stats: dict[str, Any]) -> None: ...
    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...
    def on_fit_end(self, trainer: Trainer, result: Result) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class MetricsLogger(Callback):
    """Appends one JSON line per epoch to the run directory's metrics.jsonl."""

    def __init__(self, run_dir: RunDirectory) -> None:
        self.run_dir = run_dir

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self.run_dir.append_metrics(record)


class Checkpointer(Callback):
    """Saves the Trainer's state in the run directory after every ``every`` epochs and after the last, and
    every ``progress_every`` seconds notes how far the epoch in flight has come (what a kill would lose)."""

    def __init__(self, run_dir: RunDirectory, every: int = 1, progress_every: float = 10.0) -> None:
        self.run_dir, self.every, self.progress_every = run_dir, every, progress_every
        self.epoch_start = self.last_note = 0.0

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.epoch_start = self.last_note = time.monotonic()

    def on_batch_end(self, trainer: Trainer, stats: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self.last_note >= self.progress_every:
            self.last_note = now
            self.run_dir.write_progress(trainer.epoch, now - self.epoch_start)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.finished or trainer.epoch % self.every == 0:
            self.run_dir.save_checkpoint(trainer.state_dict())


class ProgressBar(Callback):
    """A tqdm bar per epoch with the running loss; validation accuracy once the epoch ends."""

    def __init__(self, refresh_every: int = 25) -> None:
        self.refresh_every = refresh_every  # reading the loss syncs the device, so not on every batch
        self.bar: Any = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        algo = trainer.algo
        stage = f" stage {algo.stage + 1}/{algo.num_stages}" if algo.num_stages > 1 else ""
        passes = f" ({algo.passes_per_epoch} data passes)" if algo.passes_per_epoch > 1 else ""
        self.bar = tqdm(
            total=trainer.batches_per_pass * algo.passes_per_epoch,
            desc=f"epoch {trainer.epoch}{stage}{passes}",
            unit="batch",
            leave=True,
            dynamic_ncols=True,
        )

    def on_batch_end(self, trainer: Trainer, stats: dict[str, Any]) -> None:
        self.bar.update()
        if self.bar.n % self.refresh_every == 0:
            self.bar.set_postfix(loss=f"{float(stats['loss']):.4f}", refresh=False)

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        postfix = {"loss": f"{record['train_loss']:.4f}"}
        if record["val_accuracy"] is not None:
            postfix["val_acc"] = f"{record['val_accuracy']:.4f}"
        self.bar.set_postfix(postfix)
        self.bar.close()

    def on_fit_end(self, trainer: Trainer, result: Result) -> None:
        log.info("test accuracy %.4f (%s)", result.test_accuracy, result.stop_reason)
