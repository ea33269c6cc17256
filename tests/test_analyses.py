"""``analyze_run`` and ``audit analyze``: invariances, error rows, partial runs, bad input.

Run directories are written directly with ``RunStore``; the helpers here are shared by the other
``test_analyses_*`` files.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.analyses import analyze_run
from audit.cli import app
from audit.errors import AuditError
from audit.ingest.simulate import PlantedRate, PlantedTerm, Simulation, simulate_generations
from audit.store.tables import RunStore

AXES = {"gender": ("Male", "Female"), "race": ("A", "B", "C")}
FAST = {"n_permutations": 200, "n_bootstrap": 200, "seed": 0}
GENERATION_ANALYSES = ["term_variance", "refusal", "generation_stats", "leakage"]
ALL_MINE = [*GENERATION_ANALYSES, "classification", "confusion"]


def write_run(
    root: Path,
    generations: pd.DataFrame | None = None,
    classifications: pd.DataFrame | None = None,
    *,
    parts: int = 1,
    status: str = "complete",
    expected: dict[str, int] | None = None,
    analysis: dict[str, Any] | None = None,
    axes: tuple[str, ...] = ("gender", "race"),
    tasks: list[dict[str, Any]] | None = None,
) -> Path:
    """A run directory holding these tables (split into ``parts`` parts) and a manifest."""
    store = RunStore(root)
    store.clear()
    for frame, table in ((generations, "generations"), (classifications, "classifications")):
        if frame is not None and len(frame):
            for piece in np.array_split(np.arange(len(frame)), parts):
                store.append(table, frame.iloc[piece])
    prompts = [] if generations is None else sorted(generations["prompt_id"].unique())
    counts = {
        "generations": 0 if generations is None else len(generations),
        "classifications": 0 if classifications is None else len(classifications),
    }
    store.write_manifest(
        {
            "run_id": root.name,
            "probe": {"name": "test", "analysis": {**FAST, **(analysis or {})}},
            "group_axes": list(axes),
            "prompts": [{"id": p, "text": f"prompt {p}"} for p in prompts],
            "tasks": tasks or [],
            "status": status,
            "expected": expected or counts,
            "rows": counts,
        }
    )
    return store.root


def small_generations(seed: int = 0, n_images: int = 90, **options: Any) -> pd.DataFrame:
    """Simulated generations: 2 prompts, gender x race (3 values), a planted term."""
    defaults: dict[str, Any] = {
        "planted_terms": (PlantedTerm("umbrella", "gender", "Female", 0.6, 0.1),),
        "planted_refusals": (PlantedRate("race", "B", 0.4),),
        "refusal_rate": 0.05,
        "error_rate": 0.05,
    }
    simulation = Simulation(
        n_images=n_images,
        axes=AXES,
        prompts=("p1", "p2"),
        vocabulary_size=200,
        words_per_generation=15,
        seed=seed,
        **{**defaults, **options},
    )
    return simulate_generations(simulation)


def table(run_dir: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "analysis" / f"{name}.parquet")


def canonical(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted on every comparable column, for order-independent comparison."""
    keys = [c for c in frame.columns if c != "example_ids"]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def strict_json(path: Path) -> dict[str, Any]:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{path} holds {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture(scope="module")
def generations() -> pd.DataFrame:
    return small_generations()


def test_results_do_not_depend_on_row_order_or_parts(tmp_path, generations):
    first = write_run(tmp_path / "ordered", generations)
    shuffled = generations.sample(frac=1.0, random_state=3).reset_index(drop=True)
    second = write_run(tmp_path / "shuffled", shuffled, parts=3)
    analyze_run(first, only=GENERATION_ANALYSES)
    analyze_run(second, only=GENERATION_ANALYSES)
    for name in [*GENERATION_ANALYSES, "term_examples"]:
        pd.testing.assert_frame_equal(canonical(table(first, name)), canonical(table(second, name)))


def test_relabelling_groups_relabels_the_results_and_nothing_else(tmp_path, generations):
    names = {"Male": "man", "Female": "woman", "A": "x", "B": "y", "C": "z"}
    relabelled = generations.assign(
        gender=generations["gender"].map(names), race=generations["race"].map(names)
    )
    first = write_run(tmp_path / "original", generations)
    second = write_run(tmp_path / "relabelled", relabelled)
    analyze_run(first, only=GENERATION_ANALYSES)
    analyze_run(second, only=GENERATION_ANALYSES)
    for name in GENERATION_ANALYSES:
        expected = table(first, name)
        expected["group"] = expected["group"].map(lambda g: names.get(g, g))
        pd.testing.assert_frame_equal(canonical(expected), canonical(table(second, name)))


def test_error_rows_are_counted_and_never_mixed_in(tmp_path, generations):
    broken = generations.copy()
    failed = broken.index[:12]
    broken.loc[failed, "generation"] = "zzpartial zzpartial I'm sorry"
    broken.loc[failed, "finish_reason"] = "error"
    broken.loc[failed, "error"] = "CUDA out of memory"
    run_dir = write_run(tmp_path / "run", broken)
    analyze_run(run_dir, only=GENERATION_ANALYSES)
    summary = strict_json(run_dir / "analysis" / "summary.json")
    expected_errors = int(broken["finish_reason"].eq("error").sum())
    assert summary["excluded_error_rows"]["generations"] == expected_errors
    assert "zzpartial" not in set(table(run_dir, "term_variance")["term"].dropna())
    refusal = table(run_dir, "refusal")
    for prompt_id, rows in broken.groupby("prompt_id"):
        valid = rows[rows["finish_reason"] != "error"]
        overall = refusal[(refusal["prompt_id"] == prompt_id) & (refusal["axis"] == "all")]
        assert overall["observations"].iloc[0] == len(valid)
        stats = table(run_dir, "generation_stats")
        errors = stats[
            (stats["prompt_id"] == prompt_id)
            & (stats["axis"] == "all")
            & (stats["metric"] == "error_rate")
        ]
        assert errors["value"].iloc[0] == pytest.approx(rows["finish_reason"].eq("error").mean())
        assert errors["n"].iloc[0] == len(rows)


def test_groups_with_zero_or_few_rows_are_insufficient_data_never_nan(tmp_path, generations):
    frame = generations.copy()
    only_errors = (frame["race"] == "C") & (frame["prompt_id"] == "p1")
    frame.loc[only_errors, ["finish_reason", "error"]] = ["error", "timeout"]
    few = frame[(frame["gender"] == "Female") & (frame["prompt_id"] == "p2")].index[3:]
    frame = frame.drop(few)  # 3 Female images left for p2: too few
    run_dir = write_run(tmp_path / "run", frame)
    text = analyze_run(run_dir, only=GENERATION_ANALYSES).describe()
    assert "nan" not in text.lower()
    for name in GENERATION_ANALYSES:
        result = table(run_dir, name)
        zero = result[
            (result["prompt_id"] == "p1")
            & (result["group"] == "C")
            & (result["metric"] != "error_rate")
        ]
        small = result[
            (result["prompt_id"] == "p2")
            & (result["group"] == "Female")
            & (result["metric"] != "error_rate")
        ]
        for rows in (zero, small):
            assert len(rows), name
            assert rows["value"].isna().all() and (rows["note"] == "insufficient data").all()
        estimated = result[result["note"] == ""]
        assert estimated["value"].notna().all(), name
    strict_json(run_dir / "analysis" / "summary.json")


def test_a_partial_run_is_analysed_as_far_as_it_goes(tmp_path, generations):
    run_dir = write_run(
        tmp_path / "run",
        generations.iloc[:150],
        status="partial",
        expected={"generations": len(generations), "classifications": 0},
    )
    result = analyze_run(run_dir, only=["refusal", "generation_stats"])
    assert result.summary["status"] == "partial"
    assert f"150 of {len(generations)} generations" in result.summary["status_detail"]
    assert "PARTIAL" in result.describe()
    assert table(run_dir, "refusal")["n"].max() <= 150


def test_analyze_is_idempotent_and_keeps_earlier_analyses_in_the_summary(tmp_path, generations):
    run_dir = write_run(tmp_path / "run", generations)
    analyze_run(run_dir, only=GENERATION_ANALYSES)
    first = {name: table(run_dir, name) for name in GENERATION_ANALYSES}
    summary = strict_json(run_dir / "analysis" / "summary.json")
    analyze_run(run_dir, only=GENERATION_ANALYSES)
    for name, frame in first.items():
        pd.testing.assert_frame_equal(frame, table(run_dir, name))
    assert strict_json(run_dir / "analysis" / "summary.json") == summary
    analyze_run(run_dir, only=["refusal"])
    again = strict_json(run_dir / "analysis" / "summary.json")
    assert set(again["analyses"]) >= {"term_variance", "leakage", "refusal"}
    assert {f["analysis"] for f in again["findings"]} >= {"term_variance", "refusal"}


def test_summary_findings_carry_n_and_interval(tmp_path, generations):
    run_dir = write_run(tmp_path / "run", generations)
    analyze_run(run_dir, only=GENERATION_ANALYSES)
    summary = strict_json(run_dir / "analysis" / "summary.json")
    assert summary["status"] == "complete"
    assert {f["analysis"] for f in summary["findings"]} == set(GENERATION_ANALYSES)
    for found in summary["findings"]:
        assert found["n"] > 0 and found["headline"]
        assert {"value", "ci_low", "ci_high", "p_value", "q_value", "prompt_id"} <= set(found)
        if found["value"] is not None and found["ci_low"] is not None:
            assert found["ci_low"] <= found["value"] + 1e-12


def test_unknown_analysis_name_lists_the_known_ones(tmp_path, generations):
    run_dir = write_run(tmp_path / "run", generations)
    with pytest.raises(AuditError, match="known analyses: .*term_variance"):
        analyze_run(run_dir, only=["term_varianse"])
    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--only", "nope"])
    assert result.exit_code == 2
    assert "unknown analysis 'nope'" in result.output and "Traceback" not in result.output


def test_cli_analyzes_and_says_where_the_files_are(tmp_path, generations):
    run_dir = write_run(tmp_path / "run", generations)
    result = CliRunner().invoke(
        app, ["analyze", str(run_dir), "--only", "refusal", "--only", "generation_stats"]
    )
    assert result.exit_code == 0, result.output
    assert str(run_dir / "analysis" / "refusal.parquet") in result.output
    assert "summary.json" in result.output and "findings" in result.output
    assert not (run_dir / "analysis" / "term_variance.parquet").exists()


@pytest.mark.parametrize("make", ["missing", "not_a_run", "empty"])
def test_bad_run_directories_exit_2_with_a_message(tmp_path, make):
    target = tmp_path / "target"
    if make == "not_a_run":
        target.mkdir()
    elif make == "empty":
        write_run(target)
    result = CliRunner().invoke(app, ["analyze", str(target), "--only", "refusal"])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output
    if make == "empty":
        assert "no generations or classifications" in result.output


def test_a_failing_analysis_is_reported_and_the_others_are_written(tmp_path, generations):
    run_dir = write_run(tmp_path / "run", generations, analysis={"refusal_patterns": ["(unclosed"]})
    result = analyze_run(run_dir, only=["refusal", "generation_stats"])
    assert result.exit_code == 3
    assert "probe.analysis.refusal_patterns[0]" in result.failures["refusal"]
    assert (run_dir / "analysis" / "generation_stats.parquet").exists()
    summary = strict_json(run_dir / "analysis" / "summary.json")
    assert summary["analyses"]["refusal"]["note"].startswith("failed:")
    assert summary["analyses"]["refusal"]["status"] == "failed"
    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--only", "refusal"])
    assert result.exit_code == 2 and "not a valid regular expression" in result.output
    # Partly failed: the summary of what was written is output, not an error; exit 3.
    result = CliRunner().invoke(
        app, ["analyze", str(run_dir), "--only", "refusal", "--only", "generation_stats"]
    )
    assert result.exit_code == 3, result.output
    assert "generation_stats" in result.stdout and "error:" not in result.output
    assert "refusal: FAILED" not in result.output and "FAILED" in result.stdout
    assert "partial: 1 of 2 analyses could not run (refusal)" in result.output


def test_an_analysis_that_raises_is_recorded_and_the_others_finish(
    tmp_path, generations, monkeypatch
):
    from audit.analyses import registry

    def broken(context):
        raise TypeError("Cannot cast array data from dtype('O') to dtype('int64')")

    real = registry.analyses()
    patched = tuple(dataclasses.replace(a, run=broken) if a.name == "refusal" else a for a in real)
    monkeypatch.setattr("audit.analyses.pipeline.analyses", lambda: patched)
    run_dir = write_run(tmp_path / "run", generations)
    result = analyze_run(run_dir, only=["term_variance", "refusal", "generation_stats"])
    assert result.exit_code == 3 and list(result.failures) == ["refusal"]
    summary = strict_json(run_dir / "analysis" / "summary.json")
    entry = summary["analyses"]["refusal"]
    assert entry["status"] == "failed" and "TypeError: Cannot cast" in entry["note"]
    assert "Traceback" in entry["traceback"]
    for other in ("generation_stats", "term_variance"):
        assert other in summary["analyses"] and summary["analyses"][other].get("status") != "failed"


def test_a_pattern_that_backtracks_without_end_is_stopped(tmp_path, generations):
    # '(a|a)*$' on 40 a's and a 'b' takes 2**40 steps in a backtracking engine.
    texts = generations["generation"].astype(str).tolist()
    generations = generations.assign(generation=["a" * 40 + "b " + str(t) for t in texts])
    run_dir = write_run(tmp_path / "run", generations, analysis={"refusal_patterns": ["(a|a)*$"]})
    # Refused before it runs (a run of it would not end: the per-test timeout would fail it).
    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--only", "refusal"])
    assert result.exit_code == 2 and "nested repetition" in result.output, result.output
    assert "refusal_patterns" in result.output and "Traceback" not in result.output


def test_invalid_analysis_settings_name_the_manifest_key(tmp_path, generations):
    run_dir = write_run(tmp_path / "run", generations, analysis={"n_permutations": 5})
    with pytest.raises(AuditError, match=r"manifest\.json: probe\.analysis\.n_permutations"):
        analyze_run(run_dir, only=["refusal"])


def test_model_text_is_shown_inert_in_the_terminal(tmp_path, generations):
    hostile = generations.copy()
    hostile["generation"] = hostile["generation"] + " \x1b[31mred\x1b[0m"
    run_dir = write_run(tmp_path / "run", hostile)
    text = analyze_run(run_dir, only=["term_variance"]).describe()
    assert "\x1b" not in text


def test_settings_can_be_changed_for_one_analysis_without_editing_the_manifest(
    tmp_path, generations
):
    run_dir = write_run(tmp_path / "run", generations)
    manifest = (run_dir / "manifest.json").read_text()
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(run_dir),
            "--only",
            "term_variance",
            "--only",
            "refusal",
            "--set",
            "tfidf.top_k=3",
            "--set",
            "refusal_patterns=[umbrella]",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (run_dir / "manifest.json").read_text() == manifest
    summary = strict_json(run_dir / "analysis" / "summary.json")
    assert summary["settings_overrides"] == ["tfidf.top_k=3", "refusal_patterns=[umbrella]"]
    assert summary["settings"]["tfidf"]["top_k"] == 3
    assert summary["settings"]["refusal_patterns"] == ["umbrella"]
    assert summary["settings"]["n_permutations"] == FAST["n_permutations"]  # from the probe
    terms = table(run_dir, "term_variance")
    flagged = terms["q_value"] < 0.05
    # Reported: the 3 best ranked terms per prompt and axis, then only flagged ones.
    assert terms.loc[~flagged, "rank"].max() <= 3
    assert terms["rank"].min() == 1
    refusal = table(run_dir, "refusal")
    rates = refusal[(refusal["metric"] == "refusal_rate") & (refusal["axis"] == "all")]
    # "umbrella", the planted term, now counts as a refusal: no longer the default patterns'.
    assert rates["value"].max() > 0.2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("n_permutations", "--set n_permutations: expected KEY=VALUE"),
        ("tfidf.top_kk=3", "--set: tfidf.top_kk: unknown key"),
        ("n_permutations=many", "--set: n_permutations: Input should be a valid integer"),
    ],
)
def test_a_bad_setting_is_a_clear_error(tmp_path, generations, override, message):
    run_dir = write_run(tmp_path / "run", generations)
    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--set", override])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in result.output


def test_every_analysis_table_names_its_prompt_or_task_in_one_column(tiny_run: Path) -> None:
    from audit.analyses.registry import analysis_tables

    store = RunStore(tiny_run)
    manifest = store.manifest()
    seen = set()
    for name in analysis_tables():
        frame = store.analysis_if_present(name)
        if frame is None or frame.empty:
            continue
        seen.add(name)
        assert "prompt_id" in frame.columns, name
        assert not {"task_id", "item"} & set(frame.columns), name
    assert {"classification", "confusion", "term_variance", "refusal"} <= seen
    classification = store.read_analysis("classification")
    assert set(classification["prompt_id"]) == set(manifest.task_ids())
    findings = store.read_summary()["findings"]
    assert findings and all("task_id" not in f for f in findings)
    assert {f["prompt_id"] for f in findings if f["analysis"] == "classification"} <= set(
        manifest.task_ids()
    )
