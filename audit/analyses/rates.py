"""Proportions per group (refusal rate, accuracy, error rate) with intervals and tests.

Inputs are per *image* (unit): successes and observations. When every image contributes one
observation (one prompt or task), a group's rate gets a Wilson interval; when images carry
several (rates pooled over prompts), a Wilson interval at the effective sample size
(``stats.clustered_wilson_interval``), because one image's observations are not independent.
Tests permute group labels over images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from audit.analyses.gaps import Gap, rate_estimates
from audit.analyses.gaps import largest_gap as largest_gap_of
from audit.analyses.grouping import restrict
from audit.analyses.stats import (
    clustered_wilson_interval,
    permutation_p_values,
    permuted_group_sums,
    wilson_interval,
)
from audit.analyses.table import ALL, MIN_GROUP_SIZE, estimate, insufficient


@dataclass(frozen=True)
class UnitRates:
    """Per-image successes and observations, and each image's group code (``-1``: none)."""

    successes: np.ndarray
    totals: np.ndarray
    codes: np.ndarray
    groups: tuple[str, ...]

    @property
    def clustered(self) -> bool:
        return bool((self.totals > 1).any())

    def sizes(self) -> np.ndarray:
        """Images per group."""
        known = self.codes >= 0
        return np.bincount(self.codes[known], minlength=len(self.groups))

    def included(self) -> np.ndarray:
        """Codes of the groups with enough images to estimate."""
        return np.flatnonzero(self.sizes() >= MIN_GROUP_SIZE)

    def restricted(self) -> tuple[np.ndarray, np.ndarray]:
        """Images of included groups, and their codes renumbered ``0..K-1``."""
        return restrict(self.codes, self.included(), len(self.groups))


def _intervals(
    rates: UnitRates, keep: np.ndarray, local: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    k = int(local.max()) + 1 if local.size else 0
    successes = np.bincount(local, weights=rates.successes[keep], minlength=k)
    totals = np.bincount(local, weights=rates.totals[keep], minlength=k)
    if not rates.clustered:
        return wilson_interval(successes, totals)
    return clustered_wilson_interval(rates.successes[keep], rates.totals[keep], local, k)


def overall_row(
    id_value: str,
    metric: str,
    rates: UnitRates,
    **extra: Any,
) -> dict[str, Any]:
    """The rate over all images (axis and group ``all``)."""
    n = len(rates.successes)
    if n == 0:
        return insufficient(id_value, ALL, ALL, metric, 0, **extra)
    zeros = np.zeros(n, dtype=int)
    low, high = _intervals(rates, np.arange(n), zeros)
    value = rates.successes.sum() / rates.totals.sum()
    return estimate(
        id_value,
        ALL,
        ALL,
        metric,
        value,
        (low[0], high[0]),
        n,
        successes=int(rates.successes.sum()),
        observations=int(rates.totals.sum()),
        **extra,
    )


def group_rows(
    id_value: str,
    axis: str,
    metric: str,
    rates: UnitRates,
    **extra: Any,
) -> list[dict[str, Any]]:
    """One row per group: the rate with its interval, or ``insufficient data``."""
    sizes = rates.sizes()
    keep, local = rates.restricted()
    included = rates.included()
    low, high = _intervals(rates, keep, local) if keep.size else ([], [])
    rows = []
    for code, group in enumerate(rates.groups):
        if code not in set(included.tolist()):
            rows.append(insufficient(id_value, axis, group, metric, int(sizes[code]), **extra))
            continue
        j = int(np.flatnonzero(included == code)[0])
        members = keep[local == j]
        successes, totals = rates.successes[members].sum(), rates.totals[members].sum()
        rows.append(
            estimate(
                id_value,
                axis,
                group,
                metric,
                successes / totals,
                (low[j], high[j]),
                int(sizes[code]),
                successes=int(successes),
                observations=int(totals),
                **extra,
            )
        )
    return rows


def chi_square_statistic(successes: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Pearson's statistic for equal rates across groups, per row of ``(b, G)`` arrays (0 when
    the pooled rate is 0 or 1: nothing can differ)."""
    pooled = successes.sum(axis=-1, keepdims=True) / totals.sum(axis=-1, keepdims=True)
    spread = pooled * (1 - pooled)
    with np.errstate(invalid="ignore", divide="ignore"):
        rates = successes / totals
        value = (totals * (rates - pooled) ** 2).sum(axis=-1) / spread[..., 0]
    return np.where(spread[..., 0] > 0, value, 0.0)


Statistic = Callable[[np.ndarray, np.ndarray], np.ndarray]


def permutation_test(
    rates: UnitRates, statistic: Statistic, n_perm: int, rng: np.random.Generator
) -> tuple[float, float]:
    """Observed statistic over the included groups and its permutation p-value (labels
    permuted over images). NaN p-value with fewer than two groups."""
    keep, local = rates.restricted()
    k = int(local.max()) + 1 if local.size else 0
    if k < 2:
        return float("nan"), float("nan")
    successes, totals = rates.successes[keep], rates.totals[keep]
    observed = statistic(
        np.bincount(local, weights=successes, minlength=k)[None, :],
        np.bincount(local, weights=totals, minlength=k)[None, :],
    )
    sums = permuted_group_sums(np.column_stack([successes, totals]), local, n_perm, rng)
    null = statistic(sums[:, :, 0], sums[:, :, 1])
    return float(observed[0]), float(permutation_p_values(observed, null[:, None])[0])


def largest_gap(
    rates: UnitRates, n_perm: int, rng: np.random.Generator, level: float = 0.05
) -> Gap | None:
    """Best minus worst of the included groups (codes into ``rates.groups``), interval and test
    from one procedure (``gaps.largest_gap``)."""
    keep, local = rates.restricted()
    units = np.column_stack([rates.successes[keep], rates.totals[keep]])
    gap = largest_gap_of(units, local, rate_estimates, n_perm, rng, level, bounds=(-1.0, 1.0))
    if gap is None:
        return None
    included = rates.included()
    return replace(gap, high=int(included[gap.high]), low=int(included[gap.low]))
