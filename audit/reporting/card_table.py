"""The IDEFICS model card's zero-shot accuracy table: "accuracy (std)" per task.

The card reports overall accuracy and the population standard deviation (ddof=0) of the
accuracies of the gender x race cells. Beside it we show the std that sampling noise alone would
give if every cell had the overall accuracy, so a reader can tell a spread between groups from the
spread that small cells produce anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.reporting.formatting import INSUFFICIENT, is_missing

#: The card's intersection; another intersection is used when a dataset has no gender x race.
PREFERRED_INTERSECTION = "gender x race"


@dataclass(frozen=True)
class CardCell:
    """One task's entry: overall accuracy, the std over intersection cells, and its context."""

    task_id: str
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    cell_std: float | None
    noise_std: float | None
    n_cells: int
    intersection: str

    def text(self) -> str:
        """``95.8 (1.0)`` in percent, the card's layout; words when a part is missing."""
        if self.accuracy is None:
            return INSUFFICIENT
        std = "—" if self.cell_std is None else f"{100 * self.cell_std:.1f}"
        return f"{100 * self.accuracy:.1f} ({std})"


def _intersection(rows: pd.DataFrame) -> str:
    axes = [a for a in dict.fromkeys(rows["axis"].astype(str)) if " x " in a]
    if PREFERRED_INTERSECTION in axes:
        return PREFERRED_INTERSECTION
    return axes[0] if axes else ""


def _usable(rows: pd.DataFrame) -> pd.DataFrame:
    notes = rows["note"].fillna("").astype(str) if "note" in rows else pd.Series("", rows.index)
    keep = rows["value"].notna() & notes.ne(INSUFFICIENT)
    if "n" in rows:
        keep &= rows["n"].fillna(0).astype(float) > 0
    return rows[keep]


def card_cells(classification: pd.DataFrame, metric: str = "accuracy") -> list[CardCell]:
    """One ``CardCell`` per task of a ``classification`` analysis table."""
    cells = []
    table = classification[classification["metric"].astype(str) == metric]
    for task_id, rows in table.groupby("task_id", sort=False):
        overall = _usable(rows[rows["axis"].astype(str) == "all"])
        intersection = _intersection(rows)
        parts = _usable(rows[rows["axis"].astype(str) == intersection]) if intersection else rows[:0]
        values = parts["value"].astype(float).to_numpy()
        counts = parts["n"].astype(float).to_numpy() if "n" in parts else np.array([])
        accuracy = None if overall.empty else float(overall["value"].iloc[0])
        cells.append(CardCell(
            task_id=str(task_id),
            accuracy=accuracy,
            ci_low=_float(overall, "ci_low"),
            ci_high=_float(overall, "ci_high"),
            n=int(overall["n"].iloc[0]) if not overall.empty and "n" in overall else 0,
            cell_std=float(np.std(values, ddof=0)) if values.size >= 2 else None,
            noise_std=_noise_std(accuracy, counts),
            n_cells=int(values.size),
            intersection=intersection,
        ))
    return cells


def _float(rows: pd.DataFrame, column: str) -> float | None:
    if rows.empty or column not in rows or is_missing(rows[column].iloc[0]):
        return None
    return float(rows[column].iloc[0])


def _noise_std(accuracy: float | None, counts: np.ndarray) -> float | None:
    """Expected population std of K cell accuracies that differ only by binomial noise.

    For K independent estimates with variances p(1-p)/n_k around one mean, the expected
    population variance is (K-1)/K times their mean variance.
    """
    if accuracy is None or counts.size < 2 or (counts <= 0).any():
        return None
    variances = accuracy * (1 - accuracy) / counts
    k = counts.size
    return math.sqrt((k - 1) / k * float(variances.mean()))
