"""For a simulated run: what was planted, and whether the analyses recovered it.

The manifest of a run written by ``audit.ingest.simulate`` records its ``simulation``
(planted terms, refusal rates, accuracies). Each planted effect is looked up in the analysis
tables: a term is recovered on a prompt when it is flagged (q < 0.05) with the planted group
using it most; a refusal or accuracy effect when the planted group is the extreme one of a
significant gap (p < 0.05).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from audit.analyses.table import ID
from audit.report.blocks import Block, Section
from audit.report.formatting import MarkdownText
from audit.report.run_data import RunData
from audit.report.term_sections import term_summary

ALPHA = 0.05


def _term_found(table: pd.DataFrame | None, planted: dict[str, Any], prompts: list[str]) -> str:
    if table is None:
        return "not analysed"
    wanted = [planted["prompt_id"]] if planted.get("prompt_id") else prompts
    hits = []
    for prompt_id in wanted:
        rows = table[
            (table["prompt_id"].astype(str) == str(prompt_id))
            & (table["axis"].astype(str) == planted["axis"])
        ]
        terms = term_summary(rows) if not rows.empty else rows
        match = terms[terms["term"].astype(str) == planted["term"]] if len(terms) else terms
        if (
            len(match)
            and bool(match["flagged"].iloc[0])
            and str(match["top_group"].iloc[0]) == planted["group"]
        ):
            hits.append(str(prompt_id))
    return f"flagged in {len(hits)} of {len(wanted)} prompt(s)" + (
        f": {', '.join(hits)}" if hits else ""
    )


def _rate_found(table: pd.DataFrame | None, planted: dict[str, Any], high: bool) -> str:
    """For refusals (the planted group is highest) or accuracy (lowest) per prompt or task
    (``all``: the prompts pooled)."""
    if table is None:
        return "not analysed"
    rows = table[
        (table["axis"].astype(str) == planted["axis"]) & table["group"].astype(str).ne("all")
    ]
    rows = rows[rows["metric"].astype(str).isin(["refusal_rate", "accuracy"])]
    hits, total = [], 0
    for item_value, part in rows.groupby(ID, sort=True):
        if part["value"].isna().all():
            continue
        total += 1
        extreme = part.loc[
            part["value"].astype(float).idxmax() if high else part["value"].astype(float).idxmin()
        ]
        significant = _p_value(table, item_value, planted["axis"], part) < ALPHA
        if str(extreme["group"]) == planted["group"] and significant:
            hits.append(str(item_value))
    return f"found in {len(hits)} of {total}" + (f": {', '.join(hits)}" if hits else "")


def _p_value(table: pd.DataFrame, item_value: object, axis: str, part: pd.DataFrame) -> float:
    gaps = table[
        (table[ID] == item_value)
        & (table["axis"].astype(str) == axis)
        & (table["metric"].astype(str) == "accuracy_gap")
    ]
    source = gaps if len(gaps) else part
    values = source["p_value"].dropna() if "p_value" in source else pd.Series(dtype=float)
    return float(values.iloc[0]) if len(values) else 1.0


def simulation_section(runs: Sequence[RunData]) -> Section | None:
    """None unless a run is simulated."""
    rows = []
    for run in runs:
        simulation = run.manifest.simulation if run.manifest.simulated else None
        if not simulation:
            continue
        prompts = [str(p) for p in simulation.get("prompts", [])]
        for planted in simulation.get("planted_terms", []):
            rows.append(
                [
                    run.label,
                    f"term '{planted['term']}'",
                    planted["axis"],
                    planted["group"],
                    MarkdownText(f"{planted['rate']:.0%} vs {planted.get('base_rate', 0):.0%}"),
                    _term_found(run.table("term_variance"), planted, prompts),
                ]
            )
        for planted in simulation.get("planted_refusals", []):
            rows.append(
                [
                    run.label,
                    "refusals",
                    planted["axis"],
                    planted["group"],
                    MarkdownText(
                        f"{planted['rate']:.0%} vs {simulation.get('refusal_rate', 0):.0%}"
                    ),
                    _rate_found(run.table("refusal"), planted, high=True),
                ]
            )
        for planted in simulation.get("planted_accuracy", []):
            rows.append(
                [
                    run.label,
                    "accuracy",
                    planted["axis"],
                    planted["group"],
                    MarkdownText(f"{planted['rate']:.0%} vs {simulation.get('accuracy', 0):.0%}"),
                    _rate_found(run.table("classification"), planted, high=False),
                ]
            )
    if not rows:
        return None
    return Section(
        key="simulation",
        title="Simulated run: what was planted and what was found",
        intro="This run is SIMULATED: no model produced it. Its generations are pseudo-words with "
        "effects planted at known rates, so the statistics can be checked against the "
        "truth. A term counts as found when it is flagged (q < 0.05) with the planted "
        "group using it most; a rate when the planted group is the extreme group and the "
        "groups differ (p < 0.05).",
        blocks=[
            Block(
                title="",
                columns=["run", "planted", "axis", "group", "rate (group vs others)", "recovered"],
                rows=rows,
            )
        ],
        lead=1,
    )
