"""Headline findings: the few numbers per analysis that ``summary.json`` and the CLI lead with.

An analysis may declare a function turning its table into findings (``Analysis.findings``); one
without gets a generic finding per prompt/task, axis and metric (the group with the highest
value). Every finding carries its value, 95% interval, n and, where a test was made, p and q.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from audit.analyses.table import ALL, ID, MIN_GROUP_SIZE

if TYPE_CHECKING:
    from audit.analyses.registry import Analysis

Finding = dict[str, Any]


def number(value: Any) -> float | None:
    """A JSON-safe float: None for missing or non-finite values (never NaN)."""
    if value is None or value is pd.NA:
        return None
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if math.isfinite(result) else None


def finding(analysis: str, row: pd.Series | dict[str, Any], headline: str, **extra: Any) -> Finding:
    """A finding from a table row: id, axis, value, interval, n, p, q, plus ``extra``."""
    get = row.get
    result: Finding = {"analysis": analysis}
    if get(ID) is not None and not pd.isna(get(ID)):
        result[ID] = str(get(ID))
    result.update(
        {
            "axis": str(get("axis", ALL)),
            "group": str(get("group", ALL)),
            "metric": str(get("metric", "")),
            "headline": headline,
            "value": number(get("value")),
            "ci_low": number(get("ci_low")),
            "ci_high": number(get("ci_high")),
            "n": int(number(get("n")) or 0),
            "p_value": number(get("p_value")),
            "q_value": number(get("q_value")),
        }
    )
    result.update({k: number(v) if isinstance(v, float) else v for k, v in extra.items()})
    return result


#: A finding holds when its q-value (its p-value where it has no q) is below this.
LEVEL = 0.05


def evidence(found: Finding) -> float | None:
    """A finding's q-value, or its p-value where it has no q (a family of one test)."""
    q = number(found.get("q_value"))
    return q if q is not None else number(found.get("p_value"))


def holds(found: Finding, level: float = LEVEL) -> bool:
    value = evidence(found)
    return value is not None and value < level


def evidence_order(found: Finding) -> tuple[float, float]:
    """Sort key among findings that hold: by q, then by effect size."""
    return (evidence(found) or 1.0, -abs(number(found.get("value")) or 0.0))


def rank_findings(findings: list[Finding], level: float = LEVEL) -> list[Finding]:
    """Findings that hold first (``holds``), by q and then by effect size; then the rest in
    the order their analyses gave them."""

    def key(item: tuple[int, Finding]) -> tuple[int, float, float, int]:
        index, found = item
        if holds(found, level):
            return (0, *evidence_order(found), index)
        return (1, 0.0, 0.0, index)

    return [found for _, found in sorted(enumerate(findings), key=key)]


def fmt(value: Any, percent: bool = False) -> str:
    """A value for a headline: ``12.3%`` or ``0.0521``; ``n/a`` when missing."""
    number_ = number(value)
    if number_ is None:
        return "n/a"
    return f"{100 * number_:.1f}%" if percent else f"{number_:.3g}"


def interval_text(row: pd.Series | dict[str, Any], percent: bool = False) -> str:
    return (
        f"{fmt(row.get('value'), percent)} [{fmt(row.get('ci_low'), percent)}, "
        f"{fmt(row.get('ci_high'), percent)}]"
    )


def p_text(value: Any) -> str:
    p = number(value)
    if p is None:
        return "p n/a"
    return f"p={p:.2g}" if p < 0.001 else f"p={p:.3f}"


def generic_findings(name: str, table: pd.DataFrame) -> list[Finding]:
    """For an analysis without its own extractor: per id, axis and metric, the highest group."""
    if table.empty or ID not in table or "value" not in table:
        return []
    usable = table[table["value"].notna() & table["axis"].astype(str).ne(ALL)]
    usable = usable[usable["n"] >= MIN_GROUP_SIZE]  # no headline below the minimum
    found = []
    for (item, axis, metric), rows in usable.groupby([ID, "axis", "metric"], sort=True):
        top = rows.loc[rows["value"].astype(float).idxmax()]
        percent = any(w in str(metric) for w in ("rate", "share", "accuracy"))
        found.append(
            finding(
                name,
                top,
                f"{item}, {axis}: highest {metric} for {top['group']}: "
                f"{interval_text(top, percent)} (n={int(top['n'])})",
            )
        )
    return found[:12]


def findings_for(analysis: Analysis, table: pd.DataFrame) -> list[Finding]:
    """The analysis' own headline findings, or the generic ones."""
    if analysis.findings is not None:
        return analysis.findings(table)
    return generic_findings(analysis.name, table)
