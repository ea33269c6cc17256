"""Intervals and tests shared by the analyses: Wilson, clustered bootstrap, permutation, BH.

Observations cluster by image (each image carries several prompts), so resampling and
permutation act on *units* (images): callers pass per-unit sums and counts, never raw rows.
Every random function takes an explicit ``numpy.random.Generator``; the same generator state
gives the same result. Everything is vectorised over resamples and over statistics.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, norm
from scipy.stats import t as student_t

CONFIDENCE = 0.95
# Floating sums taken in a different order differ in the last bits; a permuted statistic
# within this relative distance of the observed one counts as reaching it.
_TIE_TOLERANCE = 1e-9


def wilson_interval(
    successes: np.ndarray | float, n: np.ndarray | float, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial proportion; NaN where ``n == 0``."""
    k = np.asarray(successes, dtype=float)
    total = np.asarray(n, dtype=float)
    z = norm.ppf(0.5 + confidence / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / total
        denominator = 1 + z**2 / total
        centre = (p + z**2 / (2 * total)) / denominator
        half = z * np.sqrt(p * (1 - p) / total + z**2 / (4 * total**2)) / denominator
    low = np.where(total > 0, np.clip(centre - half, 0.0, 1.0), np.nan)
    high = np.where(total > 0, np.clip(centre + half, 0.0, 1.0), np.nan)
    return low, high


def clustered_wilson_interval(
    successes: np.ndarray, totals: np.ndarray, groups: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson intervals of each group's pooled rate when units (images) carry several
    observations: Wilson at the effective sample size ``N / deff`` (Kish), the design effect from
    the cluster-robust variance of the ratio, kept between 1 and the largest cluster (observations
    of one image fully alike). Where the rate is 0 or 1 the variance says nothing and the largest
    cluster is used: about one observation per image."""
    k = np.bincount(groups, weights=successes, minlength=n_groups)
    n = np.bincount(groups, weights=totals, minlength=n_groups)
    units = np.bincount(groups, minlength=n_groups).astype(float)
    largest = np.zeros(n_groups)
    np.maximum.at(largest, groups, totals)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        residual = np.bincount(
            groups, weights=(successes - p[groups] * totals) ** 2, minlength=n_groups
        )
        robust = units / np.maximum(units - 1, 1) * residual / n**2
        binomial = p * (1 - p) / n
        deff = np.where(binomial > 0, robust / binomial, largest)
    deff = np.clip(np.nan_to_num(deff, nan=1.0), 1.0, np.maximum(largest, 1.0))
    effective = n / deff
    return wilson_interval(p * effective, effective)


def bootstrap_weights(n_units: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_boot, n_units)`` resampling counts: how often each unit is drawn in each resample."""
    draws = rng.integers(0, n_units, size=(n_boot, n_units), dtype=np.int32).astype(np.intp)
    draws += (np.arange(n_boot) * n_units)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n_boot * n_units)
    return counts.reshape(n_boot, n_units).astype(float)


def stratified_bootstrap_weights(
    strata: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n_boot, n_units)`` resampling counts, each stratum resampled within itself (so every
    stratum, and every union of strata, keeps its size)."""
    order = np.argsort(strata, kind="stable")
    ordered = strata[order]
    starts = np.searchsorted(ordered, ordered, side="left")
    sizes = np.searchsorted(ordered, ordered, side="right") - starts
    n_units = strata.size
    positions = starts + (rng.random((n_boot, n_units)) * sizes).astype(np.intp)
    picked = order[positions] + (np.arange(n_boot) * n_units)[:, None]
    counts = np.bincount(picked.ravel(), minlength=n_boot * n_units)
    return counts.reshape(n_boot, n_units).astype(float)


def bootstrap_ratios(
    sums: np.ndarray,
    counts: np.ndarray,
    strata: np.ndarray,
    n_boot: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Stratified cluster bootstrap of per-stratum ratio estimates ``Σ sums / Σ counts``.

    ``sums``: ``(n_units, k)`` (or ``(n_units,)``) per-unit totals of ``k`` statistics;
    ``counts``: ``(n_units,)`` observations per unit; ``strata``: ``(n_units,)`` codes
    ``0..G-1``. Within each stratum, units are resampled with replacement, so a stratum keeps its
    size and an image's observations stay together. Returns ``(n_boot, G, k)``; NaN for an empty
    stratum.
    """
    values = sums.reshape(len(sums), -1).astype(float)
    sizes = np.asarray(counts, dtype=float)
    n_strata = int(strata.max()) + 1 if len(strata) else 0
    out = np.full((n_boot, n_strata, values.shape[1]), np.nan)
    for code in range(n_strata):
        members = np.flatnonzero(strata == code)
        if members.size:
            out[:, code, :] = _resampled_ratios(values[members], sizes[members], n_boot, rng)
    return out


def _resampled_ratios(
    values: np.ndarray, sizes: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    n = len(values)
    distinct, frequency = np.unique(np.column_stack([values, sizes]), axis=0, return_counts=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        if distinct.shape[0] * 4 <= n:
            # Units with equal values are interchangeable: drawing n units with replacement is
            # drawing multinomial counts of the distinct values, which is exact and far cheaper
            # for binary or integer data (refusals, accuracy, token counts).
            drawn = rng.multinomial(n, frequency / n, size=n_boot).astype(float)
            return (drawn @ distinct[:, :-1]) / (drawn @ distinct[:, -1])[:, None]
        result = np.empty((n_boot, values.shape[1]))
        # Chunks keep the (resamples x units) weight matrix small for large strata.
        chunk = max(1, min(n_boot, 4_000_000 // n))
        for start in range(0, n_boot, chunk):
            weights = bootstrap_weights(n, min(chunk, n_boot - start), rng)
            result[start : start + chunk] = (weights @ values) / (weights @ sizes)[:, None]
    return result


def percentile_interval(
    replicates: np.ndarray, confidence: float = CONFIDENCE, sizes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the first axis of bootstrap replicates ``(B, ...)``.

    ``sizes`` (images behind each position, broadcast to ``replicates.shape[1:]``): the expanded
    percentile interval (Hesterberg 2015) for means of that many images. A plain percentile
    interval of a mean is too narrow by about ``sqrt((n-1)/n)`` and ignores Student's t: at 8
    images it held the mean in 85% of simulated samples, expanded 91%. NaN replicates (an empty
    resampled stratum) are ignored; all-NaN positions give NaN.
    """
    flat = replicates.reshape(replicates.shape[0], -1)
    tails = np.full(flat.shape[1], (1 - confidence) / 2)
    if sizes is not None:
        n = np.broadcast_to(np.asarray(sizes, dtype=float), replicates.shape[1:]).ravel()
        big = n > 1
        quantile = student_t.ppf(1 - tails[big], n[big] - 1) * np.sqrt(n[big] / (n[big] - 1))
        tails[big] = norm.cdf(-quantile)
    low = np.full(flat.shape[1], np.nan)
    high = np.full(flat.shape[1], np.nan)
    finite = np.isfinite(flat)
    for tail in np.unique(tails):
        columns = np.flatnonzero(tails == tail)
        complete = columns[finite[:, columns].all(axis=0)]
        if complete.size:
            low[complete], high[complete] = np.quantile(flat[:, complete], [tail, 1 - tail], axis=0)
        for column in columns[~finite[:, columns].all(axis=0) & finite[:, columns].any(axis=0)]:
            values = flat[finite[:, column], column]
            low[column], high[column] = np.quantile(values, [tail, 1 - tail])
    shape = replicates.shape[1:]
    return low.reshape(shape), high.reshape(shape)


def _label_dtype(n_groups: int) -> type[np.signedinteger]:
    # Small labels shuffle several times faster (the array stays in cache).
    return np.int8 if n_groups <= 127 else np.int32


def permuted_labels(
    codes: np.ndarray, n_perm: int, rng: np.random.Generator, rows: np.ndarray | None = None
) -> np.ndarray:
    """Labels under ``n_perm`` uniformly random permutations of ``codes`` over all units.

    Returns ``(n_perm, len(rows))``: the permuted labels of the units ``rows`` only (all units by
    default). The labels a subset receives under a full permutation are a random sample without
    replacement of the whole label multiset, so a subset costs O(len(rows)) per permutation:
    draw the label counts (multivariate hypergeometric), then arrange them at random.
    """
    n_groups = int(codes.max()) + 1
    dtype = _label_dtype(n_groups)
    if rows is None or rows.size == codes.size:
        return rng.permuted(np.tile(codes.astype(dtype), (n_perm, 1)), axis=1)
    colors = np.bincount(codes, minlength=n_groups)
    drawn = rng.multivariate_hypergeometric(colors, rows.size, size=n_perm)
    labels = np.repeat(np.tile(np.arange(n_groups, dtype=dtype), n_perm), drawn.ravel())
    return rng.permuted(labels.reshape(n_perm, rows.size), axis=1)


def permutation_p_values(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """``(1 + #{null >= observed}) / (1 + B)`` per statistic; ``null`` is ``(B, k)``."""
    reached = null >= observed - _TIE_TOLERANCE * np.abs(observed)
    return (1 + reached.sum(axis=0)) / (1 + null.shape[0])


@dataclass(frozen=True)
class SequentialPermutations:
    """Settings of Besag & Clifford's (1991) sequential Monte Carlo p-values."""

    max_permutations: int = 1000
    """Permutations a statistic gets if it never stops early (its p-value resolution)."""
    batch: int = 100
    """Least permutations computed at once (more when few units matter)."""
    stop_after: int = 10
    """A statistic stops once this many permuted statistics reached the observed one."""
    fdr_level: float | None = None
    """If set, statistics whose Benjamini–Hochberg decision at this level (over the whole
    family) more permutations could still change get more, until it cannot (``confidence``)."""
    confidence: float = 0.99
    """A decision is settled once this Clopper–Pearson interval of the p-value lies on one side
    of the BH threshold."""
    growth: int = 4
    """Each extension multiplies the permutations of the unsettled statistics by this."""
    permutation_cap: int = 200_000
    """Most permutations any statistic gets when extending for ``fdr_level``."""
    max_elements: int = 4_000_000
    """Permuted labels generated at once."""


@dataclass(frozen=True)
class PermutationResult:
    """Per statistic: p-value, permutations used, and how many reached the observed value."""

    p_values: np.ndarray
    permutations: np.ndarray
    exceedances: np.ndarray

    @property
    def at_floor(self) -> np.ndarray:
        """Statistics no permutation reached: their p-value is only an upper bound."""
        return self.exceedances == 0


StatisticFor = Callable[[np.ndarray], tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]]


def sequential_permutation_test(
    codes: np.ndarray,
    observed: np.ndarray,
    statistic_for: StatisticFor,
    settings: SequentialPermutations,
    rng: np.random.Generator,
    extendable: np.ndarray | None = None,
) -> PermutationResult:
    """Permutation p-values for many statistics at once, stopping early where they are large.

    ``statistic_for(active)`` returns ``(rows, compute)``: the units whose labels matter to the
    statistics ``active`` and a function mapping their permuted labels ``(b, len(rows))`` to
    ``(b, len(active))`` statistics. A statistic whose permuted values have reached the observed
    one ``stop_after`` times after ``l`` permutations stops with ``p = stop_after / l``
    (valid, Besag & Clifford 1991); the others run all ``L = max_permutations`` and get
    ``(1 + e) / (1 + L)``. With ``fdr_level``, statistics (marked ``extendable``) whose
    Benjamini–Hochberg decision is not settled (``unsettled``) continue, ``growth`` times as many
    permutations at a time, up to ``permutation_cap``: a term reached once in the first 1,000
    permutations is not left at p = 0.002 when its decision turns on a smaller p. Every
    statistic's p-value stays a valid one of the permutations it got.
    """
    k = observed.size
    exceed = np.zeros(k, dtype=int)
    used = np.zeros(k, dtype=int)
    active = np.arange(k)
    done = 0
    limit = settings.max_permutations
    while True:
        while active.size and done < limit:
            rows, compute = statistic_for(active)
            size = max(settings.batch, settings.max_elements // max(rows.size, 1))
            size = min(size, limit - done)
            null = compute(permuted_labels(codes, size, rng, rows))
            target = observed[active] - _TIE_TOLERANCE * np.abs(observed[active])
            running = exceed[active] + np.cumsum(null >= target, axis=0)
            # Stop each statistic at the permutation where it reaches its limit.
            hit = running >= settings.stop_after
            stops = hit.any(axis=0)
            exceed[active] = np.where(stops, settings.stop_after, running[-1])
            used[active] += np.where(stops, hit.argmax(axis=0) + 1, size)
            active = active[~stops]
            done += size
        if settings.fdr_level is None or limit >= settings.permutation_cap:
            break
        open_ = unsettled(exceed, used, settings)
        if extendable is not None:
            open_ &= extendable
        active = np.flatnonzero(open_)
        if active.size == 0:
            break
        limit = min(limit * settings.growth, settings.permutation_cap)
    return PermutationResult(_sequential_p(exceed, used, settings), used, exceed)


def _sequential_p(
    exceed: np.ndarray, used: np.ndarray, settings: SequentialPermutations
) -> np.ndarray:
    stopped = exceed >= settings.stop_after
    p_values = np.where(stopped, exceed / np.maximum(used, 1), (1 + exceed) / (1 + used))
    return np.minimum(p_values, 1.0)


def unsettled(exceed: np.ndarray, used: np.ndarray, settings: SequentialPermutations) -> np.ndarray:
    """Statistics that ran every permutation and whose Clopper–Pearson interval of the p-value
    (at ``settings.confidence``) holds the BH threshold of the family at ``fdr_level``: more
    permutations could change whether they are rejected."""
    assert settings.fdr_level is not None
    stopped = exceed >= settings.stop_after
    threshold = bh_threshold(_sequential_p(exceed, used, settings), settings.fdr_level)
    tail = (1 - settings.confidence) / 2
    n = np.maximum(used, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(exceed > 0, beta.ppf(tail, exceed, n - exceed + 1), 0.0)
        high = beta.ppf(1 - tail, exceed + 1, np.maximum(n - exceed, 1))
    return ~stopped & (low <= threshold) & (threshold < high)


def bh_threshold(p_values: np.ndarray, level: float) -> float:
    """The p-value at or below which Benjamini–Hochberg at ``level`` rejects (``level / m``, the
    first step, where it rejects nothing)."""
    p = np.sort(p_values[np.isfinite(p_values)])
    m = p.size
    if m == 0:
        return 0.0
    steps = level * np.arange(1, m + 1) / m
    below = np.flatnonzero(p <= steps)
    return float(steps[below[-1]] if below.size else steps[0])


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values (step-up adjusted p-values); NaN inputs stay NaN."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    if finite.size == 0:
        return q
    order = finite[np.argsort(p[finite], kind="stable")]
    m = order.size
    scaled = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def minimum_detectable_difference(
    p: float, n1: float, n2: float, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest difference of two proportions around ``p`` that a two-sided test at ``alpha``
    detects with probability ``power`` given ``n1`` and ``n2`` observations (normal
    approximation: ``(z_{1-α/2} + z_power) · sqrt(p(1-p)(1/n1 + 1/n2))``); NaN if a size is 0."""
    if n1 <= 0 or n2 <= 0 or not np.isfinite(p):
        return float("nan")
    z = norm.ppf(1 - alpha / 2) + norm.ppf(power)
    # At an observed 0% or 100% the binomial variance vanishes; half an observation keeps the
    # answer from claiming an impossibly small detectable difference.
    floor = 0.5 / (n1 + n2)
    p = min(max(p, floor), 1 - floor)
    spread = p * (1 - p)
    return float(min(z * np.sqrt(spread * (1 / n1 + 1 / n2)), 1.0))


def permuted_group_sums(
    values: np.ndarray, codes: np.ndarray, n_perm: int, rng: np.random.Generator
) -> np.ndarray:
    """Per-group sums of unit ``values`` ``(n, k)`` under ``n_perm`` random permutations of the
    group ``codes`` over the units: ``(n_perm, G, k)``.

    Units with equal values are interchangeable, so when there are few distinct values (binary
    outcomes, small counts) the permutation distribution is drawn exactly without permuting
    anything: the units of each distinct value fall into the groups' remaining places as a
    multivariate hypergeometric draw, one value after the other. Otherwise labels are permuted.
    """
    values = values.reshape(len(values), -1).astype(float)
    n_groups = int(codes.max()) + 1
    distinct, inverse, frequency = np.unique(
        values, axis=0, return_inverse=True, return_counts=True
    )
    if distinct.shape[0] * 4 > len(values):
        parts = []
        for start in range(0, n_perm, 250):
            labels = permuted_labels(codes, min(250, n_perm - start), rng)
            parts.append(grouped_sums(labels, values, n_groups))
        return np.concatenate(parts, axis=0)
    capacity = np.tile(np.bincount(codes, minlength=n_groups), (n_perm, 1))
    counts = np.zeros((n_perm, distinct.shape[0], n_groups))
    for value in range(distinct.shape[0] - 1):
        remaining = np.full(n_perm, frequency[value])
        left = capacity.sum(axis=1)
        for group in range(n_groups - 1):
            good = capacity[:, group]
            left = left - good
            drawn = np.zeros(n_perm, dtype=int)
            some = (remaining > 0) & (good > 0)
            if some.any():
                drawn[some] = rng.hypergeometric(good[some], left[some], remaining[some])
            counts[:, value, group] = drawn
            capacity[:, group] -= drawn
            remaining -= drawn
        counts[:, value, -1] = remaining
        capacity[:, -1] -= remaining
    counts[:, -1, :] = capacity
    return np.einsum("bdg,dk->bgk", counts, distinct)


def grouped_sums(labels: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Per-group sums of unit ``values`` ``(n_units, k)`` under each row of ``labels``
    ``(b, n_units)``: ``(b, n_groups, k)``. Units labelled ``-1`` are left out."""
    labels = np.atleast_2d(labels)
    values = values.reshape(values.shape[0], -1)
    b = labels.shape[0]
    keep = labels >= 0
    flat = (np.arange(b)[:, None] * n_groups + labels)[keep]
    out = np.empty((b, n_groups, values.shape[1]))
    for column in range(values.shape[1]):
        weights = np.broadcast_to(values[:, column], labels.shape)[keep]
        out[:, :, column] = np.bincount(flat, weights=weights, minlength=b * n_groups).reshape(
            b, n_groups
        )
    return out


def seeded_rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator determined by ``seed`` and names (analysis, prompt, axis), so each result is
    reproducible on its own, whatever else was computed before it."""
    return np.random.default_rng([seed, *(zlib.crc32(key.encode()) for key in keys)])


def true_spread_interval(
    successes: np.ndarray, sizes: np.ndarray, n_boot: int, rng: np.random.Generator
) -> tuple[float, float]:
    """95% interval for the std of the cells' true accuracies.

    Binomial noise inflates the spread of observed accuracies, so the interval is built on the
    variance with that noise taken out (observed variance minus the mean of p(1-p)/(n-1)),
    replicates shifted by their mean's bias, then brought back to the std scale. Replicates are
    drawn from each cell's Jeffreys-smoothed accuracy, so cells at 0% or 100% still vary. The
    upper end is raised, where needed, to the observed std (the card's figure, which the noise
    biases upward), so the interval holds the estimate it is shown with.
    """

    def true_variance(rates: np.ndarray) -> np.ndarray:
        noise = (rates * (1 - rates) / np.maximum(sizes - 1, 1)).mean(axis=-1)
        return np.maximum(rates.var(axis=-1) - noise, 0.0)

    smoothed = (successes + 0.5) / (sizes + 1)
    replicates = true_variance(rng.binomial(sizes, smoothed, size=(n_boot, sizes.size)) / sizes)
    estimate = true_variance(successes / sizes)
    low, high = percentile_interval((replicates - (replicates.mean() - estimate))[:, None])
    observed = float((successes / sizes).std())
    return float(np.sqrt(max(low[0], 0.0))), max(float(np.sqrt(max(high[0], 0.0))), observed)
