"""Overview: what each run is (model, dataset, n, status) and its headline findings."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from audit.analyses.registry import analysis_tables
from audit.dashboard.state import caption, require_runs, staleness
from audit.report.blocks import is_percent, is_points
from audit.report.formatting import escape_markdown, format_estimate, format_p
from audit.report.provenance_table import provenance
from audit.report.run_data import RunData
from audit.report.simulation_section import simulation_section

st.set_page_config(page_title="Bias audit", layout="wide")


def findings_frame(run: RunData) -> pd.DataFrame:
    findings = (run.summary or {}).get("findings", []) or []
    return pd.DataFrame(
        {
            "analysis": [str(f.get("analysis", "")) for f in findings],
            "finding": [str(f.get("headline", "")) for f in findings],
            "estimate [95% CI], n": [
                format_estimate(f, *_units(str(f.get("metric", "")))) for f in findings
            ],
            "p": [format_p(f.get("p_value")) for f in findings],
            "q": [format_p(f.get("q_value")) for f in findings],
        }
    )


def _units(metric: str) -> tuple[bool, bool]:
    """Percent, and points (differences of proportions), for a metric."""
    return is_percent(metric), is_points(metric)


def show_run(run: RunData) -> None:
    facts = provenance(run)
    st.subheader(escape_markdown(run.label))  # a folder name: data, so escaped
    columns = st.columns(4)
    columns[0].metric("Status", facts["status"])
    columns[1].metric("Samples", facts["samples"])
    columns[2].metric("Prompts", len(run.manifest.prompts))
    columns[3].metric("Tasks", len(run.manifest.tasks))
    if run.manifest.simulated:
        st.warning("SIMULATED run: generated with planted associations; it describes no model.")
        planted = simulation_section([run])
        if planted is not None:
            block = planted.blocks[0]
            st.markdown("**What was planted, and what the analyses found**")
            st.dataframe(pd.DataFrame(block.rows, columns=block.columns), hide_index=True)
    st.dataframe(pd.DataFrame({"": list(facts), "value": list(facts.values())}), hide_index=True)
    missing = [name for name in analysis_tables() if run.table(name) is None]
    if run.summary is None:
        st.info("Not analysed yet: run `audit analyze` on this run directory.")
    else:
        stale = staleness(run)
        if stale is not None:
            st.warning(escape_markdown(stale))
        st.markdown("**Headline findings**")
        frame = findings_frame(run)
        if frame.empty:
            st.write("No finding passed the significance thresholds.")
        else:
            st.dataframe(frame, hide_index=True)
    if missing:
        caption("Analyses not present: " + ", ".join(missing))


st.title("Bias audit: overview")
for loaded in require_runs():
    show_run(loaded)
