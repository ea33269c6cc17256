"""Zero-shot classification rows: the tasks, and predictions from label log-likelihoods.

Each row holds ``score_<value>`` (summed log-likelihood of the value's label) and
``n_tokens_<value>``. Two predictions are derived: ``sum`` (argmax of the summed
log-likelihood, the IDEFICS card's method, which favours short labels) and ``mean`` (argmax of
the per-token mean). Without score columns (an import), ``sum`` falls back to the stored
``prediction``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.store.schema import Manifest

SCORINGS = ("sum", "mean")
#: Metric name suffix per scoring: ``accuracy`` is the card's summed log-likelihood.
SUFFIX = {"sum": "", "mean": "_per_token"}


@dataclass(frozen=True)
class Task:
    """A classification task: id, target axis and candidate values in label order."""

    id: str
    target: str | None
    values: tuple[str, ...]


def tasks_of(manifest: Manifest, frame: pd.DataFrame) -> list[Task]:
    """Tasks named in the manifest, then any other task found in the table."""
    tasks: dict[str, Task] = {}
    for item in manifest.tasks:
        values = tuple(dict.fromkeys(str(v) for v in item.labels.values()))
        tasks[item.id] = Task(item.id, item.target or None, values)
    if "task_id" in frame:
        for task_id in sorted(set(frame["task_id"].astype(str)) - set(tasks)):
            rows = frame[frame["task_id"].astype(str) == task_id]
            scored = [
                c[len("score_") :]
                for c in rows.columns
                if c.startswith("score_") and rows[c].notna().any()
            ]
            targets = rows["target"].dropna().astype(str).unique() if "target" in rows else []
            tasks[task_id] = Task(task_id, None, tuple(dict.fromkeys([*scored, *sorted(targets)])))
    return list(tasks.values())


def predictions(rows: pd.DataFrame, task: Task, scoring: str) -> np.ndarray | None:
    """Predicted value per row under ``scoring``, or None when the columns it needs are missing.

    Rows whose scores are all missing get a null prediction (counted as wrong).
    """
    # A value without a score column (a label no row was scored for) can never be predicted.
    values = [v for v in task.values if f"score_{v}" in rows.columns]
    if len(values) < 2:
        if scoring == "sum" and "prediction" in rows:
            return rows["prediction"].astype(object).where(rows["prediction"].notna()).to_numpy()
        return None
    scores = rows[[f"score_{v}" for v in values]].apply(pd.to_numeric, errors="coerce")
    scores = scores.to_numpy(dtype=float)
    if scoring == "mean":
        lengths = [f"n_tokens_{v}" for v in values]
        if not set(lengths) <= set(rows.columns):
            return None
        counts = rows[lengths].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            scores = np.where(counts > 0, scores / counts, np.nan)
    missing = np.isnan(scores).all(axis=1)
    best = np.argmax(np.where(np.isnan(scores), -np.inf, scores), axis=1)
    chosen = np.array(values, dtype=object)[best]
    chosen[missing] = None
    return chosen
