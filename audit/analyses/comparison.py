"""Paired tests between two runs on the same samples.

Two models answering the same images are compared pair by pair, which removes the image-to-image
variation that an unpaired comparison of two group means would have to carry:

- classification correctness: McNemar's exact test (a binomial test on the discordant pairs, the
  images one model got right and the other wrong), with a paired bootstrap interval for the
  difference in accuracy;
- scores (toxicity, new tokens): a paired bootstrap interval for the mean difference and a
  sign-flip permutation p-value.

Each image carries several prompts, so resampling and sign flips act on images (``clusters``),
never on rows. Seeds are explicit and results reproducible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from audit.analyses.table import ID, with_q_values

#: Below this many paired images a per-group comparison is reported as insufficient data.
MIN_PAIRS = 5


@dataclass(frozen=True)
class McNemarTest:
    """McNemar's exact test on paired correctness.

    ``only_a``: pairs run A got right and run B wrong; ``only_b`` the reverse. The p-value is the
    two-sided exact binomial test of ``only_b`` among ``only_a + only_b`` discordant pairs at 1/2.
    """

    n: int
    only_a: int
    only_b: int
    accuracy_a: float
    accuracy_b: float
    p_value: float


@dataclass(frozen=True)
class PairedDifference:
    """Mean of ``b - a`` over paired rows, its bootstrap 95% interval and permutation p-value."""

    n: int
    n_clusters: int
    mean_a: float
    mean_b: float
    difference: float
    ci_low: float
    ci_high: float
    p_value: float


def _paired(
    a: Sequence[Any], b: Sequence[Any], dtype: type, test: str
) -> tuple[np.ndarray, np.ndarray]:
    """Two aligned sequences as arrays (``ValueError`` unless equally long and not empty)."""
    first, second = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)
    if first.shape != second.shape:
        raise ValueError(f"paired sequences differ in length: {first.size} and {second.size}")
    if first.size == 0:
        raise ValueError(f"{test} needs at least one pair")
    return first, second


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> McNemarTest:
    """McNemar's exact test for two aligned boolean sequences (same samples, same order)."""
    a, b = _paired(correct_a, correct_b, bool, "McNemar's test")
    only_a = int(np.sum(a & ~b))
    only_b = int(np.sum(~a & b))
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(binomtest(only_b, discordant, 0.5).pvalue)
    return McNemarTest(
        n=int(a.size),
        only_a=only_a,
        only_b=only_b,
        accuracy_a=float(a.mean()),
        accuracy_b=float(b.mean()),
        p_value=min(1.0, p_value),
    )


def _cluster_sums(
    differences: np.ndarray, clusters: Sequence[object] | None
) -> tuple[np.ndarray, np.ndarray]:
    if clusters is None:
        return differences, np.ones_like(differences)
    codes, _ = pd.factorize(pd.Series(list(clusters)), sort=True)
    sums = np.bincount(codes, weights=differences)
    counts = np.bincount(codes).astype(float)
    return sums, counts


#: Resample draws held in memory at once (resamples x clusters): bounds memory at 100,000 images.
MAX_DRAWS = 4_000_000


def _chunk_sizes(n_boot: int, n_clusters: int) -> list[int]:
    size = max(1, min(n_boot, MAX_DRAWS // max(n_clusters, 1)))
    return [min(size, n_boot - start) for start in range(0, n_boot, size)]


def _resample_counts(rng: np.random.Generator, n_resamples: int, n_clusters: int) -> np.ndarray:
    """``(n_resamples, n_clusters)``: how often each cluster is drawn in each resample."""
    draws = rng.integers(0, n_clusters, size=(n_resamples, n_clusters))
    offsets = (np.arange(n_resamples) * n_clusters)[:, None]
    counts = np.bincount((draws + offsets).ravel(), minlength=n_resamples * n_clusters)
    return counts.reshape(n_resamples, n_clusters).astype(float)


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    clusters: Sequence[object] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> PairedDifference:
    """Mean difference ``b - a`` with a percentile bootstrap interval over clusters (images).

    The p-value is a sign-flip permutation test: under "no difference" the two runs' labels are
    exchangeable within each image, so each image's summed difference flips sign at random.
    """
    values_a, values_b = _paired(a, b, float, "a paired bootstrap")
    if not (np.isfinite(values_a).all() and np.isfinite(values_b).all()):
        raise ValueError("paired values must be finite; drop error rows first")
    sums, counts = _cluster_sums(values_b - values_a, clusters)
    observed = sums.sum() / counts.sum()
    boot_rng, sign_rng = np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])
    boot, null = [], []
    for size in _chunk_sizes(n_boot, sums.size):
        weights = _resample_counts(boot_rng, size, sums.size)
        boot.append((weights @ sums) / (weights @ counts))
        signs = sign_rng.integers(0, 2, size=(size, sums.size)) * 2.0 - 1.0
        null.append((signs @ sums) / counts.sum())
    boot_means, null_means = np.concatenate(boot), np.concatenate(null)
    exceed = np.sum(np.abs(null_means) >= abs(observed) - 1e-12)
    return PairedDifference(
        n=int(values_a.size),
        n_clusters=int(sums.size),
        mean_a=float(values_a.mean()),
        mean_b=float(values_b.mean()),
        difference=float(observed),
        ci_low=float(np.quantile(boot_means, 0.025)),
        ci_high=float(np.quantile(boot_means, 0.975)),
        p_value=float((1 + exceed) / (1 + n_boot)),
    )


COLUMNS = [
    "test",
    "metric",
    ID,
    "axis",
    "group",
    "n",
    "value_a",
    "value_b",
    "difference",
    "ci_low",
    "ci_high",
    "p_value",
    "q_value",
    "only_a",
    "only_b",
    "note",
]


def _subsets(pairs: pd.DataFrame, axes: Sequence[str]) -> list[tuple[str, str, pd.DataFrame]]:
    subsets = [("all", "all", pairs)]
    for axis in axes:
        if axis not in pairs:
            continue
        for group, rows in pairs.groupby(axis, sort=True):
            subsets.append((axis, str(group), rows))
    return subsets


def _insufficient(base: dict[str, object], n: int) -> dict[str, object]:
    return {**base, "n": n, "note": "insufficient data"}


def compare_correctness(
    pairs: pd.DataFrame, axes: Sequence[str], n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """McNemar per task, overall and per group, on rows holding ``task_id``, ``sample_id``,
    ``correct_a``, ``correct_b`` and the group columns (one row per image and task)."""
    rows: list[dict[str, object]] = []
    for task_id, task_pairs in pairs.groupby("task_id", sort=True):
        for axis, group, subset in _subsets(task_pairs, axes):
            base = {
                "test": "mcnemar",
                "metric": "accuracy",
                ID: str(task_id),
                "axis": axis,
                "group": group,
            }
            if len(subset) < MIN_PAIRS:
                rows.append(_insufficient(base, len(subset)))
                continue
            a = subset["correct_a"].astype(bool).to_numpy()
            b = subset["correct_b"].astype(bool).to_numpy()
            test = mcnemar_exact(a, b)
            interval = paired_bootstrap(a, b, subset["sample_id"], n_boot=n_boot, seed=seed)
            rows.append(
                {
                    **base,
                    "n": test.n,
                    "value_a": test.accuracy_a,
                    "value_b": test.accuracy_b,
                    "difference": test.accuracy_b - test.accuracy_a,
                    "ci_low": interval.ci_low,
                    "ci_high": interval.ci_high,
                    "p_value": test.p_value,
                    "only_a": test.only_a,
                    "only_b": test.only_b,
                    "note": "",
                }
            )
    return _finish(rows)


def compare_scores(
    pairs: pd.DataFrame, metric: str, axes: Sequence[str], n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Paired bootstrap per prompt, overall and per group, on rows holding ``prompt_id``,
    ``sample_id``, ``score_a``, ``score_b`` and the group columns."""
    rows: list[dict[str, object]] = []
    for prompt_id, prompt_pairs in pairs.groupby("prompt_id", sort=True):
        for axis, group, subset in _subsets(prompt_pairs, axes):
            base = {
                "test": "paired_bootstrap",
                "metric": metric,
                ID: str(prompt_id),
                "axis": axis,
                "group": group,
            }
            if subset["sample_id"].nunique() < MIN_PAIRS:
                rows.append(_insufficient(base, len(subset)))
                continue
            result = paired_bootstrap(
                subset["score_a"], subset["score_b"], subset["sample_id"], n_boot=n_boot, seed=seed
            )
            rows.append(
                {
                    **base,
                    "n": result.n,
                    "value_a": result.mean_a,
                    "value_b": result.mean_b,
                    "difference": result.difference,
                    "ci_low": result.ci_low,
                    "ci_high": result.ci_high,
                    "p_value": result.p_value,
                    "note": "",
                }
            )
    return _finish(rows)


def _finish(rows: list[dict[str, object]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["note"] = frame["note"].fillna("")
    # The project's one policy: a family per prompt (or task) and axis, its groups the tests.
    return with_q_values(frame, ("test", "metric", "group"))
