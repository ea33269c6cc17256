"""Compare runs: metrics side by side, and paired tests on the samples both runs hold."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.analyses.cross_run import Comparison, compare_runs
from audit.analyses.registry import analysis_tables
from audit.analyses.table import ID
from audit.dashboard.state import (
    Selection,
    filter_groups,
    group_selection,
    group_values,
    require_runs,
    run_token,
)
from audit.report.blocks import is_percent, side_by_side
from audit.report.comparison_section import how_made
from audit.report.figures import group_bars
from audit.report.formatting import (
    format_count,
    format_interval,
    format_number,
    format_p,
    metric_title,
)
from audit.report.run_data import RunData
from audit.store.tables import RunStore

st.set_page_config(page_title="Compare runs", layout="wide")
st.title("Compare runs")
#: Analyses whose tables hold one estimate per (item, metric, axis, group).
COMPARABLE = [name for name in analysis_tables() if name not in {"confusion", "term_examples"}]


@st.cache_data(show_spinner="Running paired tests…", max_entries=16)
def cached_pairs(path_a: str, token_a: str, path_b: str, token_b: str) -> Comparison:
    del token_a, token_b  # part of the cache key only
    return compare_runs(RunStore(path_a), RunStore(path_b))


def pairs_frame(table: pd.DataFrame) -> pd.DataFrame:
    percent = [is_percent(str(m)) for m in table["metric"]]
    return pd.DataFrame(
        {
            "metric": table["metric"].astype(str),
            "prompt / task": table[ID].astype(str),
            "axis": table["axis"].astype(str),
            "group": table["group"].astype(str),
            "A": [format_number(v, p) for v, p in zip(table["value_a"], percent, strict=True)],
            "B": [format_number(v, p) for v, p in zip(table["value_b"], percent, strict=True)],
            "B − A": [
                format_number(v, p) for v, p in zip(table["difference"], percent, strict=True)
            ],
            "95% CI": [
                format_interval(lo, hi, p)
                for lo, hi, p in zip(table["ci_low"], table["ci_high"], percent, strict=True)
            ],
            "n": [format_count(n) for n in table["n"]],
            "p": [format_p(v) for v in table["p_value"]],
            "q": [format_p(v) for v in table["q_value"]],
            "note": table["note"].astype(str),
        }
    )


def compared_selection(
    pairs: pd.DataFrame, selection: Selection, known: dict[str, list[str]]
) -> Selection:
    """The sidebar's selection, on the axes whose compared groups it names: an axis compared
    under other names than the first run's (its ``man`` compared as ``Male``) is not filtered,
    rather than hidden."""
    compared = pairs.groupby(pairs["axis"].astype(str))["group"].agg(lambda g: set(map(str, g)))
    return {
        axis: chosen
        for axis, chosen in selection.items()
        if compared.get(axis, set()) <= set(known.get(axis, []))
    }


def naming_frame(comparison: Comparison) -> pd.DataFrame:
    """Each compared axis: its names in A and B and what the name table could not name."""
    return pd.DataFrame(
        [
            {
                "axis compared": axis.name,
                "A's axis": axis.a,
                "B's axis": axis.b or "(none)",
                "A's values not named": ", ".join(axis.unmapped_a) or "none",
                "B's values not named": ", ".join(axis.unmapped_b) or "none",
                "values kept apart": ", ".join(sorted({*axis.merged_a, *axis.merged_b})) or "none",
                "paired images whose labels differ": axis.disagree,
            }
            for axis in comparison.pairing.axes
        ]
    )


def agreement_frame(table: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": table[ID].astype(str),
            "axis": table["axis"].astype(str),
            "group": table["group"].astype(str),
            "identical": [format_number(v, True) for v in table["value"]],
            "95% CI": [
                format_interval(lo, hi, True)
                for lo, hi in zip(table["ci_low"], table["ci_high"], strict=True)
            ],
            "n": [format_count(n) for n in table["n"]],
        }
    )


def side_by_side_view(chosen_runs: list[RunData], selection: Selection) -> None:
    """Any number of runs on one analysis, prompt and metric: one chart, one table."""
    tables = {run.label: {n: run.table(n) for n in COMPARABLE} for run in chosen_runs}
    names = [n for n in COMPARABLE if all(t[n] is not None for t in tables.values())]
    if not names:
        st.info("The chosen runs share no analysed table.")
        return
    name = st.selectbox("Analysis", names)
    frames = [(label, t[name]) for label, t in tables.items()]
    items = sorted(set.intersection(*(set(f[ID].astype(str)) for _, f in frames)))
    chosen = st.selectbox("Prompt / task", items) if items else None
    if chosen is None:
        st.info("No prompt or task in common.")
        return
    every = [(label, f[f[ID].astype(str) == chosen]) for label, f in frames]
    metrics = sorted(set.intersection(*(set(rows["metric"].astype(str)) for _, rows in every)))
    metric = st.selectbox("Metric", metrics, format_func=metric_title)
    selected = [
        (label, filter_groups(rows[rows["metric"].astype(str) == metric], selection))
        for label, rows in every
    ]
    if name == "term_variance":
        # Rows about a whole (prompt, axis) hold no term.
        terms = set.intersection(*(set(rows["term"].dropna().astype(str)) for _, rows in selected))
        term = st.selectbox("Term", sorted(terms))
        if term is None:
            st.info("No term in common.")
            return
        selected = [(label, rows[rows["term"].astype(str) == term]) for label, rows in selected]
    st.plotly_chart(
        group_bars(selected, f"{chosen} · {metric_title(metric)}", metric, is_percent(metric))
    )
    columns, rows = side_by_side(selected, metric, chosen_runs[0].group_axes)
    st.dataframe(pd.DataFrame(rows, columns=columns), hide_index=True)


runs = require_runs()
if len(runs) < 2:
    st.info("Give two or more run directories to compare: `audit dashboard RUN_A RUN_B`.")
    st.stop()
labels = [run.label for run in runs]
st.subheader("Side by side")
shown = st.multiselect("Runs", labels, default=labels, key="side_by_side_runs")
selection = group_selection(runs[0])
if shown:
    side_by_side_view([runs[labels.index(label)] for label in shown], selection)
else:
    st.info("Choose the runs to show.")
st.subheader("Paired tests on shared samples (B − A)")
left, right = st.columns(2)
label_a = left.selectbox("Run A", labels, index=0)
label_b = right.selectbox("Run B", labels, index=1)
run_a, run_b = runs[labels.index(label_a)], runs[labels.index(label_b)]
if run_a.root == run_b.root:
    st.warning("Pick two different runs.")
    st.stop()
comparison = cached_pairs(
    str(run_a.root), run_token(str(run_a.root)), str(run_b.root), run_token(str(run_b.root))
)
st.caption(
    "Classification: McNemar's exact test; scores: paired bootstrap over images with a "
    "sign-flip permutation p-value; q: Benjamini-Hochberg within each prompt or task and "
    f"axis. "
    f"{how_made([comparison])}"
)
pairing = comparison.pairing
st.caption(
    f"Images paired: {pairing.paired:,} ({pairing.by_digest:,} by image digest, "
    f"{pairing.by_sample_id:,} by sample id, {pairing.by_appearance:,} by appearance); only in "
    f"A: {pairing.only_a:,}; only in B: "
    f"{pairing.only_b:,}; pictures repeated within A / B: {pairing.repeated_a:,} / "
    f"{pairing.repeated_b:,}. Groups are A's labels under the names both runs share."
)
st.dataframe(naming_frame(comparison), hide_index=True)
if not comparison.agreement.empty:
    st.markdown("**Same model: share of paired images with identical generations**")
    st.dataframe(agreement_frame(comparison.agreement), hide_index=True)
pairs = comparison.table
if pairs.empty:
    st.info("No paired test possible: the runs share no images with a measure both hold.")
else:
    shown_groups = compared_selection(pairs, selection, group_values(runs[0]))
    st.dataframe(pairs_frame(filter_groups(pairs, shown_groups)), hide_index=True)
