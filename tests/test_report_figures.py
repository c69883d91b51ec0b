"""The figures the comparison report is built from: intervals and tests over seeds (against t tables and
closed forms), and what a run had spent to a target and at a number of data passes."""

import math

import pytest

from localearn.experiments.budget import at_passes, matched_passes, to_target
from localearn.experiments.stats import mean_interval, t_quantile, t_two_sided_p, verdict, welch_p


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
