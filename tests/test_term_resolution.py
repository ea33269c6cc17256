"""Term p-values with the resolution their Benjamini–Hochberg decision needs, on planted designs
against accurate p-values of the same statistic (200,000 permutations).

Measured on this design (3 seeds, 180 planted associations): 165 found, as with accurate
p-values; refining only terms no permutation reached found 159. Under no effect, 1 run in 40
flagged a term."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer

from audit.analyses.stats import SequentialPermutations, unsettled
from audit.analyses.term_statistics import score_terms

PLANTED = 60


def _design(seed: int, planted: int = PLANTED) -> tuple[list[str], np.ndarray, set[str]]:
    """600 images in 4 groups; texts of 80–120 words from a Zipf vocabulary of 3,000; each
    planted term in 15% of one group's texts and 3% of the others'."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(3000)])
    zipf = 1 / np.arange(1, words.size + 1)
    codes = np.repeat(np.arange(4), 150)
    terms = [f"planted{j}" for j in range(planted)]
    texts = []
    for code in codes:
        text = list(rng.choice(words, size=rng.integers(80, 121), p=zipf / zipf.sum()))
        text += [t for j, t in enumerate(terms) if rng.random() < (0.15 if code == j % 4 else 0.03)]
        texts.append(" ".join(text))
    return texts, codes, set(terms)


def _flagged(texts: list[str], codes: np.ndarray, permutations: int, seed: int) -> set[str]:
    vectorizer = TfidfVectorizer()
    matrix = sp.csr_matrix(vectorizer.fit_transform(texts))
    scores = score_terms(
        matrix, vectorizer.get_feature_names_out(), codes, permutations, np.random.default_rng(seed)
    )
    return set(scores.terms[scores.q_values < 0.05])


def test_recall_matches_accurate_p_values_with_the_null_clean() -> None:
    found = accurate = false = 0
    for seed in range(3):
        texts, codes, truth = _design(seed)
        flagged = _flagged(texts, codes, 1000, seed)
        found += len(flagged & truth)
        false += len(flagged - truth)
        accurate += len(_flagged(texts, codes, 200_000, seed) & truth)
    assert found >= accurate - 0.03 * 3 * PLANTED, (found, accurate)
    assert false <= 0.05 * (found + false)
    null_flags = sum(
        bool(_flagged(*_design(seed, planted=0)[:2], 1000, seed)) for seed in range(10)
    )
    assert null_flags <= 1


def test_a_term_reached_once_is_refined_when_its_decision_turns_on_it() -> None:
    settings = SequentialPermutations(max_permutations=1000, fdr_level=0.05)
    # 1,400 terms: one reached once in 1,000 permutations, five no permutation reached in
    # 200,000 (rejected), the rest stopped early (large p).
    exceed = np.r_[1, np.zeros(5, dtype=int), np.full(1394, 10)]
    used = np.r_[1000, np.full(5, 200_000), np.full(1394, 20)]
    assert unsettled(exceed, used, settings)[0]
    # Once refined to a small p, the same term is settled.
    assert not unsettled(np.r_[1, exceed[1:]], np.r_[64000, used[1:]], settings)[0]
