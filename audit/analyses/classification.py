"""``classification``: zero-shot accuracy per task and group, gaps between groups, the card's std.

For each task and scoring (``sum``: summed label log-likelihood, the card's method, metric names
as below; ``mean``: per-token mean, the same metric names with ``_per_token`` appended):

- ``accuracy`` overall (axis ``all``), per group of every axis and per group of every pairwise
  intersection (``gender x race``), Wilson intervals (one row per image and task);
- ``accuracy_gap`` per axis/intersection (group ``all``): best minus worst group accuracy; its
  interval and p-value come from one procedure, simultaneous over every pair of groups (so both
  account for having picked the extreme pair; ``rates.largest_gap``): the interval excludes 0
  exactly when p < 0.05. ``n`` is the two groups' images, ``n_best`` / ``n_worst`` each side's;
  ``min_detectable_gap`` (two-sided α = 0.05, power 0.8, at the overall accuracy and the two
  groups' sizes), ``worst_group`` / ``best_group``;
- ``cell_accuracy_std`` per intersection: the card's "std", the population std (ddof=0) of the
  cells' accuracies; its interval is for the std of the cells' *true* accuracies (binomial
  noise taken out, parametric bootstrap from Jeffreys-smoothed cells,
  ``stats.true_spread_interval``);
  its ``p_value`` is the share of noise-only stds at least as large.
  ``cell_accuracy_std_noise``: the std that binomial noise alone gives when every cell has
  the overall accuracy (mean over simulations; interval: 2.5–97.5 percentiles).

Where labels were chosen by the model (an endpoint's ``choice`` method, ``scoring_method``
column), ``invalid_answer_rate`` overall and per group and intersection (Wilson intervals): the
share of answers that named no label, counted wrong in the accuracy. A model that declines to
classify some groups more than others shows here.

Extra columns: ``scoring``, ``successes``, ``observations``, ``p_value``, ``min_detectable_gap``,
``worst_group``, ``best_group``, ``n_worst``, ``n_best``. Groups with fewer than
``MIN_GROUP_SIZE`` images are reported as ``insufficient data`` and left out of gaps and stds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from audit.analyses.findings import Finding, finding, fmt, interval_text, p_text
from audit.analyses.grouping import (
    GroupAxis,
    ItemRows,
    Split,
    intersections,
    sort_rows,
    split_table,
)
from audit.analyses.label_scores import SCORINGS, SUFFIX, Task, predictions, tasks_of
from audit.analyses.rates import UnitRates, group_rows, largest_gap, overall_row
from audit.analyses.registry import Analysis, AnalysisContext
from audit.analyses.stats import (
    minimum_detectable_difference,
    true_spread_interval,
)
from audit.analyses.table import (
    ALL,
    ID,
    empty_table,
    estimate,
    insufficient,
    records_table,
    with_q_values,
)

NAME = "classification"
EXTRA = (
    "scoring",
    "successes",
    "observations",
    "p_value",
    "q_value",
    "min_detectable_gap",
    "worst_group",
    "best_group",
    "n_worst",
    "n_best",
)


def task_split(context: AnalysisContext) -> tuple[list[Task], Split] | None:
    """The tasks, and the classifications per task and group axis (every axis and pairwise
    intersection; a task's label values count as groups of its target axis even when no row has
    them); None when the run has none. Shared by the accuracy and confusion analyses."""
    frame = context.classifications
    if frame.empty or "task_id" not in frame or "target" not in frame:
        return None
    tasks = tasks_of(context.manifest, sort_rows(frame, ["sample_id", "task_id"]))
    extra: dict[str, list[str]] = {}
    for task in tasks:
        if task.target:
            extra.setdefault(task.target, []).extend(task.values)
    names = [*context.group_axes, *intersections(context.group_axes)]
    return tasks, split_table(frame, "task_id", [t.id for t in tasks], names, extra)


def labelled(item: ItemRows) -> pd.DataFrame:
    """A task's successful rows that have a true value."""
    return item.valid[item.valid["target"].notna()].reset_index(drop=True)


def classification(context: AnalysisContext) -> pd.DataFrame:
    """Accuracy per task x group and intersection, gaps with tests, and the card's std."""
    prepared = task_split(context)
    if prepared is None:
        return empty_table(EXTRA)
    tasks, split = prepared
    records: list[dict[str, Any]] = []
    for task, item in zip(tasks, split.items, strict=True):
        rows = labelled(item)
        for scoring in SCORINGS:
            predicted = predictions(rows, task, scoring)
            if predicted is None:
                continue
            correct = (predicted == rows["target"].astype(str).to_numpy()).astype(float)
            records += _task_records(context, task.id, scoring, rows, correct, split.axes)
        if _chosen(rows):
            records += _invalid_answer_records(task.id, rows, split.axes)
    return with_q_values(records_table(records, EXTRA), ("metric", "scoring"))


def _chosen(rows: pd.DataFrame) -> bool:
    """Rows whose label the model chose by answering (not by log-likelihood)."""
    return "scoring_method" in rows and bool(rows["scoring_method"].eq("choice").any())


def _invalid_answer_records(
    task_id: str, rows: pd.DataFrame, axes: list[GroupAxis]
) -> list[dict[str, Any]]:
    invalid = rows["prediction"].isna().to_numpy(dtype=float)
    ones, metric = np.ones(len(rows)), "invalid_answer_rate"
    overall = UnitRates(invalid, ones, np.zeros(len(rows), dtype=int), (ALL,))
    records = [overall_row(task_id, metric, overall, scoring="sum")]
    for axis in axes:
        rates = UnitRates(invalid, ones, axis.codes(rows), axis.groups)
        records += group_rows(task_id, axis.name, metric, rates, scoring="sum")
    return records


def _task_records(
    context: AnalysisContext,
    task_id: str,
    scoring: str,
    rows: pd.DataFrame,
    correct: np.ndarray,
    axes: list[GroupAxis],
) -> list[dict[str, Any]]:
    settings = context.settings
    suffix = SUFFIX[scoring]
    metric = f"accuracy{suffix}"
    overall = UnitRates(correct, np.ones(len(rows)), np.zeros(len(rows), dtype=int), (ALL,))
    records = [overall_row(task_id, metric, overall, scoring=scoring)]
    accuracy = float(correct.mean()) if len(rows) else float("nan")
    for axis in axes:
        rng = context.rng(NAME, task_id, scoring, axis.name)
        rates = UnitRates(correct, np.ones(len(rows)), axis.codes(rows), axis.groups)
        groups = group_rows(task_id, axis.name, metric, rates, scoring=scoring)
        records += groups
        records.append(_gap_row(task_id, axis.name, suffix, rates, groups, accuracy, settings, rng))
        if " x " in axis.name:
            records += _std_rows(task_id, axis.name, suffix, rates, accuracy, settings, rng)
    for record in records:
        record["scoring"] = scoring
    return records


def _gap_row(
    task_id: str,
    axis: str,
    suffix: str,
    rates: UnitRates,
    groups: list[dict[str, Any]],
    accuracy: float,
    settings: Any,
    rng: np.random.Generator,
) -> dict[str, Any]:
    metric = f"accuracy_gap{suffix}"
    usable = [g for g in groups if g["value"] is not None]
    gap = largest_gap(rates, settings.n_permutations, rng) if len(usable) >= 2 else None
    if gap is None:
        return insufficient(task_id, axis, ALL, metric, int(sum(g["n"] for g in usable)))
    best, worst = rates.groups[gap.high], rates.groups[gap.low]
    n_best, n_worst = (next(g["n"] for g in usable if g["group"] == name) for name in (best, worst))
    detectable = minimum_detectable_difference(accuracy, n_best, n_worst)
    return estimate(
        task_id,
        axis,
        ALL,
        metric,
        gap.difference,
        gap.interval,
        int(n_best + n_worst),
        p_value=gap.p_value,
        min_detectable_gap=detectable,
        worst_group=worst,
        best_group=best,
        n_worst=int(n_worst),
        n_best=int(n_best),
    )


def _std_rows(
    task_id: str,
    axis: str,
    suffix: str,
    rates: UnitRates,
    accuracy: float,
    settings: Any,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """The card's std over intersection cells, and the std binomial noise alone would give."""
    metric, noise_metric = f"cell_accuracy_std{suffix}", f"cell_accuracy_std_noise{suffix}"
    keep, local = rates.restricted()
    n = int(keep.size)
    cells = int(local.max()) + 1 if local.size else 0
    if cells < 2:
        return [
            insufficient(task_id, axis, ALL, metric, n),
            insufficient(task_id, axis, ALL, noise_metric, n),
        ]
    sizes = np.bincount(local, minlength=cells)
    successes = np.bincount(local, weights=rates.successes[keep], minlength=cells)
    observed = successes / sizes
    std = float(observed.std())
    low, high = true_spread_interval(successes, sizes, settings.n_bootstrap, rng)
    noise = (rng.binomial(sizes, accuracy, size=(settings.n_bootstrap, cells)) / sizes).std(axis=1)
    noise_low, noise_high = np.percentile(noise, [2.5, 97.5])
    p_value = (1 + np.sum(noise >= std - 1e-12)) / (1 + noise.size)
    return [
        estimate(task_id, axis, ALL, metric, std, (low, high), n, p_value=p_value),
        estimate(task_id, axis, ALL, noise_metric, float(noise.mean()), (noise_low, noise_high), n),
    ]


def classification_findings(table: pd.DataFrame) -> list[Finding]:
    """Per task (card's scoring): accuracy (std), and per axis the largest gap with its test."""
    found: list[Finding] = []
    rows = table[table["scoring"] == "sum"] if "scoring" in table else table
    for task_id, part in rows.groupby(ID, sort=False):
        overall = part[(part["axis"] == ALL) & (part["metric"] == "accuracy")]
        stds = part[(part["metric"] == "cell_accuracy_std") & part["value"].notna()]
        noise = part[part["metric"] == "cell_accuracy_std_noise"]
        if not overall.empty and overall["value"].notna().any():
            row = overall.iloc[0]
            std_text = ""
            if not stds.empty:
                cell = stds.iloc[0]
                expected = noise[noise["axis"] == cell["axis"]]
                std_text = (
                    f"; std over {cell['axis']} cells {_points(cell['value'])} points "
                    f"(noise alone: {_points(expected['value'].iloc[0])})"
                    if not expected.empty
                    else ""
                )
            found.append(
                finding(
                    NAME,
                    row,
                    f"task '{task_id}': accuracy "
                    f"{interval_text(row, True)} (n={int(row['n'])})"
                    f"{std_text}",
                )
            )
        gaps = part[(part["metric"] == "accuracy_gap") & part["value"].notna()]
        for _, gap in gaps[~gaps["axis"].str.contains(" x ")].iterrows():
            found.append(
                finding(
                    NAME,
                    gap,
                    f"task '{task_id}', {gap['axis']}: worst group {gap['worst_group']} "
                    f"(n={_count(gap.get('n_worst'))}), {_points(gap['value'])} points below "
                    f"{gap['best_group']} (n={_count(gap.get('n_best'))}) "
                    f"[{_points(gap['ci_low'])}, {_points(gap['ci_high'])}], "
                    f"{p_text(gap['p_value'])} over every pair of groups; smallest gap "
                    f"detectable at these n: {_points(gap['min_detectable_gap'])} points",
                )
            )
    return found


def _count(value: Any) -> str:
    return "?" if value is None or pd.isna(value) else str(int(value))


def _points(value: Any) -> str:
    """A proportion difference in percentage points: ``12.3``."""
    number = fmt(value)
    return "n/a" if number == "n/a" else f"{100 * float(value):.1f}"


ANALYSIS = Analysis(
    name=NAME,
    run=classification,
    inputs=("classifications",),
    settings=("n_permutations", "n_bootstrap", "seed"),
    title="Zero-shot classification accuracy",
    description="Accuracy of ranking the candidate labels by log-likelihood, per group, with "
    "Wilson 95% intervals.",
    markdown_metrics=frozenset({"accuracy"}),
    findings=classification_findings,
)
