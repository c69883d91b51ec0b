"""The run directory: every file a run writes, and the one atomic-write helper the library uses.

    RUN/config.json     everything needed to rerun the run (written once, checked again on resume)
    RUN/metrics.jsonl   one line per epoch (MetricsLogger appends)
    RUN/checkpoint.pt   the Trainer's whole state after the latest epoch (Checkpointer writes, resume reads)
    RUN/result.json     the final figures

The Trainer never touches a file itself: it hands a RunDirectory its config, its checkpoints and its result.
Every file is written through ``atomic_write``: a temporary name in the same directory, fsync, rename. A
kill -9 at any moment leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

log = logging.getLogger(__name__)

CONFIG, METRICS, CHECKPOINT, RESULT = "config.json", "metrics.jsonl", "checkpoint.pt", "result.json"
PROGRESS = "progress.json"  # how far the epoch in flight had come, for what a kill loses
# Parts of config.json that may differ when a run is resumed: where it ran from, not what it computes.
# A parallel run's layout does not change what it computes (localearn.parallel): resume may change it.
NOT_COMPARED_ON_RESUME = ("versions", "invocation", "epoch_caps", "parallel")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files private; a written file keeps the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def check_writable(directory: str | os.PathLike, what: str = "--out") -> None:
    """Fail before any work, naming the directory, where nothing could be written (nothing is created)."""
    path = Path(directory).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise NotADirectoryError(f"{what} {directory}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{what} {directory}: cannot write in {existing} (permission denied)")


def environment_info() -> dict[str, str]:
    """Versions and platform, for config.json: what a rerun would need to match."""
    from . import __version__

    return {
        "localearn": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda or "none",
    }


class RunDirectory:
    """One run's directory. ``open(config)`` starts it or, with ``resume``, picks up where it stopped.

    Args:
        path: the directory; created when the run starts (never before the inputs are checked).
        resume: continue the run in ``path`` from its checkpoint; a finished run gives back its result.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume

    def file(self, name: str) -> Path:
        return self.path / name

    def open(self, config: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Prepare the directory for ``config``: (saved result, None) for a finished run, (None, checkpoint
        state) for an interrupted one, (None, None) for a new one (config.json written)."""
        for leftover in self.path.glob(".*.tmp") if self.path.is_dir() else []:  # a write a kill cut short
            leftover.unlink(missing_ok=True)
        if self.resume and self.file(CONFIG).exists():
            saved = json.loads(self.file(CONFIG).read_text())
            old_cap, new_cap = epoch_cap(saved), epoch_cap(config)
            raised = old_cap is not None and new_cap is not None and new_cap > old_cap
            differ = sorted(
                k
                for k in set(saved) | set(config)
                if k not in NOT_COMPARED_ON_RESUME
                and _canonical(_capless(saved, raised).get(k)) != _canonical(_capless(config, raised).get(k))
            )
            if differ:
                raise ValueError(f"cannot resume {self.path}: its config differs in {', '.join(differ)}")
            if raised:
                self._raise_cap(saved, config, old_cap, new_cap)
            elif self.file(RESULT).exists():
                log.info("%s already finished; returning its result", self.path)
                return json.loads(self.file(RESULT).read_text()), None
            state = self.load_checkpoint()
            if state is not None:
                return None, state
        elif not self.resume and self.path.exists() and any(self.path.iterdir()):
            raise FileExistsError(f"run directory {self.path} is not empty; pass resume=True to continue it")
        self.path.mkdir(parents=True, exist_ok=True)
        self.file(METRICS).unlink(missing_ok=True)
        self.file(PROGRESS).unlink(missing_ok=True)
        atomic_write_json(self.file(CONFIG), config)
        return None, None

    def _raise_cap(self, saved: dict[str, Any], config: dict[str, Any], old_cap: int, new_cap: int) -> None:
        """A run resumed with a higher epoch cap trains on. That is the run a higher cap would have been
        from the start only if nothing it did depended on the cap: it must have stopped at its cap (not
        by patience: that decision stands), have one stage (each stage's cap ends it) and a constant
        learning rate (a schedule spans the cap). Its earlier result stays beside it."""
        result = json.loads(self.file(RESULT).read_text()) if self.file(RESULT).exists() else None
        schedule = config.get("hyperparameters", {}).get("lr_schedule", "constant")
        stages = config.get("trainer", {}).get("num_stages", 1)
        why = None
        if schedule != "constant":
            why = f"its learning-rate schedule ({schedule}) spans the cap"
        elif stages > 1:
            why = f"it trains in {stages} stages, each ended by the cap"
        elif result is not None and result["stop_reason"] != f"epoch cap {old_cap}":
            why = f"it stopped because of {result['stop_reason']!r}, not its cap"
        if why:
            raise ValueError(
                f"cannot raise the epoch cap of {self.path} from {old_cap} to {new_cap}: {why}, so the "
                f"longer run would not be this one continued; start a new run (without --resume) or keep "
                f"epochs={old_cap}"
            )
        if result is not None:
            os.replace(self.file(RESULT), self.file(f"result-cap{old_cap}.json"))
        history = [*saved.get("epoch_caps", [old_cap]), new_cap]
        atomic_write_json(self.file(CONFIG), {**config, "epoch_caps": history})
        log.info("%s: epoch cap raised from %d to %d; training on", self.path, old_cap, new_cap)

    # -- the checkpoint: written and read back here only ---------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_write(self.file(CHECKPOINT), lambda f: torch.save(state, f))

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The latest checkpoint, or None; metrics.jsonl lines after its epoch are dropped (a kill between
        the two writes), so that no epoch is logged twice."""
        if not self.file(CHECKPOINT).exists():
            return None
        # Onto the CPU: RNG states must stay CPU tensors; the Trainer moves the rest where it belongs.
        state = torch.load(self.file(CHECKPOINT), map_location="cpu", weights_only=False)
        epoch = state["loop"]["epoch"]
        self.truncate_metrics(epoch)
        # The epoch the kill cut short is trained again; its seconds so far are lost (known to within the
        # progress file's interval), and so are its joules, which no meter had closed.
        progress = json.loads(self.file(PROGRESS).read_text()) if self.file(PROGRESS).exists() else {}
        state["seconds_lost"] = progress["seconds"] if progress.get("epoch", 0) > epoch else 0.0
        log.info(
            "resuming %s after epoch %d (%.1f s of epoch %d lost)",
            self.path,
            epoch,
            state["seconds_lost"],
            epoch + 1,
        )
        return state

    def write_progress(self, epoch: int, seconds: float) -> None:
        """How long the epoch in flight has trained; read back on resume to say what a kill lost."""
        atomic_write_json(self.file(PROGRESS), {"epoch": epoch, "seconds": seconds})

    # -- metrics and result -----------------------------------------------------------------------------
    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.file(METRICS), "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, last_epoch: int) -> None:
        path = self.file(METRICS)
        if not path.exists():
            return
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        kept = [ln for ln in lines if json.loads(ln)["epoch"] <= last_epoch]
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))

    def write_result(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.file(RESULT), result)


def epoch_cap(config: dict[str, Any]) -> int | None:
    return config.get("trainer", {}).get("epochs")


def _capless(config: dict[str, Any], drop: bool) -> dict[str, Any]:
    """``config`` without the places that state its epoch cap (when ``drop``): a raised cap is compared
    by ``_raise_cap``, not here."""
    if not drop:
        return config
    config = json.loads(json.dumps(config, default=str))
    config["trainer"].pop("epochs", None)
    config["trainer"].get("stopping_rule", {}).pop("epoch_cap", None)
    config.get("spec", {}).pop("epochs", None)
    return config


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
