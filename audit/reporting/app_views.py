"""Streamlit views shared by the dashboard pages: estimate tables, bar charts, metric pages."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import streamlit as st

from audit.reporting.app_state import choose_run, filter_groups, group_selection, require_runs
from audit.reporting.blocks import is_percent, sort_groups
from audit.reporting.figures import group_bars
from audit.reporting.formatting import (
    INSUFFICIENT,
    NOT_ANALYSED,
    format_estimate,
    format_p,
    is_missing,
)
from audit.reporting.run_data import RunData


def estimate_frame(rows: pd.DataFrame, axes: Sequence[str], metric: str = "") -> pd.DataFrame:
    """``axis, group, estimate, n, note`` for ``st.dataframe``: words for missing values."""
    percent = is_percent(metric or (str(rows["metric"].iloc[0]) if len(rows) else ""))
    ordered = sort_groups(rows, axes) if len(rows) else rows
    return pd.DataFrame({
        "axis": ordered["axis"].astype(str).to_numpy() if len(rows) else [],
        "group": ordered["group"].astype(str).to_numpy() if len(rows) else [],
        "estimate [95% CI]": [format_estimate(row, percent).rsplit(", n=", 1)[0]
                              for _, row in ordered.iterrows()],
        "n": [None if is_missing(n) else int(n) for n in ordered.get("n", [])],
        "note": [("" if is_missing(v) else str(v)) for v in ordered.get("note", [""] * len(ordered))],
    })


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
        st.caption(f"{insufficient} group(s) have too few observations: shown as "
                   f"'{INSUFFICIENT}', without a bar.")


def show_gaps(table: pd.DataFrame, metric_prefix: str = "gap") -> None:
    """Largest-minus-smallest group differences with their intervals and p-values."""
    gaps = table[table["metric"].astype(str).str.startswith(metric_prefix)]
    if gaps.empty:
        return
    st.subheader("Largest gap between groups")
    st.dataframe(pd.DataFrame({
        "prompt / task": gaps.get("prompt_id", gaps.get("task_id", "")).astype(str),
        "axis": gaps["axis"].astype(str),
        "metric": gaps["metric"].astype(str),
        "highest": gaps.get("group_high", pd.Series("", gaps.index)).astype(str),
        "lowest": gaps.get("group_low", pd.Series("", gaps.index)).astype(str),
        "gap [95% CI]": [format_estimate(r, is_percent(str(r["metric"]))).rsplit(", n=", 1)[0]
                         for _, r in gaps.iterrows()],
        "p": [format_p(v) for v in gaps.get("p_value", pd.Series(None, gaps.index))],
    }), hide_index=True)


def metric_page(name: str, title: str, intro: str) -> None:
    """A page for one generation analysis: prompt and metric pickers, bars, table, gaps."""
    st.title(title)
    st.caption(intro)
    runs = require_runs()
    run = choose_run(runs)
    selection = group_selection(run)
    table = run.table(name)
    if table is None:
        st.warning(f"{NOT_ANALYSED.capitalize()}: run `audit analyze` on this run directory.")
        return
    item = "prompt_id" if "prompt_id" in table else "task_id"
    items = sorted(table[item].astype(str).unique())
    chosen_item = st.selectbox("Prompt" if item == "prompt_id" else "Task", items)
    rows = table[table[item].astype(str) == chosen_item]
    metrics = [m for m in dict.fromkeys(rows["metric"].astype(str)) if not m.startswith("gap")]
    metric = st.selectbox("Metric", metrics)
    selected = filter_groups(rows[rows["metric"].astype(str) == metric], selection)
    show_metric(selected, run, f"{chosen_item} · {metric}", metric)
    show_gaps(rows)
