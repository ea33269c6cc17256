"""Every interval an analysis stores holds its estimate and has width unless the data behind it
are constant, on a run analysed by ``audit analyze`` (simulated, with planted effects) and on a
tiny-model run with few images per group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_report_fixture import analysed_simulated_run

from audit.analyses.registry import analyses
from audit.store.tables import RunStore

OPEN: tuple[str, ...] = ()


def _tables(run: Path) -> dict[str, pd.DataFrame]:
    store = RunStore(run)
    return {a.name: store.read_analysis(a.name) for a in analyses() if store.has_analysis(a.name)}


#: The analyses whose tables hold intervals: each must be there, with rows that have one.
WITH_INTERVALS = (
    "classification",
    "confusion",
    "term_variance",
    "toxicity",
    "refusal",
    "generation_stats",
    "leakage",
)


def _check(tables: dict[str, pd.DataFrame]) -> None:
    assert set(WITH_INTERVALS) <= set(tables), sorted(set(WITH_INTERVALS) - set(tables))
    for name in WITH_INTERVALS:
        table = tables[name]
        rows = table[table["value"].notna() & table["ci_low"].notna()]
        rows = rows[~rows["metric"].astype(str).str.startswith(OPEN)]
        assert len(rows), f"{name}: no interval to check"
        value, low, high = (rows[c].to_numpy(float) for c in ("value", "ci_low", "ci_high"))
        outside = rows[(low > value + 1e-9) | (high < value - 1e-9)]
        assert outside.empty, f"{name}: {outside[['metric', 'value', 'ci_low', 'ci_high']].head()}"
        # Zero width only where the estimate cannot vary: a rate of 0 or 1 from one image per
        # observation is Wilson (never zero width), so only means of constant data remain.
        zero = rows[np.abs(high - low) < 1e-15]
        allowed = zero["metric"].isin(["mean_tfidf", "mean_new_tokens"])
        assert allowed.all(), (
            f"{name}: zero-width {zero[~allowed][['metric', 'value', 'n']].head()}"
        )
        tfidf = zero[zero["metric"] == "mean_tfidf"]
        assert (tfidf["value"] == 0).all(), f"{name}: a term's group mean > 0 with no spread"


def test_simulated_run(tmp_path_factory: pytest.TempPathFactory) -> None:
    _check(_tables(analysed_simulated_run(tmp_path_factory)))


def test_demo_run_of_a_tiny_model(tiny_run: Path) -> None:
    _check(_tables(tiny_run))


def test_gap_intervals_exclude_zero_exactly_when_their_test_rejects(
    tmp_path_factory: pytest.TempPathFactory, tiny_run: Path
) -> None:
    sides = {"classification": ("n_best", "n_worst"), "toxicity": ("n_high", "n_low")}
    for run in (analysed_simulated_run(tmp_path_factory), tiny_run):
        for name, (best, worst) in sides.items():
            table = RunStore(run).read_analysis(name)
            gaps = table[table["metric"].astype(str).str.contains("gap")]
            gaps = gaps[gaps["value"].notna()]
            assert len(gaps), name
            assert ((gaps["ci_low"] <= gaps["value"]) & (gaps["value"] <= gaps["ci_high"])).all()
            assert ((gaps["ci_low"] > 0) == (gaps["p_value"] < 0.05)).all(), name
            assert (gaps["n"] == gaps[best] + gaps[worst]).all(), name


def test_one_multiple_testing_family_per_item_and_axis(
    tmp_path_factory: pytest.TempPathFactory, tiny_run: Path
) -> None:
    from audit.analyses.stats import benjamini_hochberg

    tests = {"toxicity": ["metric", "label"], "classification": ["metric", "scoring"]}
    for run in (analysed_simulated_run(tmp_path_factory), tiny_run):
        for name, table in _tables(run).items():
            if "p_value" not in table or name == "term_variance":  # its family holds every
                continue  # tested term, most of which the table does not report
            assert "q_value" in table, name
            item = table.columns[0]
            keys = [item, "axis", *tests.get(name, ["metric"])]
            rows = table[table["p_value"].notna()].drop_duplicates(keys)
            for _, family in rows.groupby([item, "axis"]):
                expected = benjamini_hochberg(family["p_value"].to_numpy(float))
                np.testing.assert_allclose(family["q_value"].to_numpy(float), expected)


def test_headlines_lead_with_evidence_and_never_go_below_the_minimum(
    tmp_path_factory: pytest.TempPathFactory, tiny_run: Path
) -> None:
    for run in (analysed_simulated_run(tmp_path_factory), tiny_run):
        findings = RunStore(run).read_summary()["findings"]
        evidence = [
            f["q_value"] if f.get("q_value") is not None else f.get("p_value") for f in findings
        ]
        significant = [e is not None and e < 0.05 for e in evidence]
        # Significant findings first, by q (or p), then the rest.
        assert significant == sorted(significant, reverse=True)
        strong = [e for e, s in zip(evidence, significant, strict=True) if s]
        assert strong == sorted(strong)
        for found in findings:
            if found["analysis"] == "confusion":
                assert found["n"] >= 5 and "predicted as" in found["headline"]
        assert "p<0.001" not in " ".join(f["headline"] for f in findings)
