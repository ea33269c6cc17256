"""The largest difference between groups, with one procedure for its interval and its test.

The pair reported (highest minus lowest group) is chosen by the data, so its interval and its
p-value both have to account for the choice. Every pair's difference is studentized, and the
largest |T| over all pairs is the statistic (single-step max-T). Its permutation distribution
(group labels permuted over images) gives the p-value, exact under no difference between
groups, and the critical value ``c`` of the simultaneous interval ``d ± c·se``: the order
statistic that makes the interval exclude 0 exactly when p < ``level``.

Two kinds of per-image data: rates (successes out of observations; Agresti–Caffo standard errors)
and means of a score (each group's variance shrunk toward the pooled one by one image's weight,
so a group of identical scores still has a standard error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from audit.analyses.stats import permuted_group_sums

#: Per row of ``(b, G, C)`` group sums: each group's estimate ``(b, G)`` and its variance.
Studentizer = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Gap:
    """Highest minus lowest group (codes into the groups given), its simultaneous interval and
    the max-T p-value."""

    high: int
    low: int
    difference: float
    interval: tuple[float, float]
    p_value: float


def rate_estimates(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns (successes, observations): rates, and Agresti–Caffo variances (one success and
    one failure added per group: never zero, even at 0% or 100%)."""
    successes, totals = sums[..., 0], sums[..., 1]
    adjusted = (successes + 1) / (totals + 2)
    return successes / totals, adjusted * (1 - adjusted) / (totals + 2)


def mean_estimates(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns (sum of x, sum of x², images): means, and variances of the means."""
    total, squares, n = sums[..., 0], sums[..., 1], sums[..., 2]
    means = total / n
    spread = np.maximum(squares - total * means, 0.0)  # within-group sum of squares
    groups = n.shape[-1]
    pooled = spread.sum(axis=-1, keepdims=True) / np.maximum(
        n.sum(axis=-1, keepdims=True) - groups, 1
    )
    variance = (spread + pooled) / n  # the group's (n-1) df plus one image at the pooled variance
    return means, variance / n


def largest_gap(
    units: np.ndarray,
    codes: np.ndarray,
    studentize: Studentizer,
    n_perm: int,
    rng: np.random.Generator,
    level: float = 0.05,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> Gap | None:
    """``units``: one row per image of the columns ``studentize`` reads; ``codes``: each image's
    group ``0..K-1``. ``None`` with fewer than two groups. ``bounds`` clip the interval to what
    the difference can be (±1 for rates)."""
    k = int(codes.max()) + 1 if codes.size else 0
    if k < 2:
        return None
    observed_sums = np.stack(
        [np.bincount(codes, weights=units[:, c], minlength=k) for c in range(units.shape[1])],
        axis=-1,
    )[None]
    estimates, _ = studentize(observed_sums)
    t_pairs, se = _pairs(observed_sums, studentize)
    high, low = int(np.argmax(estimates[0])), int(np.argmin(estimates[0]))
    maxima = np.empty(n_perm)
    chunk = max(1, 4_000_000 // (k * k))
    for start in range(0, n_perm, chunk):
        count = min(chunk, n_perm - start)
        permuted, _ = _pairs(permuted_group_sums(units, codes, count, rng), studentize)
        maxima[start : start + count] = permuted.reshape(count, -1).max(axis=1)
    maxima.sort()
    t_observed = float(t_pairs[0, high, low])
    p_value = (1 + np.count_nonzero(maxima >= t_observed - 1e-12)) / (1 + n_perm)
    # The r-th largest maximum with r / (n_perm + 1) < level <= (r + 1) / (n_perm + 1).
    rank = int(np.ceil(level * (n_perm + 1))) - 1
    critical = maxima[n_perm - rank] if rank >= 1 else np.inf
    difference = float(estimates[0, high] - estimates[0, low])
    half = float(critical * se[0, high, low])
    interval = (max(difference - half, bounds[0]), min(difference + half, bounds[1]))
    return Gap(high, low, difference, interval, float(p_value))


def _pairs(sums: np.ndarray, studentize: Studentizer) -> tuple[np.ndarray, np.ndarray]:
    """Every pair's |difference| / standard error ``(b, G, G)``, and the standard errors."""
    estimates, variance = studentize(sums)
    se = np.sqrt(variance[:, :, None] + variance[:, None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.abs(estimates[:, :, None] - estimates[:, None, :]) / se
    return np.nan_to_num(t, nan=0.0, posinf=np.inf), se
