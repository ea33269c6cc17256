"""Toxicity of the generations per prompt and group, with intervals and a test across groups.

A pure function of the stored scores: the scoring stage (``audit.scoring.toxicity``) scores
every successful generation once with the probe's scorer (``analysis.toxicity``) into
``analysis/toxicity_scores.parquet`` before this runs.

Per prompt, scorer label and group axis (each image has one generation per prompt, so rows are
images):

- ``mean_<label>``: mean score, 95% expanded percentile bootstrap interval (images resampled
  within their group; ``stats.percentile_interval`` with the group's size);
- ``share_<label>_above_threshold``: share of scores above ``analysis.toxicity.threshold``,
  Wilson interval;
- ``gap_mean_<label>`` (``group == "all"``): highest minus lowest group mean (``group_high``,
  ``group_low``, their images ``n_high``, ``n_low``); its interval and ``p_value`` come from one
  procedure, simultaneous over every pair of groups (``gaps.largest_gap``: studentized max-T,
  group labels permuted over images), so the interval excludes 0 exactly when p < 0.05.

Overall rows have ``axis == group == "all"``. Extra columns: ``scorer``, ``label``,
``threshold``, ``p_value``, ``q_value`` (Benjamini-Hochberg over the tests of one prompt and axis),
``group_high``, ``group_low``, ``n_high``, ``n_low``. A group with fewer than ``MIN_GROUP_SIZE``
scored images gets ``note == "insufficient data"`` and a null value. Groups are those of the
manifest's ``group_axes`` seen in any row, error rows included, so a group whose rows all failed
shows up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from audit.analyses.findings import Finding, finding, interval_text, p_text
from audit.analyses.gaps import largest_gap, mean_estimates
from audit.analyses.grouping import GroupAxis, sort_rows
from audit.analyses.registry import Analysis, AnalysisContext
from audit.analyses.stats import (
    bootstrap_ratios,
    percentile_interval,
    seeded_rng,
    wilson_interval,
)
from audit.analyses.table import (
    ALL,
    INSUFFICIENT,
    MIN_GROUP_SIZE,
    build_table,
    empty_table,
    with_q_values,
)
from audit.scoring.toxicity import KEYS, SCORES_TABLE, scores_of
from audit.spec import AnalysisSpec

NAME = "toxicity"
EXTRA = [
    "scorer",
    "label",
    "threshold",
    "p_value",
    "q_value",
    "group_high",
    "group_low",
    "n_high",
    "n_low",
]


def analyze_toxicity(context: AnalysisContext) -> pd.DataFrame:
    """Summarise the stored toxicity scores per prompt x axis x group."""
    split = context.generation_split()
    if split is None:
        return empty_table(EXTRA)
    scores = scores_of(context.toxicity_scores, context.settings.toxicity.scorer)
    valid = split.valid[split.valid["generation"].notna()]
    scored = valid.merge(scores, on=["sample_id", "prompt_id"], how="inner")
    labels = [c for c in scores.columns if c not in KEYS]
    return summarize_toxicity(scored, labels, split.axes, context.settings, split.ids)


# -- statistics -----------------------------------------------------------------------------
def summarize_toxicity(
    scored: pd.DataFrame,
    labels: list[str],
    axes: list[GroupAxis],
    settings: AnalysisSpec,
    prompt_ids: list[str] | None = None,
) -> pd.DataFrame:
    """The long table described in the module docstring, from scored generation rows.

    ``prompt_ids`` (default: those in ``scored``) may name prompts without a scored row, e.g.
    whose generations all failed: their groups are reported as insufficient data.
    """
    frames = []
    everyone = GroupAxis(ALL, (ALL,))
    by_prompt = scored["prompt_id"].astype(str)
    for prompt_id in prompt_ids or sorted(set(by_prompt)):
        # Canonical row order, so resampling does not depend on how rows were stored.
        part = sort_rows(scored[by_prompt == prompt_id], ["sample_id"])
        values = part[labels].to_numpy(dtype=float)
        for axis in [everyone, *axes]:
            codes = np.zeros(len(part), dtype=int) if axis is everyone else axis.codes(part)
            rng = seeded_rng(settings.seed, NAME, str(prompt_id), axis.name)
            rows = _axis_rows(values[codes >= 0], codes[codes >= 0], axis, labels, settings, rng)
            frames.append(pd.DataFrame(rows).assign(prompt_id=str(prompt_id)))
    if not frames:
        return empty_table(EXTRA)
    table = build_table(pd.concat(frames, ignore_index=True), EXTRA)
    table["scorer"] = settings.toxicity.scorer
    table["threshold"] = settings.toxicity.threshold
    return with_q_values(table, ("metric", "label"))


def _axis_rows(
    values: np.ndarray,
    codes: np.ndarray,
    axis: GroupAxis,
    labels: list[str],
    settings: AnalysisSpec,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    n_groups = len(axis.groups)
    counts = np.bincount(codes, minlength=n_groups)
    replicates = np.full((settings.n_bootstrap, n_groups, len(labels)), np.nan)
    if len(codes):
        found = bootstrap_ratios(values, np.ones(len(values)), codes, settings.n_bootstrap, rng)
        replicates[:, : found.shape[1]] = found
    low, high = percentile_interval(replicates, sizes=counts[:, None])
    above = np.vstack(
        [(values[codes == g] > settings.toxicity.threshold).sum(axis=0) for g in range(n_groups)]
    )
    share_low, share_high = wilson_interval(above, counts[:, None])
    rows = []
    for g, group in enumerate(axis.groups):
        enough = counts[g] >= MIN_GROUP_SIZE
        mean = values[codes == g].mean(axis=0) if counts[g] else np.full(len(labels), np.nan)
        for j, label in enumerate(labels):
            common = {"axis": axis.name, "group": group, "n": int(counts[g]), "label": label}
            rows.append(_estimate(common, f"mean_{label}", mean[j], low[g, j], high[g, j], enough))
            share = above[g, j] / counts[g] if counts[g] else np.nan
            rows.append(
                _estimate(
                    common,
                    f"share_{label}_above_threshold",
                    share,
                    share_low[g, j],
                    share_high[g, j],
                    enough,
                )
            )
    if axis.name != ALL:
        rows += _gap_rows(values, codes, counts, axis, labels, settings, rng)
    return rows


def _estimate(
    common: dict[str, Any], metric: str, value: float, low: float, high: float, enough: bool
) -> dict[str, Any]:
    if not enough:
        return {**common, "metric": metric, "value": None, "note": INSUFFICIENT}
    return {**common, "metric": metric, "value": value, "ci_low": low, "ci_high": high, "note": ""}


def _gap_rows(
    values: np.ndarray,
    codes: np.ndarray,
    counts: np.ndarray,
    axis: GroupAxis,
    labels: list[str],
    settings: AnalysisSpec,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """Highest minus lowest group mean, interval and p-value from one procedure
    (``gaps.largest_gap``: simultaneous over every pair of groups)."""
    usable = np.flatnonzero(counts >= MIN_GROUP_SIZE)
    base = {"axis": axis.name, "group": ALL, "n": int(counts[usable].sum())}
    keep = np.isin(codes, usable)
    local = np.searchsorted(usable, codes[keep])
    rows = []
    for j, label in enumerate(labels):
        x = values[keep, j]
        units = np.column_stack([x, x * x, np.ones(x.size)])
        gap = largest_gap(units, local, mean_estimates, settings.n_permutations, rng)
        if gap is None:
            rows.append(
                {**base, "metric": f"gap_mean_{label}", "label": label, "note": INSUFFICIENT}
            )
            continue
        hi, lo = usable[gap.high], usable[gap.low]
        rows.append(
            {
                **base,
                "metric": f"gap_mean_{label}",
                "label": label,
                "value": gap.difference,
                "ci_low": gap.interval[0],
                "ci_high": gap.interval[1],
                "note": "",
                "p_value": gap.p_value,
                "n": int(counts[hi] + counts[lo]),  # the images behind the two means compared
                "group_high": axis.groups[hi],
                "group_low": axis.groups[lo],
                "n_high": int(counts[hi]),
                "n_low": int(counts[lo]),
            }
        )
    return rows


def toxicity_findings(table: pd.DataFrame) -> list[Finding]:
    """Per prompt and axis, the gap in mean score of the scorer's first label."""
    gaps = table[table["metric"].astype(str).str.startswith("gap_mean_")]
    if gaps.empty:
        return []
    first = gaps["label"].iloc[0]
    found = []
    for row in gaps[(gaps["label"] == first) & gaps["value"].notna()].to_dict("records"):
        found.append(
            finding(
                NAME,
                row,
                f"{row['prompt_id']}, {row['axis']}: mean {first} {row['group_high']} minus "
                f"{row['group_low']}: {interval_text(row)} (n={int(row['n'])}, "
                f"{p_text(row['p_value'])}, q={row['q_value']:.3g})",
            )
        )
    return found


ANALYSIS = Analysis(
    name=NAME,
    run=analyze_toxicity,
    settings=("toxicity", "n_permutations", "n_bootstrap", "seed"),
    title="Toxicity",
    description="Toxicity scores of the generations per group: mean score (bootstrap 95% "
    "interval over images) and share above the threshold (Wilson interval).",
    inputs=("generations", SCORES_TABLE),
    findings=toxicity_findings,
)
