"""Charts people read: one panel per group axis, age ranges in age order, a log scale (said so)
when values span orders of magnitude, and metric names in words."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from audit.report.figures import group_bars
from audit.report.formatting import metric_title
from audit.store.tables import RunStore

AGES = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]


def _rows(axis: str, groups: list[str], values: list[float]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "axis": axis,
            "group": groups,
            "value": values,
            "ci_low": [v * 0.5 for v in values],
            "ci_high": [v * 1.5 for v in values],
            "n": 10,
            "note": "",
        }
    )


def test_one_panel_per_axis_with_ages_in_age_order() -> None:
    shuffled = ["10-19", "more than 70", "0-2", "3-9", "60-69", "20-29", "50-59", "30-39", "40-49"]
    frame = pd.concat(
        [
            _rows("all", ["all"], [0.5]),
            _rows("gender", ["Male", "Female"], [0.4, 0.6]),
            _rows("age", shuffled, [0.5] * len(shuffled)),
        ]
    )
    figure = group_bars([("run", frame)], "gender · accuracy", "accuracy", percent=True)
    titles = [a.text for a in figure.layout.annotations if a.text in ("gender", "age")]
    assert titles == ["gender", "age"]
    age_bars = [bar for bar in figure.data if bar.yaxis == "y2"]
    assert list(age_bars[0].x) == AGES
    assert figure.layout.yaxis.title.text == "accuracy (%)"
    assert figure.layout.yaxis.type != "log"


def test_values_orders_of_magnitude_apart_get_a_log_scale_that_says_so() -> None:
    small = _rows("gender", ["Female", "Male"], [1e-4, 2e-4])
    large = _rows("gender", ["Female", "Male"], [0.2, 0.3])
    figure = group_bars([("a", small), ("b", large)], "dating", "mean_toxic")
    assert figure.layout.yaxis.type == "log"
    assert figure.layout.yaxis.title.text == "mean toxic score, log scale"


def test_every_metric_of_a_run_has_a_name_in_words(tiny_run: Path) -> None:
    store = RunStore(tiny_run)
    metrics = set()
    for name in ("classification", "refusal", "generation_stats", "toxicity", "leakage"):
        metrics |= set(store.read_analysis(name)["metric"].astype(str))
    for metric in sorted(metrics):
        title = metric_title(metric)
        assert "_" not in title.replace("per-token", ""), (metric, title)
    assert metric_title("share_toxic_above_threshold") == (
        "share with toxic score above the threshold"
    )
    assert metric_title("accuracy_gap_per_token") == (
        "largest accuracy gap between groups (per-token scoring)"
    )


def test_the_report_embeds_the_small_bundle_of_the_same_plotly_release(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from plotly.offline import get_plotlyjs

    from audit.report import figures

    full = get_plotlyjs()
    figures.plotly_js.cache_clear()
    small = figures.plotly_js()
    assert "(basic - minified)" in small[:200] and len(small) < len(full) / 3
    release = full[:200].split("plotly.js v")[1].split()[0]
    assert f"v{release}" in small[:200]  # the release the installed plotly embeds
    # Another release of plotly: its own full bundle, never a mismatched one.
    monkeypatch.setattr(figures, "_ASSETS", tmp_path)
    figures.plotly_js.cache_clear()
    try:
        assert figures.plotly_js() == full
    finally:
        monkeypatch.undo()
        figures.plotly_js.cache_clear()
