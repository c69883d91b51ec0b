"""localearn: local-learning and backprop-free training rules beside backprop, under one loop."""

__version__ = "0.1.0"

from . import models  # noqa: E402
from .algorithms import ALGORITHMS, Algorithm, make  # noqa: E402
from .callbacks import Callback, Checkpointer, MetricsLogger, ProgressBar  # noqa: E402
from .data import DataSplit, load_dataset  # noqa: E402
from .rundir import RunDirectory  # noqa: E402
from .trainer import Result, Trainer  # noqa: E402

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "Callback",
    "Checkpointer",
    "DataSplit",
    "MetricsLogger",
    "ProgressBar",
    "Result",
    "RunDirectory",
    "Trainer",
    "__version__",
    "load_dataset",
    "make",
    "models",
]
