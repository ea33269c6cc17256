"""``term_variance``: which words a model uses more for some groups than others, per prompt.

Method (term_statistics.py): TF-IDF fit on all successful generations of a prompt, group means
per axis, ranking by ``variance`` (default) or ``card`` (``probe.analysis.tfidf.ranking``), a
permutation test per term with Benjamini–Hochberg q-values over all tested terms of that prompt
and axis, and a bootstrap of each group's mean for the reported terms (images resampled within
each group of the axis). Reported terms: the ``top_k`` best ranked plus every flagged term.

Columns besides the common ones (one row per prompt, axis, term and group;
``metric = "mean_tfidf"``, ``value`` the group's mean TF-IDF weight, ``n`` its images):

- ``term``; ``rank`` (1 = largest spread under the chosen ranking); ``ranking`` (the mode);
- ``score`` (the ranking's score), ``variance`` (population variance of group means),
  ``card_score`` (``sqrt(Σ_g (m_g − Σ_h m_h)²)``);
- ``deviation``: the group's mean minus the mean over groups; ``overall_mean``: the term's mean
  TF-IDF over all documents of the included groups;
- ``p_value`` (permutation), ``q_value`` (BH), ``flagged`` (``q_value < 0.05``),
  ``n_permutations`` (null where the term is too rare to test), ``p_method`` (``permutation``, or
  ``permutation, normal tail`` for frequent terms beyond the permutations' resolution);
- ``example_ids``: up to 3 sample ids of the group's generations where the term weighs most
  (the companion table ``term_examples`` holds their text).

Groups with fewer than ``MIN_GROUP_SIZE`` images get one row with ``note = "insufficient data"``
and no term; they are left out of the test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from audit.analyses.findings import Finding, finding, fmt, interval_text, p_text
from audit.analyses.grouping import (
    GroupAxis,
    GroupSizes,
)
from audit.analyses.registry import Analysis, AnalysisContext
from audit.analyses.stats import percentile_interval, stratified_bootstrap_weights
from audit.analyses.table import build_table, empty_table
from audit.analyses.term_statistics import FDR_LEVEL, NoTerms, TermScores, score_terms, vectorize

NAME = "term_variance"
EXAMPLES_PER_GROUP = 3
EXTRA = (
    "term",
    "rank",
    "ranking",
    "score",
    "variance",
    "card_score",
    "deviation",
    "overall_mean",
    "p_value",
    "q_value",
    "flagged",
    "n_permutations",
    "p_method",
    "example_ids",
)


def term_variance(context: AnalysisContext) -> pd.DataFrame:
    """Per prompt and group axis: ranked terms, per-group means with intervals, q-values."""
    split = context.generation_split()
    if split is None:
        return empty_table(EXTRA)
    tables = []
    for item in split.items:
        tables.extend(_prompt_tables(context, item.id, item.valid, split.axes))
    if not tables:
        return empty_table(EXTRA)
    return build_table(pd.concat(tables, ignore_index=True), EXTRA)


@dataclass(frozen=True)
class AxisTerms:
    """One axis' tested terms within a prompt, before intervals are attached."""

    axis: GroupAxis
    included: np.ndarray
    """Codes of the groups with enough images."""
    rows: np.ndarray
    """The prompt's documents in those groups."""
    local: np.ndarray
    """Their group, renumbered ``0..K-1``."""
    scores: TermScores
    chosen: np.ndarray
    """Reported terms: the ``top_k`` best ranked, then every other flagged one."""
    rank: np.ndarray


def _prompt_tables(
    context: AnalysisContext, prompt_id: str, subset: pd.DataFrame, axes: list[GroupAxis]
) -> list[pd.DataFrame]:
    settings = context.settings
    texts = subset["generation"].fillna("").astype(str).tolist()
    try:
        matrix, terms = vectorize(texts, settings.tfidf, list(settings.exclude_terms))
    except NoTerms:
        matrix, terms = None, None
    tables, scored = [], []
    for axis in axes:
        counts = GroupSizes.of(axis, subset)
        if matrix is None or counts.included.size < 2:
            short = counts.left_out(prompt_id, "mean_tfidf", range(len(axis.groups)))
        else:
            rng = context.rng(NAME, prompt_id, axis.name)
            scored.append(_score_axis(context, matrix, terms, counts, rng))
            short = counts.left_out(prompt_id, "mean_tfidf")
        if short:
            tables.append(pd.DataFrame.from_records(short).rename(columns={"_id": "prompt_id"}))
    ids = subset["sample_id"].astype(str).to_numpy()
    for item in scored:
        rng = context.rng(NAME, prompt_id, item.axis.name, "bootstrap")
        interval = _group_intervals(matrix, item, settings.n_bootstrap, rng)
        tables.append(_term_rows(prompt_id, item, matrix, ids, interval, settings.tfidf.ranking))
    return tables


def _score_axis(
    context: AnalysisContext,
    matrix: sp.csr_matrix,
    terms: np.ndarray,
    counts: GroupSizes,
    rng: np.random.Generator,
) -> AxisTerms:
    settings = context.settings
    rows, local = counts.restricted()
    scores = score_terms(matrix[rows], terms, local, settings.n_permutations, rng)
    order = scores.ranking(settings.tfidf.ranking)
    top, later = order[: settings.tfidf.top_k], order[settings.tfidf.top_k :]
    chosen = np.concatenate([top, later[scores.q_values[later] < FDR_LEVEL]]).astype(int)
    rank = np.empty(terms.size, dtype=int)
    rank[order] = np.arange(1, terms.size + 1)
    return AxisTerms(counts.axis, counts.included, rows, local, scores, chosen, rank)


def _group_intervals(
    matrix: sp.csr_matrix, item: AxisTerms, n_boot: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap intervals of each group's mean TF-IDF for the axis' reported terms.

    Images are resampled within the groups of this axis only: strata finer than the analysed
    groups (gender x race x age cells of about one image each) would leave nothing to resample.
    """
    order = np.argsort(item.local, kind="stable")
    local = item.local[order]
    values = matrix[item.rows[order]][:, item.chosen].toarray()
    bounds = np.searchsorted(local, np.arange(item.included.size + 1))
    sizes = np.diff(bounds)
    replicates = np.empty((n_boot, item.included.size, item.chosen.size))
    chunk = max(1, min(n_boot, 4_000_000 // max(local.size, 1)))
    for start in range(0, n_boot, chunk):
        count = min(chunk, n_boot - start)
        weights = stratified_bootstrap_weights(local, count, rng)
        for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            replicates[start : start + count, j, :] = weights[:, a:b] @ values[a:b] / sizes[j]
    return percentile_interval(replicates, sizes=sizes[:, None])


def _example_ids(
    values: np.ndarray, local: np.ndarray, sample_ids: np.ndarray, n_groups: int
) -> list[list[list[str]]]:
    """``[group][term] -> sample ids`` of the documents where the term weighs most."""
    found: list[list[list[str]]] = []
    for g in range(n_groups):
        members = np.flatnonzero(local == g)
        per_term = []
        for k in range(values.shape[1]):
            weights = values[members, k]
            hits = members[weights > 0]
            best = hits[np.lexsort((sample_ids[hits].astype(str), -values[hits, k]))]
            per_term.append([str(s) for s in sample_ids[best[:EXAMPLES_PER_GROUP]]])
        found.append(per_term)
    return found


def _term_rows(
    prompt_id: str,
    item: AxisTerms,
    matrix: sp.csr_matrix,
    sample_ids: np.ndarray,
    interval: tuple[np.ndarray, np.ndarray],
    ranking: str,
) -> pd.DataFrame:
    scores, chosen = item.scores, item.chosen
    values = matrix[item.rows][:, chosen].toarray()
    examples = _example_ids(values, item.local, sample_ids[item.rows], item.included.size)
    groups = np.array(item.axis.groups, dtype=object)[item.included]
    n_groups, n_terms = groups.size, chosen.size
    means = scores.group_means[:, chosen]
    group_index = np.repeat(np.arange(n_groups), n_terms)
    term_index = np.tile(np.arange(n_terms), n_groups)
    picked = chosen[term_index]
    score = scores.card if ranking == "card" else scores.variance
    tested = ~np.isnan(scores.p_values[picked])
    frame = pd.DataFrame(
        {
            "prompt_id": prompt_id,
            "axis": item.axis.name,
            "group": groups[group_index],
            "metric": "mean_tfidf",
            "value": means.ravel(),
            "ci_low": interval[0].ravel(),
            "ci_high": interval[1].ravel(),
            "n": scores.group_sizes[group_index].astype(int),
            "note": "",
            "term": scores.terms[picked],
            "rank": item.rank[picked],
            "ranking": ranking,
            "score": score[picked],
            "variance": scores.variance[picked],
            "card_score": scores.card[picked],
            "deviation": (means - means.mean(axis=0)).ravel(),
            "overall_mean": values.mean(axis=0)[term_index],
            "p_value": scores.p_values[picked],
            "q_value": scores.q_values[picked],
            "flagged": scores.q_values[picked] < FDR_LEVEL,
            "n_permutations": pd.array(
                np.where(tested, scores.permutations[picked], 0), dtype="Int64"
            ),
            "p_method": scores.p_method[picked],
            "example_ids": [examples[g][k] for g, k in zip(group_index, term_index, strict=True)],
        }
    )
    frame.loc[~tested, "n_permutations"] = pd.NA
    return frame.sort_values(["rank", "group"], kind="stable")


EXAMPLE_COLUMNS = (
    "prompt_id",
    "axis",
    "group",
    "term",
    "rank",
    "example",
    "sample_id",
    "generation",
)


def term_examples(table: pd.DataFrame, context: AnalysisContext) -> pd.DataFrame:
    """Companion table: the text of each reported term's example generations.

    Columns: ``prompt_id, axis, group, term, rank, example, sample_id, generation`` (``example``
    is 1..3, the term weighing most first). Generations are model output: escape on display.
    """
    columns = list(EXAMPLE_COLUMNS)
    listed = table[table["term"].notna()] if "term" in table else table.iloc[:0]
    if listed.empty:
        return pd.DataFrame(columns=columns)
    exploded = (
        listed[["prompt_id", "axis", "group", "term", "rank", "example_ids"]]
        .explode("example_ids")
        .dropna(subset=["example_ids"])
        .rename(columns={"example_ids": "sample_id"})
    )
    exploded["example"] = exploded.groupby(["prompt_id", "axis", "group", "term"]).cumcount() + 1
    texts = context.generations[["sample_id", "prompt_id", "generation"]].astype(
        {"sample_id": str, "prompt_id": str}
    )
    merged = exploded.merge(texts, on=["sample_id", "prompt_id"], how="left")
    return merged[columns].reset_index(drop=True)


def term_findings(table: pd.DataFrame) -> list[Finding]:
    """Per prompt and axis: the flagged terms (at most 3), each with the group using it most."""
    found: list[Finding] = []
    rows = table[table["term"].notna()]
    for (prompt_id, axis), part in rows.groupby(["prompt_id", "axis"], sort=False):
        flagged = part[part["flagged"].fillna(False).astype(bool)]
        tested = part.drop_duplicates("term")
        if flagged.empty:
            best = part.loc[part["rank"].idxmin()]
            found.append(
                finding(
                    NAME,
                    best,
                    f"prompt '{prompt_id}', {axis}: no term differs between groups "
                    f"at q<{FDR_LEVEL} "
                    f"(top-ranked '{best['term']}', {p_text(best['p_value'])})",
                )
            )
            continue
        terms = flagged.drop_duplicates("term").sort_values("q_value", kind="stable")
        for term in terms["term"].head(3):
            top = flagged[flagged["term"] == term].sort_values("value", ascending=False).iloc[0]
            found.append(
                finding(
                    NAME,
                    top,
                    f"prompt '{prompt_id}', {axis}: '{term}' used most for {top['group']}: "
                    f"mean TF-IDF {interval_text(top)} (n={int(top['n'])}), "
                    f"q={fmt(top['q_value'])}; {terms['term'].nunique()} of "
                    f"{tested['term'].nunique()} reported terms flagged",
                    term=str(term),
                )
            )
    return found


ANALYSIS = Analysis(
    name=NAME,
    run=term_variance,
    inputs=("generations",),
    settings=("exclude_terms", "tfidf", "n_permutations", "n_bootstrap", "seed"),
    title="Terms whose use differs between groups (TF-IDF)",
    description="Per prompt and group axis, terms are ranked by the spread of their mean TF-IDF "
    "across groups (as in the IDEFICS card); a permutation test over images gives each term a "
    "p-value, Benjamini-Hochberg q-values control false discoveries, and only terms with "
    f"q < {FDR_LEVEL} are flagged.",
    findings=term_findings,
    companions={"term_examples": term_examples},
    companion_columns={"term_examples": EXAMPLE_COLUMNS},
)
