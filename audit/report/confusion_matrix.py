"""Confusion matrices from the ``confusion`` analysis table (one row per task, group, scoring,
true value and prediction, with its ``count``)."""

from __future__ import annotations

import pandas as pd

from audit.analyses.table import ID

#: The card's scoring (summed label log-likelihood) is shown unless another is asked for.
DEFAULT_SCORING = "sum"


def confusion_counts(
    table: pd.DataFrame,
    task_id: str,
    axis: str = "all",
    group: str = "all",
    scoring: str = DEFAULT_SCORING,
) -> pd.DataFrame | None:
    """Counts with true values as rows and predictions as columns, or None when absent."""
    rows = table[table[ID].astype(str) == task_id]
    if "axis" in rows:
        rows = rows[(rows["axis"].astype(str) == axis) & (rows["group"].astype(str) == group)]
    if "scoring" in rows and rows["scoring"].notna().any():
        rows = rows[rows["scoring"].astype(str) == scoring]
    if rows.empty or not {"target", "prediction", "count"} <= set(rows.columns):
        return None
    return rows.pivot_table(
        index="target", columns="prediction", values="count", aggfunc="sum", fill_value=0
    )


def confusion_groups(table: pd.DataFrame, task_id: str) -> list[tuple[str, str]]:
    """The (axis, group) pairs a task has matrices for, overall first."""
    rows = table[table[ID].astype(str) == task_id]
    if "axis" not in rows:
        return [("all", "all")]
    pairs = list(
        dict.fromkeys(zip(rows["axis"].astype(str), rows["group"].astype(str), strict=True))
    )
    return sorted(pairs, key=lambda pair: (pair[0] != "all", pair))
