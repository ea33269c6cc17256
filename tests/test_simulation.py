"""Statistics you can trust, shown on simulated data with a known truth.

(a) no group effect: on average at most 5% of flagged terms are false discoveries;
(b) planted terms at the stated effect size and n: at least 90% are found;
Wilson and cluster-bootstrap intervals cover close to 95%.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from audit.analyses import analyze_run
from audit.analyses.grouping import GroupAxis
from audit.analyses.stats import bootstrap_ratios, percentile_interval, wilson_interval
from audit.analyses.term_statistics import score_terms, vectorize
from audit.ingest.simulate import (
    REFUSAL_TEXT,
    PlantedTerm,
    Simulation,
    demo_simulation,
    simulate_classifications,
    simulate_generations,
    write_simulated_run,
)
from audit.spec import TfidfSpec, parse_probe

AXES = {"gender": ("Male", "Female"), "race": ("A", "B", "C", "D")}


def _flags(simulation: Simulation, axis: str, permutations: int = 1000) -> tuple[set, set]:
    """(flagged terms, tested terms) for the simulation's only prompt and ``axis``."""
    frame = simulate_generations(simulation)
    matrix, terms = vectorize(frame["generation"].tolist(), TfidfSpec(), [])
    codes = GroupAxis(axis, simulation.axes[axis]).codes(frame)
    rng = np.random.default_rng([simulation.seed, 99])
    scores = score_terms(matrix, terms, codes, permutations, rng)
    flagged = set(terms[scores.q_values < 0.05])
    return flagged, set(terms[~np.isnan(scores.p_values)])


def test_null_world_false_discoveries_at_most_five_percent():
    proportions = []
    for seed in range(40):
        simulation = Simulation(
            n_images=120,
            axes=AXES,
            prompts=("p",),
            vocabulary_size=250,
            words_per_generation=20,
            seed=seed,
        )
        for axis in AXES:
            flagged, tested = _flags(simulation, axis)
            assert len(tested) >= 50
            proportions.append(1.0 if flagged else 0.0)  # every flag is false here
    assert np.mean(proportions) <= 0.05


def test_planted_terms_are_found_and_few_others_flagged():
    planted = (
        PlantedTerm("umbrella", "gender", "Female", rate=0.30, base_rate=0.10),
        PlantedTerm("lantern", "gender", "Male", rate=0.30, base_rate=0.10),
        PlantedTerm("bicycle", "race", "A", rate=0.40, base_rate=0.10),
        PlantedTerm("kettle", "race", "C", rate=0.40, base_rate=0.10),
    )
    found, false_share = [], []
    for seed in range(8):
        simulation = Simulation(
            n_images=480,
            axes=AXES,
            prompts=("p",),
            vocabulary_size=300,
            words_per_generation=20,
            planted_terms=planted,
            seed=seed,
        )
        for axis in AXES:
            flagged, _ = _flags(simulation, axis)
            truth = {p.term for p in planted if p.axis == axis}
            found += [term in flagged for term in truth]
            false_share.append(len(flagged - truth) / max(len(flagged), 1))
    assert np.mean(found) >= 0.9
    assert np.mean(false_share) <= 0.05


def test_wilson_intervals_cover_95_percent():
    rng = np.random.default_rng(0)
    for n, p in ((40, 0.1), (100, 0.5), (400, 0.8)):
        successes = rng.binomial(n, p, size=20000)
        low, high = wilson_interval(successes, np.full(20000, n))
        coverage = ((low <= p) & (p <= high)).mean()
        assert 0.93 <= coverage <= 0.975, (n, p, coverage)


def test_cluster_bootstrap_covers_where_row_bootstrap_does_not():
    """Each image answers 3 prompts and some images make the model refuse more (an image
    effect): resampling images covers the true rate; resampling rows ignores the clustering."""
    rng = np.random.default_rng(1)
    true_rate, n_images, prompts = 0.3, 150, 3
    covered_images, covered_rows = [], []
    for _ in range(200):
        propensity = rng.beta(0.6, 1.4, size=n_images)  # mean 0.3, strong image effect
        outcomes = rng.random((n_images, prompts)) < propensity[:, None]
        per_image = outcomes.sum(axis=1).astype(float)
        replicates = bootstrap_ratios(
            per_image, np.full(n_images, prompts), np.zeros(n_images, int), 400, rng
        )[:, 0, :]
        low, high = percentile_interval(replicates)
        covered_images.append(low[0] <= true_rate <= high[0])
        rows = outcomes.ravel().astype(float)
        naive = bootstrap_ratios(rows, np.ones(rows.size), np.zeros(rows.size, int), 400, rng)[
            :, 0, :
        ]
        low, high = percentile_interval(naive)
        covered_rows.append(low[0] <= true_rate <= high[0])
    assert 0.90 <= np.mean(covered_images) <= 0.99
    assert np.mean(covered_rows) < np.mean(covered_images) - 0.05


def test_simulated_tables_follow_the_contract_and_are_balanced():
    simulation = Simulation(
        n_images=140, error_rate=0.1, refusal_rate=0.2, classification_axes=("gender",), seed=3
    )
    generations = simulate_generations(simulation)
    assert list(generations.columns[:3]) == ["sample_id", "prompt_id", "model_id"]
    assert {
        "gender",
        "race",
        "prompt",
        "generation",
        "n_new_tokens",
        "finish_reason",
        "error",
    } <= set(generations.columns)
    assert len(generations) == 140 * 3
    failed = generations["finish_reason"].eq("error")
    assert failed.any() and generations.loc[failed, "error"].notna().all()
    assert generations.loc[~failed, "error"].isna().all()
    assert generations["generation"].eq(REFUSAL_TEXT).any()
    cells = generations.drop_duplicates("sample_id").groupby(["gender", "race"]).size()
    assert cells.min() == cells.max() == 10
    classifications = simulate_classifications(simulation)
    scores = classifications[["score_Male", "score_Female"]].to_numpy()
    best = np.where(scores.argmax(axis=1) == 0, "Male", "Female")
    assert (best == classifications["prediction"]).all()
    assert abs(classifications["correct"].mean() - simulation.accuracy) < 0.1


def test_simulated_run_is_labelled_and_recovers_exactly_what_was_planted(tmp_path):
    run_dir = write_simulated_run(tmp_path / "simulated", seed=0)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["simulated"] is True and "SIMULATED" in manifest["probe"]["description"]
    parse_probe(manifest["probe"], "manifest", run_dir)  # a valid probe for every reader
    analyze_run(run_dir, only=["term_variance", "refusal", "classification"])
    terms = pd.read_parquet(run_dir / "analysis" / "term_variance.parquet")
    flagged = terms[terms["flagged"].fillna(False).astype(bool)]
    for item in demo_simulation(0).planted_terms:
        prompts = [item.prompt_id] if item.prompt_id else ["describe", "occupation", "story"]
        for prompt_id in prompts:
            rows = flagged[
                (flagged["prompt_id"] == prompt_id)
                & (flagged["axis"] == item.axis)
                & (flagged["term"] == item.term)
            ]
            assert not rows.empty, (item, prompt_id)
            assert rows.loc[rows["value"].idxmax(), "group"] == item.group
    # Planted refusals are real associations too: their words are more frequent for that group.
    truth = {(p.axis, p.term) for p in demo_simulation(0).planted_terms}
    truth |= {("race", word) for word in ("sorry", "determine", "image")}
    found = set(zip(flagged["prompt_id"], flagged["axis"], flagged["term"], strict=True))
    false = [item for item in found if item[1:] not in truth]
    assert len(false) / len(found) <= 0.1, false  # FDR is controlled at 5% on average
    summary = json.loads((run_dir / "analysis" / "summary.json").read_text())
    assert summary["simulated"] is True
    refusal = pd.read_parquet(run_dir / "analysis" / "refusal.parquet")
    race_rows = refusal[(refusal["prompt_id"] == "all") & (refusal["axis"] == "race")]
    assert race_rows.loc[race_rows["value"].idxmax(), "group"] == "Indian"
    assert race_rows["p_value"].iloc[0] < 0.01
    accuracy = pd.read_parquet(run_dir / "analysis" / "classification.parquet")
    gap = accuracy[(accuracy["metric"] == "accuracy_gap") & (accuracy["axis"] == "race")]
    assert set(gap["worst_group"]) == {"Southeast Asian"}
