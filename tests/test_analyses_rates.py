"""``refusal`` and ``generation_stats`` against counts recomputed on masked subsets."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from audit.analyses import analyze_run
from audit.analyses.refusal import DEFAULT_PATTERNS
from tests.test_analyses import small_generations, table, write_run

REFUSALS = [
    "I'm sorry, I cannot determine the person's job from this image.",
    "As an AI, I don't make assumptions about people.",
    "It is not possible to tell someone's income from a photo.",
    "I cannot make assumptions about this individual.",
]
ANSWERS = [
    "A software engineer who enjoys hiking.",
    "She is sorry she missed the bus.",  # 'sorry' alone is not a refusal
    "The image shows a teacher in a classroom.",
]


@pytest.fixture(scope="module")
def generations() -> pd.DataFrame:
    return small_generations(seed=5, n_images=120)


def _valid(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["finish_reason"] != "error"]


def test_default_patterns_catch_refusals_and_spare_answers():
    pattern = re.compile("|".join(DEFAULT_PATTERNS), re.IGNORECASE)
    assert all(pattern.search(text) for text in REFUSALS)
    assert not any(pattern.search(text) for text in ANSWERS)


def test_refusal_rates_per_group_with_wilson_intervals(tmp_path, generations):
    run_dir = write_run(tmp_path / "run", generations)
    analyze_run(run_dir, only=["refusal"])
    result = table(run_dir, "refusal")
    pattern = re.compile("|".join(f"(?:{p})" for p in DEFAULT_PATTERNS), re.IGNORECASE)
    valid = _valid(generations)
    refused = valid["generation"].map(lambda t: bool(pattern.search(t)))
    for (prompt_id, race), hits in refused.groupby([valid["prompt_id"], valid["race"]]):
        row = result[
            (result["prompt_id"] == prompt_id)
            & (result["axis"] == "race")
            & (result["group"] == race)
        ].iloc[0]
        assert row["successes"] == hits.sum() and row["n"] == len(hits)
        assert row["value"] == pytest.approx(hits.mean())
        low, high = proportion_confint(hits.sum(), len(hits), method="wilson")
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    race = result[(result["axis"] == "race") & (result["prompt_id"] != "all")]
    assert (race.groupby("prompt_id")["p_value"].first() < 0.01).all()  # B refuses more
    gender = result[(result["axis"] == "gender") & (result["prompt_id"] != "all")]
    assert (gender.groupby("prompt_id")["p_value"].first() > 0.01).all()


def test_pooled_refusal_rate_counts_images_and_resamples_them(tmp_path, generations):
    run_dir = write_run(tmp_path / "run", generations)
    analyze_run(run_dir, only=["refusal"])
    result = table(run_dir, "refusal")
    pattern = re.compile("|".join(f"(?:{p})" for p in DEFAULT_PATTERNS), re.IGNORECASE)
    valid = _valid(generations)
    refused = valid["generation"].map(lambda t: bool(pattern.search(t)))
    for race, hits in refused.groupby(valid["race"]):
        row = result[
            (result["prompt_id"] == "all") & (result["axis"] == "race") & (result["group"] == race)
        ].iloc[0]
        assert row["value"] == pytest.approx(hits.mean())
        assert row["observations"] == len(hits)
        assert row["n"] == valid.loc[valid["race"] == race, "sample_id"].nunique()
        assert row["ci_low"] <= row["value"] <= row["ci_high"]


def test_probe_refusal_patterns_replace_the_defaults(tmp_path, generations):
    custom = generations.copy()
    custom.loc[custom.index[::4], "generation"] = "Nope, not answering."
    run_dir = write_run(tmp_path / "run", custom, analysis={"refusal_patterns": [r"^nope\b"]})
    analyze_run(run_dir, only=["refusal"])
    overall = table(run_dir, "refusal")
    overall = overall[(overall["axis"] == "all") & (overall["prompt_id"] != "all")]
    valid = _valid(custom)
    expected = valid["generation"].str.startswith("Nope").groupby(valid["prompt_id"]).mean()
    for _, row in overall.iterrows():
        assert row["value"] == pytest.approx(expected[row["prompt_id"]])


def test_generation_statistics_per_group(tmp_path, generations):
    run_dir = write_run(tmp_path / "run", generations)
    analyze_run(run_dir, only=["generation_stats"])
    result = table(run_dir, "generation_stats")
    valid = _valid(generations)
    for (prompt_id, gender), rows in valid.groupby(["prompt_id", "gender"]):
        part = result[
            (result["prompt_id"] == prompt_id)
            & (result["axis"] == "gender")
            & (result["group"] == gender)
        ].set_index("metric")
        assert part.loc["mean_new_tokens", "value"] == pytest.approx(rows["n_new_tokens"].mean())
        assert part.loc["mean_new_tokens", "n"] == len(rows)
        assert part.loc["mean_new_tokens", "ci_low"] < part.loc["mean_new_tokens", "value"]
        share = rows["finish_reason"].eq("length").mean()
        assert part.loc["share_length", "value"] == pytest.approx(share)
        assert part.loc["share_eos", "value"] == pytest.approx(1 - share)
    for (prompt_id, race), rows in generations.groupby(["prompt_id", "race"]):
        row = result[
            (result["prompt_id"] == prompt_id)
            & (result["axis"] == "race")
            & (result["group"] == race)
            & (result["metric"] == "error_rate")
        ].iloc[0]
        assert row["value"] == pytest.approx(rows["finish_reason"].eq("error").mean())
        assert row["n"] == len(rows)
    assert np.isfinite(result.loc[result["note"] == "", ["value", "ci_low", "ci_high"]]).all().all()


def test_largest_gap_is_calibrated_and_as_powerful_as_the_range_test() -> None:
    """Under no difference the max-T permutation test rejects at most 5% (plus Monte Carlo
    error); with one group 30 points lower it finds it as often as a permutation test of the
    range would (measured: 0.71 vs 0.72 at 7 groups of 30), and its interval holds the true gap."""
    from audit.analyses.rates import UnitRates, largest_gap

    rng = np.random.default_rng(0)
    codes = np.repeat(np.arange(7), 30)
    groups = tuple(map(str, range(7)))
    null = found = covered = 0
    for _ in range(150):
        same = (rng.random(codes.size) < 0.7).astype(float)
        gap = largest_gap(UnitRates(same, np.ones(codes.size), codes, groups), 500, rng)
        null += gap.p_value < 0.05
        planted = (rng.random(codes.size) < np.where(codes == 0, 0.5, 0.8)).astype(float)
        gap = largest_gap(UnitRates(planted, np.ones(codes.size), codes, groups), 500, rng)
        found += gap.p_value < 0.05
        # The interval is for the gap between the two groups it names: 0.3 when the lowest is
        # the planted group 0, none between two groups of 0.8 (a wrong pick is not let off).
        true_rate = np.where(np.arange(7) == 0, 0.5, 0.8)
        truth = true_rate[gap.high] - true_rate[gap.low]
        covered += gap.interval[0] <= truth <= gap.interval[1]
        assert (gap.interval[0] > 0) == (gap.p_value < 0.05)
    assert null / 150 <= 0.08
    assert found / 150 >= 0.6
    assert covered / 150 >= 0.93
