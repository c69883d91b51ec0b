"""The Trainer: one stopping rule, best-state restore, run directory, resume, clear errors."""

import json

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
