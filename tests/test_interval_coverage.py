"""Coverage by simulation: the intervals the analyses report hold their nominal 95% (or err on
the safe side), on designs like the card's: cells of a few dozen images, spreads of accuracy from
none to the card's, group means of a score with and without a planted difference."""

from __future__ import annotations

import numpy as np
import pytest

from audit.analyses.gaps import largest_gap, mean_estimates
from audit.analyses.stats import true_spread_interval

SIMULATIONS = 300


@pytest.mark.parametrize(
    ("accuracies", "images"),
    [
        ([0.8] * 8, 25),  # no spread at all: the std comes from noise alone
        ([0.99, 0.95, 0.9, 0.97] * 2, 10),  # cells near 100%, small
        ([0.9, 0.8, 0.95, 0.7, 0.85, 0.9, 0.6, 0.75], 20),
        ([0.926, 0.59, 0.44, 0.8, 0.7, 0.6, 0.9, 0.5] * 3, 15),  # 24 cells, the card's spread
    ],
)
def test_the_cell_std_interval_covers_the_spread_of_true_accuracies(
    accuracies: list[float], images: int
) -> None:
    rng = np.random.default_rng(7)
    true = np.asarray(accuracies)
    sizes = np.full(true.size, images)
    covered = zero_width = 0
    for _ in range(SIMULATIONS):
        successes = rng.binomial(sizes, true)
        low, high = true_spread_interval(successes, sizes, 1000, rng)
        covered += low - 1e-12 <= true.std() <= high + 1e-12
        zero_width += high - low < 1e-12
        assert low <= (successes / sizes).std() <= high  # holds the estimate it is shown with
    assert covered / SIMULATIONS >= 0.93
    assert zero_width == 0


@pytest.mark.parametrize("planted", [0.0, 0.15])
def test_the_mean_gap_interval_covers_the_pair_it_reports_and_agrees_with_its_test(
    planted: float,
) -> None:
    rng = np.random.default_rng(3)
    means = np.array([0.2, 0.2, 0.2 + planted, 0.2])
    codes = np.repeat(np.arange(means.size), [30, 25, 20, 40])
    covered = rejected = 0
    for _ in range(SIMULATIONS // 2):
        scores = np.clip(rng.normal(means[codes], 0.15), 0, 1)  # a toxicity-like score
        units = np.column_stack([scores, scores**2, np.ones(scores.size)])
        gap = largest_gap(units, codes, mean_estimates, 400, rng)
        assert gap is not None
        low, high = gap.interval
        assert low <= gap.difference <= high
        assert (low > 0) == (gap.p_value < 0.05)
        true = means[gap.high] - means[gap.low]
        covered += low <= true <= high
        rejected += gap.p_value < 0.05
    share = rejected / (SIMULATIONS // 2)
    if planted:
        assert share >= 0.8  # the planted group is found
    else:
        assert share <= 0.09  # calibrated under no difference (nominal 5%)
    assert covered / (SIMULATIONS // 2) >= 0.93
