"""``generation_stats``: how long the model answers, why it stopped, and how often it failed.

Per prompt, overall (axis ``all``) and per group of every axis:

- ``mean_new_tokens``: mean ``n_new_tokens`` of successful generations, expanded percentile
  bootstrap interval (images resampled within the group);
- ``share_eos`` / ``share_length``: share of successful generations that stopped at an
  end-of-sequence token / at ``max_new_tokens`` (Wilson interval);
- ``error_rate``: share of all generations (error rows included) that failed (Wilson).

Columns besides the common ones: ``successes`` and ``observations`` for the shares (null for
``mean_new_tokens``). ``n`` is the number of images behind the value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from audit.analyses.findings import Finding, finding, interval_text
from audit.analyses.grouping import GroupAxis, restrict
from audit.analyses.rates import UnitRates, group_rows, overall_row
from audit.analyses.registry import Analysis, AnalysisContext
from audit.analyses.stats import bootstrap_ratios, percentile_interval
from audit.analyses.table import (
    ALL,
    MIN_GROUP_SIZE,
    empty_table,
    estimate,
    insufficient,
    records_table,
)
from audit.store.tables import error_mask

NAME = "generation_stats"
EXTRA = ("successes", "observations")


def _codes(frame: pd.DataFrame, axis: GroupAxis | None) -> tuple[np.ndarray, tuple[str, ...]]:
    if axis is None:
        return np.zeros(len(frame), dtype=int), (ALL,)
    return axis.codes(frame), axis.groups


def _token_rows(
    prompt_id: str,
    frame: pd.DataFrame,
    axis: GroupAxis | None,
    n_boot: int,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    codes, groups = _codes(frame, axis)
    tokens = pd.to_numeric(frame["n_new_tokens"], errors="coerce").to_numpy(dtype=float)
    known = np.isfinite(tokens) & (codes >= 0)
    sizes = np.bincount(codes[known], minlength=len(groups))
    included = np.flatnonzero(sizes >= MIN_GROUP_SIZE)
    axis_name = axis.name if axis else ALL
    rows = []
    keep, local = restrict(np.where(known, codes, -1), included, len(groups))
    if included.size:
        replicates = bootstrap_ratios(tokens[keep], np.ones(keep.size), local, n_boot, rng)
        low, high = percentile_interval(replicates[:, :, 0], sizes=sizes[included])
    for code, group in enumerate(groups):
        if code not in included:
            rows.append(
                insufficient(prompt_id, axis_name, group, "mean_new_tokens", int(sizes[code]))
            )
            continue
        j = int(np.flatnonzero(included == code)[0])
        rows.append(
            estimate(
                prompt_id,
                axis_name,
                group,
                "mean_new_tokens",
                tokens[keep][local == j].mean(),
                (low[j], high[j]),
                int(sizes[code]),
            )
        )
    return rows


def _share_rows(
    prompt_id: str,
    frame: pd.DataFrame,
    hits: np.ndarray,
    metric: str,
    axis: GroupAxis | None,
) -> list[dict[str, Any]]:
    codes, groups = _codes(frame, axis)
    rates = UnitRates(
        successes=hits.astype(float), totals=np.ones(len(frame)), codes=codes, groups=groups
    )
    if axis is None:
        return [overall_row(prompt_id, metric, rates)]
    return group_rows(prompt_id, axis.name, metric, rates)


def generation_stats(context: AnalysisContext) -> pd.DataFrame:
    """New tokens, finish reasons and error rate per prompt x group."""
    split = context.generation_split(needs="finish_reason")
    if split is None:
        return empty_table(EXTRA)
    axes: list[GroupAxis | None] = [None, *split.axes]
    n_boot = context.settings.n_bootstrap
    records: list[dict[str, Any]] = []
    for item in split.items:
        prompt_id, every, valid = item.id, item.every, item.valid
        failed = error_mask(every).to_numpy()
        # Imported generations may not record how they ended or their length: unknown, not 0.
        ended = valid[valid["finish_reason"].notna()].reset_index(drop=True)
        reason = ended["finish_reason"].astype(str).to_numpy()
        counted = valid
        if "n_new_tokens" in valid:
            counted = valid[valid["n_new_tokens"].notna()].reset_index(drop=True)
        for axis in axes:
            rng = context.rng(NAME, prompt_id, axis.name if axis else ALL)
            if "n_new_tokens" in valid and len(counted):
                records += _token_rows(prompt_id, counted, axis, n_boot, rng)
            if len(ended):
                for metric, hits in (
                    ("share_eos", reason == "eos"),
                    ("share_length", reason == "length"),
                ):
                    records += _share_rows(prompt_id, ended, hits, metric, axis)
            records += _share_rows(prompt_id, every, failed, "error_rate", axis)
    return records_table(records, EXTRA)


#: The per-prompt headline of each overall metric, with its sample size.
_HEADLINES = {
    "mean_new_tokens": lambda row: (
        f"{interval_text(row)} new tokens on average (n={int(row['n'])})"
    ),
    "error_rate": lambda row: (
        f"error rate {interval_text(row, True)} (n={int(row['n'])}); "
        "error rows are excluded from analyses"
    ),
}


def generation_findings(table: pd.DataFrame) -> list[Finding]:
    """Per prompt: the overall error rate and mean length."""
    found: list[Finding] = []
    overall = table[(table["axis"] == ALL) & table["value"].notna()]
    for prompt_id, rows in overall.groupby("prompt_id", sort=False):
        by_metric = rows.set_index("metric")
        for metric, describe in _HEADLINES.items():
            if metric in by_metric.index:
                row = by_metric.loc[metric]
                found.append(
                    finding(
                        NAME,
                        {**row.to_dict(), "metric": metric, "prompt_id": prompt_id},
                        f"prompt '{prompt_id}': {describe(row)}",
                    )
                )
    return found


ANALYSIS = Analysis(
    name=NAME,
    run=generation_stats,
    inputs=("generations",),
    settings=("n_bootstrap", "seed"),
    title="Generation statistics",
    description="New tokens, finish reasons and errors per group. Error rows are counted here "
    "and excluded from every other analysis. Share of generations stopped by an end token or "
    "by the token limit: in report.html.",
    markdown_metrics=frozenset({"mean_new_tokens", "error_rate"}),
    findings=generation_findings,
)
