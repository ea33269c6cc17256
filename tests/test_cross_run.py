"""The paired comparison of two runs is an analysis result: ``audit analyze B --against A``
stores it, and the report and the dashboard read the same numbers (stored, or computed again
with the same settings when a run changed)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from audit.analyses.cross_run import compare_runs
from audit.cli import app
from audit.dashboard.launch import RUN_DIRS_ENV, app_entry, run_dirs_env
from audit.ingest.simulate import write_simulated_run
from audit.report.formatting import format_interval
from audit.store.tables import RunStore


@pytest.fixture
def runs(tmp_path: Path) -> tuple[RunStore, RunStore]:
    """Two simulated runs of the same samples (different seeds: different answers)."""
    a = RunStore(write_simulated_run(tmp_path / "run-a", seed=0))
    b = RunStore(write_simulated_run(tmp_path / "run-b", seed=1))
    for store in (a, b):
        result = CliRunner().invoke(app, ["analyze", str(store.root), "--only", "classification"])
        assert result.exit_code == 0, result.output
    return a, b


def test_analyze_against_stores_the_comparison_and_both_readers_use_it(
    runs: tuple[RunStore, RunStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = runs
    args = ["analyze", str(b.root), "--only", "classification", "--against", str(a.root)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"paired comparison with {a.root}" in result.output
    comparison = compare_runs(a, b)
    assert comparison.stored and len(comparison.table) > 0
    assert set(comparison.table["test"]) >= {"mcnemar"}

    # The report states how the numbers were made and shows the stored intervals.
    result = CliRunner().invoke(app, ["report", str(a.root), str(b.root), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    markdown = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "stored by 'audit analyze B --against A'" in markdown
    assert f"{comparison.n_resamples} bootstrap resamples over images" in markdown

    # The dashboard shows the same rows, with the same intervals.
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env([a.root, b.root]))
    page = AppTest.from_file(str(app_entry()), default_timeout=60).run()
    page.switch_page("pages/6_Compare_runs.py").run()
    assert not page.exception and not page.error
    assert any("stored by" in c.value for c in page.caption)
    shown = page.dataframe[-1].value
    table = comparison.table
    expected = [
        format_interval(lo, hi, percent=str(m).startswith("accuracy"))
        for lo, hi, m in zip(table["ci_low"], table["ci_high"], table["metric"], strict=True)
    ]
    assert sorted(shown["95% CI"]) == sorted(expected)


def test_a_stale_comparison_is_computed_again_to_the_same_numbers(
    runs: tuple[RunStore, RunStore],
) -> None:
    a, b = runs
    args = ["analyze", str(b.root), "--only", "classification", "--against", str(a.root)]
    assert CliRunner().invoke(app, args).exit_code == 0
    stored = compare_runs(a, b)
    assert (
        CliRunner().invoke(app, ["analyze", str(a.root), "--only", "classification"]).exit_code == 0
    )
    again = compare_runs(a, b)
    assert stored.stored and not again.stored
    pd.testing.assert_frame_equal(again.table, stored.table, check_dtype=False)


def test_a_run_is_not_compared_with_itself(runs: tuple[RunStore, RunStore]) -> None:
    a, _ = runs
    result = CliRunner().invoke(app, ["analyze", str(a.root), "--against", str(a.root)])
    assert result.exit_code == 2 and "compared with another run" in result.output
