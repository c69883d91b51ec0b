"""Callbacks the Trainer attaches by itself: metrics.jsonl, checkpoint.pt and the progress bar."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .trainer import Callback, Result, Trainer, atomic_write_bytes

log = logging.getLogger(__name__)


class MetricsLogger(Callback):
    """Appends one JSON line per epoch to metrics.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class Checkpointer(Callback):
    """Writes checkpoint.pt (atomically) after every ``every`` epochs and after the last one."""

    def __init__(self, run_dir: Path, every: int = 1) -> None:
        self.path, self.every = run_dir / "checkpoint.pt", every

    def on_epoch_end(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if trainer.finished or trainer.epoch % self.every == 0:
            state = trainer.state_dict()
            atomic_write_bytes(self.path, lambda f: torch.save(state, f))


class ProgressBar(Callback):
    """A tqdm bar per epoch with the running loss; validation accuracy once the epoch ends."""

    def __init__(self, refresh_every: int = 25) -> None:
        self.refresh_every = refresh_every  # reading the loss syncs the device, so not on every batch
        self.bar: Any = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        batches = -(-len(trainer.train_split) // trainer.batch_size)
        stage = (
            f" stage {trainer.algo.stage + 1}/{trainer.algo.num_stages}"
            if trainer.algo.num_stages > 1
            else ""
        )
        self.bar = tqdm(
            total=batches, desc=f"epoch {trainer.epoch}{stage}", unit="batch", leave=True, dynamic_ncols=True
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
