"""Tuning: one command for every algorithm, a study that survives a killed worker, workers that share it."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch

import localearn as ll
from localearn import study_storage, tuning
from localearn.algorithms import ALGORITHMS, make
from localearn.experiments.__main__ import main

COMPLETE, RUNNING, FAIL = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.RUNNING,
    optuna.trial.TrialState.FAIL,
)


def tune_args(image_tree, tmp_path, algo="backprop", trials=3, epochs=2, extra=(), cache=None):
    """A tiny `tune` command line; ``cache`` defaults to TMP_PATH/cache."""
    return [
        "tune",
        str(image_tree),
        "--algo",
        algo,
        "--trials",
        str(trials),
        "--epochs",
        str(epochs),
        "--out",
        str(tmp_path),
        "--model",
        "mlp:16",
        "--batch-size",
        "32",
        "--no-energy",
        "-q",
        "--cache-dir",
        str(cache or tmp_path / "cache"),
        *extra,
    ]


def trials_of(tmp_path, study="tiny-backprop"):
    storage, _ = study_storage.open_storage(None, tmp_path / "tuning", study)
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def test_sampler_seed_follows_the_study_name():
    assert tuning.sampler_seed("mnist-backprop") == tuning.sampler_seed("mnist-backprop")
    assert tuning.sampler_seed("mnist-backprop") != tuning.sampler_seed("mnist-mono_forward")


def test_a_study_completes_with_its_trials_and_writes_the_best(image_tree, tmp_path):
    assert main(tune_args(image_tree, tmp_path)) == 0
    trials = trials_of(tmp_path)
    assert len(trials) == 3 and all(t.state == COMPLETE for t in trials)  # 3 startup trials: no pruning
    assert all(t.user_attrs["train_seconds"] > 0 and t.user_attrs["epochs"] >= 1 for t in trials)
    best = json.loads((tmp_path / "tuning" / "tiny-backprop.best.json").read_text())
    assert set(best["params"]) >= {"lr", "weight_decay"}
    assert best["val_accuracy"] == max(t.value for t in trials)
    # Asking for more continues the same study; asking again for as many runs nothing.
    assert main(tune_args(image_tree, tmp_path, trials=4)) == 0
    assert len(trials_of(tmp_path)) == 4
    assert main(tune_args(image_tree, tmp_path, trials=4)) == 0
    assert len(trials_of(tmp_path)) == 4


@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_every_algorithm_is_tuned_by_the_same_command(name, image_tree, tmp_path):
    assert main(tune_args(image_tree, tmp_path, name, trials=1, epochs=1)) == 0
    (trial,) = trials_of(tmp_path, f"tiny-{name}")
    cls = ALGORITHMS[name]
    assert trial.state == COMPLETE and set(trial.params) == set(cls.search_space(trial, cls.Config()))


def test_the_pruner_stops_a_bad_configuration(blobs):
    """Three good configurations, then one that learns far more slowly (the search space's smallest
    learning rate): the study's pruner, fed each epoch's validation accuracy by the Trainer callback, stops
    that one early."""
    train, val, _ = blobs
    study = tuning.load_study("prune-test", optuna.storages.InMemoryStorage())
    for lr in (1e-2, 1e-2, 1e-2, 1e-5):
        study.enqueue_trial({"lr": lr, "weight_decay": 1e-6})

    def build_trainer(params, callbacks):
        torch.manual_seed(0)
        algo = make("backprop", ll.models.mlp(20, [16], 4), 4, **params)
        return ll.Trainer(algo, train, val, val, epochs=6, batch_size=32, progress=False, callbacks=callbacks)

    config = ALGORITHMS["backprop"].Config()
    tuning.run_trials(
        study, build_trainer, lambda t: ALGORITHMS["backprop"].search_space(t, config), n_trials=4
    )
    states = [t.state for t in study.trials]
    assert states == [COMPLETE, COMPLETE, COMPLETE, optuna.trial.TrialState.PRUNED]
    pruned = study.trials[3]
    assert max(pruned.intermediate_values) < 6  # stopped before the epoch cap
    # A pruned trial keeps its cost: seconds and epochs up to the prune.
    assert (
        pruned.user_attrs["epochs"] == max(pruned.intermediate_values)
        and pruned.user_attrs["train_seconds"] > 0
    )


def kill_in_fit(call):
    """A script that runs the command line and kills itself with SIGKILL in the call-th Trainer.fit."""
    return (
        "import os, signal, sys\n"
        "from localearn.experiments.__main__ import main\n"
        "from localearn.trainer import Trainer\n"
        "fit, calls = Trainer.fit, [0]\n"
        "def fit_or_die(self):\n"
        "    calls[0] += 1\n"
        f"    if calls[0] == {call}:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return fit(self)\n"
        "Trainer.fit = fit_or_die\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )


def test_a_killed_worker_loses_only_its_running_trial(image_tree, tmp_path):
    """SIGKILL in the third trial: the two finished trials stay as they were, the running one is marked
    failed by the next command, which then finishes the study."""
    args = tune_args(image_tree, tmp_path, trials=4)
    done = subprocess.run([sys.executable, "-c", kill_in_fit(3), *args])
    assert done.returncode == -signal.SIGKILL
    trials = trials_of(tmp_path)
    assert [t.state for t in trials] == [COMPLETE, COMPLETE, RUNNING]
    finished = {t.number: (t.value, t.params) for t in trials[:2]}
    assert main(args) == 0
    trials = trials_of(tmp_path)
    assert trials[2].state == FAIL
    assert {t.number: (t.value, t.params) for t in trials[:2]} == finished  # kept, not rerun
    assert sum(t.state != FAIL for t in trials) == 4 and len(trials) == 5


def test_a_continued_study_never_repeats_a_finished_trial(image_tree, tmp_path):
    """Extended twice (once by two workers), killed with kill -9 and resumed: every finished trial has
    parameters of its own. A sampler seeded from the name alone replays its first suggestions."""
    assert main(tune_args(image_tree, tmp_path, trials=2, epochs=1)) == 0
    assert main(tune_args(image_tree, tmp_path, trials=4, epochs=1)) == 0
    assert main(tune_args(image_tree, tmp_path, trials=6, epochs=1, extra=["--workers", "2"])) == 0
    killed = subprocess.run(
        [sys.executable, "-c", kill_in_fit(2), *tune_args(image_tree, tmp_path, trials=8, epochs=1)]
    )
    assert killed.returncode == -signal.SIGKILL
    assert main(tune_args(image_tree, tmp_path, trials=8, epochs=1)) == 0
    finished = [t for t in trials_of(tmp_path) if t.state.is_finished() and t.state != FAIL]
    assert len(finished) == 8
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == 8
    assert all(t.user_attrs["pid"] > 0 and t.user_attrs["host"] for t in finished)  # who ran each trial


def test_workers_die_with_a_killed_tune_command(image_tree, tmp_path):
    """kill -9 on `tune --workers 2`: its workers die too (a rerun must not fail trials under live
    workers), and the rerun finishes the study."""
    psutil = pytest.importorskip("psutil")
    # Long trials (no early stopping), so that a worker that survives its parent is still running when
    # looked for; the rerun may use a shorter cap (the cap is no hyperparameter of the study).
    args = tune_args(image_tree, tmp_path, trials=3, epochs=2000, extra=["--workers", "2", "--patience", "0"])
    parent = subprocess.Popen([sys.executable, "-m", "localearn.experiments", *args])
    workers = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.2)
            workers = psutil.Process(parent.pid).children()
            if len(workers) == 2 and (tmp_path / "tuning" / "tiny-backprop.journal").exists():
                if sum(t.state == RUNNING for t in trials_of(tmp_path)) == 2:
                    break
        else:
            pytest.fail("the workers never started their trials")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        _, alive = psutil.wait_procs(workers, timeout=5)
        assert not alive, f"workers outlived their parent: {alive}"
    finally:
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()
    assert main(tune_args(image_tree, tmp_path, trials=3, epochs=1, extra=["--workers", "2"])) == 0
    states = [t.state for t in trials_of(tmp_path)]
    assert states.count(FAIL) == 2 and sum(s != FAIL for s in states) == 3


def test_two_workers_share_one_study(image_tree, tmp_path):
    assert main(tune_args(image_tree, tmp_path, trials=4, extra=["--workers", "2"])) == 0
    trials = trials_of(tmp_path)
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # none lost, none duplicated
    assert all(t.state.is_finished() and t.state != FAIL for t in trials)
    # Each worker has a sampler stream of its own: no two trials got the same suggestions.
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4


def test_a_value_the_user_fixes_is_held_and_left_out_of_the_search(image_tree, tmp_path, capsys):
    """--lr (or --hp lr=...) on tune: every trial runs at that learning rate, the sampler never sees it, and
    the study, and its best.json, say it was fixed. A continued study must keep the same fixed values."""
    assert main(tune_args(image_tree, tmp_path, trials=2, epochs=1, extra=["--lr", "0.05"])) == 0
    trials = trials_of(tmp_path)
    assert all(set(t.params) == {"weight_decay"} for t in trials)  # lr is no dimension of the search
    storage, _ = study_storage.open_storage(None, tmp_path / "tuning", "tiny-backprop")
    study = optuna.load_study(study_name="tiny-backprop", storage=storage)
    assert study.user_attrs["fixed_hyperparameters"] == {"lr": 0.05}
    best = json.loads((tmp_path / "tuning" / "tiny-backprop.best.json").read_text())
    assert best["fixed"] == {"lr": 0.05} and best["params"]["lr"] == 0.05
    # Every trial really ran at the fixed value.
    seen = []
    original = tuning.Trainer.fit

    def spy(self):
        seen.append(self.algo.config.lr)
        return original(self)

    tuning.Trainer.fit = spy
    try:
        assert main(tune_args(image_tree, tmp_path, trials=3, epochs=1, extra=["--hp", "lr=0.05"])) == 0
    finally:
        tuning.Trainer.fit = original
    assert seen == [0.05]
    assert main(tune_args(image_tree, tmp_path, trials=4, epochs=1, extra=["--lr", "0.01"])) == 2
    assert "fixed hyperparameters {'lr': 0.05}, not {'lr': 0.01}" in capsys.readouterr().err


def test_trials_say_what_they_measure_in_one_line(image_tree, tmp_path, caplog):
    """A trial's final score is on the validation split (no test split enters a study): the log says so,
    and a stale trial is named by its number, not dumped."""
    import logging

    with caplog.at_level(logging.INFO):
        assert main(tune_args(image_tree, tmp_path, trials=1, epochs=1)) == 0
    text = caplog.text
    assert "validation accuracy" in text and "test accuracy" not in text and "FrozenTrial" not in text


def test_tune_errors(image_tree, tmp_path, capsys):
    assert main(tune_args(image_tree, tmp_path, "no_such_rule")) == 2  # one line naming the valid ones
    assert "unknown algorithm 'no_such_rule'; valid: backprop" in capsys.readouterr().err
    assert main([*tune_args(image_tree, tmp_path), "--name", "x"]) == 2
    assert "--name is not an option of tune" in capsys.readouterr().err
    assert main(tune_args(image_tree, tmp_path, trials=0)) == 2


def test_train_and_compare_take_the_tuned_parameters(image_tree, tmp_path, capsys):
    common = ["--out", str(tmp_path), "--model", "mlp:16", "--epochs", "1", "--batch-size", "32"]
    common += ["--no-energy", "--no-progress", "-q", "--cache-dir", str(tmp_path / "cache")]
    # Before any study: a clear error that says how to make one.
    assert main([str(image_tree), "--algo", "backprop", "--params", "best", *common]) == 2
    assert "tune" in capsys.readouterr().err
    assert main(tune_args(image_tree, tmp_path, trials=2)) == 0
    best = json.loads((tmp_path / "tuning" / "tiny-backprop.best.json").read_text())["params"]
    assert main([str(image_tree), "--algo", "backprop", "--params", "best", "--name", "tuned", *common]) == 0
    config = json.loads((tmp_path / "tuned" / "config.json").read_text())
    assert config["hyperparameters"]["lr"] == best["lr"]
    assert config["hyperparameters"]["weight_decay"] == best["weight_decay"]
    # --lr still wins over the tuned value.
    argv = [str(image_tree), "--algo", "backprop", "--params", "best", "--lr", "0.5", "--name", "lr", *common]
    assert main(argv) == 0
    assert json.loads((tmp_path / "lr" / "config.json").read_text())["hyperparameters"]["lr"] == 0.5
    # compare passes --params best to each algorithm's run: each reads its own study.
    args = ["compare", str(image_tree), "--algos", "backprop", "--seeds", "1", "--params", "best", *common]
    assert main(args) == 0
    result = json.loads((tmp_path / "compare-tiny" / "backprop-s0" / "result.json").read_text())
    assert result["hyperparameters"]["lr"] == best["lr"]


def test_multi_objective_writes_a_pareto_front(image_tree, tmp_path, capsys):
    args = [a for a in tune_args(image_tree, tmp_path, trials=2, epochs=1) if a != "--no-energy"]
    assert main([*args, "--multi-objective"]) == 0
    out = json.loads((tmp_path / "tuning" / "tiny-backprop.best.json").read_text())
    front = out["pareto_front"]
    assert front and all(len(t["values"]) == 2 and "lr" in t["params"] for t in front)
    trials = trials_of(tmp_path)
    assert all(t.state == COMPLETE and t.user_attrs["energy_joules"] is not None for t in trials)
    # No single best: --params best refuses it, and joules need metering.
    assert main([str(image_tree), "--algo", "backprop", "--params", "best", "--out", str(tmp_path)]) == 2
    assert "pareto_front" in capsys.readouterr().err
    assert main([*tune_args(image_tree, tmp_path / "b", trials=1), "--multi-objective"]) == 2


def test_a_database_url_is_a_storage_too(image_tree, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    assert main([*tune_args(image_tree, tmp_path, trials=2, epochs=1), "--storage", url]) == 0
    study = optuna.load_study(study_name="tiny-backprop", storage=url)
    assert [t.state for t in study.trials] == [COMPLETE, COMPLETE]
    assert not (tmp_path / "tuning" / "tiny-backprop.journal").exists()


def test_a_postgresql_url_without_the_driver_names_the_extra(image_tree, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    for url in ("postgresql://tuner:secret@db.example:5432/studies", "postgresql+psycopg://tuner@db/studies"):
        assert main([*tune_args(image_tree, tmp_path, trials=1), "--storage", url]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("error: ") and "pip install 'localearn[postgres]'" in line
        assert "secret" not in line and "postgresql+psycopg://tuner" in line


def test_heartbeat_settings_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("LOCALEARN_HEARTBEAT_SECONDS", raising=False)
    monkeypatch.delenv("LOCALEARN_GRACE_SECONDS", raising=False)
    assert study_storage.heartbeat_settings() == (60, 180)
    monkeypatch.setenv("LOCALEARN_HEARTBEAT_SECONDS", "2")
    monkeypatch.setenv("LOCALEARN_GRACE_SECONDS", "5")
    assert study_storage.heartbeat_settings() == (2, 5)
    monkeypatch.setenv("LOCALEARN_GRACE_SECONDS", "1.5")
    with pytest.raises(ValueError, match=r"\$LOCALEARN_GRACE_SECONDS='1.5': expected a whole number"):
        study_storage.heartbeat_settings()
    monkeypatch.setenv("LOCALEARN_GRACE_SECONDS", "2")  # a live worker's trial would be failed
    with pytest.raises(ValueError, match="must be longer than"):
        study_storage.heartbeat_settings()


def test_optuna_dashboard_shows_a_study_made_by_tune(image_tree, tmp_path):
    """The README's way to watch a study: optuna-dashboard on the journal file, read through its HTTP API."""
    import shutil
    import urllib.request
    from pathlib import Path

    import pg_cluster

    dashboard = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or shutil.which(
        "optuna-dashboard"
    )
    if dashboard is None:
        pg_cluster.unavailable("optuna-dashboard is not installed")
    assert main(tune_args(image_tree, tmp_path, trials=2, epochs=1)) == 0
    journal = tmp_path / "tuning" / "tiny-backprop.journal"
    port = pg_cluster.free_port()
    server = subprocess.Popen(
        [dashboard, str(journal), "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline, studies = time.monotonic() + 60, None
        while studies is None:
            assert server.poll() is None, server.stderr.read().decode()
            assert time.monotonic() < deadline, "optuna-dashboard did not answer within 60 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as r:
                    studies = json.load(r)["study_summaries"]
            except OSError:
                time.sleep(0.5)
        (study,) = studies
        assert study["study_name"] == "tiny-backprop" and study["directions"] == ["maximize"]
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/studies/{study['study_id']}", timeout=30
        ) as r:
            detail = json.load(r)
        assert [t["number"] for t in detail["trials"]] == [0, 1]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_worker_asks_only_for_free_slots_and_reclaims_dead_ones_on_a_journal(tmp_path):
    """next_trial: a new trial only while the finished and running ones are fewer than N; a wait while the
    rest run (one may die); on a journal, a running trial whose process on this host is gone is failed and
    its slot given out again."""
    storage, _ = study_storage.open_storage(None, tmp_path, "slots")
    study = tuning.load_study("slots", storage)
    lock = study_storage.ask_lock(storage, None, tmp_path, "slots")
    first, done = tuning.next_trial(study, 2, lock)
    second, _ = tuning.next_trial(study, 2, lock)
    assert not done and (first.number, second.number) == (0, 1)
    assert first.user_attrs["pid"] == os.getpid() and first.user_attrs["host"]
    assert tuning.next_trial(study, 2, lock) == (None, False)  # both slots running here: wait
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    storage.set_trial_user_attr(second._trial_id, "pid", int(gone.stdout))  # as if its worker had died
    study.tell(first, 0.5)
    third, done = tuning.next_trial(study, 2, lock)
    assert study.trials[1].state == FAIL and third.number == 2 and not done
    study.tell(third, 0.6)
    assert tuning.next_trial(study, 2, lock) == (None, True)
    assert (tmp_path / "slots.journal.ask.lock").exists()
