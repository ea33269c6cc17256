"""Report content as plain data: sections of titled tables (and figures) the templates render.

A cell is either ``MarkdownText`` (written by the report: numbers, intervals) or a plain ``str``
(from the data: group names, terms, generations), which the Markdown template escapes; the HTML
template escapes both.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from audit.analyses.table import ID
from audit.report.formatting import (
    INSUFFICIENT,
    MarkdownText,
    escape_markdown,
    format_count,
    format_estimate,
    format_number,
    format_p,
    is_missing,
    metric_title,
    natural_key,
)


@dataclass
class Block:
    """One titled table, optionally with a figure (HTML only) and a caption.

    ``title`` and plain-``str`` cells may hold data and are escaped; ``caption`` is the report's
    own prose and must not embed data.
    """

    title: str
    columns: list[str]
    rows: list[list[str]]
    figure: go.Figure | None = None
    caption: str = ""
    html_only: bool = False
    #: The rows report.md shows (``None``: all of them), and what the others are, in words.
    markdown_rows: list[list[str]] | None = None
    markdown_omits: str = ""


@dataclass
class Section:
    """A part of the report; ``missing`` is set when its analysis table does not exist.

    ``intro`` is the report's own prose (never data).
    """

    key: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    missing: bool = False
    intro: str = ""
    #: How many of its first blocks lead: report.html shows them open and folds the rest away;
    #: report.md shows them only, and points to report.html for the rest.
    lead: int = 0


#: Metrics shown as percentages (rates, shares and accuracies).
_PERCENT_WORDS = ("accuracy", "rate", "share", "fraction", "proportion", "above")


def is_percent(metric: str) -> bool:
    return any(word in metric.lower() for word in _PERCENT_WORDS)


def is_points(metric: str) -> bool:
    """Differences and spreads of proportions (accuracy gaps, cell stds): percentage points."""
    lowered = metric.lower()
    return is_percent(lowered) and ("gap" in lowered or "std" in lowered)


def estimate_cell(row: Mapping[str, Any], percent: bool = False) -> MarkdownText:
    """``value [low, high], n=N`` written by the report (a note from the data is escaped);
    differences and spreads of proportions in points."""
    clean = dict(row)
    note = clean.get("note")
    if not is_missing(note) and str(note) != INSUFFICIENT:
        clean["note"] = escape_markdown(note)
    points = percent and is_points(str(clean.get("metric", "")))
    return MarkdownText(format_estimate(clean, percent, points=points))


def count_cell(n: object) -> MarkdownText:
    return MarkdownText(format_count(n))


def p_cell(value: object) -> MarkdownText:
    return MarkdownText(format_p(value))


def ordered_axes(frame: pd.DataFrame, axes: Sequence[str]) -> list[str]:
    """``all`` first, then the probe's axes in order, then intersections and anything else."""
    present = list(dict.fromkeys(frame["axis"].astype(str)))
    known = ["all", *axes]
    return [a for a in known if a in present] + [a for a in present if a not in known]


def sort_groups(frame: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Rows by prompt or task, then axis (overall first, the probe's order), then group in its
    natural order."""
    order = {axis: i for i, axis in enumerate(ordered_axes(frame, axes))}
    keyed = frame.assign(
        _axis=frame["axis"].astype(str).map(order),
        _group=frame["group"].astype(str).map(natural_key),  # "3-9" before "10-19"
    )
    keys = ([ID] if ID in frame else []) + ["_axis", "_group"]
    return keyed.sort_values(keys, kind="stable").drop(columns=["_axis", "_group"])


RunTables = Sequence[tuple[str, pd.DataFrame]]
"""(run label, analysis table) for each run shown side by side."""


def side_by_side(
    runs: RunTables, metric: str, axes: Sequence[str]
) -> tuple[list[str], list[list[str]]]:
    """Columns ``axis | group | <run>...`` and one row per (axis, group) in any run."""
    percent = is_percent(metric)
    cells: dict[tuple[str, str], dict[str, MarkdownText]] = {}
    for label, frame in runs:
        for _, row in sort_groups(frame, axes).iterrows():
            key = (str(row["axis"]), str(row["group"]))
            cells.setdefault(key, {})[label] = estimate_cell(row, percent)
    labels = [label for label, _ in runs]
    rows = [
        [axis, group, *[cells[(axis, group)].get(label, MarkdownText("—")) for label in labels]]
        for axis, group in cells
    ]
    single = len(labels) == 1
    columns = ["axis", "group", *(["estimate [95% CI], n"] if single else labels)]
    return columns, rows


FigureMaker = Callable[[RunTables, str, str], "go.Figure | None"]


def metric_blocks(
    runs: RunTables,
    axes: Sequence[str],
    figure_maker: FigureMaker | None = None,
    skip_metrics: Iterable[str] = (),
    markdown_metrics: Collection[str] | None = None,
) -> list[Block]:
    """One block per (prompt or task, metric) of a long analysis table, runs side by side;
    metrics about a whole axis (gaps, spreads) are left to ``gap_block``. Metrics outside
    ``markdown_metrics`` (when given) appear in the HTML report only."""
    skipped = set(skip_metrics)
    keys: dict[tuple[str, str], None] = {}
    for _, frame in runs:
        for key in frame[[ID, "metric"]].drop_duplicates().itertuples(index=False):
            if str(key[1]) not in skipped and not is_summary_metric(str(key[1])):
                keys[(str(key[0]), str(key[1]))] = None
    blocks = []
    for item_value, metric in sorted(keys):
        selected = [
            (
                label,
                frame[
                    (frame[ID].astype(str) == item_value) & (frame["metric"].astype(str) == metric)
                ],
            )
            for label, frame in runs
        ]
        selected = [(label, rows) for label, rows in selected if not rows.empty]
        title = f"{item_value} · {metric_title(metric)}"
        main = [(label, rows[_in_markdown(rows["axis"])]) for label, rows in selected]
        crossed = [(label, rows[~_in_markdown(rows["axis"])]) for label, rows in selected]
        columns, rows = side_by_side(main, metric, axes)
        figure = figure_maker(main, title, metric) if figure_maker else None
        html_only = markdown_metrics is not None and metric not in markdown_metrics
        blocks.append(
            Block(title=title, columns=columns, rows=rows, figure=figure, html_only=html_only)
        )
        crossed = [(label, rows) for label, rows in crossed if not rows.empty]
        if crossed:
            columns, rows = side_by_side(crossed, metric, axes)
            blocks.append(
                Block(
                    title=f"{title} · other intersections",
                    columns=columns,
                    rows=rows,
                    html_only=True,
                )
            )
    return blocks


#: The one intersection the Markdown section shows (the card's); others are in the HTML only.
MARKDOWN_INTERSECTION = "gender x race"


def _in_markdown(axes: pd.Series) -> pd.Series:
    text = axes.astype(str)
    return ~text.str.contains(" x ") | text.eq(MARKDOWN_INTERSECTION)


def is_summary_metric(metric: str) -> bool:
    """Metrics about a whole axis (gaps between groups, spreads), not about one group."""
    return "gap" in metric or metric.startswith("cell_accuracy_std")


def _first_column(row: Mapping[str, Any], names: Sequence[str]) -> str:
    for name in names:
        value = row.get(name)
        if not is_missing(value):
            return str(value)
    return "—"


def gap_block(runs: RunTables) -> Block | None:
    """Highest minus lowest group per prompt/task and axis, with interval and p-value. report.md
    shows the single axes of the card's scoring, and the intersections whose gap holds."""
    rows, brief, omitted = [], [], set()
    for label, frame in runs:
        gaps = frame[frame["metric"].astype(str).str.contains("gap")]
        for _, row in gaps.iterrows():
            metric = str(row["metric"])
            detectable = row.get("min_detectable_gap")
            rows.append(
                [
                    label,
                    str(row.get(ID, "")),
                    str(row["axis"]),
                    metric_title(metric),
                    _first_column(row, ("group_high", "best_group")),
                    _first_column(row, ("group_low", "worst_group")),
                    estimate_cell(row, is_percent(metric)),
                    p_cell(row.get("p_value")),
                    MarkdownText(
                        "—"
                        if is_missing(detectable)
                        else format_number(detectable, is_percent(metric))
                    ),
                ]
            )
            p_value = row.get("p_value")
            holds = not is_missing(p_value) and float(p_value) < 0.05
            if "per_token" in metric:
                omitted.add("per-token scoring")
            elif " x " in str(row["axis"]) and not holds:
                omitted.add("intersections whose gap does not hold")
            else:
                brief.append(rows[-1])
    if not rows:
        return None
    columns = [
        "run",
        "prompt / task",
        "axis",
        "metric",
        "highest group",
        "lowest group",
        "difference [95% CI], n",
        "p",
        "detectable at this n",
    ]
    block = _runs_block(
        runs,
        "Largest gap between groups",
        columns,
        rows,
        "Highest minus lowest group; n: the images of the two groups. Interval and p come "
        "from one procedure, simultaneous over every pair of groups (studentized differences, "
        "group labels permuted over images), so the interval excludes 0 exactly when p < 0.05; "
        "detectable: the smallest gap this sample size detects with 80% power.",
    )
    block.markdown_rows = [row[1:] for row in brief] if len(runs) == 1 else brief
    block.markdown_omits = ", ".join(sorted(omitted))
    return block


def axis_test_block(runs: RunTables) -> Block | None:
    """Per prompt and axis, the p-value of the test that the groups differ (when per-group
    rows carry one)."""
    rows = []
    for label, frame in runs:
        if "p_value" not in frame:
            continue
        tested = frame[
            frame["p_value"].notna()
            & frame["axis"].astype(str).ne("all")
            & frame["group"].astype(str).ne("all")
            & ~frame["metric"].astype(str).map(is_summary_metric).astype(bool)
        ]
        for key, part in tested.groupby([ID, "metric", "axis"], sort=True):
            rows.append([label, *map(str, key), p_cell(part["p_value"].iloc[0])])
    if not rows:
        return None
    columns = ["run", "prompt / task", "metric", "axis", "p (groups differ)"]
    return _runs_block(
        runs,
        "Do the groups differ?",
        columns,
        rows,
        "Permutation test of group labels over images, per prompt and axis.",
    )


def _runs_block(
    runs: RunTables, title: str, columns: list[str], rows: list[list[Any]], caption: str
) -> Block:
    """A block whose first column names the run, dropped when there is one run."""
    if len(runs) == 1:
        columns, rows = columns[1:], [row[1:] for row in rows]
    return Block(title=title, columns=columns, rows=rows, caption=caption)
