"""One study on a real PostgreSQL server, shared by workers as if on several machines (separate processes,
separate --out directories): exactly N finished trials, a killed worker's slot run again after the grace
period, a study continued by another command, --params best from it, one-line connection errors.

The server is a throw-away cluster (pg_cluster.py); without PostgreSQL these tests skip, saying how to run
them, except under LOCALEARN_REQUIRE_POSTGRES=1 (CI), where they fail."""

import datetime
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pg_cluster
import pytest
import test_tuning

from localearn import study_storage, tuning
from localearn.experiments.__main__ import main

RUNNING, FAIL = optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.FAIL
STUDY = "tiny-backprop"
GRACE = 8  # seconds without a heartbeat before a running trial is failed; heartbeats every second
SLACK = datetime.timedelta(seconds=10)  # a busy 2-core machine: process starts, database round trips
DATABASES = itertools.count()


@pytest.fixture(scope="session")
def postgres():
    cluster = pg_cluster.start_cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module", autouse=True)
def short_heartbeats():
    """Heartbeats every second and an 8-second grace period, here and in the processes the tests start."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv(study_storage.HEARTBEAT[0], "1")
        m.setenv(study_storage.GRACE[0], str(GRACE))
        m.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture
def database(postgres):
    return postgres.create_database(f"study{next(DATABASES)}")


def tune_args(image_tree, out, storage, trials, epochs=1):
    """test_tuning's command line on ``storage``, without early stopping; the decoded-image cache is shared
    by the workers' separate --out directories."""
    extra = ["--patience", "0", "--storage", storage]
    return test_tuning.tune_args(
        image_tree, out, trials=trials, epochs=epochs, extra=extra, cache=out.parent / "cache"
    )


STARTED = []  # the processes the tests start: none outlives its test, failed or not


@pytest.fixture(autouse=True)
def stop_started_processes():
    yield
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


def start_tune(args, prelude=""):
    """`tune` in a process of its own (another machine, as far as the study can tell), after ``prelude``
    (Python code that patches something first)."""
    main = "from localearn.experiments.__main__ import main\nsys.exit(main(sys.argv[1:]))\n"
    script = f"import sys\n{prelude}\n{main}"
    STARTED.append(subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE))
    return STARTED[-1]


# Every ask for a trial takes a second (a slow link to the database): workers that counted the study's
# trials at the same moment would, without the lock around "count, then ask", start more than N.
SLOW_ASK = """
import time, optuna
ask = optuna.Study.ask
def slow_ask(self, *args, **kwargs):
    time.sleep(1)
    return ask(self, *args, **kwargs)
optuna.Study.ask = slow_ask
"""


# The worker's first trial never ends by itself: the test kills the process in the middle of it.
STUCK_IN_FIRST_TRIAL = """
import time
from localearn.trainer import Trainer
Trainer.fit = lambda self: time.sleep(3600)
"""


def wait_for(condition, what, seconds=120):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {seconds} s"
        time.sleep(0.3)


def trials_of(url, missing_ok=False):
    try:
        return optuna.load_study(study_name=STUDY, storage=url).get_trials(deepcopy=False)
    except KeyError:  # no such study yet
        if missing_ok:
            return []
        raise


def finished(trials):
    return [t for t in trials if t.state in tuning.FINISHED]


def test_three_workers_finish_exactly_n_trials(image_tree, tmp_path, database):
    """Three commands on one study, each as on a machine of its own: together exactly N trials, numbered
    0..N-1 (none repeated, none lost, none started beyond N), each with parameters of its own."""
    n = 6
    args = [tune_args(image_tree, tmp_path / f"m{i}", database, n) for i in range(3)]
    workers = [start_tune(a, SLOW_ASK) for a in args]
    outputs = [w.communicate(timeout=240)[0].decode() for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0]
    assert all(f"{n} finished trials" in out for out in outputs)  # none stopped before the study was done
    trials = trials_of(database)
    assert sorted(t.number for t in trials) == list(range(n))
    assert len(finished(trials)) == n
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == n
    assert len({t.user_attrs["pid"] for t in trials}) >= 2  # the work was shared
    assert {t.user_attrs["pid"] for t in trials} <= {w.pid for w in workers}


def test_a_killed_worker_s_trial_fails_after_the_grace_period_and_its_slot_is_run_again(
    image_tree, tmp_path, database
):
    """kill -9 on one worker mid-trial: no command is restarted. Its trial has a heartbeat; once that is
    older than the grace period, a live worker marks it FAIL (within the grace period plus one trial) and
    runs a trial in its place, so the study still ends with N finished trials."""
    n = 4
    killed = start_tune(tune_args(image_tree, tmp_path / "m0", database, n), STUCK_IN_FIRST_TRIAL)
    wait_for(lambda: any(t.state == RUNNING for t in trials_of(database, missing_ok=True)), "a first trial")
    others = [start_tune(tune_args(image_tree, tmp_path / f"m{i}", database, n)) for i in (1, 2)]
    # Killed once the others are at work: a trial of theirs has started.
    wait_for(lambda: len({t.user_attrs["pid"] for t in trials_of(database)}) > 1, "the others' trials")
    assert killed.poll() is None
    killed_at = datetime.datetime.now()
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=30)
    outputs = [w.communicate(timeout=240)[0].decode() for w in others]
    assert [w.returncode for w in others] == [0, 0] and all(f"{n} finished trials" in o for o in outputs)

    trials = trials_of(database)
    (dead,) = [t for t in trials if t.state == FAIL]
    assert dead.user_attrs["pid"] == killed.pid
    assert len(finished(trials)) == n and not any(t.state == RUNNING for t in trials)
    assert all(t.user_attrs["pid"] in {w.pid for w in others} for t in finished(trials))
    # Failed once its last heartbeat (at most a second before the kill) was older than the grace period,
    # and no later than the grace period plus one trial (plus a poll and a busy machine's slack).
    waited = dead.datetime_complete - killed_at
    longest = max(t.datetime_complete - t.datetime_start for t in finished(trials))
    grace = datetime.timedelta(seconds=GRACE)
    assert grace - datetime.timedelta(seconds=1) <= waited <= grace + longest + SLACK, waited
    # Its slot was run again by a worker that never stopped.
    assert any(t.datetime_start >= dead.datetime_complete for t in finished(trials))


@pytest.fixture(scope="module")
def continued(postgres, image_tree, tmp_path_factory):
    """A study run to 2 trials by one command (in this process, "machine A"), then to 4 by a second
    command with a larger --trials in another process ("machine B")."""
    url = postgres.create_database("continued")
    a, b = tmp_path_factory.mktemp("machine_a"), tmp_path_factory.mktemp("machine_b")
    assert main(tune_args(image_tree, a, url, trials=2)) == 0
    first = {t.number: (t.value, t.params) for t in trials_of(url)}
    second = start_tune(tune_args(image_tree, b, url, trials=4))
    second.communicate(timeout=240)
    return url, first, second


def test_a_second_command_continues_the_study_from_another_process(continued):
    url, first, second = continued
    assert second.returncode == 0
    trials = trials_of(url)
    assert [t.number for t in trials] == [0, 1, 2, 3] and len(finished(trials)) == 4
    assert {t.number: (t.value, t.params) for t in trials[:2]} == first  # kept, not rerun
    assert [t.user_attrs["pid"] for t in trials] == [os.getpid()] * 2 + [second.pid] * 2
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4


def test_params_best_reads_the_database_study(continued, image_tree, tmp_path):
    """On a machine that ran none of the study's trials, the same tune command (the study is done: it runs
    no trial) writes best.json from the database; --params best and compare --params best then train with
    the database's best trial."""
    url, _, _ = continued
    out = tmp_path / "machine_c"
    assert main(tune_args(image_tree, out, url, trials=4)) == 0
    assert len(trials_of(url)) == 4  # no trial run
    best = optuna.load_study(study_name=STUDY, storage=url).best_trial.params
    assert json.loads((out / "tuning" / f"{STUDY}.best.json").read_text())["params"] == best
    common = ["--out", str(out), "--model", "mlp:16", "--epochs", "1", "--batch-size", "32", "--no-energy"]
    common += ["--no-progress", "-q", "--cache-dir", str(tmp_path / "cache")]
    assert main([str(image_tree), "--algo", "backprop", "--params", "best", "--name", "tuned", *common]) == 0
    config = json.loads((out / "tuned" / "config.json").read_text())["hyperparameters"]
    assert (config["lr"], config["weight_decay"]) == (best["lr"], best["weight_decay"])
    assert (
        main(["compare", str(image_tree), "--algos", "backprop", "--seeds", "1", "--params", "best", *common])
        == 0
    )
    result = json.loads((out / "compare-tiny" / "backprop-s0" / "result.json").read_text())
    assert result["hyperparameters"]["lr"] == best["lr"]


@pytest.mark.parametrize("case", ["wrong password", "unreachable host", "missing database"])
def test_connection_errors_are_one_line_naming_the_url_without_its_password(
    case, postgres, image_tree, tmp_path, capsys
):
    url, reason = {
        "wrong password": (
            postgres.url("postgres", pg_cluster.PASSWORD_USER, "not-the-password"),
            "password authentication failed",
        ),
        "unreachable host": (postgres.url("postgres", port=pg_cluster.free_port()), "Connection refused"),
        "missing database": (postgres.url("no_such_database"), 'database "no_such_database" does not exist'),
    }[case]
    assert main(tune_args(image_tree, tmp_path, url, trials=1)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], lines
    assert study_storage.sqlalchemy_url(url).render_as_string(hide_password=True) in lines[0]
    assert "not-the-password" not in lines[0]
