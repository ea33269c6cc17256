"""The paired comparison of two runs (B − A) on the images both hold, as an analysis result.

Samples pair by the digest of their image's pixels where both runs stored one, else by
``sample_id`` (``audit.analyses.pairing``), and are grouped by A's labels under the names both
runs share (``audit.analyses.group_names``): a FairFace run pairs with an import of the IDEFICS
team's published generations image by image. Where both runs are of one model, the share of
identical generations per prompt says how closely one reproduces the other
(``audit.analyses.agreement``).

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

from audit.analyses.agreement import generation_agreement, same_model
from audit.analyses.comparison import COLUMNS, compare_correctness, compare_scores
from audit.analyses.pairing import Pairing, SamplePairs, pair_runs
from audit.analyses.pipeline import analysis_settings
from audit.analyses.table import empty_table
from audit.locations import public_name
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
    #: How the images were paired and the groups named (always computed now: it is cheap).
    pairing: Pairing
    #: Share of identical generations per prompt and group when both runs are of one model
    #: (an analysis table: value, interval, n); empty otherwise.
    agreement: pd.DataFrame


def compare_runs(base: RunStore, other: RunStore) -> Comparison:
    """``other`` − ``base``: the stored comparison while both runs are as they were when it was
    stored, else computed now with the same settings."""
    n_resamples, seed = comparison_settings(base)
    pairs = pair_runs(base, other)
    agreement = agreement_table(base, other, pairs)
    found = other.read_comparison(comparison_name(base))
    if found is not None:
        table, meta = found
        if (
            meta.get("tokens") == [base.change_token(), other.change_token()]
            and meta.get("n_resamples") == n_resamples
            and meta.get("seed") == seed
            and meta.get("pairing") == pairs.pairing.to_json()
            and set(COLUMNS) <= set(table.columns)
        ):
            return Comparison(table, n_resamples, seed, True, pairs.pairing, agreement)
    table = paired_comparison(base, other, n_resamples, seed, pairs)
    return Comparison(table, n_resamples, seed, False, pairs.pairing, agreement)


def store_comparison(other: RunStore, base: RunStore) -> Comparison:
    """Compute ``other`` − ``base`` and store it in ``other``'s run directory."""
    n_resamples, seed = comparison_settings(base)
    pairs = pair_runs(base, other)
    table = paired_comparison(base, other, n_resamples, seed, pairs)
    meta = {
        "against": str(base.root),
        "against_run_id": base.manifest().run_id,
        "n_resamples": n_resamples,
        "seed": seed,
        "tokens": [base.change_token(), other.change_token()],
        "pairing": pairs.pairing.to_json(),
    }
    other.write_comparison(comparison_name(base), table, meta)
    agreement = agreement_table(base, other, pairs)
    return Comparison(table, n_resamples, seed, True, pairs.pairing, agreement)


def comparison_settings(base: RunStore) -> tuple[int, int]:
    """Resamples and seed: the base run's analysis settings."""
    settings = analysis_settings(base.manifest(), base.manifest_path)
    return settings.n_bootstrap, settings.seed


def comparison_name(base: RunStore) -> str:
    """The name of a comparison against ``base`` (its run id and where it lies)."""
    where = hashlib.sha256(str(base.root.resolve()).encode()).hexdigest()[:12]
    run_id = "".join(c if c.isalnum() or c in "-_." else "-" for c in base.manifest().run_id)
    return f"{run_id[:60]}-{where}"


def paired_comparison(
    base: RunStore,
    other: RunStore,
    n_resamples: int,
    seed: int,
    pairs: SamplePairs | None = None,
) -> pd.DataFrame:
    """Every paired test between ``base`` (A) and ``other`` (B) on the images both hold."""
    pairs = pairs or pair_runs(base, other)
    parts = [
        _pair_correctness(base, other, pairs, n_resamples, seed),
        _pair_new_tokens(base, other, pairs, n_resamples, seed),
        _pair_toxicity(base, other, pairs, n_resamples, seed),
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


def agreement_table(base: RunStore, other: RunStore, pairs: SamplePairs) -> pd.DataFrame:
    """The share of identical generations per prompt and group, when both runs are of one
    model (an empty table otherwise: different models agreeing or not says nothing)."""
    if not same_model(base.manifest().model.id, other.manifest().model.id):
        return empty_table()
    columns = ["sample_id", "prompt_id", "generation", "finish_reason", "error"]
    a, b = _ok_texts(base, columns), _ok_texts(other, columns)
    if a.empty or b.empty:
        return empty_table()
    a = pairs.base_rows(a)[["sample_id", "prompt_id", "generation", *pairs.axes]]
    b = pairs.other_rows(b)[["sample_id", "prompt_id", "generation"]]
    merged = a.merge(b, on=["sample_id", "prompt_id"], suffixes=("_a", "_b"))
    return generation_agreement(merged, pairs.axes) if len(merged) else empty_table()


def _ok_texts(store: RunStore, columns: Sequence[str]) -> pd.DataFrame:
    frame = _read(store, "generations", columns)
    if frame.empty or "generation" not in frame:
        return frame.iloc[0:0]
    frame = frame[~error_mask(frame)]
    return frame[frame["generation"].notna()]


def _ok_classifications(store: RunStore) -> pd.DataFrame:
    frame = _read(store, "classifications", ["sample_id", "task_id", "correct", "error"])
    if frame.empty or "correct" not in frame:
        return frame.iloc[0:0]
    frame = frame[~error_mask(frame)]
    return frame[frame["correct"].notna()]


def _ok_generations(store: RunStore) -> pd.DataFrame:
    columns = ["sample_id", "prompt_id", "n_new_tokens", "finish_reason", "error"]
    frame = _read(store, "generations", columns)
    if frame.empty or "n_new_tokens" not in frame:
        return frame.iloc[0:0]
    frame = frame[~error_mask(frame)]
    return frame[frame["n_new_tokens"].notna()]


def _present(axes: Sequence[str], frame: pd.DataFrame) -> list[str]:
    return [axis for axis in axes if axis in frame]


def _paired(
    pairs: SamplePairs, a: pd.DataFrame, b: pd.DataFrame, item: str, column: str
) -> pd.DataFrame:
    """A's rows of paired images, with the compared groups and B's ``column`` on the same
    image and item (``column_a``, ``column_b``)."""
    keys = ["sample_id", item]
    a, b = pairs.base_rows(a), pairs.other_rows(b)
    return a.merge(b[[*keys, column]], on=keys, suffixes=("_a", "_b"))


def _pair_correctness(
    base: RunStore, other: RunStore, pairs: SamplePairs, n_resamples: int, seed: int
) -> pd.DataFrame:
    a, b = _ok_classifications(base), _ok_classifications(other)
    if a.empty or b.empty:
        return pd.DataFrame(columns=COLUMNS)
    paired = _paired(pairs, a, b, "task_id", "correct")
    return compare_correctness(paired, _present(pairs.axes, paired), n_boot=n_resamples, seed=seed)


def _pair_new_tokens(
    base: RunStore, other: RunStore, pairs: SamplePairs, n_resamples: int, seed: int
) -> pd.DataFrame:
    a, b = _ok_generations(base), _ok_generations(other)
    if a.empty or b.empty:
        return pd.DataFrame(columns=COLUMNS)
    paired = _paired(pairs, a, b, "prompt_id", "n_new_tokens").rename(
        columns={"n_new_tokens_a": "score_a", "n_new_tokens_b": "score_b"}
    )
    present = _present(pairs.axes, paired)
    return compare_scores(paired, "new tokens", present, n_boot=n_resamples, seed=seed)


def _pair_toxicity(
    base: RunStore, other: RunStore, pairs: SamplePairs, n_resamples: int, seed: int
) -> pd.DataFrame:
    scores_a, scores_b = read_scores(base), read_scores(other)
    if scores_a.empty or scores_b.empty:
        return pd.DataFrame(columns=COLUMNS)
    results = []
    shared = sorted(set(scores_a["scorer"].astype(str)) & set(scores_b["scorer"].astype(str)))
    for scorer in shared:
        a = scores_a[scores_a["scorer"].astype(str) == scorer]
        b = scores_b[scores_b["scorer"].astype(str) == scorer]
        column = toxicity_column(a)
        if column is None or column not in b:
            continue
        a = a[["sample_id", "prompt_id", column]]
        paired = _paired(pairs, a, b, "prompt_id", column).rename(
            columns={f"{column}_a": "score_a", f"{column}_b": "score_b"}
        )
        paired = paired.dropna(subset=["score_a", "score_b"])
        if not paired.empty:
            metric = f"toxicity ({public_name(scorer)})"
            present = _present(pairs.axes, paired)
            results.append(compare_scores(paired, metric, present, n_boot=n_resamples, seed=seed))
    return pd.concat(results, ignore_index=True) if results else pd.DataFrame(columns=COLUMNS)
