"""Proportions per group (refusal rate, accuracy, error rate) with intervals and tests.

Inputs are per *image* (unit): successes and observations. When every image contributes one
observation (one prompt or task), a group's rate gets a Wilson interval; when images carry
several (rates pooled over prompts), a Wilson interval at the effective sample size
(``stats.clustered_wilson_interval``), because one image's observations are not independent.
Tests permute group labels over images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

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
        included = self.included()
        recode = np.full(len(self.groups), -1)
        recode[included] = np.arange(included.size)
        keep = np.flatnonzero((self.codes >= 0) & np.isin(self.codes, included))
        return keep, recode[self.codes[keep]]


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


@dataclass(frozen=True)
class Gap:
    """The largest difference between two groups' rates, with one procedure for its interval and
    its test: simultaneous over every pair of groups (single-step max-T), so both account for the
    pair being the one that differs most."""

    high: int
    low: int
    difference: float
    interval: tuple[float, float]
    p_value: float


def _studentized_pairs(successes: np.ndarray, totals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``(b, G)`` group sums: every pair's |difference| / Agresti–Caffo standard error
    (never zero, even at 0% or 100%), ``(b, G, G)``, and the standard errors."""
    rates = successes / totals
    adjusted = (successes + 1) / (totals + 2)  # one success and one failure added per group
    variance = adjusted * (1 - adjusted) / (totals + 2)
    se = np.sqrt(variance[:, :, None] + variance[:, None, :])
    return np.abs(rates[:, :, None] - rates[:, None, :]) / se, se


def largest_gap(
    rates: UnitRates, n_perm: int, rng: np.random.Generator, level: float = 0.05
) -> Gap | None:
    """Best minus worst of the included groups (codes into ``rates.groups``).

    Every pair's difference is studentized; the largest |T| over all pairs is the statistic. Its
    permutation distribution (group labels permuted over images) gives the p-value, exact under
    no difference between groups, and the critical value ``c`` of the interval
    ``d ± c·se``: the order statistic that makes it exclude 0 exactly when p < ``level``."""
    keep, local = rates.restricted()
    included = rates.included()
    k = included.size
    if k < 2:
        return None
    units = np.column_stack([rates.successes[keep], rates.totals[keep]])
    observed_sums = np.stack(
        [np.bincount(local, weights=units[:, c], minlength=k) for c in range(2)], axis=-1
    )[None]
    t_pairs, se = _studentized_pairs(observed_sums[..., 0], observed_sums[..., 1])
    observed = observed_sums[0, :, 0] / observed_sums[0, :, 1]
    high, low = int(np.argmax(observed)), int(np.argmin(observed))
    maxima = np.empty(n_perm)
    chunk = max(1, 4_000_000 // (k * k))
    for start in range(0, n_perm, chunk):
        count = min(chunk, n_perm - start)
        sums = permuted_group_sums(units, local, count, rng)
        permuted, _ = _studentized_pairs(sums[..., 0], sums[..., 1])
        maxima[start : start + count] = permuted.reshape(count, -1).max(axis=1)
    maxima.sort()
    t_observed = float(t_pairs[0, high, low])
    p_value = (1 + np.count_nonzero(maxima >= t_observed - 1e-12)) / (1 + n_perm)
    # The r-th largest maximum with r / (n_perm + 1) < level <= (r + 1) / (n_perm + 1).
    rank = int(np.ceil(level * (n_perm + 1))) - 1
    critical = maxima[n_perm - rank] if rank >= 1 else np.inf
    difference = float(observed[high] - observed[low])
    half = float(critical * se[0, high, low])
    return Gap(
        int(included[high]),
        int(included[low]),
        difference,
        (max(difference - half, -1.0), min(difference + half, 1.0)),
        float(p_value),
    )
