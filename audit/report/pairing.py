"""Pairs two runs' stored rows on the same samples and runs the paired tests of
``audit.analyses.comparison`` on them: classification correctness, new tokens, toxicity scores."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from audit.analyses.comparison import COLUMNS, compare_correctness, compare_scores
from audit.report.run_data import (
    RunData,
    read_classifications,
    read_generations,
    read_toxicity_scores,
)
from audit.store.tables import error_mask

#: Score columns of the toxicity scorers, most specific first (detoxify, then text classifiers).
TOXICITY_COLUMNS = ("toxicity", "toxic", "score")


def _ok_classifications(run: RunData, axes: Sequence[str]) -> pd.DataFrame:
    frame = read_classifications(run, ["sample_id", "task_id", "correct", "error", *axes])
    if frame.empty or "correct" not in frame:
        return frame.iloc[0:0]
    frame = frame[~error_mask(frame)]
    return frame[frame["correct"].notna()]


def _ok_generations(run: RunData, axes: Sequence[str]) -> pd.DataFrame:
    frame = read_generations(
        run, ["sample_id", "prompt_id", "n_new_tokens", "finish_reason", *axes]
    )
    if frame.empty or "n_new_tokens" not in frame:
        return frame.iloc[0:0]
    frame = frame[~error_mask(frame)]
    return frame[frame["n_new_tokens"].notna()]


def _axes_of(run: RunData, frame: pd.DataFrame) -> list[str]:
    return [axis for axis in run.group_axes if axis in frame]


def pair_correctness(base: RunData, other: RunData, n_boot: int, seed: int) -> pd.DataFrame:
    a = _ok_classifications(base, base.group_axes)
    b = _ok_classifications(other, [])
    if a.empty or b.empty:
        return pd.DataFrame(columns=COLUMNS)
    pairs = a.merge(
        b[["sample_id", "task_id", "correct"]], on=["sample_id", "task_id"], suffixes=("_a", "_b")
    )
    return compare_correctness(pairs, _axes_of(base, pairs), n_boot=n_boot, seed=seed)


def pair_new_tokens(base: RunData, other: RunData, n_boot: int, seed: int) -> pd.DataFrame:
    a = _ok_generations(base, base.group_axes)
    b = _ok_generations(other, [])
    if a.empty or b.empty:
        return pd.DataFrame(columns=COLUMNS)
    pairs = a.merge(
        b[["sample_id", "prompt_id", "n_new_tokens"]],
        on=["sample_id", "prompt_id"],
        suffixes=("_a", "_b"),
    )
    pairs = pairs.rename(columns={"n_new_tokens_a": "score_a", "n_new_tokens_b": "score_b"})
    return compare_scores(pairs, "new tokens", _axes_of(base, pairs), n_boot=n_boot, seed=seed)


def toxicity_column(scores: pd.DataFrame) -> str | None:
    """The column holding a scorer's toxicity probability."""
    for column in TOXICITY_COLUMNS:
        if column in scores:
            return column
    return None


def pair_toxicity(base: RunData, other: RunData, n_boot: int, seed: int) -> pd.DataFrame:
    scores_a, scores_b = read_toxicity_scores(base), read_toxicity_scores(other)
    if scores_a is None or scores_b is None:
        return pd.DataFrame(columns=COLUMNS)
    groups = _ok_generations(base, base.group_axes).drop(
        columns=["n_new_tokens", "finish_reason"], errors="ignore"
    )
    results = []
    shared = sorted(set(scores_a["scorer"].astype(str)) & set(scores_b["scorer"].astype(str)))
    for scorer in shared:
        a = scores_a[scores_a["scorer"].astype(str) == scorer]
        b = scores_b[scores_b["scorer"].astype(str) == scorer]
        column = toxicity_column(a)
        if column is None or column not in b:
            continue
        pairs = (
            a[["sample_id", "prompt_id", column]]
            .merge(
                b[["sample_id", "prompt_id", column]],
                on=["sample_id", "prompt_id"],
                suffixes=("_a", "_b"),
            )
            .rename(columns={f"{column}_a": "score_a", f"{column}_b": "score_b"})
        )
        pairs = pairs.merge(groups, on=["sample_id", "prompt_id"], how="left")
        pairs = pairs.dropna(subset=["score_a", "score_b"])
        if not pairs.empty:
            results.append(
                compare_scores(
                    pairs, f"toxicity ({scorer})", _axes_of(base, pairs), n_boot=n_boot, seed=seed
                )
            )
    return pd.concat(results, ignore_index=True) if results else pd.DataFrame(columns=COLUMNS)


def paired_comparison(
    base: RunData, other: RunData, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Every paired test between ``base`` (A) and ``other`` (B) on their shared samples."""
    parts = [
        pair_correctness(base, other, n_boot, seed),
        pair_new_tokens(base, other, n_boot, seed),
        pair_toxicity(base, other, n_boot, seed),
    ]
    parts = [p for p in parts if not p.empty]
    table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    return table.assign(run_a=base.label, run_b=other.label)
