"""The report's comparison of several runs: paired tests of each run against the first."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from audit.report.blocks import Block, Section, is_percent, p_cell
from audit.report.formatting import (
    INSUFFICIENT,
    MarkdownText,
    format_count,
    format_interval,
    format_number,
    is_missing,
)
from audit.report.pairing import paired_comparison
from audit.report.run_data import RunData

TITLE = "Paired comparison of runs on the same samples"
INTRO = (
    "Each run (B) is compared with the first run given (A) on the samples both hold. "
    "Classification: "
    "McNemar's exact test on the discordant pairs, with a paired bootstrap interval for the "
    "difference in accuracy. Scores (new tokens, toxicity): paired bootstrap interval of the "
    "mean difference over images and a sign-flip permutation p-value. q: Benjamini-Hochberg "
    "over all groups and items of one test. Differences are B − A."
)
COLUMNS = [
    "A",
    "B",
    "metric",
    "prompt / task",
    "axis",
    "group",
    "A value",
    "B value",
    "B − A [95% CI]",
    "n",
    "p",
    "q",
]


def _difference(row: pd.Series, percent: bool) -> str:
    if row.get("note") == INSUFFICIENT or is_missing(row.get("difference")):
        return INSUFFICIENT
    interval = format_interval(row.get("ci_low"), row.get("ci_high"), percent)
    return f"{format_number(row['difference'], percent)} {interval}".strip()


def comparison_rows(table: pd.DataFrame) -> list[list[str]]:
    """Table rows of a paired comparison (run names, items and groups stay plain text)."""
    rows = []
    for _, row in table.iterrows():
        percent = is_percent(str(row["metric"]))
        rows.append(
            [
                str(row["run_a"]),
                str(row["run_b"]),
                str(row["metric"]),
                str(row["item"]),
                str(row["axis"]),
                str(row["group"]),
                MarkdownText(format_number(row.get("value_a"), percent)),
                MarkdownText(format_number(row.get("value_b"), percent)),
                MarkdownText(_difference(row, percent)),
                MarkdownText(format_count(row.get("n"))),
                p_cell(row.get("p_value")),
                p_cell(row.get("q_value")),
            ]
        )
    return rows


def comparison_section(
    runs: Sequence[RunData], n_boot: int = 2000, seed: int = 0
) -> Section | None:
    """None for a single run; otherwise overall rows, then groups that differ (q < 0.05)."""
    if len(runs) < 2:
        return None
    base = runs[0]
    tables = [paired_comparison(base, other, n_boot=n_boot, seed=seed) for other in runs[1:]]
    table = pd.concat(tables, ignore_index=True)
    blocks = []
    if table.empty:
        blocks.append(
            Block(
                title="",
                columns=[],
                rows=[],
                caption=("No paired test possible: the runs share no samples with stored rows."),
            )
        )
    else:
        overall = table[table["axis"].astype(str).eq("all")]
        significant = table[
            ~table["axis"].astype(str).eq("all") & (table["q_value"].astype(float) < 0.05)
        ]
        blocks.append(Block(title="Overall", columns=COLUMNS, rows=comparison_rows(overall)))
        blocks.append(
            Block(
                title="Groups whose difference is significant (q < 0.05)",
                columns=COLUMNS,
                rows=comparison_rows(significant),
                caption="" if len(significant) else "No group differs significantly between runs.",
            )
        )
        blocks.append(
            Block(title="Every group", columns=COLUMNS, rows=comparison_rows(table), html_only=True)
        )
    return Section(key="comparison", title=TITLE, blocks=blocks, intro=INTRO)
