"""``confusion``: confusion matrices of every classification task, overall and per group.

One row per task, scoring, axis, group, true value and predicted value (every cell of the
matrix, zeros included). ``metric = "share"``: the share of images with that true value
predicted as ``prediction`` (a row of the matrix sums to 1), Wilson interval; ``n`` = images with
that true value in the group. Extra columns: ``scoring`` (``sum``/``mean``, see
label_scores.py), ``target``, ``prediction``, ``count``. Axis ``all`` is the whole task.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from audit.analyses.classification import labelled, task_split
from audit.analyses.findings import Finding, finding, interval_text
from audit.analyses.grouping import GroupAxis
from audit.analyses.label_scores import SCORINGS, predictions
from audit.analyses.registry import Analysis, AnalysisContext
from audit.analyses.stats import wilson_interval
from audit.analyses.table import ALL, ID, MIN_GROUP_SIZE, build_table, empty_table

NAME = "confusion"
EXTRA = ("scoring", "target", "prediction", "count")


def confusion(context: AnalysisContext) -> pd.DataFrame:
    """Confusion matrices per task, scoring and group (axes only, not intersections)."""
    prepared = task_split(context)
    if prepared is None:
        return empty_table(EXTRA)
    tasks, split = prepared
    axes = [a for a in split.axes if a.name in context.group_axes]
    parts = []
    for task, item in zip(tasks, split.items, strict=True):
        rows = labelled(item)
        if rows.empty:  # every row of this task is an error: nothing to count
            continue
        values = list(dict.fromkeys([*task.values, *sorted(rows["target"].astype(str).unique())]))
        for scoring in SCORINGS:
            predicted = predictions(rows, task, scoring)
            if predicted is None:
                continue
            for axis in [None, *axes]:
                parts.append(_matrices(task.id, scoring, rows, predicted, values, axis))
    if not parts:
        return empty_table(EXTRA)
    return build_table(pd.concat(parts, ignore_index=True), EXTRA)


def _matrices(
    task_id: str,
    scoring: str,
    rows: pd.DataFrame,
    predicted: np.ndarray,
    values: list[str],
    axis: GroupAxis | None,
) -> pd.DataFrame:
    groups = (ALL,) if axis is None else axis.groups
    codes = np.zeros(len(rows), dtype=int) if axis is None else axis.codes(rows)
    index = {v: i for i, v in enumerate(values)}
    truth = rows["target"].astype(str).map(index).to_numpy()
    # A prediction outside the label set (a stored value with no label) is its own column.
    extra = sorted({str(p) for p in predicted if p is not None and str(p) not in index})
    columns = values + extra
    lookup = {v: i for i, v in enumerate(columns)}
    guess = np.array([lookup.get(str(p), -1) if p is not None else -1 for p in predicted])
    k, c, g = len(values), len(columns), len(groups)
    known = (codes >= 0) & (guess >= 0)
    flat = (codes[known] * k + truth[known]) * c + guess[known]
    counts = np.bincount(flat, minlength=g * k * c).reshape(g, k, c)
    totals = np.bincount(codes[codes >= 0] * k + truth[codes >= 0], minlength=g * k).reshape(g, k)
    low, high = wilson_interval(counts, totals[:, :, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        share = counts / totals[:, :, None]
    g_i, t_i, p_i = np.meshgrid(np.arange(g), np.arange(k), np.arange(c), indexing="ij")
    record: dict[str, Any] = {
        ID: task_id,
        "axis": ALL if axis is None else axis.name,
        "group": np.array(groups, dtype=object)[g_i.ravel()],
        "metric": "share",
        "value": share.ravel(),
        "ci_low": low.ravel(),
        "ci_high": high.ravel(),
        "n": np.repeat(totals.ravel(), c),
        "note": "",
        "scoring": scoring,
        "target": np.array(values, dtype=object)[t_i.ravel()],
        "prediction": np.array(columns, dtype=object)[p_i.ravel()],
        "count": counts.ravel(),
    }
    return pd.DataFrame(record)


def confusion_findings(table: pd.DataFrame) -> list[Finding]:
    """Per task and axis (the card's scoring): the most frequent confusion, naming the group,
    the true value and the prediction; cells below the minimum number of images are left out."""
    if table.empty:
        return []
    rows = table[
        table["scoring"].astype(str).eq("sum")
        & table["target"].astype(str).ne(table["prediction"].astype(str))
        & table["value"].notna()
        & (table["n"] >= MIN_GROUP_SIZE)
    ]
    found = []
    for (task_id, axis), part in rows.groupby([ID, "axis"], sort=False):
        top = part.loc[part["value"].astype(float).idxmax()]
        where = "" if axis == ALL else f", {axis} {top['group']}"
        found.append(
            finding(
                NAME,
                top,
                f"task '{task_id}'{where}: true {top['target']} predicted as "
                f"{top['prediction']} for {interval_text(top, True)} of its images "
                f"(n={int(top['n'])})",
            )
        )
    return found


ANALYSIS = Analysis(
    name=NAME,
    run=confusion,
    inputs=("classifications",),
    settings=(),
    title="Confusion matrices",
    description="For each true value, the share of images predicted as each label (Wilson "
    "intervals).",
    shown_with="classification",
    findings=confusion_findings,
)
