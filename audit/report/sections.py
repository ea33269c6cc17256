"""The report's sections, built from loaded runs (one or several, side by side)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from audit.analyses.cross_run import TOXICITY_COLUMNS
from audit.analyses.findings import LEVEL, evidence_order, holds
from audit.analyses.registry import Analysis, analyses
from audit.analyses.table import ID
from audit.report.blocks import (
    Block,
    RunTables,
    Section,
    axis_test_block,
    estimate_cell,
    gap_block,
    is_percent,
    metric_blocks,
    p_cell,
)
from audit.report.card_table import CHOSEN, SCORINGS, card_cells, context_text
from audit.report.confusion_matrix import confusion_counts
from audit.report.figures import group_bars
from audit.report.formatting import MarkdownText, format_number, format_p, is_missing, metric_title
from audit.report.run_data import RunData
from audit.report.term_sections import terms_section


def _axes(runs: Sequence[RunData]) -> list[str]:
    return list(dict.fromkeys(axis for run in runs for axis in run.group_axes))


def _tables(runs: Sequence[RunData], name: str) -> RunTables:
    return [(run.label, table) for run in runs if (table := run.table(name)) is not None]


def _bars(runs: RunTables, title: str, metric: str) -> go.Figure:
    return group_bars(runs, title, metric, percent=is_percent(metric))


def _missing(key: str, title: str) -> Section:
    return Section(key=key, title=title, missing=True)


#: The findings on the first screen; the others are one click away (report.html).
LEADING_FINDINGS = 8


def findings_section(runs: Sequence[RunData]) -> Section:
    """The findings that hold (q < 0.05), every run's ranked together by evidence; then, in
    report.html, every finding of every run."""
    if all(run.summary is None for run in runs):
        return _missing("findings", "Headline findings")
    found = [(run, f) for run in runs for f in (run.summary or {}).get("findings", []) or []]
    held = sorted(((run, f) for run, f in found if holds(f)), key=lambda i: evidence_order(i[1]))
    columns = ["run", "analysis", "finding", "estimate [95% CI], n", "p", "q"]
    more = len(held) - LEADING_FINDINGS
    leading = Block(
        title=f"What holds (q < {LEVEL}), strongest evidence first",
        columns=columns,
        rows=[_finding_row(run, f) for run, f in held[:LEADING_FINDINGS]],
        caption=(
            f"{more} more hold; every finding of every run is listed below."
            if more > 0
            else ""
            if held
            else f"No difference between groups holds at q < {LEVEL}; every finding is below."
        ),
    )
    every = Block(
        title="Every finding, per run",
        columns=columns,
        rows=[_finding_row(run, f) for run, f in found],
        html_only=True,
    )
    blocks = [leading, every]
    if len(runs) == 1:
        blocks = [replace(b, columns=b.columns[1:], rows=[r[1:] for r in b.rows]) for b in blocks]
    return Section(key="findings", title="Headline findings", blocks=blocks, lead=1)


def _finding_row(run: RunData, finding: dict[str, Any]) -> list[str]:
    return [
        run.label,
        str(finding.get("analysis", "")),
        str(finding.get("headline", "")),
        estimate_cell(finding, is_percent(str(finding.get("metric", "")))),
        p_cell(finding.get("p_value")),
        p_cell(finding.get("q_value")),
    ]


def classification_section(runs: Sequence[RunData], analysis: Analysis) -> Section:
    """The card's accuracy (std) table, then accuracy per group and intersection."""
    tables = _tables(runs, analysis.name)
    if not tables:
        return _missing(analysis.name, analysis.title)
    contexts = {run.label: context_text(run.classification_contexts()) for run in runs}
    chosen = {run.label for run in runs if run.labels_chosen()}
    card = _card_block(tables, contexts, chosen)
    summary = _axis_blocks(tables)  # the gaps between groups lead, with the card's table
    blocks = [
        card,
        *summary,
        *metric_blocks(tables, _axes(runs), _bars, markdown_metrics=analysis.markdown_metrics),
        *_confusion_blocks(runs),
    ]
    return Section(
        key=analysis.name,
        title=analysis.title,
        blocks=blocks,
        intro=analysis.description,
        lead=1 + len(summary),
    )


def _card_block(tables: RunTables, contexts: dict[str, str], chosen: set[str]) -> Block:
    """Rows: run x scoring (the card's summed log-likelihood first); columns: per task.
    ``contexts``: run label -> where its labels were scored; ``chosen``: the runs whose model
    named its labels."""
    entries = {}
    for label, frame in tables:
        for suffix, scoring in SCORINGS.items():
            cells = {c.task_id: c for c in card_cells(frame, suffix)}
            if cells:  # a run whose model chose its labels has one scoring only
                entries[(label, CHOSEN if label in chosen else scoring)] = cells
    tasks = list(dict.fromkeys(task for cells in entries.values() for task in cells))
    rows = []
    for (label, scoring), cells in entries.items():
        row: list[str] = [label, scoring, contexts.get(label, "—")]
        for task in tasks:
            cell = cells.get(task)
            row.append(MarkdownText(cell.text() if cell else "—"))
            noise = "—" if cell is None else cell.noise_text()
            if cell is not None and cell.std_p_value is not None:
                noise += f" (p {format_p(cell.std_p_value)})"
            row.append(MarkdownText(noise))
        rows.append(row)
    columns = ["run", "scoring", "context"]
    for task in tasks:
        columns += [f"{task}: acc. (std)", f"{task}: std from noise alone (points)"]
    return Block(
        title="Accuracy (std), in the model card's layout",
        columns=columns,
        rows=rows,
        caption="Accuracy in %; std: population std (ddof=0) of the accuracies of the "
        "gender × race "
        "cells (of the first intersection when a run has no gender × race). Std from "
        "noise alone: the std binomial sampling noise gives at these cell sizes when "
        "every cell has the overall accuracy; p: share of noise-only stds at least as "
        "large as the observed one. The IDEFICS card's numbers use the summed "
        "log-likelihood. Context: where the labels were scored; card's: the image, then the "
        "template, with no chat wrapper or preamble (as the IDEFICS evaluation; the provenance "
        "says how the image was laid out and whether a BOS was written); chat: the "
        "template as the start of the answer after the preamble. Accuracies from the two "
        "contexts are not comparable.",
    )


def _confusion_blocks(runs: Sequence[RunData]) -> list[Block]:
    blocks = []
    for run in runs:
        table = run.table("confusion")
        if table is None or table.empty:
            continue
        for task_id in sorted(table[ID].astype(str).unique()):
            counts = confusion_counts(table, task_id)
            if counts is None:
                continue
            title = f"{run.label} · {task_id} · confusion matrix"
            blocks.append(
                Block(
                    title=title,
                    columns=["true \\ predicted", *map(str, counts.columns)],
                    rows=[
                        [str(i), *[MarkdownText(str(int(v))) for v in counts.loc[i]]]
                        for i in counts.index
                    ],
                    caption="Counts of images; the dashboard draws it as a heatmap.",
                    html_only=True,
                )
            )
    return blocks


def main_toxicity_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the scorer's toxicity label (``toxicity`` for detoxify, ``toxic`` for the
    card's classifier), not its complement or sub-labels; all rows when neither exists."""
    if "label" not in frame:
        return frame
    labels = set(frame["label"].dropna().astype(str))
    for label in TOXICITY_COLUMNS:
        if label in labels:
            return frame[frame["label"].astype(str) == label]
    return frame


def per_group_section(runs: Sequence[RunData], analysis: Analysis) -> Section:
    """An analysis shown as one table (and bar chart) per prompt and metric; only its
    ``markdown_metrics`` (when it names them) also go into the Markdown section."""
    name, title = analysis.name, analysis.title
    tables = _tables(runs, name)
    if name == "toxicity":
        tables = [(label, main_toxicity_rows(frame)) for label, frame in tables]
    if not tables:
        return _missing(name, title)
    summary = _axis_blocks(tables)  # the largest gap and the test across groups lead
    blocks = [
        *summary,
        *metric_blocks(tables, _axes(runs), _bars, markdown_metrics=analysis.markdown_metrics),
    ]
    return Section(
        key=name, title=title, blocks=blocks, intro=analysis.description, lead=len(summary)
    )


def _axis_blocks(tables: RunTables) -> list[Block]:
    """The gap and across-group test blocks that exist for these tables."""
    return [b for b in (gap_block(tables), axis_test_block(tables)) if b is not None]


def leakage_section(runs: Sequence[RunData], analysis: Analysis) -> Section:
    """How well the group can be predicted from the text alone, against chance."""
    tables = _tables(runs, analysis.name)
    if not tables:
        return _missing(analysis.name, analysis.title)
    rows = []
    for label, frame in tables:
        overall = frame[frame["group"].astype(str).eq("all")]
        for _, row in overall.iterrows():
            rows.append(
                [
                    label,
                    str(row.get("prompt_id", "")),
                    str(row["axis"]),
                    metric_title(str(row["metric"])),
                    estimate_cell(row, is_percent(str(row["metric"]))),
                    MarkdownText(_chance(row)),
                    p_cell(row.get("p_value")),
                ]
            )
    columns = ["run", "prompt", "axis", "metric", "estimate [95% CI], n", "chance", "p"]
    if len(tables) == 1:
        columns, rows = columns[1:], [r[1:] for r in rows]
    per_group = [(label, frame[~frame["group"].astype(str).eq("all")]) for label, frame in tables]
    details = [
        Block(title=b.title, columns=b.columns, rows=b.rows, figure=b.figure, html_only=True)
        for b in metric_blocks([(lb, f) for lb, f in per_group if not f.empty], _axes(runs), _bars)
    ]
    return Section(
        key=analysis.name,
        title=analysis.title,
        blocks=[Block(title="", columns=columns, rows=rows), *details],
        lead=1,
        intro=analysis.description,
    )


def _chance(row: pd.Series) -> str:
    for column in ("chance", "chance_level", "baseline"):
        if column in row and not is_missing(row[column]):
            return format_number(row[column], percent=True)
    return "—"


#: Analyses with a section of their own; every other one gets ``per_group_section``.
SectionBuilder = Callable[[Sequence[RunData], Analysis], Section]
SECTIONS: dict[str, SectionBuilder] = {
    "classification": classification_section,
    "term_variance": terms_section,
    "leakage": leakage_section,
}


def build_sections(runs: Sequence[RunData]) -> list[Section]:
    """The findings, then a section per registered analysis, in the registry's order."""
    sections = [findings_section(runs)]
    for analysis in analyses():
        if analysis.shown_with is None:
            sections.append(SECTIONS.get(analysis.name, per_group_section)(runs, analysis))
    return sections
