"""The Trainer: one stopping rule, best-state restore, run directory, resume, clear errors."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import localearn as ll
from localearn.algorithms import make
from localearn.algorithms.base import Algorithm
from localearn.trainer import DivergenceError


class Scripted(Algorithm):
    """Validation accuracy follows a script, one value per epoch: tests the stopping rule exactly."""

    name = "scripted"

    def __init__(self, net, num_classes, script, **kw):
        super().__init__(net, num_classes, **kw)
        self.script, self.epochs_seen, self.steps = script, 0, 0

    def train_step(self, x, y):
        self.steps += 1
        return {"loss": 0.0}

    def predict(self, x):
        # The first predict of an epoch (validation) advances the script; test uses the restored epoch.
        acc = self.script[min(self.epochs_seen, len(self.script)) - 1] if self.epochs_seen else 0.0
        scores = torch.zeros(len(x), self.num_classes)
        correct = int(round(acc * len(x)))
        scores[:correct, 0] = 1.0  # blobs' labels below are all 0 for the first `correct` rows
        scores[correct:, 1] = 1.0
        return scores

    def extra_state(self):
        return {"epochs_seen": self.epochs_seen}

    def load_extra_state(self, state):
        self.epochs_seen = state["epochs_seen"]


class CountEpochs(ll.Callback):
    def on_epoch_start(self, trainer):
        trainer.algo.epochs_seen += 1


def zero_label_splits(n=100):
    x = torch.randn(n, 3)
    split = ll.DataSplit(x, torch.zeros(n, dtype=torch.long), ["a", "b"], "zeros")
    return split, split, split


@pytest.mark.parametrize(
    "script, patience, min_delta, stop_epoch, best_epoch",
    [
        ([0.5, 0.6, 0.7, 0.65, 0.66, 0.64, 0.9], 3, 0.0, 6, 3),  # three epochs without a new best
        ([0.5, 0.6, 0.61, 0.62, 0.63, 0.64, 0.9], 3, 0.05, 5, 2),  # gains below min_delta do not count
        ([0.5, 0.6, 0.7, 0.8], None, 0.0, 4, 4),  # no early stopping: the cap ends the run
    ],
)
def test_stopping_rule_and_best_state_restore(script, patience, min_delta, stop_epoch, best_epoch):
    train, val, test = zero_label_splits()
    algo = Scripted(torch.nn.Linear(3, 2), 2, script)
    result = ll.Trainer(
        algo,
        train,
        val,
        test,
        epochs=len(script) if patience is None else 20,
        batch_size=10,
        patience=patience,
        min_delta=min_delta,
        callbacks=[CountEpochs()],
        progress=False,
    ).fit()
    assert result.epochs == stop_epoch
    assert result.best_epoch == best_epoch
    assert result.best_val_accuracy == pytest.approx(script[best_epoch - 1])
    # The test set is scored with the restored best state, not the last one.
    assert result.test_accuracy == pytest.approx(script[best_epoch - 1])
    assert algo.steps == stop_epoch * 10


def test_run_directory_files(blobs, tmp_path):
    train, val, test = blobs
    torch.manual_seed(0)
    algo = make("mono_forward", ll.models.mlp(20, [16], 4), 4)
    run = tmp_path / "run"
    result = ll.Trainer(
        algo,
        train,
        val,
        test,
        epochs=3,
        batch_size=64,
        run_dir=run,
        progress=False,
        run_info={"model": "mlp:16"},
    ).fit()
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
        "result.json",
    ]
    config = json.loads((run / "config.json").read_text())
    assert config["algorithm"] == "mono_forward" and config["hyperparameters"]["schedule"] == "simultaneous"
    assert config["trainer"]["stopping_rule"]["monitor"] == "val_accuracy"
    assert config["versions"]["torch"] == torch.__version__
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert all(0 <= r["val_accuracy"] <= 1 and r["seconds"] > 0 for r in lines)
    assert all(0 < r["val_seconds"] < r["seconds"] for r in lines)  # validation is part of the epoch
    saved = json.loads((run / "result.json").read_text())
    for key in (
        "algorithm",
        "dataset",
        "model",
        "epochs",
        "seed",
        "device",
        "test_accuracy",
        "best_val_accuracy",
        "train_seconds",
    ):
        assert key in saved
    assert saved["test_accuracy"] == result.test_accuracy and saved["model"] == "mlp:16"
    assert saved["train_seconds"] == pytest.approx(sum(r["seconds"] for r in lines))


def test_same_seed_same_result(blobs):
    train, val, test = blobs

    def run(seed):
        torch.manual_seed(0)
        algo = make("backprop", ll.models.mlp(20, [16], 4), 4, lr=0.01)
        ll.Trainer(algo, train, val, test, epochs=2, batch_size=64, seed=seed, progress=False).fit()
        return algo.predict(test.x)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_existing_run_directory_is_never_overwritten(blobs, tmp_path):
    train, val, test = blobs
    run = tmp_path / "run"
    run.mkdir()
    (run / "result.json").write_text("{}")
    algo = make("backprop", ll.models.mlp(20, [16], 4), 4)
    with pytest.raises(FileExistsError, match="resume"):
        ll.Trainer(algo, train, val, test, epochs=1, run_dir=run, progress=False).fit()
    assert (run / "result.json").read_text() == "{}"


@pytest.mark.parametrize(
    "net, classes, match",
    [
        (lambda: ll.models.mlp(30, [8], 4), 4, "does not accept the data's inputs"),
        (lambda: ll.models.mlp(20, [8], 5), 5, "5"),
    ],
)
def test_mismatched_network_fails_before_writing(blobs, tmp_path, net, classes, match):
    train, val, test = blobs
    algo = make("backprop", net(), classes)
    with pytest.raises(ValueError, match=match):
        ll.Trainer(algo, train, val, test, epochs=1, run_dir=tmp_path / "run", progress=False).fit()
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"monitor": "train_loss"}, "choose one of: val_accuracy, val_loss"),
        ({"patience": 0}, "patience"),
    ],
)
def test_bad_trainer_settings(blobs, kwargs, match):
    train, val, test = blobs
    algo = make("backprop", ll.models.mlp(20, [8], 4), 4)
    with pytest.raises(ValueError, match=match):
        ll.Trainer(algo, train, val, test, **kwargs)


def test_divergence_stops_with_a_clear_message_and_keeps_files(blobs, tmp_path):
    train, val, test = blobs

    class Poison(torch.nn.Module):
        def forward(self, x):
            return x * float("nan")

    net = torch.nn.Sequential(*ll.models.mlp(20, [8], 4), Poison())
    algo = make("backprop", net, 4)
    with pytest.raises(DivergenceError, match="diverged in epoch 1"):
        ll.Trainer(algo, train, val, test, epochs=2, run_dir=tmp_path / "run", progress=False).fit()
    assert (tmp_path / "run" / "config.json").exists()


def test_progress_bar_shows_epoch_loss_and_val_accuracy(blobs, capsys):
    train, val, test = blobs
    algo = make("backprop", ll.models.mlp(20, [8], 4), 4)
    ll.Trainer(algo, train, val, test, epochs=2, batch_size=32, progress=True).fit()
    err = capsys.readouterr().err
    assert "epoch 2" in err and "loss=" in err and "val_acc=" in err


def blocks_rule(**hp):
    """The test rule with its own blocks (tests/noisy_label_blocks.py): three blocks, one per data pass."""
    torch.manual_seed(0)
    return make("noisy_label_blocks", "mlp:16", 4, input_shape=(20,), **hp)


class Record(ll.Callback):
    """Something of the algorithm's after every step."""

    def __init__(self, read):
        self.read, self.seen = read, []

    def on_batch_end(self, trainer, stats):
        self.seen.append(self.read(trainer.algo))


def test_an_epoch_is_as_many_data_passes_as_the_rule_says(blobs, tmp_path):
    """A rule that trains one block per pass declares 3 passes per epoch: the Trainer runs them, enters
    each before its batches, and counts data passes in every record, the config and the result."""
    train, val, test = blobs
    passes = Record(lambda algo: algo.data_pass)
    trainer = ll.Trainer(
        blocks_rule(),
        train,
        val,
        test,
        epochs=2,
        run_dir=tmp_path / "run",
        callbacks=[passes],
        progress=False,
    )
    result = trainer.fit()
    assert passes.seen == ([0] * 4 + [1] * 4 + [2] * 4) * 2  # 512 examples, batches of 128
    assert (result.epochs, result.data_passes) == (2, 6)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["data_passes"] for r in lines] == [3, 6]
    # Each block's loss is averaged over its own pass, not diluted by the other two.
    assert all(r["train_loss_block1"] > 0.1 for r in lines)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["trainer"]["passes_per_epoch"] == 3
    assert json.loads((tmp_path / "run" / "result.json").read_text())["data_passes"] == 6


def test_evaluation_is_a_function_of_the_weights(blobs):
    """Prediction that draws noise uses the evaluation generator, reseeded at every evaluation: two
    evaluations of the same state agree; without the reseed, two predictions would not."""
    train, val, test = blobs
    algo = blocks_rule()
    trainer = ll.Trainer(algo, train, val, test, epochs=1, batch_size=64, progress=False)
    trainer.fit()
    assert trainer.evaluate(val) == trainer.evaluate(val)
    first = algo.predict(val.x)
    assert not torch.equal(first, algo.predict(val.x))  # the chain's noise really is drawn
    algo.begin_evaluation()
    again = algo.predict(val.x)
    algo.begin_evaluation()
    assert torch.equal(again, algo.predict(val.x))


@pytest.mark.parametrize(
    "schedule, extra, expected",
    [
        ("constant", {}, [1.0, 1.0, 1.0, 1.0]),
        ("cosine", {"lr_floor": 0.1}, [1.0, 0.1 + 0.9 * 0.5 * (1 + 2**-0.5), 0.55, 0.1]),
        ("linear_cooldown", {"cooldown_start": 0.5}, [1.0, 1.0, 1.0, 0.0]),
    ],
)
def test_learning_rate_schedules(schedule, extra, expected):
    """The rule's optimizers follow the Config's schedule over the budget (progress 0, 1/4, 1/2, 1)."""
    torch.manual_seed(0)
    algo = make("mono_forward", ll.models.mlp(4, [4, 4], 2), 2, lr=0.2, lr_schedule=schedule, **extra)
    seen = []
    for fraction in (0.0, 0.25, 0.5, 1.0):
        algo.set_progress(fraction)
        seen.append([g["lr"] / 0.2 for opt in algo.optimizers for g in opt.param_groups])
    for lrs, factor in zip(seen, expected, strict=True):
        assert lrs == pytest.approx([factor] * len(lrs))
    # linear_cooldown at 3/4 of the budget is halfway down.
    if schedule == "linear_cooldown":
        algo.set_progress(0.75)
        assert algo.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1)


class InterruptAt(ll.Callback):
    """Ctrl-C as epoch ``epoch`` starts: the run stops after the checkpoint of the epoch before."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_start(self, trainer):
        if trainer.epoch == self.epoch:
            raise KeyboardInterrupt


def test_the_trainer_drives_the_schedule_and_resume_keeps_it(blobs, tmp_path):
    """Per step over the epoch cap; a run resumed from its checkpoint continues the same schedule."""
    train, val, test = blobs

    def fit(run_dir, resume=False, stop_after=None):
        torch.manual_seed(0)
        algo = make("backprop", ll.models.mlp(20, [8], 4), 4, lr=0.1, lr_schedule="cosine")
        lrs = Record(lambda algo: algo.optimizers[0].param_groups[0]["lr"])

        trainer = ll.Trainer(
            algo, train, val, test, epochs=3, patience=None, run_dir=run_dir, resume=resume,
            callbacks=[lrs, InterruptAt(stop_after)], progress=False,
        )  # fmt: skip
        try:
            trainer.fit()
        except KeyboardInterrupt:
            pass
        return lrs.seen

    steps = 3 * 4  # 512 examples / 128, three epochs
    whole = fit(tmp_path / "a")
    assert whole == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * i / steps)) for i in range(steps)])
    first = fit(tmp_path / "b", stop_after=2)
    assert first == whole[:4]
    assert fit(tmp_path / "b", resume=True) == pytest.approx(whole[4:])


def test_the_trainer_reads_no_command_line(blobs, tmp_path, monkeypatch):
    """config.json says how the run was asked for only through run_info (the command line's spec)."""
    monkeypatch.setattr(sys, "argv", ["not-a-localearn-command", "--secret"])
    train, val, test = blobs
    algo = make("backprop", ll.models.mlp(20, [8], 4), 4)
    trainer = ll.Trainer(algo, train, val, test, epochs=1, run_dir=tmp_path / "run", progress=False)
    trainer.run_info["spec"] = {"seed": 0}
    trainer.fit()
    text = (tmp_path / "run" / "config.json").read_text()
    assert "--secret" not in text and json.loads(text)["spec"] == {"seed": 0}


def test_a_run_directory_object_writes_and_reads_its_checkpoint(blobs, tmp_path):
    """One object writes checkpoint.pt and reads it back; every file is written whole or not at all."""
    train, val, test = blobs
    run = ll.RunDirectory(tmp_path / "run")
    algo = make("backprop", ll.models.mlp(20, [8], 4), 4)
    result = ll.Trainer(algo, train, val, test, epochs=2, run_dir=run, progress=False).fit()
    state = run.load_checkpoint()
    assert state["loop"]["epoch"] == 2 and state["loop"]["finished"]
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]  # no temporary left behind
    # Resuming the finished run returns its saved result without training.
    again = ll.Trainer(
        make("backprop", ll.models.mlp(20, [8], 4), 4),
        train,
        val,
        test,
        epochs=2,
        run_dir=ll.RunDirectory(run.path, resume=True),
        progress=False,
    ).fit()
    assert again.to_dict() == result.to_dict()


def test_an_interrupted_atomic_write_leaves_the_old_file(tmp_path):
    from localearn.rundir import atomic_write, atomic_write_text

    path = tmp_path / "file.json"
    atomic_write_text(path, "old")

    def fail_halfway(f):
        f.write(b"new, half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail_halfway)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_callbacks_do_not_import_the_trainer_at_run_time():
    """No import cycle: callbacks.py names the Trainer in annotations only."""
    import ast

    import localearn.callbacks as callbacks

    tree = ast.parse(Path(callbacks.__file__).read_text())
    guarded = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and getattr(block.test, "id", "") == "TYPE_CHECKING"
        for node in ast.walk(block)
    }
    runtime = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and id(n) not in guarded]
    assert not [n.module for n in runtime if n.module and "trainer" in n.module]


def test_a_resumed_run_says_so_and_what_the_kill_cost(blobs, tmp_path):
    """result.json counts the resumes and the seconds of the epoch a kill cut short (they are trained
    again and not in train_seconds), read from the progress the checkpointer notes during an epoch."""
    train, val, test = blobs

    def fit(resume, callbacks=()):
        torch.manual_seed(0)
        algo = make("backprop", ll.models.mlp(20, [8], 4), 4)
        trainer = ll.Trainer(
            algo, train, val, test, epochs=3, run_dir=tmp_path / "run", resume=resume, callbacks=callbacks,
            progress=False,
        )  # fmt: skip
        return trainer.fit()

    with pytest.raises(KeyboardInterrupt):
        fit(False, [InterruptAt(2)])
    ll.RunDirectory(tmp_path / "run").write_progress(2, 12.5)  # epoch 2 had run 12.5 s when killed
    result = fit(True)
    assert result.extra["resumes"] == 1 and result.extra["seconds_lost"] == 12.5
    assert json.loads((tmp_path / "run" / "result.json").read_text())["seconds_lost"] == 12.5


def test_a_run_that_stopped_at_its_cap_trains_on_when_the_cap_is_raised(blobs, tmp_path):
    """Resumed with a higher epoch cap, a run that stopped at its cap computes what a run with that cap
    from the start computes; where the cap shaped the run (a schedule, patience) it is refused."""
    train, val, test = blobs

    def fit(run_dir, epochs, resume=False, patience=10, **hp):
        torch.manual_seed(0)
        algo = make("backprop", ll.models.mlp(20, [8], 4), 4, **{"lr": 0.05, **hp})
        trainer = ll.Trainer(
            algo, train, val, test, epochs=epochs, patience=patience, run_dir=run_dir, resume=resume,
            progress=False,
        )  # fmt: skip
        return trainer.fit(), algo

    whole, whole_algo = fit(tmp_path / "whole", 4)
    first, _ = fit(tmp_path / "raised", 2)
    assert first.stop_reason == "epoch cap 2"
    raised, raised_algo = fit(tmp_path / "raised", 4, resume=True)
    assert raised.epochs == 4 and raised.stop_reason == "epoch cap 4"
    assert raised.test_accuracy == whole.test_accuracy and raised.best_epoch == whole.best_epoch
    for a, b in zip(whole_algo.net.parameters(), raised_algo.net.parameters(), strict=True):
        assert torch.equal(a, b)
    run = tmp_path / "raised"
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
    ]
    assert json.loads((run / "result-cap2.json").read_text())["epochs"] == 2
    assert json.loads((run / "config.json").read_text())["epoch_caps"] == [2, 4]
    # Resumed again with the cap it now has, the finished run gives back its result.
    assert fit(run, 4, resume=True)[0].test_accuracy == raised.test_accuracy

    fit(tmp_path / "cosine", 2, lr_schedule="cosine")
    with pytest.raises(ValueError, match="schedule \\(cosine\\) spans the cap"):
        fit(tmp_path / "cosine", 4, resume=True, lr_schedule="cosine")
    assert (tmp_path / "cosine" / "result.json").exists()  # a refused raise leaves the run as it was
    assert fit(tmp_path / "still", 3, patience=1, lr=1e-12)[0].stop_reason.startswith("no improvement")
    with pytest.raises(ValueError, match="stopped because of 'no improvement"):
        fit(tmp_path / "still", 5, resume=True, patience=1, lr=1e-12)
    with pytest.raises(ValueError, match="config differs in spec|config differs in .*trainer"):
        fit(tmp_path / "whole", 3, resume=True)  # a lower cap is a different run


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU"))],
)
def test_the_best_state_is_a_copy_held_on_the_cpu(device, blobs):
    """So that peak device memory is training's own: the kept state is no second model on the device, and
    no view of the live one (which would move on with training)."""
    torch.manual_seed(0)
    algo = make("mono_forward", ll.models.mlp(20, [16], 4), 4, device=device)
    train, val, test = (dataclasses.replace(s, x=s.x.to(device), y=s.y.to(device)) for s in blobs)
    trainer = ll.Trainer(algo, train, val, test, epochs=2, progress=False)
    trainer.fit()
    kept = list(_tensors(trainer.best_state))
    live = {p.data_ptr() for p in algo.net.parameters()}
    assert kept and all(t.device.type == "cpu" for t in kept)
    assert not live & {t.data_ptr() for t in kept}


def _tensors(state):
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from _tensors(v)
    elif isinstance(state, list | tuple):
        for v in state:
            yield from _tensors(v)
