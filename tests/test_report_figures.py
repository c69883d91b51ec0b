"""The figures the comparison report is built from: intervals and tests over seeds (against t tables and
closed forms), what a run had spent to a target and at a number of data passes, and the verdicts."""

import json
import math

import pytest

from localearn.experiments.budget import at_passes, matched_passes, to_target
from localearn.experiments.plots import pareto_front
from localearn.experiments.report import comparisons, load_runs, write_report
from localearn.experiments.stats import mean_interval, t_quantile, t_two_sided_p, verdict, welch_p
from localearn.experiments.verdicts import headline


@pytest.mark.parametrize(
    "df, quantile", [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042), (10_000, 1.960)]
)
def test_t_quantiles_match_the_table(df, quantile):
    assert t_quantile(0.975, df) == pytest.approx(quantile, abs=5e-4)


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5, 10.0])
def test_t_tails_match_closed_forms(t):
    # One degree of freedom is Cauchy; two have P(|T| >= t) = 1 - t / sqrt(2 + t^2).
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-9)
    assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)


def test_interval_and_welch_by_hand():
    # [1, 2, 3]: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3).
    mean, lo, hi = mean_interval([1.0, 2.0, 3.0])
    assert (mean, hi - mean) == pytest.approx((2.0, 4.3027 / math.sqrt(3)), abs=1e-4)
    assert lo == pytest.approx(2 * mean - hi)
    assert mean_interval([5.0]) == (5.0, None, None)
    # [0, 2] against [3, 5]: equal variances 2, t = -3 / sqrt(2), Welch's df = 2.
    t = 3 / math.sqrt(2)
    assert welch_p([0.0, 2.0], [3.0, 5.0]) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert welch_p([1.0], [2.0, 3.0]) is None
    assert welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0 and welch_p([1.0, 1.0], [2.0, 2.0]) == 0.0


def test_verdict_words_for_each_case():
    assert verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9], "cheaper", "dearer").startswith("cheaper (p = ")
    assert verdict([2.0, 2.1, 1.9], [1.0, 1.1, 0.9], "cheaper", "dearer").startswith("dearer (p = ")
    assert verdict([1.0, 3.0], [2.0, 2.5], "cheaper", "dearer").startswith("no difference at this n (p = 0.")
    assert verdict([1.0], [2.0, 2.5], "cheaper", "dearer") == "n < 2 (seeds: 1 against 2): no test"


def records(accuracies, passes_per_epoch=1, seconds=10.0, joules=100.0):
    return [
        {
            "epoch": i + 1,
            "data_passes": (i + 1) * passes_per_epoch,
            "val_accuracy": a,
            "seconds": seconds,
            "energy_joules": joules,
        }
        for i, a in enumerate(accuracies)
    ]


def test_spend_to_a_target():
    run = records([0.5, 0.8, 0.9, 0.85])
    reached = to_target(run, 0.8)
    assert reached == {"epoch": 2, "data_passes": 2, "val_accuracy": 0.8, "seconds": 20.0, "joules": 200.0}
    assert to_target(run, 0.95) is None  # never reached: no number
    # A rule whose epoch is 3 passes counts its passes; a run without joules has none to sum.
    staged = records([0.7, 0.9], passes_per_epoch=3)
    assert to_target(staged, 0.9)["data_passes"] == 6
    no_energy = [{k: v for k, v in r.items() if k != "energy_joules"} for r in run]
    assert to_target(no_energy, 0.8)["joules"] is None


def test_spend_at_matched_passes():
    one_pass, three_passes = records([0.5, 0.6, 0.7, 0.8, 0.9]), records([0.7, 0.9], passes_per_epoch=3)
    passes = matched_passes([one_pass, three_passes])
    assert passes == 5
    at = at_passes(one_pass, passes)
    assert (at["val_accuracy"], at["seconds"], at["joules_per_pass"], at["exact"]) == (0.9, 50.0, 100.0, True)
    # The three-pass rule's last epoch within 5 passes ends at 3: said, not hidden.
    at = at_passes(three_passes, passes)
    assert (at["data_passes"], at["val_accuracy"], at["exact"]) == (3, 0.7, False)
    assert at_passes(three_passes, 2) is None


def write_run(root, name, algorithm, seed, accuracies, passes_per_epoch=1, joules=100.0, seconds=10.0):
    """A finished run directory whose metrics.jsonl holds ``accuracies`` as its validation curve."""
    d = root / name
    d.mkdir(parents=True)
    metrics = records(accuracies, passes_per_epoch, seconds, joules)
    (d / "config.json").write_text(json.dumps({"algorithm": algorithm, "seed": seed}))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    result = {
        "algorithm": algorithm,
        "dataset": "mnist",
        "model": "mlp:8",
        "seed": seed,
        "epochs": len(accuracies),
        "data_passes": len(accuracies) * passes_per_epoch,
        "device": "cpu",
        "test_accuracy": max(accuracies),
        "best_val_accuracy": max(accuracies),
        "train_seconds": seconds * len(accuracies),
        "energy_joules": joules * len(accuracies),
        "hyperparameters": {},
        "stopping_rule": {"patience": 10},
    }
    (d / "result.json").write_text(json.dumps(result))


def test_the_verdicts_on_runs_with_known_records(tmp_path):
    """Backprop's best is 0.90 in both seeds, so the target is 0.891: backprop reaches it at epoch 3, the
    staged rule (3 passes an epoch) at its epoch 2 = 6 passes, the weak rule never."""
    root = tmp_path / "runs"
    for seed in (0, 1):
        write_run(root, f"bp-s{seed}", "backprop", seed, [0.6, 0.8, 0.9, 0.9], joules=100.0)
        write_run(root, f"mf-s{seed}", "mono_forward", seed, [0.85, 0.95], passes_per_epoch=3, joules=40.0)
        write_run(root, f"ff-s{seed}", "forward_forward", seed, [0.5, 0.6, 0.7, 0.8], joules=10.0)
    runs, _ = load_runs(root)
    (comparison,) = comparisons(runs, "backprop")
    assert comparison.target == pytest.approx(0.99 * 0.9)
    assert comparison.passes == 4  # every run had 4 passes or more; mono_forward's epochs end at 3 and 6
    bp, ff, mf = (comparison.by_label(n) for n in ("backprop", "forward_forward", "mono_forward"))
    assert bp.target["data_passes"].values == [3.0, 3.0] and bp.target["joules"].values == [300.0, 300.0]
    assert mf.target["data_passes"].values == [6.0, 6.0] and mf.target["joules"].values == [80.0, 80.0]
    assert ff.target is None and ff.reached == 0
    assert mf.target["joules"].verdict.startswith("cheaper (p = 0")  # 80 against 300, no spread
    assert mf.at_passes["joules_per_pass"].values == [40.0 / 3, 40.0 / 3] and not mf.passes_exact
    assert ff.at_passes["val_accuracy"].values == [0.8, 0.8]
    lines = headline(comparison)
    assert lines[0].startswith("Most accurate: mono_forward, test accuracy 0.9500")
    assert lines[1].startswith(
        "Cheapest to the target: mono_forward, 80.0 [80.0, 80.0] joules, 0.27x backprop"
    )
    assert "not reached in every run: forward_forward" in lines[1]
    assert lines[2].startswith("Cheapest per data pass: forward_forward, 10.0 [10.0, 10.0] J per pass, 0.10x")
    out = write_report(root, target=0.95, passes=3)
    text = (out / "report.md").read_text()
    assert "validation accuracy 0.9500 (given)" in text and "| at 3 passes: val accuracy" in text
    assert "| backprop | 2 | 0.9000 [0.9000, 0.9000] | not reached (0 of 2 runs) |" in text
    assert "<h2>Verdict</h2>" in (out / "report.html").read_text()


def test_the_pareto_front_keeps_what_nothing_beats():
    points = [(100.0, 0.90), (50.0, 0.85), (200.0, 0.95), (150.0, 0.88), (50.0, 0.80), (300.0, 0.95)]
    assert pareto_front(points) == [(50.0, 0.85), (100.0, 0.90), (200.0, 0.95)]
