"""The one shape every analysis table has (docs/run_directory.md, "analysis tables").

``prompt_id, axis, group, metric, value, ci_low, ci_high, n, note`` and then the analysis' own
columns. ``prompt_id`` names the prompt a row is about: a generation prompt, or a classification
task (a task is a prompt with candidate labels; the classifications table calls it ``task_id``).
A value that cannot be estimated is null with a ``note`` saying why, never NaN passed off as a
number.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from audit.analyses.stats import benjamini_hochberg

#: The column naming the prompt (or classification task) a row is about, in every analysis table.
ID = "prompt_id"
COMMON_COLUMNS = ("axis", "group", "metric", "value", "ci_low", "ci_high", "n", "note")
INSUFFICIENT = "insufficient data"
#: Groups with fewer images than this get a row marked ``INSUFFICIENT`` instead of an estimate.
MIN_GROUP_SIZE = 5
ALL = "all"


def build_table(
    records: list[dict[str, Any]] | pd.DataFrame, extra: Sequence[str] = ()
) -> pd.DataFrame:
    """Records (or a frame) in the common layout, with stable dtypes and nulls where noted."""
    columns = [ID, *COMMON_COLUMNS, *extra]
    frame = (
        records.reindex(columns=columns)
        if isinstance(records, pd.DataFrame)
        else pd.DataFrame.from_records(records, columns=columns)
    )
    for column in ("value", "ci_low", "ci_high"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    frame["n"] = pd.to_numeric(frame["n"], errors="coerce").fillna(0).astype("int64")
    frame["note"] = frame["note"].fillna("").astype(str)
    for column in (ID, "axis", "group", "metric"):
        frame[column] = frame[column].astype(str)
    unusable = frame["note"].eq(INSUFFICIENT) | ~np.isfinite(frame["value"].to_numpy())
    frame.loc[unusable, ["value", "ci_low", "ci_high"]] = np.nan
    frame.loc[unusable & frame["note"].eq(""), "note"] = INSUFFICIENT
    return frame.reset_index(drop=True)


def empty_table(extra: Sequence[str] = ()) -> pd.DataFrame:
    """A table with the right columns and no rows (nothing to analyse)."""
    return build_table([], extra)


def insufficient(
    id_value: str, axis: str, group: str, metric: str, n: int, **extra: Any
) -> dict[str, Any]:
    """A row that says the estimate was not made: too few images."""
    return {
        "axis": axis,
        "group": group,
        "metric": metric,
        "value": None,
        "ci_low": None,
        "ci_high": None,
        "n": n,
        "note": INSUFFICIENT,
        **extra,
        "_id": id_value,
    }


def estimate(
    id_value: str,
    axis: str,
    group: str,
    metric: str,
    value: float,
    interval: tuple[float, float],
    n: int,
    **extra: Any,
) -> dict[str, Any]:
    """A row with an estimate and its 95% interval."""
    low, high = interval
    return {
        "axis": axis,
        "group": group,
        "metric": metric,
        "value": float(value),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": int(n),
        "note": "",
        **extra,
        "_id": id_value,
    }


def with_q_values(table: pd.DataFrame, test: Sequence[str]) -> pd.DataFrame:
    """``table`` with ``q_value``: Benjamini–Hochberg within each family, one prompt or task and
    one axis of one analysis (the project's one multiple-testing policy). ``test`` names the
    columns that, with the id and the axis, tell one test from another: rows repeating a test's
    p-value (one per group) share its q-value."""
    table = table.copy()
    table["q_value"] = np.nan
    if "p_value" not in table or table.empty:
        return table
    keys = [ID, "axis", *test]
    tested = table[pd.to_numeric(table["p_value"], errors="coerce").notna()]
    tests = tested.drop_duplicates(keys)[[*keys, "p_value"]]
    q = pd.Series(np.nan, index=tests.index)
    for _, family in tests.groupby([ID, "axis"], sort=False):
        q[family.index] = benjamini_hochberg(family["p_value"].to_numpy(dtype=float))
    found = tests[keys].assign(q_value=q)
    merged = table.drop(columns="q_value").merge(found, on=keys, how="left")
    merged.loc[pd.to_numeric(merged["p_value"], errors="coerce").isna(), "q_value"] = np.nan
    return merged[list(table.columns)]


def records_table(records: list[dict[str, Any]], extra: Sequence[str] = ()) -> pd.DataFrame:
    """``build_table`` for rows made with ``estimate``/``insufficient`` (id under ``_id``)."""
    renamed = [{**{k: v for k, v in r.items() if k != "_id"}, ID: r["_id"]} for r in records]
    return build_table(renamed, extra)
