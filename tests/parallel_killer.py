"""A test plugin ($LOCALEARN_PLUGINS), loaded in every process of a layer-parallel run: stage $KILL_STAGE
(1: the process that started the run; 0: a run without stage processes, such as the wavefront) kills
itself with SIGKILL on its $KILL_AT-th call of train_units, and every stage writes its pid to
$PIDS_DIR/stageN.pid on its first step."""

import os
import signal
from pathlib import Path

import torch.distributed as dist

from localearn.algorithms.mono_forward import MonoForward

_train_units = MonoForward.train_units
_steps = [0]


def train_units(self, a, y, units):
    stage = dist.get_rank() + 1 if dist.is_initialized() else 0
    _steps[0] += 1
    if _steps[0] == 1 and stage:
        (Path(os.environ["PIDS_DIR"]) / f"stage{stage}.pid").write_text(str(os.getpid()))
    if stage == int(os.environ["KILL_STAGE"]) and _steps[0] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return _train_units(self, a, y, units)


MonoForward.train_units = train_units
