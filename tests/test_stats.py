"""audit.analyses.stats against independent implementations and the distributions they must
reproduce."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import false_discovery_control, hypergeom, norm
from statsmodels.stats.proportion import proportion_confint

from audit.analyses.stats import (
    SequentialPermutations,
    benjamini_hochberg,
    bootstrap_ratios,
    minimum_detectable_difference,
    percentile_interval,
    permutation_p_values,
    permuted_group_sums,
    permuted_labels,
    seeded_rng,
    sequential_permutation_test,
    stratified_bootstrap_weights,
    wilson_interval,
)


def test_wilson_matches_statsmodels_and_is_null_without_data():
    successes = np.array([0, 1, 7, 50, 99, 100])
    totals = np.array([10, 10, 20, 100, 100, 100])
    low, high = wilson_interval(successes, totals)
    expected_low, expected_high = proportion_confint(successes, totals, method="wilson")
    np.testing.assert_allclose(low, expected_low, atol=1e-12)
    np.testing.assert_allclose(high, expected_high, atol=1e-12)
    empty_low, empty_high = wilson_interval(np.array([0]), np.array([0]))
    assert np.isnan(empty_low[0]) and np.isnan(empty_high[0])


def test_benjamini_hochberg_matches_scipy_and_keeps_nan():
    rng = np.random.default_rng(1)
    p = np.concatenate([rng.uniform(size=200), rng.uniform(0, 1e-3, size=20)])
    np.testing.assert_allclose(benjamini_hochberg(p), false_discovery_control(p), rtol=1e-12)
    with_nan = np.array([0.01, np.nan, 0.04, 0.03])
    q = benjamini_hochberg(with_nan)
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3]], false_discovery_control(with_nan[[0, 2, 3]]))


def test_stratified_weights_keep_every_stratum_size_and_stay_inside_it():
    strata = np.array([2, 0, 0, 1, 2, 2, 0, 1, 2, 2])
    weights = stratified_bootstrap_weights(strata, 500, np.random.default_rng(0))
    for code in range(3):
        inside = weights[:, strata == code]
        assert (inside.sum(axis=1) == (strata == code).sum()).all()
    # Every unit is drawn about once per resample on average.
    np.testing.assert_allclose(weights.mean(axis=0), 1.0, atol=0.15)


def test_bootstrap_is_reproducible_and_discrete_shortcut_matches_unit_resampling():
    rng = np.random.default_rng(3)
    outcomes = (rng.random(400) < 0.3).astype(float)  # binary: takes the multinomial shortcut
    strata = np.repeat([0, 1], 200)
    first = bootstrap_ratios(outcomes, np.ones(400), strata, 4000, np.random.default_rng(7))
    again = bootstrap_ratios(outcomes, np.ones(400), strata, 4000, np.random.default_rng(7))
    np.testing.assert_array_equal(first, again)
    # Continuous jitter forces unit-by-unit resampling; the two must agree in distribution.
    jittered = outcomes + rng.normal(0, 1e-9, size=400)
    units = bootstrap_ratios(jittered, np.ones(400), strata, 4000, np.random.default_rng(8))
    for code in (0, 1):
        assert abs(first[:, code, 0].std() - units[:, code, 0].std()) < 0.003
        assert abs(first[:, code, 0].mean() - units[:, code, 0].mean()) < 0.003
    expected_sd = np.sqrt(outcomes[:200].mean() * (1 - outcomes[:200].mean()) / 200)
    assert abs(first[:, 0, 0].std() - expected_sd) < 0.003


def test_cluster_bootstrap_ratio_resamples_whole_images():
    # Two images: one with 3 observations all successes, one with 1 failure. Resampling images
    # (not rows) gives only the ratios 3/4 (both), 1 (first twice) and 0 (second twice).
    replicates = bootstrap_ratios(
        np.array([3.0, 0.0]), np.array([3.0, 1.0]), np.array([0, 0]), 2000, np.random.default_rng(0)
    )
    assert set(np.round(np.unique(replicates), 6)) == {0.0, 0.75, 1.0}


def test_percentile_interval_ignores_empty_resamples():
    replicates = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan], [np.nan, np.nan]])
    low, high = percentile_interval(replicates)
    assert 1.0 <= low[0] < high[0] <= 3.0
    assert np.isnan(low[1]) and np.isnan(high[1])


def test_permuted_labels_of_a_subset_follow_the_hypergeometric_law():
    codes = np.repeat([0, 1, 2], [50, 30, 20])
    full = permuted_labels(codes, 3, np.random.default_rng(0))
    assert all(sorted(row) == sorted(codes) for row in full)
    rows = np.arange(10)
    subset = permuted_labels(codes, 20000, np.random.default_rng(1), rows)
    ones = (subset == 1).sum(axis=1)
    law = hypergeom(100, 30, 10)
    assert abs(ones.mean() - law.mean()) < 0.03
    assert abs(ones.var() - law.var()) < 0.06
    # Within the subset, positions are exchangeable.
    assert abs((subset[:, 0] == 2).mean() - 0.2) < 0.01


def test_exact_group_sums_match_permuting_labels():
    rng = np.random.default_rng(5)
    codes = np.repeat([0, 1, 2], [40, 25, 35])
    values = np.column_stack([rng.integers(0, 3, 100), rng.integers(1, 4, 100)]).astype(float)
    exact = permuted_group_sums(values, codes, 20000, np.random.default_rng(6))
    labels = permuted_labels(codes, 20000, np.random.default_rng(7))
    onehot = labels[:, :, None] == np.arange(3)
    brute = np.einsum("bng,nk->bgk", onehot, values)
    np.testing.assert_allclose(exact.sum(axis=1), values.sum(axis=0)[None].repeat(20000, 0))
    np.testing.assert_allclose(exact.mean(axis=0), brute.mean(axis=0), rtol=0.01)
    np.testing.assert_allclose(exact.std(axis=0), brute.std(axis=0), rtol=0.03)


def test_minimum_detectable_difference_has_the_stated_power():
    n1, n2, p = 300, 200, 0.7
    delta = minimum_detectable_difference(p, n1, n2)
    rng = np.random.default_rng(0)
    a = rng.binomial(n1, p - delta / 2, size=20000) / n1
    b = rng.binomial(n2, p + delta / 2, size=20000) / n2
    pooled = (a * n1 + b * n2) / (n1 + n2)
    z = (b - a) / np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    power = (np.abs(z) > norm.ppf(0.975)).mean()
    assert 0.77 < power < 0.83
    assert np.isnan(minimum_detectable_difference(p, 0, 10))


def _two_group_problem(effect: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    codes = np.repeat([0, 1], 60)
    values = rng.normal(size=(120, 40))
    values[codes == 1, :3] += effect  # three real differences among 40 statistics
    return codes, values


def _mean_gap_statistic(values: np.ndarray):
    def statistic_for(active: np.ndarray):
        rows = np.arange(values.shape[0])

        def compute(labels: np.ndarray) -> np.ndarray:
            one = labels == 1
            sub = values[:, active]
            first = one @ sub / one.sum(1, keepdims=True)
            return np.abs(first - (~one) @ sub / (~one).sum(1, keepdims=True))

        return rows, compute

    return statistic_for


def test_sequential_p_values_agree_with_full_permutation_where_small():
    codes, values = _two_group_problem(0.6, 0)
    statistic_for = _mean_gap_statistic(values)
    observed = statistic_for(np.arange(40))[1](codes[None, :])[0]
    settings = SequentialPermutations(max_permutations=2000, batch=200)
    result = sequential_permutation_test(
        codes, observed, statistic_for, settings, np.random.default_rng(1)
    )
    null = statistic_for(np.arange(40))[1](permuted_labels(codes, 2000, np.random.default_rng(2)))
    full = permutation_p_values(observed, null)
    small = full < 0.05
    assert small[:3].all()
    np.testing.assert_allclose(result.p_values[small], full[small], atol=0.01)
    # Large p-values stop early with few permutations, yet stay large.
    assert (result.permutations[full > 0.5] < 400).all()
    assert (result.p_values[full > 0.5] > 0.2).all()


def test_fdr_extension_gives_resolution_where_no_permutation_reached():
    codes, values = _two_group_problem(1.5, 3)
    statistic_for = _mean_gap_statistic(values)
    observed = statistic_for(np.arange(40))[1](codes[None, :])[0]
    settings = SequentialPermutations(max_permutations=100, fdr_level=0.05)
    result = sequential_permutation_test(
        codes, observed, statistic_for, settings, np.random.default_rng(4)
    )
    strong = result.at_floor
    assert strong[:3].all()
    q = benjamini_hochberg(result.p_values)
    assert (q[:3] < 0.05).all()  # impossible with 100 permutations and 40 tests
    assert (result.permutations[:3] > 100).all()


def test_seeded_generators_depend_on_every_key():
    a = seeded_rng(0, "term_variance", "p1", "gender").random(3)
    assert np.array_equal(a, seeded_rng(0, "term_variance", "p1", "gender").random(3))
    assert not np.array_equal(a, seeded_rng(0, "term_variance", "p1", "race").random(3))
    assert not np.array_equal(a, seeded_rng(1, "term_variance", "p1", "gender").random(3))


@pytest.mark.parametrize("n_groups", [2, 5])
def test_permutation_p_values_are_uniform_under_the_null(n_groups):
    rng = np.random.default_rng(n_groups)
    p_values = []
    for _ in range(300):
        codes = rng.integers(0, n_groups, 60)
        outcome = (rng.random(60) < 0.4).astype(float)
        sums = permuted_group_sums(np.column_stack([outcome, np.ones(60)]), codes, 199, rng)
        observed = np.bincount(codes, weights=outcome, minlength=n_groups)
        spread = lambda s, t: (s / np.maximum(t, 1)).std(axis=-1)  # noqa: E731
        stat = spread(observed[None], np.bincount(codes, minlength=n_groups)[None])
        null = spread(sums[:, :, 0], sums[:, :, 1])[:, None]
        p_values.append(permutation_p_values(stat, null)[0])
    p_values = np.array(p_values)
    assert 0.02 <= (p_values <= 0.05).mean() <= 0.09
    assert 0.4 <= (p_values <= 0.5).mean() <= 0.6


def test_clustered_wilson_at_zero_counts_one_observation_per_image():
    from audit.analyses.stats import clustered_wilson_interval

    # 8 images x 3 prompts, no refusal: the interval is Wilson's for 8 observations, not [0, 0].
    low, high = clustered_wilson_interval(np.zeros(8), np.full(8, 3.0), np.zeros(8, int), 1)
    expected = wilson_interval(0, 8)
    assert low[0] == 0 and high[0] == pytest.approx(expected[1])


def test_clustered_wilson_covers_a_correlated_rate():
    from audit.analyses.stats import clustered_wilson_interval

    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(400):
        # 60 images x 3 prompts; each image's own rate varies around 0.2 (correlated prompts).
        own = rng.beta(1, 4, 60)
        successes = rng.binomial(3, own).astype(float)
        low, high = clustered_wilson_interval(successes, np.full(60, 3.0), np.zeros(60, int), 1)
        covered += low[0] <= 0.2 <= high[0]
    assert 0.92 <= covered / 400 <= 0.99
