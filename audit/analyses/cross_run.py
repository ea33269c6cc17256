"""The paired comparison of two runs (B − A) on the samples both hold, as an analysis result.

``audit analyze B --against A`` computes it and stores it in B's run directory
(``analysis/comparisons/``) with its settings and the state of both runs it was computed from.
The report and the dashboard read it through ``compare_runs``: the stored table while both runs
are unchanged, otherwise the same computation with the same settings (A's ``n_bootstrap`` and
``seed``), so both always show the same intervals.

Tests (``audit.analyses.comparison``): classification correctness by McNemar's exact test, new
tokens and toxicity scores by a paired bootstrap over images with a sign-flip p-value.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from audit.analyses.comparison import COLUMNS, compare_correctness, compare_scores
from audit.analyses.pipeline import analysis_settings
from audit.scoring.toxicity import read_scores
from audit.store.tables import RunStore, error_mask

#: Score columns of the toxicity scorers, most specific first (detoxify, then text classifiers).
TOXICITY_COLUMNS = ("toxicity", "toxic", "score")


@dataclass(frozen=True)
class Comparison:
    """B − A on shared samples, with how it was made."""

    table: pd.DataFrame
    n_resamples: int
    seed: int
    #: Read from B's run directory (``audit analyze B --against A``), or computed now.
    stored: bool


def compare_runs(base: RunStore, other: RunStore) -> Comparison:
    """``other`` − ``base``: the stored comparison while both runs are as they were when it was
    stored, else computed now with the same settings."""
    n_resamples, seed = comparison_settings(base)
    found = other.read_comparison(comparison_name(base))
    if found is not None:
        table, meta = found
        if (
            meta.get("tokens") == [base.change_token(), other.change_token()]
            and meta.get("n_resamples") == n_resamples
            and meta.get("seed") == seed
            and set(COLUMNS) <= set(table.columns)
        ):
            return Comparison(table, n_resamples, seed, stored=True)
    return Comparison(paired_comparison(base, other, n_resamples, seed), n_resamples, seed, False)


def store_comparison(other: RunStore, base: RunStore) -> Comparison:
    """Compute ``other`` − ``base`` and store it in ``other``'s run directory."""
    n_resamples, seed = comparison_settings(base)
    table = paired_comparison(base, other, n_resamples, seed)
    meta = {
        "against": str(base.root),
        "against_run_id": base.manifest().run_id,
        "n_resamples": n_resamples,
        "seed": seed,
        "tokens": [base.change_token(), other.change_token()],
    }
    other.write_comparison(comparison_name(base), table, meta)
    return Comparison(table, n_resamples, seed, stored=True)


def comparison_settings(base: RunStore) -> tuple[int, int]:
    """Resamples and seed: the base run's analysis settings."""
    settings = analysis_settings(base.manifest(), base.manifest_path)
    return settings.n_bootstrap, settings.seed


def comparison_name(base: RunStore) -> str:
    """The name of a comparison against ``base`` (its run id and where it lies)."""
    where = hashlib.sha256(str(base.root.resolve()).encode()).hexdigest()[:12]
    run_id = "".join(c if c.isalnum() or c in "-_." else "-" for c in base.manifest().run_id)
    return f"{run_id[:60]}-{where}"


def paired_comparison(base: RunStore, other: RunStore, n_resamples: int, seed: int) -> pd.DataFrame:
    """Every paired test between ``base`` (A) and ``other`` (B) on their shared samples."""
    axes = list(base.manifest().group_axes)
    parts = [
        _pair_correctness(base, other, axes, n_resamples, seed),
        _pair_new_tokens(base, other, axes, n_resamples, seed),
        _pair_toxicity(base, other, axes, n_resamples, seed),
    ]
    parts = [p for p in parts if not p.empty]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def toxicity_column(scores: pd.DataFrame) -> str | None:
    """The column holding a scorer's toxicity probability."""
    for column in TOXICITY_COLUMNS:
        if column in scores:
            return column
    return None


def _read(store: RunStore, table: str, columns: Sequence[str]) -> pd.DataFrame:
    available = set(store.columns(table))
    wanted = [c for c in columns if c in available]
    return store.read(table, columns=wanted) if wanted else pd.DataFrame(columns=list(columns))


def _ok_classifications(store: RunStore, axes: Sequence[str]) -> pd.DataFrame:
    frame = _read(store, "classifications", ["sample_id", "task_id", "correct", "error", *axes])
    if frame.empty or "correct" not in frame:
        return frame.iloc[0:0]
    frame = frame[~error_mask(frame)]
    return frame[frame["correct"].notna()]


def _ok_generations(store: RunStore, axes: Sequence[str]) -> pd.DataFrame:
    columns = ["sample_id", "prompt_id", "n_new_tokens", "finish_reason", "error", *axes]
    frame = _read(store, "generations", columns)
    if frame.empty or "n_new_tokens" not in frame:
        return frame.iloc[0:0]
    frame = frame[~error_mask(frame)]
    return frame[frame["n_new_tokens"].notna()]


def _present(axes: Sequence[str], frame: pd.DataFrame) -> list[str]:
    return [axis for axis in axes if axis in frame]


def _paired(a: pd.DataFrame, b: pd.DataFrame, item: str, column: str) -> pd.DataFrame:
    """A's rows with B's ``column`` on the same sample and item (``column_a``, ``column_b``)."""
    keys = ["sample_id", item]
    return a.merge(b[[*keys, column]], on=keys, suffixes=("_a", "_b"))


def _pair_correctness(
    base: RunStore, other: RunStore, axes: Sequence[str], n_resamples: int, seed: int
) -> pd.DataFrame:
    a, b = _ok_classifications(base, axes), _ok_classifications(other, [])
    if a.empty or b.empty:
        return pd.DataFrame(columns=COLUMNS)
    pairs = _paired(a, b, "task_id", "correct")
    return compare_correctness(pairs, _present(axes, pairs), n_boot=n_resamples, seed=seed)


def _pair_new_tokens(
    base: RunStore, other: RunStore, axes: Sequence[str], n_resamples: int, seed: int
) -> pd.DataFrame:
    a, b = _ok_generations(base, axes), _ok_generations(other, [])
    if a.empty or b.empty:
        return pd.DataFrame(columns=COLUMNS)
    pairs = _paired(a, b, "prompt_id", "n_new_tokens").rename(
        columns={"n_new_tokens_a": "score_a", "n_new_tokens_b": "score_b"}
    )
    present = _present(axes, pairs)
    return compare_scores(pairs, "new tokens", present, n_boot=n_resamples, seed=seed)


def _pair_toxicity(
    base: RunStore, other: RunStore, axes: Sequence[str], n_resamples: int, seed: int
) -> pd.DataFrame:
    scores_a, scores_b = read_scores(base), read_scores(other)
    if scores_a.empty or scores_b.empty:
        return pd.DataFrame(columns=COLUMNS)
    groups = _ok_generations(base, axes).drop(
        columns=["n_new_tokens", "finish_reason", "error"], errors="ignore"
    )
    results = []
    shared = sorted(set(scores_a["scorer"].astype(str)) & set(scores_b["scorer"].astype(str)))
    for scorer in shared:
        a = scores_a[scores_a["scorer"].astype(str) == scorer]
        b = scores_b[scores_b["scorer"].astype(str) == scorer]
        column = toxicity_column(a)
        if column is None or column not in b:
            continue
        pairs = _paired(a[["sample_id", "prompt_id", column]], b, "prompt_id", column).rename(
            columns={f"{column}_a": "score_a", f"{column}_b": "score_b"}
        )
        pairs = pairs.merge(groups, on=["sample_id", "prompt_id"], how="left")
        pairs = pairs.dropna(subset=["score_a", "score_b"])
        if not pairs.empty:
            metric = f"toxicity ({scorer})"
            present = _present(axes, pairs)
            results.append(compare_scores(pairs, metric, present, n_boot=n_resamples, seed=seed))
    return pd.concat(results, ignore_index=True) if results else pd.DataFrame(columns=COLUMNS)
