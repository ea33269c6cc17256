"""The IDEFICS model card's zero-shot accuracy table: "accuracy (std)" per task.

The card reports overall accuracy and the population standard deviation (ddof=0) of the
accuracies of the gender x race cells. Beside it we show the std that sampling noise alone would
give if every cell had the overall accuracy, so a reader can tell a spread between groups from the
spread that small cells produce anyway.

``audit analyze`` writes both stds (``cell_accuracy_std``, ``cell_accuracy_std_noise``, with a
p-value); for a table without them the std is computed here from the intersection cells and the
noise std from the binomial variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from audit.analyses.table import ID
from audit.report.formatting import INSUFFICIENT, is_missing

#: The card's intersection; another intersection is used when a dataset has no gender x race.
PREFERRED_INTERSECTION = "gender x race"
#: Scorings of ``audit analyze``: the card's summed log-likelihood, and the per-token mean.
SCORINGS = {"": "summed log-likelihood", "_per_token": "per-token mean log-likelihood"}
#: The scoring of a run whose model named its labels (no log-likelihoods, one scoring).
CHOSEN = "the model's choice"


@dataclass(frozen=True)
class CardCell:
    """One task's entry under one scoring: accuracy, the cell std, and the noise-only std."""

    task_id: str
    scoring: str
    accuracy: float | None
    ci_low: float | None
    ci_high: float | None
    n: int
    cell_std: float | None
    noise_std: float | None
    std_p_value: float | None
    n_cells: int
    intersection: str

    def text(self) -> str:
        """``95.8 (1.0)`` in percent, the card's layout; words when a part is missing."""
        if self.accuracy is None:
            return INSUFFICIENT
        std = "—" if self.cell_std is None else f"{100 * self.cell_std:.1f}"
        return f"{100 * self.accuracy:.1f} ({std})"

    def noise_text(self) -> str:
        """The noise-only std in the same unit as the card's std (points): ``1.0``."""
        return "—" if self.noise_std is None else f"{100 * self.noise_std:.1f}"


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


def _first(rows: pd.DataFrame, column: str) -> float | None:
    if rows.empty or column not in rows or is_missing(rows[column].iloc[0]):
        return None
    return float(rows[column].iloc[0])


def card_cell(rows: pd.DataFrame, task_id: str, suffix: str = "") -> CardCell | None:
    """The entry of one task (``rows``: that task's classification rows), or None when the
    table has no accuracy under this scoring."""
    metric = rows["metric"].astype(str)
    accuracy_rows = rows[metric == f"accuracy{suffix}"]
    if accuracy_rows.empty:
        return None
    overall = _usable(accuracy_rows[accuracy_rows["axis"].astype(str) == "all"])
    intersection = _intersection(accuracy_rows)
    on_axis = rows["axis"].astype(str) == intersection
    cells = _usable(accuracy_rows[accuracy_rows["axis"].astype(str) == intersection])
    stored_std = _usable(rows[on_axis & (metric == f"cell_accuracy_std{suffix}")])
    stored_noise = _usable(rows[on_axis & (metric == f"cell_accuracy_std_noise{suffix}")])
    accuracy = _first(overall, "value")
    values = cells["value"].astype(float).to_numpy()
    counts = cells["n"].astype(float).to_numpy() if "n" in cells else np.array([])
    own_std = float(np.std(values, ddof=0)) if values.size >= 2 else None
    return CardCell(
        task_id=task_id,
        scoring=SCORINGS.get(suffix, suffix),
        accuracy=accuracy,
        ci_low=_first(overall, "ci_low"),
        ci_high=_first(overall, "ci_high"),
        n=int(_first(overall, "n") or 0),
        cell_std=_first(stored_std, "value") if not stored_std.empty else own_std,
        noise_std=(
            _first(stored_noise, "value")
            if not stored_noise.empty
            else _noise_std(accuracy, counts)
        ),
        std_p_value=_first(stored_std, "p_value"),
        n_cells=int(values.size),
        intersection=intersection,
    )


def card_cells(classification: pd.DataFrame, suffix: str = "") -> list[CardCell]:
    """One ``CardCell`` per task of a ``classification`` analysis table, for one scoring."""
    cells = []
    for task_id, rows in classification.groupby(ID, sort=False):
        cell = card_cell(rows, str(task_id), suffix)
        if cell is not None:
            cells.append(cell)
    return cells


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


#: How each scoring context reads in a table and in a sentence.
CONTEXTS = {
    "card": (
        "card's",
        "the card's context (the image, then the template; no chat wrapper or preamble, and no "
        "BOS unless the model's processor writes one)",
    ),
    "chat": ("chat", "a chat (the template as the start of the answer, after the preamble)"),
    "served": (
        "server's chat",
        "the server's chat template without the preamble (a chat endpoint cannot lay out the "
        "card's context)",
    ),
}


def context_text(contexts: dict[str, str], long: bool = False) -> str:
    """Where a run's labels were scored: one phrase when every task shares it, else per task."""
    if not contexts:
        return "—"
    index = 1 if long else 0
    if len(set(contexts.values())) == 1:
        only = next(iter(contexts.values()))
        return CONTEXTS.get(only, (only, only))[index]
    return ", ".join(f"{task}: {CONTEXTS.get(c, (c, c))[0]}" for task, c in contexts.items())
