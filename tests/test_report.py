"""The comparison report from run directories, and the compare command."""

import json
import statistics

import pytest

from localearn.experiments.__main__ import main
from localearn.experiments.report import load_runs, summarise, write_report

RULE = {
    "monitor": "val_accuracy",
    "mode": "max",
    "patience": 10,
    "min_delta": 0.0,
    "epoch_cap": 5,
    "restore_best": True,
}


def make_run(root, name, algorithm, seed, accuracy, joules, seconds=10.0, hparams=None, finished=True):
    """A run directory as the Trainer writes it; joules=None is a run whose energy was not metered."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"algorithm": algorithm, "seed": seed}))
    per_epoch = None if joules is None else joules / 2
    (d / "metrics.jsonl").write_text(
        "".join(
            json.dumps(
                {
                    "epoch": e,
                    "data_passes": e,
                    "val_accuracy": accuracy - 0.01 * (2 - e),
                    "seconds": seconds / 2,
                    "energy_joules": per_epoch,
                }
            )
            + "\n"
            for e in (1, 2)
        )
    )
    if finished:
        result = {
            "algorithm": algorithm,
            "dataset": "mnist",
            "model": "mlp:8",
            "seed": seed,
            "epochs": 2,
            "data_passes": 2,
            "device": "cpu",
            "test_accuracy": accuracy,
            "train_seconds": seconds,
            "hyperparameters": {"lr": 0.001, "schedule": "simultaneous", **(hparams or {})},
            "stopping_rule": RULE,
            "batch_size": 128,
            "augment": "none",
        }
        if joules is not None:
            result.update(
                energy_joules=joules,
                energy_measured=True,
                energy_source="nvml-counter",
                energy_methods={"gpu": "nvml-counter"},
                co2_country="USA",
                peak_memory_bytes=2**20 * 100,
                peak_memory_kind="cuda_max_memory_allocated",
                energy_window="training and per-epoch validation",
            )
        (d / "result.json").write_text(json.dumps(result))
    return d


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "bp-s0", "backprop", 0, 0.90, 100.0, seconds=10.0)
    make_run(root, "bp-s1", "backprop", 1, 0.92, 120.0, seconds=12.0)
    make_run(root, "mf-s0", "mono_forward", 0, 0.93, 300.0, seconds=30.0)
    make_run(root, "mf-s1", "mono_forward", 1, 0.95, 340.0, seconds=34.0)
    make_run(root, "mfseq-s0", "mono_forward", 0, 0.91, None, hparams={"schedule": "sequential"})
    make_run(root, "killed", "backprop", 2, 0.5, 1.0, finished=False)
    return root


def test_summary_figures_and_ratios(runs_dir):
    runs, unfinished = load_runs(runs_dir)
    assert len(runs) == 5 and [p.name for p in unfinished] == ["killed"]
    rows = {r["algorithm"]: r for r in summarise(runs, "backprop")}
    assert set(rows) == {"backprop", "mono_forward", "mono_forward (schedule=sequential)"}
    bp, mf = rows["backprop"], rows["mono_forward"]
    assert bp["test accuracy"] == pytest.approx(0.91)
    assert bp["test accuracy sd"] == pytest.approx(statistics.stdev([0.90, 0.92]))
    assert mf["joules"] == pytest.approx(320.0) and mf["seeds"] == "0 1"
    assert mf["joules xbackprop"] == pytest.approx(320.0 / 110.0)
    assert mf["seconds xbackprop"] == pytest.approx(32.0 / 11.0)
    assert mf["peak memory MiB"] == pytest.approx(100.0)
    # A run without energy has no joules and no ratio: missing, never 0.
    seq = rows["mono_forward (schedule=sequential)"]
    assert seq["joules"] is None and seq["joules xbackprop"] is None and seq["energy measured"] is None


def test_configurations_are_rows_of_their_own_and_the_baseline_is_found_by_name(tmp_path):
    """Two learning rates of one rule are two rows (never averaged as seeds); a baseline run with a
    non-default choice (here SGD) is still the baseline its ratios are taken against."""
    root = tmp_path / "runs"
    make_run(root, "bp", "backprop", 0, 0.90, 100.0, hparams={"optimizer": "sgd"})
    make_run(root, "mf-a", "mono_forward", 0, 0.93, 300.0, hparams={"lr": 0.001})
    make_run(root, "mf-b", "mono_forward", 0, 0.80, 200.0, hparams={"lr": 0.01})
    rows = {r["algorithm"]: r for r in summarise(load_runs(root)[0], "backprop")}
    assert set(rows) == {"backprop (optimizer=sgd)", "mono_forward (lr=0.001)", "mono_forward (lr=0.01)"}
    assert rows["mono_forward (lr=0.01)"]["test accuracy"] == pytest.approx(0.80)
    assert rows["mono_forward (lr=0.001)"]["joules xbackprop"] == pytest.approx(3.0)
    md = (write_report(root) / "report.md").read_text()
    assert "Seeds: distinct within every row." in md


def test_report_files(runs_dir):
    out = write_report(runs_dir, baseline="backprop")
    md = (out / "report.md").read_text()
    # Each figure with its ratio to backprop's mean (0.91 accuracy, 11 s); joules not metered: missing.
    row = "| mono_forward (schedule=sequential) | mnist | mlp:8 | 0 | 0.9100 (1.00×) | 2.0 (1.00×) "
    row += "| 2.0 (1.00×) | 10.0 (0.91×) | missing |"
    assert row in md
    assert "0.9400 ± 0.0141" in md  # mono_forward's mean ± sample SD
    rule = "Stopping rule: every run stopped at the first of no gain in val_accuracy greater than 0.0 for 10"
    assert rule in md
    assert "DIFFERS" not in md.split("Metered")[0]
    assert "Unfinished runs left out: killed" in md
    assert "Energy, GPU: the GPU's own energy counter read through NVML: measured" in md
    assert "Every energy figure here is measured." in md and "1 of 5 runs were not metered" in md
    assert "| hyperparameter | backprop | mono_forward | mono_forward (schedule=sequential) |" in md
    assert "| schedule | simultaneous | simultaneous | sequential |" in md
    assert "Seeds: distinct within every row." in md
    rows = (out / "report.csv").read_text().splitlines()
    assert rows[0].startswith("algorithm,dataset,model,runs,seeds,test accuracy,test accuracy sd")
    seq = next(r for r in rows if "sequential" in r).split(",")
    assert seq[rows[0].split(",").index("joules")] == ""  # missing, not 0
    for png in (
        "mnist_mlp8_pareto.png",
        "mnist_mlp8_val_accuracy_vs_epochs.png",
        "mnist_mlp8_val_accuracy_vs_passes.png",
        "mnist_mlp8_val_accuracy_vs_joules.png",
    ):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and 'src="http' not in html  # self-contained
    assert "<td>missing</td>" in html


def test_report_flags_unfair_protocols(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a", "backprop", 0, 0.9, 10.0)
    make_run(root, "b", "backprop", 0, 0.9, 10.0)  # the same seed twice
    d = make_run(root, "c", "mono_forward", 0, 0.9, 10.0)
    result = json.loads((d / "result.json").read_text())
    result["stopping_rule"] = {**RULE, "patience": 3}
    (d / "result.json").write_text(json.dumps(result))
    md = (write_report(root) / "report.md").read_text()
    assert "Stopping rule: DIFFERS between runs" in md
    assert "Seeds: REPEATED within backprop on mnist" in md


def test_a_corrupt_result_is_named(runs_dir, capsys):
    (runs_dir / "mf-s1" / "result.json").write_text('{"algorithm": "mono_forward", "test_acc')
    assert main(["report", str(runs_dir)]) == 2
    err = capsys.readouterr().err
    assert str(runs_dir / "mf-s1" / "result.json") in err and "not valid JSON" in err
    assert len(err.strip().splitlines()) == 1


def test_report_command_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no finished runs" in capsys.readouterr().err


def test_compare_runs_every_algorithm_with_distinct_seeds_then_reports(image_tree, tmp_path):
    args = [
        "compare",
        str(image_tree),
        "--algos",
        "backprop,mono_forward",
        "--seeds",
        "2",
        "--out",
        str(tmp_path),
        "--model",
        "mlp:16",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--no-progress",
        "-q",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    assert main(args) == 0
    root = tmp_path / "compare-tiny"
    runs = sorted(p.name for p in root.iterdir() if (p / "result.json").exists())
    assert runs == ["backprop-s0", "backprop-s1", "mono_forward-s0", "mono_forward-s1"]
    seeds = {json.loads((root / r / "result.json").read_text())["seed"] for r in runs}
    assert seeds == {0, 1}
    rules = {json.dumps(json.loads((root / r / "result.json").read_text())["stopping_rule"]) for r in runs}
    assert len(rules) == 1  # the same rule for every algorithm
    md = (root / "report" / "report.md").read_text()
    assert "| backprop | tiny | mlp:16 | 0 1 |" in md and "| mono_forward | tiny | mlp:16 | 0 1 |" in md
    # Running it again continues: finished runs are kept as they are, not trained again.
    before = (root / "backprop-s0" / "result.json").read_text()
    assert main(args) == 0
    assert (root / "backprop-s0" / "result.json").read_text() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--algos", "backprop,nope"], "unknown algorithm 'nope'"),
        (["--algos", "backprop", "--seed", "3"], "--seed is set by compare"),
        # Every spelling of an option compare sets itself is refused, not passed on to every run.
        (["--algos", "backprop,mono_forward", "--seeds", "2", "--seed=5"], "--seed is set by compare"),
        (["--algos", "backprop,mono_forward", "--seeds", "2", "--se", "5"], "--seed is set by compare"),
        (["--algos", "backprop", "--resume"], "--resume is set by compare"),
        (["--algos", "backprop", "--seeds", "0"], "at least one seed"),
    ],
)
def test_compare_bad_input(extra, message, tmp_path, capsys):
    assert main(["compare", "mnist", *extra, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_the_html_page_renders_in_a_headless_browser(runs_dir, tmp_path):
    """The page opened by a real browser (Chromium, headless): a screenshot that is not blank. Without
    Chromium (Debian: apt-get install chromium) the test is skipped."""
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium here: apt-get install chromium to render the report in a real browser")
    page = write_report(runs_dir) / "report.html"
    shot = tmp_path / "page.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1600",
         f"--screenshot={shot}", page.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    assert pixels[..., :3].std() > 0.05  # text, tables and plots, not an empty page


def test_stopping_rules_of_multi_pass_rules_are_compared_in_passes(tmp_path):
    """DiffusionBlocks' 5 epochs of 3 passes are backprop's 15 epochs: the same rule, said in passes; 5
    epochs against 5 epochs is not."""

    def runs(backprop_rule):
        root = tmp_path / f"runs{backprop_rule['patience']}"
        for name, algorithm, rule, per_epoch in (
            ("db", "diffusion_blocks", {**RULE, "patience": 5, "epoch_cap": 20}, 3),
            ("bp", "backprop", backprop_rule, 1),
        ):
            d = make_run(root, name, algorithm, 0, 0.9, 10.0)
            result = json.loads((d / "result.json").read_text())
            result.update(stopping_rule=rule, passes_per_epoch=per_epoch)
            (d / "result.json").write_text(json.dumps(result))
        return (write_report(root) / "report.md").read_text()

    same = runs({**RULE, "patience": 15, "epoch_cap": 60})
    assert "for 15 data passes and the cap of 60 data passes" in same and "DIFFERS" not in same
    assert "Stopping rule: DIFFERS between runs (in data passes)" in runs(
        {**RULE, "patience": 5, "epoch_cap": 20}
    )


def test_the_baseline_is_its_default_configuration_among_several(tmp_path):
    """A rule beside itself with an option on: the run whose differing hyperparameters are all the rule's
    defaults is the baseline, though its label names them (peer_normalisation=0.0); two non-default
    configurations leave no baseline."""
    root = tmp_path / "runs"
    make_run(
        root,
        "plain",
        "forward_forward",
        0,
        0.90,
        100.0,
        hparams={"schedule": "interleaved", "peer_normalisation": 0.0},
    )
    make_run(
        root,
        "peer",
        "forward_forward",
        0,
        0.93,
        200.0,
        hparams={"schedule": "interleaved", "peer_normalisation": 0.03},
    )
    rows = {r["algorithm"]: r for r in summarise(load_runs(root)[0], "forward_forward")}
    peer = rows["forward_forward (peer_normalisation=0.03)"]
    assert peer["joules xforward_forward"] == pytest.approx(2.0)
    md = (write_report(root, baseline="forward_forward") / "report.md").read_text()
    assert "baseline (`forward_forward (peer_normalisation=0.0)`)" in md
    make_run(
        root,
        "more",
        "forward_forward",
        0,
        0.91,
        100.0,
        hparams={"schedule": "interleaved", "peer_normalisation": 0.1},
    )
    (root / "plain" / "result.json").unlink()
    rows = {r["algorithm"]: r for r in summarise(load_runs(root)[0], "forward_forward")}
    assert rows["forward_forward (peer_normalisation=0.03)"]["joules xforward_forward"] is None
