"""TF-IDF term statistics across groups: the IDEFICS card's ranking and a permutation test.

For one prompt and one axis: fit scikit-learn's ``TfidfVectorizer`` on all that prompt's
generations (the card's method: IDF over the whole prompt), average the TF-IDF vectors per group,
and score each term by the spread of its group means:

- ``variance``: population variance of the group means (default);
- ``card``: ``sqrt(Σ_g (m_g − Σ_h m_h)²)``, the published implementation, which subtracts the
  *sum* over groups and so ranks mostly by how prominent a term is overall.

The card's ranking cannot tell a noisy small group from a real association, so each term is
also tested: its variance of group means against the same statistic under random permutations of
the group labels over images (sequential Monte Carlo, Besag & Clifford 1991: at least
``n_permutations``, fewer only for terms whose p-value is clearly large). A p-value from L
permutations is known only to within its Monte Carlo error, and cannot go below 1/(1+L), while
Benjamini–Hochberg over thousands of terms turns on small ones: every term whose BH decision more
permutations could still change gets more, four times as many at a time, until it cannot
(``stats.unsettled``, up to 200,000); for terms in many documents (where that would cost millions
of permutations) a p-value no permutation reached comes instead from the normal approximation
of the same permutation distribution, whose exact moments are known (``p_method`` says which).
Terms so rare that no arrangement of their documents could reach p < 0.05 are not tested (their
document frequency does not depend on the labels, so leaving them out keeps the FDR guarantee
and gains power).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.integrate import quad
from scipy.special import gammaln
from scipy.stats import chi2
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

from audit.analyses.stats import (
    SequentialPermutations,
    benjamini_hochberg,
    sequential_permutation_test,
)
from audit.spec import TfidfSpec

FDR_LEVEL = 0.05
#: Terms in at least this many documents that no permutation reached get the normal tail.
EXACT_MAX_DOCUMENTS = 300


class NoTerms(ValueError):
    """No term survives the vectorizer's filters (too few or too uniform generations)."""


@dataclass(frozen=True)
class TermScores:
    """Per-term results for one prompt and axis; arrays indexed by term, groups by code."""

    terms: np.ndarray
    group_means: np.ndarray
    """``(G, T)`` mean TF-IDF of each group."""
    group_sizes: np.ndarray
    variance: np.ndarray
    """Population variance of the group means: the test statistic and the default ranking."""
    card: np.ndarray
    p_values: np.ndarray
    """NaN for terms too rare to test."""
    q_values: np.ndarray
    permutations: np.ndarray
    p_method: np.ndarray
    """``permutation``; ``permutation, normal tail`` where no permutation reached the observed
    value of a frequent term; empty where untested."""

    def ranking(self, mode: str) -> np.ndarray:
        """Term indices, best first, under ``variance`` or ``card`` (ties by term)."""
        score = self.card if mode == "card" else self.variance
        return np.lexsort((self.terms, -score))


def stop_words(settings: TfidfSpec, exclude_terms: list[str]) -> list[str] | None:
    """The vectorizer's stop list: the configured one plus the probe's excluded terms, split into
    tokens the way the vectorizer splits text (``Middle Eastern`` excludes ``middle`` and
    ``eastern``)."""
    base = settings.stop_words
    words = set(ENGLISH_STOP_WORDS) if base == "english" else set(base or [])
    analyzer = TfidfVectorizer().build_analyzer()
    for term in exclude_terms:
        words.update(analyzer(term))
    return sorted(words) or None


def _count_or_share(value: float) -> int | float:
    # pydantic stores min_df/max_df as floats; scikit-learn reads floats as shares of documents
    # and integers as counts, and `min_df: 2` in a probe means two documents.
    return int(value) if value > 1 and float(value).is_integer() else value


def vectorize(
    texts: list[str], settings: TfidfSpec, exclude_terms: list[str]
) -> tuple[sp.csr_matrix, np.ndarray]:
    """TF-IDF matrix ``(documents, terms)`` and the terms; ``NoTerms`` if none survive."""
    vectorizer = TfidfVectorizer(
        max_df=_count_or_share(settings.max_df),
        min_df=1 if settings.min_df == 1 else _count_or_share(settings.min_df),
        stop_words=stop_words(settings, exclude_terms),
        dtype=np.float64,
    )
    try:
        matrix = vectorizer.fit_transform(texts)
    except ValueError as error:  # empty vocabulary, or max_df below min_df for so few texts
        raise NoTerms(str(error)) from None
    return sp.csr_matrix(matrix), vectorizer.get_feature_names_out()


def _group_sums(transposed: sp.csr_matrix, labels: np.ndarray, n_groups: int) -> np.ndarray:
    """``(b, G, T)`` per-group sums of the documents, for each row of ``labels`` ``(b, m)``.

    ``transposed`` is the ``(T, m)`` term-by-document matrix. The indicator of all ``b``
    labelings is built directly in CSR form (entries per document already sorted), so one sparse
    product gives every labeling's sums. The last group's sums are the totals minus the others',
    which spares its share of the work.
    """
    b, m = labels.shape
    last = n_groups - 1
    per_document = labels.T
    member = per_document != last
    columns = (np.arange(b, dtype=np.int64)[None, :] * last + per_document)[member]
    pointers = np.concatenate([[0], np.cumsum(member.sum(axis=1))])
    indicator = sp.csr_matrix(
        (np.ones(columns.size), columns, pointers), shape=(m, b * max(last, 1))
    )
    n_terms = transposed.shape[0]
    sums = np.empty((n_terms, b, n_groups))
    sums[:, :, :last] = (
        (transposed @ indicator).toarray().reshape(n_terms, b, max(last, 1))[:, :, :last]
    )
    totals = np.asarray(transposed.sum(axis=1)).reshape(n_terms, 1)
    sums[:, :, last] = totals - sums[:, :, :last].sum(axis=2)
    return sums.transpose(1, 2, 0)


def _term_rows(columns: sp.csc_matrix, active: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
    """Documents holding any of the ``active`` terms, and those terms' ``(a, m)`` matrix over
    just these documents."""
    block = columns[:, active]
    rows, local = np.unique(block.indices, return_inverse=True)
    transposed = sp.csr_matrix(
        (block.data, local.ravel(), block.indptr), shape=(active.size, rows.size)
    )
    return rows, transposed


def _variance_of_means(sums: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    return (sums / sizes[None, :, None]).var(axis=1)


def testable(
    document_counts: np.ndarray, sizes: np.ndarray, alpha: float = FDR_LEVEL
) -> np.ndarray:
    """Terms whose documents could, arranged most unevenly, reach a p-value of ``alpha``.

    The observed arrangement of a term's ``d`` documents over the groups is kept by a share
    ``(n_g)_d / (N)_d`` of all permutations at least (all ``d`` in the smallest group), so no
    p-value can fall below that; terms whose bound exceeds ``alpha`` are left untested.
    """
    total = sizes.sum()
    d = document_counts.astype(float)
    smallest = sizes.min()
    log_bound = (
        gammaln(smallest + 1)
        - gammaln(np.maximum(smallest - d, 0) + 1)
        - gammaln(total + 1)
        + gammaln(total - d + 1)
    )
    return (d <= smallest) & (log_bound <= np.log(alpha)) | (d > smallest)


def normal_tail_p_values(
    columns: sp.csc_matrix, sizes: np.ndarray, observed: np.ndarray
) -> np.ndarray:
    """Permutation p-values of the variance of group means from the normal approximation of
    the permutation distribution, for terms found in many documents.

    Under random relabelling the vector of group means has exact mean ``μ1`` and covariance
    ``S² (D − J/N)`` (sampling without replacement; ``D = diag(1/n_g)``), so the statistic
    ``mᵀAm`` (``A = (I − J/G)/G``) is approximately ``S² Σ λ_j χ²₁`` with ``λ`` the
    eigenvalues of ``D½AD½``; its tail comes from Imhof's (1961) inversion formula. Far in the
    tail, where the integral loses precision, the bound ``S² λ_max χ²_{G−1}`` is used instead,
    which can only overstate the p-value.
    """
    n_groups, total = sizes.size, sizes.sum()
    root = np.diag(1 / np.sqrt(sizes))
    centring = (np.eye(n_groups) - 1 / n_groups) / n_groups
    weights = np.linalg.eigvalsh(root @ centring @ root)
    weights = weights[weights > 1e-12 * weights.max()]
    sums = np.asarray(columns.sum(axis=0)).ravel()
    squares = np.asarray(columns.multiply(columns).sum(axis=0)).ravel()
    spread = (squares - sums**2 / total) / (total - 1)
    p_values = np.ones(observed.size)
    for index in np.flatnonzero(spread > 0):
        scaled = observed[index] / spread[index]
        p_values[index] = weighted_chi_square_tail(scaled, weights)
    return p_values


def weighted_chi_square_tail(value: float, weights: np.ndarray) -> float:
    """``P(Σ w_j χ²₁ ≥ value)``: Imhof's formula, or the ``w_max χ²_k`` bound below 1e-8."""
    largest = weights.max()
    bound = float(chi2.sf(value / largest, df=weights.size))
    if np.allclose(weights, largest, rtol=1e-9):
        return bound
    w, x = weights / largest, value / largest

    def phase(u: float) -> float:
        return 0.5 * float(np.arctan(w * u).sum())

    def damping(u: float) -> float:
        return u * float(np.prod((1 + (w * u) ** 2) ** 0.25))

    # sin(phase - x u / 2): near 0 integrate directly; beyond 1 split it into Fourier integrals
    # (QAWF), which handle the oscillation of frequency x / 2 out to infinity.
    head, _ = quad(lambda u: np.sin(phase(u) - 0.5 * x * u) / damping(u), 0, 1, limit=200)
    cosine, _ = quad(
        lambda u: np.sin(phase(u)) / damping(u), 1, np.inf, weight="cos", wvar=0.5 * x, limlst=200
    )
    sine, _ = quad(
        lambda u: np.cos(phase(u)) / damping(u), 1, np.inf, weight="sin", wvar=0.5 * x, limlst=200
    )
    tail = 0.5 + (head + cosine - sine) / np.pi
    return bound if tail < 1e-8 else float(min(tail, bound))


def score_terms(
    matrix: sp.csr_matrix,
    terms: np.ndarray,
    codes: np.ndarray,
    n_permutations: int,
    rng: np.random.Generator,
) -> TermScores:
    """Group means, both rankings and permutation p/q-values of every term.

    ``codes``: each document's group ``0..G-1`` (G ≥ 2, every group non-empty). Documents are
    images (one generation per image and prompt), so labels are permuted over images. Terms no
    permutation reached get more permutations when in fewer than ``EXACT_MAX_DOCUMENTS``
    documents, and the normal-approximation tail otherwise (``p_method``).
    """
    n_groups = int(codes.max()) + 1
    sizes = np.bincount(codes, minlength=n_groups).astype(float)
    columns = sp.csc_matrix(matrix)
    columns.sort_indices()
    indicator = sp.csr_matrix(
        (np.ones(codes.size), (codes, np.arange(codes.size))), shape=(n_groups, codes.size)
    )
    means = (indicator @ matrix).toarray() / sizes[:, None]
    variance = means.var(axis=0)
    card = np.sqrt(((means - means.sum(axis=0)) ** 2).sum(axis=0))
    document_counts = np.diff(columns.indptr)
    tested = np.flatnonzero(testable(document_counts, sizes))
    p_values, used, method = _test_terms(
        columns, tested, codes, sizes, variance, n_permutations, rng
    )
    return TermScores(
        terms=np.asarray(terms, dtype=object),
        group_means=means,
        group_sizes=sizes,
        variance=variance,
        card=card,
        p_values=p_values,
        q_values=benjamini_hochberg(p_values),
        permutations=used,
        p_method=method,
    )


def _test_terms(
    columns: sp.csc_matrix,
    tested: np.ndarray,
    codes: np.ndarray,
    sizes: np.ndarray,
    variance: np.ndarray,
    n_permutations: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """p-values, permutations used and method per term (NaN, 0 and "" where untested)."""
    n_terms = columns.shape[1]
    p_values = np.full(n_terms, np.nan)
    used = np.zeros(n_terms, dtype=int)
    method = np.full(n_terms, "", dtype=object)
    if tested.size == 0:
        return p_values, used, method
    candidates = columns[:, tested]
    n_groups = sizes.size

    def statistic_for(active: np.ndarray):
        rows, transposed = _term_rows(candidates, active)
        return rows, lambda labels: _variance_of_means(
            _group_sums(transposed, labels, n_groups), sizes
        )

    settings = SequentialPermutations(max_permutations=n_permutations, fdr_level=FDR_LEVEL)
    frequent = np.diff(candidates.indptr) >= EXACT_MAX_DOCUMENTS
    result = sequential_permutation_test(
        codes, variance[tested], statistic_for, settings, rng, extendable=~frequent
    )
    p_values[tested] = result.p_values
    used[tested] = result.permutations
    method[tested] = "permutation"
    tail = result.at_floor & frequent
    if tail.any():
        p_values[tested[tail]] = normal_tail_p_values(
            candidates[:, tail], sizes, variance[tested[tail]]
        )
        method[tested[tail]] = "permutation, normal tail"
    return p_values, used, method
