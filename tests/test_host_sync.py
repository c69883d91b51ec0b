"""No training step waits for the device: nothing in a rule's step reads a device value on the host.

On a GPU, torch's sync debug mode raises at every synchronising call during a few steps of every rule. On
a CPU there is nothing to wait for, so the CPU test catches the same mistakes where they are written: while
a step runs, any of ``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool()``, ``float()`` or
``int()`` of a tensor called from localearn's own code fails the test, naming the function and line.
"""

import contextlib
import sys
from pathlib import Path

import pytest
import torch
from test_algorithms import ALL, build

PACKAGE = str(Path(__import__("localearn").__file__).parent)
HOST_READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")
# Reads that never wait for the device, each with its reason.
ALLOWED = {
    # Draws from the rule's CPU generator (base.Algorithm.choice_generator): a host value from a host tensor.
    "random_choice": "a CPU generator",
}


@contextlib.contextmanager
def no_host_reads():
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def guarded(name, original):
        def read(self, *args, **kwargs):
            caller = sys._getframe(1).f_code
            if caller.co_filename.startswith(PACKAGE) and caller.co_name not in ALLOWED:
                line = sys._getframe(1).f_lineno
                raise AssertionError(
                    f"Tensor.{name} in {caller.co_name} ({Path(caller.co_filename).name}:{line}) reads a "
                    "device value on the host inside a training step"
                )
            return original(self, *args, **kwargs)

        return read

    for name, original in originals.items():
        setattr(torch.Tensor, name, guarded(name, original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def steps(algo, x, y, n=2):
    for data_pass in range(min(algo.passes_per_epoch, 2)):
        algo.enter(algo.stage, data_pass)
        for _ in range(n):
            algo.train_step(x, y)


# Every rule with its defaults, and the settings that take another path through the step.
CASES = [(name, {}) for name in ALL] + [
    ("forward_gradient", {"variant": "local_activity"}),
    ("forward_forward", {"negatives": "hard", "prediction": "readout"}),
    ("forward_forward", {"schedule": "greedy"}),
    ("mono_forward", {"schedule": "sequential"}),
    ("counter_current", {"loss": "paper"}),
    ("noprop", {"variant": "ct"}),
    ("noprop", {"variant": "fm"}),
    ("noprop", {"embedding": "learned"}),
    ("diffusion_blocks", {"order": "random"}),
]
IDS = [name + "".join(f"-{v}" for v in hp.values()) for name, hp in CASES]


@pytest.mark.parametrize("name, hp", CASES, ids=IDS)
def test_a_training_step_reads_nothing_back_from_the_device(name, hp, blobs):
    train, _, _ = blobs
    algo = build(name, **hp)
    x, y = train.x[:16], train.y[:16]
    with no_host_reads():
        steps(algo, x, y)


def test_the_guard_catches_a_host_read(blobs):
    """The guard itself can fail: a step that calls .item() is caught."""
    train, _, _ = blobs
    algo = build("backprop")
    original = algo.train_step

    def step_with_a_read(x, y):
        stats = original(x, y)
        if stats["loss"] > 0:  # a Python branch on a device value: a sync on a GPU
            pass
        return stats

    algo.train_step = step_with_a_read
    step_with_a_read.__code__ = step_with_a_read.__code__.replace(co_filename=PACKAGE + "/fake.py")
    with pytest.raises(AssertionError, match="Tensor.__bool__ in step_with_a_read"), no_host_reads():
        algo.train_step(train.x[:8], train.y[:8])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: torch's sync debug mode")
@pytest.mark.parametrize("name, hp", CASES, ids=IDS)
def test_no_synchronisation_on_a_gpu(name, hp, blobs):
    train, _, _ = blobs
    algo = build(name, device="cuda", **hp)
    x, y = train.x[:16].cuda(), train.y[:16].cuda()
    steps(algo, x, y, n=1)  # the first steps may allocate state and compile kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        steps(algo, x, y)
    finally:
        torch.cuda.set_sync_debug_mode("default")
