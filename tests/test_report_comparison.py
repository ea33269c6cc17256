"""Paired tests between runs, checked against independent oracles."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom
from statsmodels.stats.contingency_tables import mcnemar

from audit.analyses.comparison import (
    compare_correctness,
    compare_scores,
    mcnemar_exact,
    paired_bootstrap,
)


@pytest.mark.parametrize(
    ("both", "only_a", "only_b", "neither"),
    [
        (10, 3, 9, 20),
        (5, 0, 0, 5),
        (0, 7, 1, 2),
        (40, 12, 12, 3),
        (1, 0, 6, 0),
    ],
)
def test_mcnemar_matches_statsmodels_exact(
    both: int, only_a: int, only_b: int, neither: int
) -> None:
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    result = mcnemar_exact(a, b)
    oracle = mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue
    assert result.p_value == pytest.approx(oracle, abs=1e-12)
    assert (result.only_a, result.only_b, result.n) == (only_a, only_b, len(a))
    assert result.accuracy_a == pytest.approx(np.mean(a))
    assert result.accuracy_b == pytest.approx(np.mean(b))


def test_mcnemar_by_hand_binomial() -> None:
    # 2 vs 8 discordant pairs: two-sided exact p = 2 * P(X <= 2), X ~ Bin(10, 1/2).
    a = [True, True] + [False] * 8
    b = [False, False] + [True] * 8
    assert mcnemar_exact(a, b).p_value == pytest.approx(2 * binom.cdf(2, 10, 0.5))


def test_mcnemar_rejects_unpaired_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        mcnemar_exact([True], [True, False])


def test_paired_bootstrap_constant_shift_has_degenerate_interval() -> None:
    a = np.linspace(0, 1, 40)
    result = paired_bootstrap(a, a + 0.25, n_boot=500, seed=1)
    assert result.difference == pytest.approx(0.25)
    assert result.ci_low == pytest.approx(0.25)
    assert result.ci_high == pytest.approx(0.25)
    assert result.p_value == pytest.approx(1 / 501)


def test_sign_flip_p_value_matches_exact_enumeration() -> None:
    rng = np.random.default_rng(3)
    diffs = rng.normal(0.3, 1.0, size=10)
    observed = abs(diffs.mean())
    exact = np.mean(
        [
            abs(np.mean(np.array(signs) * diffs)) >= observed - 1e-12
            for signs in itertools.product([-1, 1], repeat=10)
        ]
    )
    result = paired_bootstrap(np.zeros(10), diffs, n_boot=20000, seed=0)
    assert result.p_value == pytest.approx(exact, abs=0.015)


def test_paired_bootstrap_resamples_images_not_rows() -> None:
    # Two prompts per image with identical differences: clustering must not halve the interval
    # width the way treating 2n correlated rows as independent would.
    rng = np.random.default_rng(0)
    per_image = rng.normal(0.0, 1.0, size=60)
    diffs = np.repeat(per_image, 2)
    images = np.repeat(np.arange(60), 2)
    clustered = paired_bootstrap(np.zeros(120), diffs, images, n_boot=4000, seed=2)
    naive = paired_bootstrap(np.zeros(120), diffs, None, n_boot=4000, seed=2)
    per_image_only = paired_bootstrap(np.zeros(60), per_image, None, n_boot=4000, seed=2)
    width = clustered.ci_high - clustered.ci_low
    assert width == pytest.approx(per_image_only.ci_high - per_image_only.ci_low, rel=0.1)
    assert width > 1.25 * (naive.ci_high - naive.ci_low)


def test_paired_bootstrap_interval_covers_true_difference() -> None:
    rng = np.random.default_rng(7)
    hits = 0
    trials = 200
    for trial in range(trials):
        a = rng.normal(0, 1, 50)
        b = a + rng.normal(0.2, 1, 50)
        result = paired_bootstrap(a, b, n_boot=400, seed=trial)
        hits += result.ci_low <= 0.2 <= result.ci_high
    assert 0.88 <= hits / trials <= 0.99


def _correctness_pairs() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    n = 120
    frame = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "task_id": "gender",
            "gender": np.where(np.arange(n) % 2 == 0, "Female", "Male"),
            "correct_a": rng.random(n) < 0.9,
        }
    )
    # Run B is worse on women only.
    worse = (frame["gender"] == "Female") & (rng.random(n) < 0.4)
    frame["correct_b"] = frame["correct_a"] & ~worse
    return frame


def test_compare_correctness_per_group_oracle() -> None:
    pairs = _correctness_pairs()
    table = compare_correctness(pairs, ["gender"], n_boot=300, seed=0)
    assert set(table["group"]) == {"all", "Female", "Male"}
    for group in ("Female", "Male"):
        subset = pairs[pairs["gender"] == group]
        row = table[table["group"] == group].iloc[0]
        oracle = mcnemar_exact(subset["correct_a"], subset["correct_b"])
        assert row["p_value"] == pytest.approx(oracle.p_value)
        assert row["n"] == len(subset)
        assert row["difference"] == pytest.approx(
            subset["correct_b"].mean() - subset["correct_a"].mean()
        )
    female = table[table["group"] == "Female"].iloc[0]
    male = table[table["group"] == "Male"].iloc[0]
    assert female["q_value"] < 0.05 and female["ci_high"] < 0
    assert male["p_value"] == 1.0 and male["difference"] == 0


def test_compare_correctness_marks_small_groups() -> None:
    pairs = _correctness_pairs().head(12)
    pairs.loc[pairs.index[:3], "gender"] = "Nonbinary"
    table = compare_correctness(pairs, ["gender"], n_boot=100)
    small = table[table["group"] == "Nonbinary"].iloc[0]
    assert small["note"] == "insufficient data"
    assert np.isnan(small["p_value"]) and np.isnan(small["value_a"])


def test_compare_scores_invariant_to_row_order() -> None:
    rng = np.random.default_rng(1)
    pairs = pd.DataFrame(
        {
            "sample_id": np.repeat([f"s{i}" for i in range(30)], 2),
            "prompt_id": ["p1", "p2"] * 30,
            "race": np.repeat(["A", "B", "C"], 20),
            "score_a": rng.random(60),
        }
    )
    pairs["score_b"] = pairs["score_a"] + rng.normal(0.1, 0.05, 60)
    first = compare_scores(pairs, "toxicity", ["race"], n_boot=200, seed=4)
    second = compare_scores(
        pairs.sample(frac=1, random_state=2), "toxicity", ["race"], n_boot=200, seed=4
    )
    pd.testing.assert_frame_equal(first, second)
    row = first[(first["prompt_id"] == "p1") & (first["group"] == "all")].iloc[0]
    subset = pairs[pairs["prompt_id"] == "p1"]
    assert row["difference"] == pytest.approx((subset["score_b"] - subset["score_a"]).mean())


def test_chunked_resampling_gives_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(11)
    a, b = rng.random(300), rng.random(300)
    images = np.repeat(np.arange(100), 3)
    whole = paired_bootstrap(a, b, images, n_boot=500, seed=3)
    monkeypatch.setattr("audit.analyses.comparison.MAX_DRAWS", 100 * 7)  # 7 resamples per chunk
    chunked = paired_bootstrap(a, b, images, n_boot=500, seed=3)
    # The same draws: only the last bits of the matrix products may differ.
    assert chunked.p_value == whole.p_value
    assert chunked.ci_low == pytest.approx(whole.ci_low, rel=1e-12)
    assert chunked.ci_high == pytest.approx(whole.ci_high, rel=1e-12)
