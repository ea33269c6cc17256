"""The report's comparison of several runs: paired tests of each run against the first."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from audit.analyses.cross_run import Comparison, compare_runs
from audit.analyses.table import ID
from audit.report.blocks import Block, Section, is_percent, p_cell
from audit.report.formatting import (
    INSUFFICIENT,
    MarkdownText,
    format_count,
    format_interval,
    format_number,
    is_missing,
)
from audit.report.pairing_blocks import agreement_blocks, naming_block, pairing_block
from audit.report.run_data import RunData

TITLE = "Paired comparison of runs on the same samples"
INTRO = (
    "Each run (B) is compared with the first run given (A) on the images both hold, paired by "
    "the digest of the image's pixels (by sample id for runs without digests) and grouped by "
    "A's labels under names both runs share. Classification: "
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
                str(row[ID]),
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


def labelled(comparison: Comparison, base: RunData, other: RunData) -> pd.DataFrame:
    """A comparison's table with the two runs' labels."""
    return comparison.table.assign(run_a=base.label, run_b=other.label)


def how_made(comparisons: Sequence[Comparison]) -> str:
    """One sentence: resamples, seed, and whether the results were stored or computed now."""
    first = comparisons[0]
    stored = sum(c.stored for c in comparisons)
    where = (
        "stored by 'audit analyze B --against A'"
        if stored == len(comparisons)
        else "computed now ('audit analyze B --against A' stores them)"
    )
    return f"{first.n_resamples} bootstrap resamples over images, seed {first.seed}; {where}."


def comparison_section(runs: Sequence[RunData]) -> Section | None:
    """None for a single run; otherwise overall rows, then groups that differ (q < 0.05)."""
    if len(runs) < 2:
        return None
    base = runs[0]
    comparisons = [compare_runs(base.store(), other.store()) for other in runs[1:]]
    tables = [labelled(c, base, o) for c, o in zip(comparisons, runs[1:], strict=True)]
    table = pd.concat(tables, ignore_index=True)
    agreement, agreement_by_group = agreement_blocks(runs, comparisons)
    blocks = [pairing_block(runs, comparisons), naming_block(runs, comparisons), agreement]
    if table.empty:
        blocks.append(
            Block(
                title="",
                columns=[],
                rows=[],
                caption=(
                    "No paired test possible: the runs share no images with a measure both "
                    "hold (accuracy, new tokens, toxicity scores). Imported generations have "
                    "no token counts; 'audit analyze' scores their toxicity."
                ),
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
    if agreement_by_group is not None:
        blocks.append(agreement_by_group)
    intro = f"{INTRO} {how_made(comparisons)}"
    # Pairing, naming, agreement and the tests' overall and significant rows lead.
    return Section(key="comparison", title=TITLE, blocks=blocks, intro=intro, lead=5)
