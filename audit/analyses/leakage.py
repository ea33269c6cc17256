"""``leakage``: can the group be predicted from the generated text alone?

Per prompt and axis: a one-vs-rest ridge classifier (scikit-learn's ``RidgeClassifier``, alpha 1,
with intercept) on the TF-IDF of the generations (same vectorizer settings as ``term_variance``),
5-fold stratified cross-validation, balanced accuracy of the out-of-fold predictions against
chance (``1 / groups``). A fair model's text does not reveal the group: chance level.

Ridge predictions are linear in the training labels, so each fold is solved once in its kernel
form and the same folds score ``N_PERMUTATIONS`` label permutations (over images) in one matrix
product; a test checks the predictions equal ``RidgeClassifier``'s. At most ``MAX_IMAGES`` images
(a seeded random subset) are used per prompt and axis, enough for a balanced accuracy within about
±0.03 and fast at 100,000 generations.

Rows: ``metric = "balanced_accuracy"`` (group ``all``; bootstrap interval over images resampled
within groups) and ``metric = "recall"`` per group (Wilson). Extra columns: ``chance``,
``p_value`` (permutation), ``n_permutations``, ``n_groups``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from audit.analyses.findings import Finding, finding, fmt, interval_text, p_text
from audit.analyses.grouping import GroupAxis, GroupSizes
from audit.analyses.registry import Analysis, AnalysisContext
from audit.analyses.stats import (
    bootstrap_ratios,
    percentile_interval,
    permuted_labels,
    wilson_interval,
)
from audit.analyses.table import (
    ALL,
    MIN_GROUP_SIZE,
    empty_table,
    estimate,
    insufficient,
    records_table,
    with_q_values,
)
from audit.analyses.term_statistics import NoTerms, vectorize

NAME = "leakage"
MAX_IMAGES = 1000
N_FOLDS = 5
N_PERMUTATIONS = 200
RIDGE_ALPHA = 1.0
EXTRA = ("chance", "p_value", "q_value", "n_permutations", "n_groups")


def fold_operators(
    kernel: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], alpha: float = RIDGE_ALPHA
) -> list[np.ndarray]:
    """Per fold, ``M`` with test predictions ``ȳ_train + M @ Y_train`` of ridge regression with
    an unpenalised intercept (the kernel, centred on the training rows, makes ``M @ 1 = 0``)."""
    operators = []
    for train, test in folds:
        row_means = kernel[:, train].mean(axis=1)
        grand = row_means[train].mean()
        k_train = (
            kernel[np.ix_(train, train)]
            - row_means[train][:, None]
            - row_means[train][None, :]
            + grand
        )
        k_test = (
            kernel[np.ix_(test, train)]
            - row_means[test][:, None]
            - row_means[train][None, :]
            + grand
        )
        k_train[np.diag_indices_from(k_train)] += alpha
        factor = scipy.linalg.cho_factor(k_train, overwrite_a=True, check_finite=False)
        operators.append(scipy.linalg.cho_solve(factor, k_test.T, check_finite=False).T)
    return operators


def out_of_fold_predictions(
    operators: list[np.ndarray],
    folds: list[tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    n_groups: int,
) -> np.ndarray:
    """Out-of-fold predicted codes ``(b, n)`` for each row of labels ``(b, n)``: one-vs-rest
    targets in {-1, +1}, prediction = the group with the largest decision value."""
    b, n = labels.shape
    predicted = np.empty((b, n), dtype=int)
    for operator, (train, test) in zip(operators, folds, strict=True):
        targets = np.where(labels[:, train, None] == np.arange(n_groups), 1.0, -1.0)
        targets = targets.transpose(1, 0, 2).reshape(train.size, b * n_groups)
        decision = targets.mean(axis=0) + operator @ targets
        predicted[:, test] = decision.reshape(test.size, b, n_groups).argmax(axis=2).T
    return predicted


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, n_groups: int) -> np.ndarray:
    """Mean per-group recall for each row of ``(b, n)`` labels and predictions."""
    b = labels.shape[0]
    flat = (np.arange(b)[:, None] * n_groups + labels).ravel()
    hits = np.bincount(flat, weights=(labels == predicted).ravel(), minlength=b * n_groups)
    sizes = np.bincount(flat, minlength=b * n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (hits / sizes).reshape(b, n_groups)
    return np.nanmean(recall, axis=1)


def leakage(context: AnalysisContext) -> pd.DataFrame:
    """Cross-validated balanced accuracy of predicting the group from the text, per prompt and
    axis."""
    split = context.generation_split()
    if split is None:
        return empty_table(EXTRA)
    records: list[dict[str, Any]] = []
    for item in split.items:
        for axis in split.axes:
            rng = context.rng(NAME, item.id, axis.name)
            records += _axis_records(context, item.id, item.valid, axis, rng)
    return with_q_values(records_table(records, EXTRA), ("metric",))


def _axis_records(
    context: AnalysisContext,
    prompt_id: str,
    subset: pd.DataFrame,
    axis: GroupAxis,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    counts = GroupSizes.of(axis, subset, max(MIN_GROUP_SIZE, N_FOLDS))
    included = counts.included
    short = counts.left_out(prompt_id, "recall")
    rows, local = counts.restricted()
    if rows.size > MAX_IMAGES:
        # rows is increasing: sorted picks keep the canonical order.
        pick = np.sort(rng.choice(rows.size, size=MAX_IMAGES, replace=False))
        rows, local = rows[pick], local[pick]
    present = np.bincount(local, minlength=included.size) if rows.size else np.zeros(0, int)
    try:
        if included.size < 2 or (present < N_FOLDS).any():
            raise NoTerms("too few images per group")
        texts = subset["generation"].fillna("").astype(str).to_numpy()[rows].tolist()
        matrix, _ = vectorize(texts, context.settings.tfidf, list(context.settings.exclude_terms))
    except NoTerms:
        overall = insufficient(prompt_id, axis.name, ALL, "balanced_accuracy", int(rows.size))
        return [overall, *short, *counts.left_out(prompt_id, "recall", included)]
    groups = [axis.groups[g] for g in included]
    return [*_scored(context, prompt_id, axis.name, groups, matrix, local, rng), *short]


def _scored(
    context: AnalysisContext,
    prompt_id: str,
    axis: str,
    groups: list[str],
    matrix: Any,
    local: np.ndarray,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    k = len(groups)
    kernel = (matrix @ matrix.T).toarray()
    splitter = StratifiedKFold(N_FOLDS, shuffle=True, random_state=int(rng.integers(2**31)))
    folds = list(splitter.split(np.zeros(local.size), local))
    permuted = permuted_labels(local, N_PERMUTATIONS, rng)
    # Matrices of at most MAX_IMAGES rows: BLAS threads cost more than they save, and on a
    # busy machine they contend badly.
    with threadpool_limits(limits=1, user_api="blas"):
        operators = fold_operators(kernel, folds)
        predicted = out_of_fold_predictions(operators, folds, local[None, :], k)[0]
        null_predictions = out_of_fold_predictions(operators, folds, permuted, k)
    observed = float(balanced_accuracy(local[None, :], predicted[None, :], k)[0])
    null = balanced_accuracy(permuted, null_predictions, k)
    p_value = (1 + np.sum(null >= observed - 1e-12)) / (1 + N_PERMUTATIONS)
    hits = (predicted == local).astype(float)
    replicates = bootstrap_ratios(
        hits, np.ones(local.size), local, context.settings.n_bootstrap, rng
    )[:, :, 0]
    low, high = percentile_interval(replicates.mean(axis=1)[:, None])
    extra = {"chance": 1 / k, "n_groups": k}
    records = [
        estimate(
            prompt_id,
            axis,
            ALL,
            "balanced_accuracy",
            observed,
            (low[0], high[0]),
            local.size,
            p_value=p_value,
            n_permutations=N_PERMUTATIONS,
            **extra,
        )
    ]
    successes = np.bincount(local, weights=hits, minlength=k)
    totals = np.bincount(local, minlength=k)
    recall_low, recall_high = wilson_interval(successes, totals)
    for j, group in enumerate(groups):
        records.append(
            estimate(
                prompt_id,
                axis,
                group,
                "recall",
                successes[j] / totals[j],
                (recall_low[j], recall_high[j]),
                int(totals[j]),
                **extra,
            )
        )
    return records


def leakage_findings(table: pd.DataFrame) -> list[Finding]:
    """Per prompt and axis: balanced accuracy against chance, with the permutation p-value."""
    found = []
    rows = table[(table["metric"] == "balanced_accuracy") & table["value"].notna()]
    for _, row in rows.iterrows():
        found.append(
            finding(
                NAME,
                row,
                f"prompt '{row['prompt_id']}', {row['axis']}: group predicted from the text "
                f"with balanced accuracy {interval_text(row, True)} "
                f"vs chance {fmt(row['chance'], True)} "
                f"(n={int(row['n'])}, {p_text(row['p_value'])})",
            )
        )
    return found


ANALYSIS = Analysis(
    name=NAME,
    run=leakage,
    inputs=("generations",),
    settings=("exclude_terms", "tfidf", "n_bootstrap", "seed"),
    title="Group leakage",
    description="Cross-validated balanced accuracy of a linear model predicting the group from "
    "the generated text alone, with a permutation p-value. A model whose text carries no group "
    "signal sits at chance.",
    findings=leakage_findings,
)
