"""The toxicity analysis on run directories written here, scored by real tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.proportion import proportion_confint

from audit.analyses.registry import AnalysisContext, analysis
from audit.demo.tiny_scorer import build_tiny_detoxify_checkpoint, build_tiny_toxicity_classifier
from audit.errors import ModelLoadError
from audit.scoring.toxicity import ScoringInput, read_scores, score_toxicity
from audit.spec import AnalysisSpec
from audit.store.tables import RunStore

TOXIC = ["you are a stupid idiot", "shut up you worthless fool", "what a dumb ugly moron"]
NEUTRAL = ["a kind nurse with a degree", "enjoys hiking and reading", "a friendly teacher"]
PROMPTS = ("resume", "arrest")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_toxicity_classifier(tmp_path_factory.mktemp("classifier"))


def generation_rows(n_images: int = 24, seed: int = 0) -> pd.DataFrame:
    """Two prompts per image; 'arrest' texts are toxic far more often for gender 'b'."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        gender, race = "ab"[i % 2], "xyz"[i % 3]
        for prompt in PROMPTS:
            toxic_rate = 0.8 if (prompt == "arrest" and gender == "b") else 0.15
            pool = TOXIC if rng.random() < toxic_rate else NEUTRAL
            rows.append(
                {
                    "sample_id": f"img{i:03d}",
                    "prompt_id": prompt,
                    "model_id": "tiny",
                    "gender": gender,
                    "race": race,
                    "prompt": f"Write the {prompt}.",
                    "generation": str(rng.choice(pool)),
                    "n_new_tokens": 5,
                    "finish_reason": "eos",
                    "error": None,
                }
            )
    return pd.DataFrame(rows)


def write_run(root: Path, rows: pd.DataFrame, scorer: str, **toxicity: Any) -> RunStore:
    store = RunStore(root)
    analysis = {
        "toxicity": {"scorer": scorer, **toxicity},
        "n_bootstrap": 400,
        "n_permutations": 400,
        "seed": 3,
    }
    store.write_manifest(
        {
            "run_id": root.name,
            "group_axes": ["gender", "race"],
            "status": "complete",
            "probe": {"name": "tox", "analysis": analysis},
            "prompts": [{"id": p, "text": f"Write the {p}."} for p in PROMPTS],
            "tasks": [],
            "expected": {"generations": len(rows)},
            "rows": {"generations": len(rows)},
        }
    )
    store.append("generations", rows)
    return store


def run_toxicity(store: RunStore) -> pd.DataFrame:
    """The scoring stage, then the toxicity analysis of its table."""
    manifest = store.manifest()
    settings = AnalysisSpec.model_validate(manifest.probe["analysis"])
    context = AnalysisContext(store, manifest, settings)
    score_toxicity(ScoringInput(store, manifest, context.generations, settings.toxicity))
    return analysis("toxicity").run(context)


def test_per_group_values_match_an_independent_recomputation(
    tmp_path: Path, classifier: Path
) -> None:
    rows = generation_rows()
    errors = rows.index[:3]
    rows.loc[errors, ["generation", "finish_reason", "error"]] = [None, "error", "boom"]
    store = write_run(tmp_path / "run", rows, f"transformers:{classifier}", threshold=0.5)
    table = run_toxicity(store)

    cache = read_scores(store)
    ok = rows.drop(index=errors)
    assert len(cache) == len(ok)  # every successful generation once, no error row
    assert not cache.duplicated(["sample_id", "prompt_id", "scorer"]).any()
    scored = ok.merge(cache, on=["sample_id", "prompt_id"])
    for (prompt, axis, group), expected in _oracle_groups(scored).items():
        got = table[(table.prompt_id == prompt) & (table.axis == axis) & (table.group == group)]
        mean = got[got.metric == "mean_toxic"].iloc[0]
        share = got[got.metric == "share_toxic_above_threshold"].iloc[0]
        assert mean.n == share.n == len(expected)
        assert mean.value == pytest.approx(expected.mean())
        assert mean.ci_low <= mean.value <= mean.ci_high
        above = int((expected > 0.5).sum())
        assert share.value == pytest.approx(above / len(expected))
        low, high = proportion_confint(above, len(expected), method="wilson")
        assert (share.ci_low, share.ci_high) == (pytest.approx(low), pytest.approx(high))
    assert set(table.columns) >= {
        "prompt_id",
        "axis",
        "group",
        "metric",
        "value",
        "ci_low",
        "ci_high",
        "n",
        "note",
        "scorer",
        "label",
        "p_value",
    }


def _oracle_groups(scored: pd.DataFrame) -> dict[tuple[str, str, str], np.ndarray]:
    expected = {}
    for prompt in PROMPTS:
        mask = scored.prompt_id == prompt
        expected[(prompt, "all", "all")] = scored.loc[mask, "toxic"].to_numpy()
        for axis in ("gender", "race"):
            for group in scored[axis].unique():
                subset = mask & (scored[axis] == group)
                expected[(prompt, axis, group)] = scored.loc[subset, "toxic"].to_numpy()
    return expected


def test_a_planted_gap_is_found_and_no_gap_is_not(tmp_path: Path, classifier: Path) -> None:
    rows = generation_rows(n_images=40, seed=1)
    table = run_toxicity(write_run(tmp_path / "run", rows, f"transformers:{classifier}"))
    gaps = table[table.metric == "gap_mean_toxic"].set_index(["prompt_id", "axis"])
    scores = read_scores(RunStore(tmp_path / "run")).merge(rows, on=["sample_id", "prompt_id"])
    arrest = scores[scores.prompt_id == "arrest"].groupby("gender")["toxic"].mean()
    planted = gaps.loc[("arrest", "gender")]
    assert (planted.group_high, planted.group_low) == ("b", "a")
    assert planted.value == pytest.approx(arrest["b"] - arrest["a"])
    assert planted.p_value < 0.01 and planted.ci_low > 0
    assert gaps.loc[("resume", "gender")].p_value > 0.05


def test_scores_are_cached_and_only_new_rows_scored(tmp_path: Path, classifier: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(classifier, model)
    rows = generation_rows(n_images=12)
    store = write_run(tmp_path / "run", rows[rows.sample_id < "img008"], f"transformers:{model}")
    first = run_toxicity(store)
    cached = read_scores(store)
    shutil.rmtree(model)  # nothing new to score: the model must not even be loaded
    pd.testing.assert_frame_equal(run_toxicity(store), first)
    pd.testing.assert_frame_equal(read_scores(store), cached)
    store.append("generations", rows[rows.sample_id >= "img008"])
    with pytest.raises(ModelLoadError):  # now there is something to score
        run_toxicity(store)
    shutil.copytree(classifier, model)
    run_toxicity(store)
    grown = read_scores(store)
    assert len(grown) == len(rows)
    pd.testing.assert_frame_equal(grown.iloc[: len(cached)], cached)


def test_two_scorers_share_one_cache(tmp_path: Path, classifier: Path) -> None:
    detox = build_tiny_detoxify_checkpoint(tmp_path / "detox")
    rows = generation_rows(n_images=6)
    store = write_run(tmp_path / "run", rows, f"transformers:{classifier}")
    run_toxicity(store)
    store.update_manifest(
        probe={
            "name": "tox",
            "analysis": {
                "toxicity": {
                    "scorer": f"detoxify:{detox.checkpoint}",
                    "huggingface_config_path": str(detox.config_path),
                },
                "n_bootstrap": 200,
            },
        }
    )
    table = run_toxicity(store)
    cache = read_scores(store)
    assert cache.groupby("scorer").size().tolist() == [len(rows), len(rows)]
    assert set(table.label) == {
        "toxicity",
        "severe_toxicity",
        "obscene",
        "threat",
        "insult",
        "identity_attack",
    }
    assert set(table.scorer) == {f"detoxify:{detox.checkpoint}"}


def test_small_groups_are_marked_not_shown_as_numbers(tmp_path: Path, classifier: Path) -> None:
    rows = generation_rows(n_images=20)
    rows.loc[rows.sample_id == "img006", "race"] = "lonely"
    failed = rows.sample_id == "img007"
    rows.loc[failed, "race"] = "all-failed"
    rows.loc[failed, ["generation", "finish_reason", "error"]] = [None, "error", "oom"]
    table = run_toxicity(write_run(tmp_path / "run", rows, f"transformers:{classifier}"))
    for group, n in (("lonely", 1), ("all-failed", 0)):
        rows_of_group = table[table.group == group]
        assert len(rows_of_group) == 2 * len(PROMPTS)  # mean and share, per prompt
        assert (rows_of_group.note == "insufficient data").all()
        assert rows_of_group.value.isna().all() and (rows_of_group.n == n).all()
    assert table[table.note == ""].value.notna().all()
    assert table[table.metric == "gap_mean_toxic"].note.eq("").all()  # x, y, z are enough


def test_row_order_does_not_change_the_table(tmp_path: Path, classifier: Path) -> None:
    rows = generation_rows(n_images=16)
    first = run_toxicity(write_run(tmp_path / "a", rows, f"transformers:{classifier}"))
    shuffled = rows.sample(frac=1.0, random_state=5).reset_index(drop=True)
    second = run_toxicity(write_run(tmp_path / "b", shuffled, f"transformers:{classifier}"))
    pd.testing.assert_frame_equal(first, second, check_exact=False, atol=1e-6)


def test_headline_findings_name_the_gap_with_its_test(tmp_path: Path, classifier: Path) -> None:
    from audit.analyses.findings import findings_for

    rows = generation_rows(n_images=40, seed=1)
    table = run_toxicity(write_run(tmp_path / "run", rows, f"transformers:{classifier}"))
    gaps = table[table.metric == "gap_mean_toxic"]
    assert gaps.q_value.between(gaps.p_value, 1).all()
    found = {(f["prompt_id"], f["axis"]): f for f in findings_for(analysis("toxicity"), table)}
    planted = found[("arrest", "gender")]
    assert planted["p_value"] < 0.01 and planted["n"] == 40
    assert planted["headline"].startswith("arrest, gender: mean toxic b minus a:")


def test_scoring_in_chunks_gives_the_same_cache(
    tmp_path: Path, classifier: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import audit.scoring.toxicity as toxicity

    rows = generation_rows(n_images=10)
    whole = write_run(tmp_path / "whole", rows, f"transformers:{classifier}", batch_size=4)
    run_toxicity(whole)
    monkeypatch.setattr(toxicity, "CHUNK_TEXTS", 4)
    chunked = write_run(tmp_path / "chunked", rows, f"transformers:{classifier}", batch_size=4)
    run_toxicity(chunked)
    pd.testing.assert_frame_equal(read_scores(chunked), read_scores(whole), atol=1e-6)


def test_a_prompt_whose_generations_all_failed_is_reported_empty(
    tmp_path: Path, classifier: Path
) -> None:
    rows = generation_rows(n_images=10)
    arrest = rows.prompt_id == "arrest"
    rows.loc[arrest, ["generation", "finish_reason", "error"]] = [None, "error", "timeout"]
    table = run_toxicity(write_run(tmp_path / "run", rows, f"transformers:{classifier}"))
    failed = table[table.prompt_id == "arrest"]
    assert len(failed) and (failed.note == "insufficient data").all()
    assert (failed[failed.metric == "mean_toxic"].n == 0).all()
    assert table[table.prompt_id == "resume"].value.notna().any()
