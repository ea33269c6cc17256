"""The TF-IDF term-variance section: flagged terms per prompt and axis, with examples.

``term_variance`` holds one row per (prompt, axis, term, group): the group's mean TF-IDF as
``value`` with its bootstrap interval, plus per-term ``rank``, ``score``, ``p_value``,
``q_value`` and ``flagged``. ``term_examples`` holds a few generations per (term, group).
Terms and generations are model text: cells stay plain ``str`` so the templates escape them.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from audit.analyses.registry import Analysis
from audit.report.blocks import Block, Section, estimate_cell, p_cell
from audit.report.figures import term_bars
from audit.report.formatting import MarkdownText, format_number, is_missing, shorten
from audit.report.run_data import RunData

#: Flagging threshold on Benjamini-Hochberg q-values when the table has no ``flagged`` column.
Q_THRESHOLD = 0.05
TOP_TERMS = 15
FIGURE_TERMS = 8


def term_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per term of one (prompt, axis): rank, score, p, q, flagged, top and bottom group."""
    # Groups too small to test have a row without a term; they are not terms.
    frame = rows[rows["term"].notna()].copy()
    if "q_value" not in frame:
        frame["q_value"] = float("nan")
    if "flagged" not in frame:
        frame["flagged"] = frame["q_value"].astype(float) < Q_THRESHOLD
    frame["flagged"] = frame["flagged"].fillna(False).astype(bool)
    for column in ("rank", "score", "p_value"):
        if column not in frame:
            frame[column] = float("nan")
    values = frame.dropna(subset=["value"])
    top = values.loc[values.groupby("term")["value"].idxmax()].set_index("term")
    bottom = values.loc[values.groupby("term")["value"].idxmin()].set_index("term")
    terms = frame.groupby("term", sort=False).agg(
        rank=("rank", "min"),
        score=("score", "first"),
        p_value=("p_value", "first"),
        q_value=("q_value", "first"),
        flagged=("flagged", "any"),
    )
    terms["top_group"] = top["group"].reindex(terms.index)
    terms["bottom_group"] = bottom["group"].reindex(terms.index)
    order = ["rank", "score"] if terms["rank"].notna().any() else ["score"]
    ascending = [True, False] if order == ["rank", "score"] else [False]
    return terms.sort_values(order, ascending=ascending, na_position="last").reset_index()


def _group_estimate(rows: pd.DataFrame, term: str, group: object) -> str:
    if is_missing(group):
        return "—"
    match = rows[(rows["term"] == term) & (rows["group"] == group)]
    return "—" if match.empty else estimate_cell(match.iloc[0])


def _term_rows(rows: pd.DataFrame, terms: pd.DataFrame) -> list[list[str]]:
    return [
        [
            str(t.term),
            p_cell(t.q_value),
            str(t.top_group),
            _group_estimate(rows, t.term, t.top_group),
            str(t.bottom_group),
            _group_estimate(rows, t.term, t.bottom_group),
        ]
        for t in terms.itertuples(index=False)
    ]


_COLUMNS = [
    "term",
    "q-value",
    "highest group",
    "mean TF-IDF [95% CI], n",
    "lowest group",
    "mean TF-IDF [95% CI], n",
]


def _prompt_axis_blocks(
    run: RunData, prompt_id: str, axis: str, rows: pd.DataFrame, prefix: str
) -> list[Block]:
    terms = term_summary(rows)
    flagged = terms[terms["flagged"].astype(bool)]
    title = f"{prefix}{prompt_id} · {axis}"
    tested = len(terms)
    blocks = [
        Block(
            title=f"{title}: flagged terms (q < {Q_THRESHOLD})",
            columns=_COLUMNS,
            rows=_term_rows(rows, flagged),
            caption=(
                f"{len(flagged)} of the {tested} top-ranked terms flagged."
                if len(flagged)
                else f"No term flagged among the {tested} top-ranked terms."
            ),
        )
    ]
    top = terms.head(TOP_TERMS)
    blocks.append(
        Block(
            title=f"{title}: top terms by spread of group means",
            columns=["term", "score", "p-value", "q-value", "flagged"],
            rows=[
                [
                    str(t.term),
                    MarkdownText(format_number(t.score)),
                    p_cell(t.p_value),
                    p_cell(t.q_value),
                    MarkdownText("yes" if t.flagged else "no"),
                ]
                for t in top.itertuples(index=False)
            ],
            figure=term_bars(
                rows, f"{title}: group means of the top terms", list(top["term"].head(FIGURE_TERMS))
            ),
            html_only=True,
        )
    )
    examples = _examples_block(run, prompt_id, axis, list(flagged["term"].head(5)), title)
    if examples is not None:
        blocks.append(examples)
    return blocks


def _examples_block(
    run: RunData, prompt_id: str, axis: str, terms: list[str], title: str
) -> Block | None:
    examples = run.table("term_examples")
    if examples is None or not terms:
        return None
    mask = examples["term"].isin(terms) & (examples["prompt_id"].astype(str) == prompt_id)
    if "axis" in examples:
        mask &= examples["axis"].astype(str) == axis
    chosen = examples[mask]
    if chosen.empty:
        return None
    return Block(
        title=f"{title}: example generations of flagged terms",
        columns=["term", "group", "sample", "generation"],
        rows=[
            [str(r.term), str(r.group), str(r.sample_id), shorten(r.generation)]
            for r in chosen.itertuples(index=False)
        ],
        html_only=True,
    )


def terms_section(runs: Sequence[RunData], analysis: Analysis) -> Section:
    """Per run, prompt and axis: the flagged terms (with q-values), top terms and examples."""
    title = analysis.title
    present = [run for run in runs if run.table("term_variance") is not None]
    if not present:
        return Section(key="term_variance", title=title, missing=True)
    every: list[list[str]] = []
    tested = 0
    blocks: list[Block] = []
    for run in present:
        table = run.table("term_variance")
        assert table is not None
        prefix = f"{run.label} · " if len(runs) > 1 else ""
        for (prompt_id, axis), rows in table.groupby(["prompt_id", "axis"], sort=True):
            blocks.extend(_prompt_axis_blocks(run, str(prompt_id), str(axis), rows, prefix))
            terms = term_summary(rows)
            flagged = terms[terms["flagged"].astype(bool)]
            where = [run.label, str(prompt_id), str(axis)]
            every += [where + row for row in _term_rows(rows, flagged)]
            tested += 1
    columns = ["run", "prompt", "axis", *_COLUMNS]
    if len(runs) == 1:
        columns, every = columns[1:], [row[1:] for row in every]
    leading = Block(
        title=f"Flagged terms (q < {Q_THRESHOLD}), every prompt and axis",
        columns=columns,
        rows=every,
        caption=f"{len(every)} terms flagged over {tested} prompt and axis pairs; each pair's "
        "top terms, charts and example generations follow.",
    )
    return Section(
        key="term_variance",
        title=title,
        blocks=[leading, *blocks],
        intro=analysis.description,
        lead=1,
    )
