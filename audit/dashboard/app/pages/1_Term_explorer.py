"""Term explorer: per prompt and axis, terms ranked by the spread of their group means, with
q-values, per-group bars with intervals and example generations with thumbnails."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.dashboard.state import (
    Selection,
    choose_run,
    filter_groups,
    group_selection,
    require_runs,
    require_table,
    thumbnails,
)
from audit.dashboard.views import show_metric
from audit.report.formatting import format_number, format_p
from audit.report.run_data import RunData
from audit.report.term_sections import Q_THRESHOLD, term_summary

st.set_page_config(page_title="Term explorer", layout="wide")
st.title("Term explorer")
st.caption(
    "TF-IDF terms whose mean differs between groups. Flagged: Benjamini-Hochberg q < "
    f"{Q_THRESHOLD} from a permutation test over images."
)


def ranked_terms(rows: pd.DataFrame, only_flagged: bool) -> pd.DataFrame:
    terms = term_summary(rows)
    if only_flagged:
        terms = terms[terms["flagged"].astype(bool)]
    return pd.DataFrame(
        {
            "term": terms["term"].astype(str),
            "score": [format_number(v) for v in terms["score"]],
            "p": [format_p(v) for v in terms["p_value"]],
            "q": [format_p(v) for v in terms["q_value"]],
            "flagged": ["yes" if f else "no" for f in terms["flagged"]],
            "highest group": terms["top_group"].astype(str),
            "lowest group": terms["bottom_group"].astype(str),
        }
    )


def show_examples(run: RunData, prompt_id: str, axis: str, term: str, selection: Selection) -> None:
    examples = run.table("term_examples")
    if examples is None:
        st.info("No example generations stored for this run.")
        return
    chosen = examples[
        (examples["prompt_id"].astype(str) == prompt_id) & (examples["term"].astype(str) == term)
    ]
    if "axis" in chosen:
        chosen = filter_groups(chosen[chosen["axis"].astype(str) == axis], selection)
    if chosen.empty:
        st.info("No example generation for this term and the selected groups.")
        return
    images = thumbnails(run, chosen["sample_id"].astype(str).tolist())
    for example in chosen.itertuples(index=False):
        picture, text = st.columns([1, 8])
        jpeg = images.get(str(example.sample_id))
        if jpeg is not None:
            picture.image(jpeg, width=72)
        # Model text: plain text only, never Markdown or HTML.
        text.text(f"{example.group} · {example.sample_id}")
        text.text(str(example.generation))


runs = require_runs()
run = choose_run(runs)
selection = group_selection(run)
table = require_table(run, "term_variance")
prompt_id = st.selectbox(
    "Prompt", sorted(table["prompt_id"].astype(str).unique()), key="term_prompt"
)
for_prompt = table[table["prompt_id"].astype(str) == prompt_id]
axis = st.selectbox("Group axis", sorted(for_prompt["axis"].astype(str).unique()), key="term_axis")
rows = for_prompt[for_prompt["axis"].astype(str) == axis]
only_flagged = st.checkbox("Only flagged terms", value=False, key="term_only_flagged")
ranked = ranked_terms(rows, only_flagged)
st.dataframe(ranked, hide_index=True, height=min(400, 36 * (len(ranked) + 1)))
if ranked.empty:
    st.info("No term to show for this selection.")
    st.stop()
term = st.selectbox("Term", ranked["term"].tolist(), key="term_term")
term_rows = filter_groups(rows[rows["term"].astype(str) == term], selection)
show_metric(term_rows, run, f"{prompt_id} · {axis} · {term}", "mean TF-IDF")
st.subheader("Example generations")
show_examples(run, prompt_id, axis, term, selection)
