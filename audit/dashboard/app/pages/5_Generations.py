"""Generations: statistics per group, group leakage, and a browser over every generation."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.analyses.table import ID
from audit.dashboard.state import choose_run, generations, require_runs, thumbnails
from audit.dashboard.views import estimate_frame, show_metric
from audit.report.formatting import escape_markdown, metric_title
from audit.report.run_data import RunData
from audit.terminal import escape_controls

st.set_page_config(page_title="Generations", layout="wide")
st.title("Generations")
#: Rows sent to the browser at once; filters narrow a 100,000-row run down to this.
SHOWN_ROWS = 500


def show_statistics(run: RunData) -> None:
    table = run.table("generation_stats")
    if table is None:
        st.info("Generation statistics not analysed: run `audit analyze`.")
        return
    prompt = st.selectbox("Prompt", sorted(table[ID].astype(str).unique()), key="stats_prompt")
    rows = table[table[ID].astype(str) == prompt]
    metric = st.selectbox(
        "Metric",
        list(dict.fromkeys(rows["metric"].astype(str))),
        key="stats_metric",
        format_func=metric_title,
    )
    show_metric(
        rows[rows["metric"].astype(str) == metric],
        run,
        f"{prompt} · {metric_title(metric)}",
        metric,
    )


def show_leakage(run: RunData) -> None:
    table = run.table("leakage")
    if table is None:
        st.info("Group leakage not analysed: run `audit analyze`.")
        return
    frame = estimate_frame(
        table, run.group_axes, leading=("prompt_id", "metric"), trailing=("chance", "p_value")
    )
    st.dataframe(frame, hide_index=True)


def browse(run: RunData) -> None:
    frame = generations(run)
    if frame.empty:
        st.info("This run holds no generations.")
        return
    left, right = st.columns(2)
    prompts = sorted(frame["prompt_id"].unique())
    prompt = left.selectbox("Prompt", ["(all)", *prompts], key="browse_prompt")
    needle = right.text_input("Text contains", key="browse_text")
    mask = pd.Series(True, index=frame.index)
    if prompt != "(all)":
        mask &= frame["prompt_id"] == prompt
    for axis in run.group_axes:
        if axis in frame:
            values = sorted(frame[axis].unique())
            chosen = st.sidebar.multiselect(
                escape_markdown(f"{axis} (generations)"),
                values,
                default=values,
                key=f"browse_{axis}",
            )
            mask &= frame[axis].isin(chosen)
    if needle:
        mask &= frame["generation"].fillna("").str.contains(needle, case=False, regex=False)
    matched = frame[mask]
    st.caption(
        f"{len(matched):,} of {len(frame):,} generations match; showing the first "
        f"{min(SHOWN_ROWS, len(matched)):,}."
    )
    shown = matched.head(SHOWN_ROWS)
    st.dataframe(shown, hide_index=True)
    if not shown.empty:
        sample = st.selectbox("Look at one image", shown["sample_id"].unique(), key="browse_sample")
        jpeg = thumbnails(run, [sample]).get(sample)
        if jpeg is not None:
            st.image(jpeg, width=96)
        for row in frame[frame["sample_id"] == sample].itertuples(index=False):
            st.text(f"[{row.prompt_id}] {row.generation}")


def one_image_every_model(runs: list[RunData]) -> None:
    """For one image the loaded runs share: its thumbnail and groups, and for each prompt
    every run's generation side by side."""
    frames = [(r, generations(r)) for r in runs]
    frames = [(r, f) for r, f in frames if not f.empty]
    if not frames:
        st.info("No loaded run holds generations.")
        return
    shared = set.intersection(*(set(f["sample_id"].astype(str)) for _, f in frames))
    if not shared:
        st.info("The loaded runs share no image.")
        return
    sample = st.selectbox("Image", sorted(shared), key="every_model_sample")
    picture, texts = st.columns([1, 6])
    jpeg = thumbnails(frames[0][0], [sample]).get(sample)
    if jpeg is not None:
        picture.image(jpeg, width=128)
    first = frames[0][1]
    row = first[first["sample_id"].astype(str) == sample].iloc[0]
    # Names and text from runs go out as plain text, control characters shown as escapes.
    groups = ", ".join(f"{a}: {row[a]}" for a in frames[0][0].group_axes if a in row)
    picture.text(escape_controls(groups))
    prompts = list(dict.fromkeys(p for _, f in frames for p in f["prompt_id"].astype(str)))
    for prompt in prompts:
        texts.markdown(f"**{escape_markdown(prompt)}**")
        for column, (run, frame) in zip(texts.columns(len(frames)), frames, strict=True):
            found = frame[(frame["sample_id"].astype(str) == sample) & (frame[ID] == prompt)]
            column.text(escape_controls(f"{run.label} · {run.model_name}"))
            text = found["generation"].iloc[0] if not found.empty else None
            column.text("—" if text is None or pd.isna(text) else escape_controls(str(text)))


runs = require_runs()
st.subheader("One image, every model")
st.caption("The same image and prompt across the loaded runs, generation beside generation.")
one_image_every_model(runs)
run = choose_run(runs)
st.subheader("Statistics per group")
show_statistics(run)
st.subheader("Group leakage")
st.caption(
    "Cross-validated balanced accuracy of predicting the group from the text alone; "
    "chance level is what a model whose text carries no group signal shows."
)
show_leakage(run)
st.subheader("Browse generations")
browse(run)
