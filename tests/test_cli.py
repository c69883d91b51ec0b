"""The command line end to end on a small ImageFolder tree: run directory, resume after SIGKILL, errors."""

import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

from localearn.algorithms import ALGORITHMS
from localearn.experiments.__main__ import main

COMMON = [
    "--model",
    "mlp:32,32",
    "--epochs",
    "6",
    "--patience",
    "0",
    "--batch-size",
    "16",
    "--no-progress",
    "-q",
]

# Run the command line in a child that kills itself with SIGKILL on the Nth training step of a pass over the
# data, counted as if each epoch were one pass (a rule whose epoch is P passes dies P times later).
KILLER = """
import os, signal, sys
from localearn.algorithms import ALGORITHMS
from localearn.experiments.__main__ import main
cls = ALGORITHMS[sys.argv[1]]
step, calls = cls.train_step, [0]
def train_step(self, x, y):
    calls[0] += 1
    passes, n = self.passes_per_epoch, int(sys.argv[2])
    if calls[0] == (n // 8) * 8 * passes + n % 8:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, x, y)
cls.train_step = train_step
sys.exit(main(sys.argv[3:]))
"""


def cli_env(cache):
    """The child's environment: its own decoded-image cache, and one thread, so that two processes
    compute bit for bit the same thing (a multi-threaded BLAS need not: once in a CI run, two fresh
    processes of one command differed in the seventh digit of a loss before any resume)."""
    return {**os.environ, "LOCALEARN_CACHE": str(cache), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_cli(args, cache):
    env = cli_env(cache)
    return subprocess.run(
        [sys.executable, "-m", "localearn.experiments", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def final_figures(run_dir):
    result = json.loads((run_dir / "result.json").read_text())
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    figures = {
        k: result[k] for k in ("test_accuracy", "test_loss", "epochs", "best_epoch", "best_val_accuracy")
    }
    return figures, [(m["epoch"], m["val_accuracy"], m["train_loss"]) for m in metrics]


@pytest.mark.parametrize(
    "algo, extra",
    [(name, []) for name in sorted(ALGORITHMS)]
    + [("mono_forward", ["--hp", "schedule=sequential", "--epochs", "3"])],
)
def test_resume_after_sigkill_gives_the_same_result(algo, extra, image_tree, tmp_path):
    args = [str(image_tree), "--algo", algo, *COMMON, *extra, "--name", "run"]
    done = run_cli([*args, "--out", str(tmp_path / "a")], tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    # 120 training images / batch 16 = 8 steps per pass: step 29 is mid-epoch 4.
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, algo, "29", *args, "--out", str(tmp_path / "b")],
        env=cli_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_b = tmp_path / "b" / "run"
    assert (run_b / "checkpoint.pt").exists() and not (run_b / "result.json").exists()
    resumed = run_cli([*args, "--out", str(tmp_path / "b"), "--resume"], tmp_path / "cache")
    assert resumed.returncode == 0, resumed.stderr
    assert final_figures(run_b) == final_figures(tmp_path / "a" / "run")


def test_run_prints_result_and_writes_run_directory(image_tree, tmp_path, capsys):
    args = [str(image_tree), "--algo", "mono_forward", *COMMON, "--out", str(tmp_path)]
    args += ["--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    assert "test accuracy" in capsys.readouterr().out
    (run,) = [p for p in tmp_path.iterdir() if p.name != "cache"]
    assert run.name == "tiny-mono_forward-mlp32x32-s0"
    result = json.loads((run / "result.json").read_text())
    assert result["model"] == "mlp:32,32" and result["dataset"] == "tiny" and result["epochs"] == 6
    assert result["test_accuracy"] > 0.5  # 4 colour classes; chance is 0.25
    # Every command-line run meters itself: joules (or None, said so), the source, and peak memory.
    assert "energy_joules" in result and result["energy_source"] and result["co2_country"] in ("USA", None)
    assert result["energy_scope"]["cpu"] in ("process", "machine")  # what the figure covers, said
    assert result["peak_memory_kind"] == "rss_peak_above_start" and result["peak_memory_bytes"] >= 0
    assert result["process_lifetime_peak_kind"] == "process_peak_rss"
    assert result["process_lifetime_peak_bytes"] > result["peak_memory_bytes"]
    # The same command again does not touch the finished run: it gets a new directory.
    assert main([*args, "--epochs", "1"]) == 0
    assert (tmp_path / "tiny-mono_forward-mlp32x32-s0-2" / "result.json").exists()
    assert json.loads((run / "result.json").read_text()) == result


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_such_dataset", "--algo", "backprop"], "unknown dataset 'no_such_dataset'; valid: mnist"),
        (["{tree}", "--algo", "backprop", "--hp", "momentun=0.5"], "unknown hyperparameter 'momentun'"),
        (["{tree}", "--algo", "backprop", "--hp", "lr=fast"], "expected a float"),
        (["{tree}", "--algo", "mono_forward", "--hp", "schedule=greedy"], "simultaneous, sequential"),
        (["{tree}", "--algo", "backprop", "--model", "resnet"], "unknown model 'resnet'"),
        (["{tree}", "--algo", "backprop", "--device", "cuda:7"], "valid: auto, cpu"),
        (["{empty}", "--algo", "backprop"], "missing folder"),
        (["{tree}", "--algo", "forward_forward", "--monitor", "val_loss"], "not meaningful"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(args, message, image_tree, tmp_path, capsys):
    if "cuda:7" in args and __import__("torch").cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    (tmp_path / "empty").mkdir()
    args = [a.format(tree=image_tree, empty=tmp_path / "empty") for a in args]
    assert main([*args, "--out", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_unknown_algorithm_lists_the_registry(capsys):
    assert main(["mnist", "--algo", "no_such_rule"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in ALGORITHMS)


def test_help_lists_algorithms_and_hyperparameters(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert all(name in out for name in ALGORITHMS) and "schedule=" in out


def test_abbreviations_are_refused(image_tree, tmp_path):
    """--epoch is not --epochs: a misspelt option fails loudly instead of setting something else."""
    with pytest.raises(SystemExit) as exit_:
        main([str(image_tree), "--algo", "backprop", "--epoch", "1", "--out", str(tmp_path)])
    assert exit_.value.code == 2 and not list(tmp_path.iterdir())


def test_a_run_is_rerun_from_its_config(image_tree, tmp_path, capsys):
    """config.json holds the run's spec: ``train --spec`` runs the same thing again (in a new directory)."""
    args = [str(image_tree), "--algo", "mono_forward", *COMMON, "--out", str(tmp_path), "--name", "a"]
    assert main([*args, "--cache-dir", str(tmp_path / "cache")]) == 0
    first = json.loads((tmp_path / "a" / "result.json").read_text())
    assert main(["train", "--spec", str(tmp_path / "a" / "config.json"), "-q"]) == 0
    again = json.loads((tmp_path / "a-2" / "result.json").read_text())
    assert (again["test_accuracy"], again["test_loss"]) == (first["test_accuracy"], first["test_loss"])
    assert main(["train", "--spec", str(tmp_path / "a" / "config.json"), "--epochs", "2"]) == 2
    assert "--spec takes no other run options" in capsys.readouterr().err


# ---------------------------------------------------------------- what a new user and kill -9 found


def test_a_file_or_read_only_out_is_a_one_line_error(image_tree, tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    args = [str(image_tree), "--algo", "backprop", *COMMON, "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--out", str(tmp_path / "taken" / "runs")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    if os.geteuid() != 0:  # root writes into read-only directories
        (tmp_path / "ro").mkdir(mode=0o555)
        assert main([*args, "--out", str(tmp_path / "ro" / "runs")]) == 2
        assert "permission denied" in capsys.readouterr().err


def test_bad_settings_fail_before_the_data_loads(tmp_path, capsys):
    """The data set does not exist: the error must be the bad setting's, found first."""
    for option, message in (
        ("--epochs=0", "epochs=0"),
        ("--patience=-1", "patience=-1"),
        ("--model=mlp:x", "sizes"),
    ):
        assert main([str(tmp_path / "no_data"), "--algo", "backprop", option, "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert message in err and "no_data" not in err and len(err.strip().splitlines()) == 1


def test_resume_of_a_run_that_does_not_exist_is_refused(image_tree, tmp_path, capsys):
    args = [str(image_tree), "--algo", "backprop", *COMMON, "--out", str(tmp_path), "--name", "nothing"]
    assert main([*args, "--resume"]) == 2
    assert "no run to continue" in capsys.readouterr().err and not (tmp_path / "nothing").exists()


def test_an_unknown_country_is_refused(image_tree, tmp_path, capsys):
    args = [str(image_tree), "--algo", "backprop", *COMMON, "--out", str(tmp_path)]
    assert main([*args, "--country", "ZZZ"]) == 2
    assert "--country 'ZZZ' is not an ISO 3166 alpha-3 code" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["tune", "--trials", "1"], ["compare", "--seeds", "1"]])
def test_an_unknown_algorithm_is_one_line_naming_the_valid_ones(command, tmp_path, capsys):
    algo = ["--algos", "bogus"] if "compare" in command else ["--algo", "bogus"]
    assert main([*command[:1], str(tmp_path), *algo, *command[1:], "--out", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "unknown algorithm 'bogus'" in line and all(name in line for name in ALGORITHMS)


INTERRUPTER = """
import os, signal, sys
from localearn.algorithms import ALGORITHMS
from localearn.experiments.__main__ import main
cls = ALGORITHMS["backprop"]
step, calls = cls.train_step, [0]
def train_step(self, x, y):
    calls[0] += 1
    if calls[0] == 20:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, mid-epoch 3
    return step(self, x, y)
cls.train_step = train_step
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_says_in_one_line_how_to_continue_and_that_command_does(image_tree, tmp_path):
    """One line with the exact command (the run's name included: a used name got a suffix); that command
    finishes the run, and the result says it was resumed. config.json records a command that can be typed
    again; leftovers of a write cut short are removed."""
    args = [str(image_tree), "--algo", "backprop", *COMMON, "--out", str(tmp_path), "--name", "run"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("taken")  # so this run is named run-2
    env = cli_env(tmp_path / "cache")
    done = subprocess.run([sys.executable, "-c", INTERRUPTER, *args], env=env, capture_output=True, text=True)
    assert done.returncode == 130, done.stderr
    (line,) = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert line.startswith("interrupted: continue with python -m localearn.experiments train ")
    assert line.endswith("--name run-2 --resume") and "Traceback" not in done.stderr
    run = tmp_path / "run-2"
    config = json.loads((run / "config.json").read_text())
    assert config["invocation"]["command"].startswith("python -m localearn.experiments train ")
    (run / ".checkpoint.pt.killed.tmp").write_bytes(b"half a checkpoint")
    command = shlex.split(line.removeprefix("interrupted: continue with "))
    assert command[:3] == ["python", "-m", "localearn.experiments"]
    again = run_cli(command[3:], tmp_path / "cache")
    assert again.returncode == 0, again.stderr
    result = json.loads((run / "result.json").read_text())
    assert result["resumes"] == 1 and result["seconds_lost"] >= 0 and result["epochs"] == 6
    assert not list(run.glob(".*.tmp"))
