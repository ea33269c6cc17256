"""Zero-shot classification: the card's accuracy (std), accuracy per group and intersection,
confusion matrices and the largest gap between groups."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.analyses.table import ID
from audit.dashboard.state import (
    choose_run,
    filter_groups,
    group_selection,
    require_runs,
    require_table,
)
from audit.dashboard.views import show_gaps, show_metric
from audit.report.card_table import card_cells, context_text
from audit.report.confusion_matrix import confusion_counts, confusion_groups
from audit.report.figures import confusion_heatmap
from audit.report.formatting import format_interval, metric_title
from audit.report.run_data import RunData

st.set_page_config(page_title="Classification", layout="wide")
st.title("Zero-shot classification")
st.caption("Accuracy of ranking candidate labels by log-likelihood, per group (Wilson intervals).")


def card_frame(table: pd.DataFrame) -> pd.DataFrame:
    cells = card_cells(table)
    return pd.DataFrame(
        {
            "task": [c.task_id for c in cells],
            "accuracy (std)": [c.text() for c in cells],
            "accuracy 95% CI": [format_interval(c.ci_low, c.ci_high, percent=True) for c in cells],
            "n": [c.n for c in cells],
            "std from noise alone (points)": [c.noise_text() for c in cells],
            "cells": [f"{c.n_cells} ({c.intersection or '—'})" for c in cells],
        }
    )


def show_confusion(run: RunData, task_id: str) -> None:
    confusion = run.table("confusion")
    if confusion is None:
        st.info("No confusion matrix stored for this run.")
        return
    pairs = confusion_groups(confusion, task_id)
    if not pairs:
        st.info("No confusion matrix stored for this task.")
        return
    labels = ["all images" if axis == "all" else f"{axis}: {group}" for axis, group in pairs]
    chosen = st.selectbox("Confusion matrix of", labels, key="confusion_group")
    axis, group = pairs[labels.index(chosen)]
    scorings = sorted(confusion.get("scoring", pd.Series(["sum"])).dropna().astype(str).unique())
    scoring = st.radio("Scoring", scorings, horizontal=True) if len(scorings) > 1 else "sum"
    counts = confusion_counts(confusion, task_id, axis, group, scoring)
    if counts is None:
        st.info("No confusion matrix for this selection.")
        return
    st.plotly_chart(confusion_heatmap(counts, f"{task_id}: true value × prediction ({chosen})"))


runs = require_runs()
run = choose_run(runs)
selection = group_selection(run)
table = require_table(run, "classification")
st.subheader("Accuracy (std), the model card's layout")
st.dataframe(card_frame(table), hide_index=True)
# Run data: st.text shows it as text, never as Markdown.
st.text(f"Labels scored in {context_text(run.classification_contexts(), long=True)}.")
task_id = st.selectbox("Task", sorted(table[ID].astype(str).unique()))
rows = table[table[ID].astype(str) == task_id]
metrics = [m for m in dict.fromkeys(rows["metric"].astype(str)) if not m.startswith("gap")]
metric = st.selectbox("Metric", metrics, format_func=metric_title)
selected = filter_groups(rows[rows["metric"].astype(str) == metric], selection)
single = selected[~selected["axis"].astype(str).str.contains(" x ")]
crossed = selected[
    selected["axis"].astype(str).str.contains(" x ") | selected["axis"].astype(str).eq("all")
]
st.subheader("Per group")
show_metric(single, run, f"{task_id} · {metric_title(metric)}", metric)
if len(crossed) > 1:
    st.subheader("Intersections")
    show_metric(crossed, run, f"{task_id} · {metric_title(metric)} · intersections", metric)
st.subheader("Confusion matrix")
show_confusion(run, task_id)
show_gaps(rows)
