"""Streamlit views shared by the dashboard pages: estimate tables, bar charts, metric pages."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from audit.analyses.registry import analysis
from audit.analyses.table import ID
from audit.dashboard.state import choose_run, filter_groups, group_selection, require_runs
from audit.report.blocks import is_percent, sort_groups
from audit.report.figures import group_bars
from audit.report.formatting import (
    INSUFFICIENT,
    NOT_ANALYSED,
    format_estimate,
    format_number,
    format_p,
    is_missing,
    metric_title,
)
from audit.report.run_data import RunData


def estimate_frame(
    rows: pd.DataFrame,
    axes: Sequence[str],
    metric: str = "",
    leading: Sequence[str] = (),
    trailing: Sequence[str] = (),
) -> pd.DataFrame:
    """``axis, group, estimate, n, note`` for ``st.dataframe``, words for missing values;
    ``leading``/``trailing`` columns of ``rows`` are kept (in the same sorted order)."""
    if rows.empty:
        return pd.DataFrame(columns=[*leading, "axis", "group", "estimate [95% CI]", "n", "note"])
    ordered = sort_groups(rows, axes)
    frame = pd.DataFrame(
        {column: ordered[column].astype(str).to_numpy() for column in leading if column in ordered}
    )
    frame["axis"] = ordered["axis"].astype(str).to_numpy()
    frame["group"] = ordered["group"].astype(str).to_numpy()
    frame["estimate [95% CI]"] = [
        format_estimate(row, is_percent(metric or str(row.get("metric", "")))).rsplit(", n=", 1)[0]
        for _, row in ordered.iterrows()
    ]
    frame["n"] = [
        None if is_missing(n) else int(n) for n in ordered.get("n", [None] * len(ordered))
    ]
    frame["note"] = [
        "" if is_missing(v) else str(v) for v in ordered.get("note", [""] * len(ordered))
    ]
    for column in trailing:
        if column in ordered:
            frame[column] = [
                format_p(v) if column.endswith("p_value") else format_number(v)
                for v in ordered[column]
            ]
    return frame


def show_metric(rows: pd.DataFrame, run: RunData, title: str, metric: str) -> None:
    """Bar chart with intervals and the table behind it."""
    if rows.empty:
        st.info("No rows for this selection.")
        return
    figure = group_bars([(run.label, rows)], title, metric, percent=is_percent(metric))
    st.plotly_chart(figure)
    st.dataframe(estimate_frame(rows, run.group_axes, metric), hide_index=True)
    insufficient = rows["note"].astype(str).eq(INSUFFICIENT).sum() if "note" in rows else 0
    if insufficient:
        st.caption(
            f"{insufficient} group(s) have too few observations: shown as "
            f"'{INSUFFICIENT}', without a bar."
        )


def show_gaps(table: pd.DataFrame, metric_prefix: str = "gap") -> None:
    """Largest-minus-smallest group differences with their intervals and p-values."""
    gaps = table[table["metric"].astype(str).str.startswith(metric_prefix)]
    if gaps.empty:
        return
    st.subheader("Largest gap between groups")
    st.dataframe(
        pd.DataFrame(
            {
                "prompt / task": gaps[ID].astype(str),
                "axis": gaps["axis"].astype(str),
                "metric": gaps["metric"].astype(str),
                "highest": gaps.get("group_high", pd.Series("", gaps.index)).astype(str),
                "lowest": gaps.get("group_low", pd.Series("", gaps.index)).astype(str),
                "gap [95% CI]": [
                    format_estimate(r, is_percent(str(r["metric"]))).rsplit(", n=", 1)[0]
                    for _, r in gaps.iterrows()
                ],
                "p": [format_p(v) for v in gaps.get("p_value", pd.Series(None, gaps.index))],
            }
        ),
        hide_index=True,
    )


def metric_page(name: str) -> None:
    """A page for one generation analysis: prompt and metric pickers, bars, table, gaps; its
    title and what its numbers are come from the analysis registry."""
    declared = analysis(name)
    st.title(declared.title)
    st.caption(declared.description)
    runs = require_runs()
    run = choose_run(runs)
    selection = group_selection(run)
    table = run.table(name)
    if table is None:
        st.warning(f"{NOT_ANALYSED.capitalize()}: run `audit analyze` on this run directory.")
        return
    items = sorted(table[ID].astype(str).unique())
    chosen_item = st.selectbox("Prompt", items)
    rows = table[table[ID].astype(str) == chosen_item]
    metrics = [m for m in dict.fromkeys(rows["metric"].astype(str)) if not m.startswith("gap")]
    metric = st.selectbox("Metric", metrics, format_func=metric_title)
    selected = filter_groups(rows[rows["metric"].astype(str) == metric], selection)
    show_metric(selected, run, f"{chosen_item} · {metric_title(metric)}", metric)
    show_gaps(rows)
