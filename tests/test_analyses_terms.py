"""``term_variance`` and ``leakage`` against independent recomputations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import RidgeClassifier
from sklearn.model_selection import StratifiedKFold

from audit.analyses import analyze_run
from audit.analyses.leakage import fold_operators, out_of_fold_predictions
from audit.ingest.simulate import PlantedTerm
from tests.test_analyses import small_generations, table, write_run


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    generations = small_generations(seed=1, n_images=120)
    run_dir = write_run(
        tmp_path_factory.mktemp("terms") / "run",
        generations,
        analysis={"exclude_terms": ["Middle Eastern"], "tfidf": {"top_k": 8}},
    )
    analyze_run(run_dir, only=["term_variance", "leakage"])
    return generations, run_dir


def test_group_means_match_an_independent_tfidf(analysed):
    generations, run_dir = analysed
    result = table(run_dir, "term_variance")
    valid = generations[generations["finish_reason"] != "error"]
    checked = 0
    for prompt_id, rows in valid.groupby("prompt_id"):
        vectorizer = TfidfVectorizer(max_df=0.95, min_df=2, stop_words="english")
        matrix = vectorizer.fit_transform(rows["generation"]).toarray()
        vocabulary = vectorizer.vocabulary_
        for axis in ("gender", "race"):
            part = result[(result["prompt_id"] == prompt_id) & (result["axis"] == axis)]
            for _, row in part.iterrows():
                members = (rows[axis] == row["group"]).to_numpy()
                expected = matrix[members, vocabulary[row["term"]]].mean()
                assert row["value"] == pytest.approx(expected, abs=1e-12)
                assert row["n"] == members.sum()
                assert row["ci_low"] <= row["value"] <= row["ci_high"]
                checked += 1
            for term, rows_of_term in part.groupby("term"):
                means = np.array(
                    [
                        matrix[(rows[axis] == g).to_numpy(), vocabulary[term]].mean()
                        for g in sorted(rows[axis].unique())
                    ]
                )
                assert rows_of_term["variance"].iloc[0] == pytest.approx(means.var(), abs=1e-15)
                card = np.sqrt(((means - means.sum()) ** 2).sum())
                assert rows_of_term["card_score"].iloc[0] == pytest.approx(card, abs=1e-12)
    assert checked > 50


def test_planted_term_is_flagged_for_its_group_with_examples(analysed):
    generations, run_dir = analysed
    result = table(run_dir, "term_variance")
    gender = result[(result["axis"] == "gender") & (result["term"] == "umbrella")]
    assert set(gender["prompt_id"]) == {"p1", "p2"}
    assert gender["flagged"].all() and (gender["q_value"] < 0.05).all()
    assert (gender.loc[gender.groupby("prompt_id")["value"].idxmax(), "group"] == "Female").all()
    assert (gender["n_permutations"] >= 200).all()
    assert (result["rank"] >= 1).all() and set(result["ranking"].dropna()) == {"variance"}
    examples = table(run_dir, "term_examples")
    umbrella = examples[(examples["term"] == "umbrella") & (examples["group"] == "Female")]
    assert umbrella.groupby(["prompt_id", "axis"]).size().max() == 3
    assert umbrella["generation"].str.contains("umbrella", case=False).all()
    texts = generations.set_index(["sample_id", "prompt_id"])["generation"]
    for _, row in umbrella.iterrows():
        assert texts[(row["sample_id"], row["prompt_id"])] == row["generation"]


def test_excluded_terms_are_split_like_the_text_and_left_out(analysed):
    _, run_dir = analysed
    terms = set(table(run_dir, "term_variance")["term"].dropna())
    assert not {"middle", "eastern"} & terms


def _documents(seed: int) -> pd.DataFrame:
    """Group A and B: 'common' everywhere with equal weight, 'rare' only in A."""
    rng = np.random.default_rng(seed)
    rows = []
    filler = [f"word{i}" for i in range(30)]
    for i in range(80):
        group = "A" if i % 2 == 0 else "B"
        words = list(rng.choice(filler, size=6)) + ["common"] * 3
        if group == "A" and rng.random() < 0.3:
            words.append("rare")
        rows.append(
            {
                "sample_id": f"s{i:03d}",
                "prompt_id": "p",
                "model_id": "m",
                "gender": group,
                "prompt": "p",
                "generation": " ".join(words),
                "n_new_tokens": len(words),
                "finish_reason": "eos",
                "error": None,
            }
        )
    return pd.DataFrame(rows)


def test_card_ranking_differs_from_variance_ranking(tmp_path):
    documents = _documents(0)
    ranks = {}
    for mode in ("variance", "card"):
        run_dir = write_run(
            tmp_path / mode,
            documents,
            axes=("gender",),
            analysis={"tfidf": {"ranking": mode, "max_df": 1.0, "top_k": 40}},
        )
        analyze_run(run_dir, only=["term_variance"])
        result = table(run_dir, "term_variance").drop_duplicates("term").set_index("term")
        ranks[mode] = result["rank"]
    # The card subtracts the sum over groups, so a term common to all groups leads its ranking;
    # the variance of group means puts the term that separates the groups first.
    assert ranks["card"]["common"] == 1 and ranks["variance"]["common"] > 1
    assert ranks["variance"]["rare"] == 1 and ranks["card"]["rare"] > 1


def test_ridge_closed_form_equals_scikit_learn_ridge_classifier():
    generations = small_generations(seed=2, n_images=120)
    keep = (generations["prompt_id"] == "p1") & (generations["finish_reason"] != "error")
    rows = generations[keep]
    matrix = TfidfVectorizer(min_df=2).fit_transform(rows["generation"])
    for axis in ("gender", "race"):
        labels = pd.factorize(rows[axis])[0]
        folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(labels, labels))
        kernel = (matrix @ matrix.T).toarray()
        ours = out_of_fold_predictions(
            fold_operators(kernel, folds), folds, labels[None, :], int(labels.max()) + 1
        )[0]
        expected = np.empty_like(labels)
        for train, test in folds:
            model = RidgeClassifier(alpha=1.0, solver="cholesky")
            model.fit(matrix[train].toarray(), labels[train])
            expected[test] = model.predict(matrix[test].toarray())
        assert (ours == expected).mean() >= 0.99


def test_leakage_detects_a_planted_term_and_not_its_absence(tmp_path):
    planted = small_generations(
        seed=4,
        n_images=150,
        planted_terms=(PlantedTerm("umbrella", "gender", "Female", 0.9, 0.0),),
        planted_refusals=(),
    )
    null = small_generations(seed=4, n_images=150, planted_terms=(), planted_refusals=())
    results = {}
    for name, frame in (("planted", planted), ("null", null)):
        run_dir = write_run(tmp_path / name, frame)
        analyze_run(run_dir, only=["leakage"])
        results[name] = table(run_dir, "leakage")
    for name, result in results.items():
        overall = result[(result["metric"] == "balanced_accuracy") & (result["axis"] == "gender")]
        assert (overall["chance"] == 0.5).all() and len(overall) == 2
        if name == "planted":
            assert (overall["ci_low"] > 0.6).all() and (overall["p_value"] < 0.01).all()
        else:
            assert (overall["ci_low"] < 0.5).all() and (overall["p_value"] > 0.01).all()
        recall = result[(result["metric"] == "recall") & (result["axis"] == "race")]
        assert set(recall["group"]) == {"A", "B", "C"}
        assert recall["value"].between(0, 1).all()


def test_normal_tail_matches_the_permutation_tail_of_a_frequent_term():
    """Beyond the permutations' resolution, frequent terms get the normal approximation of the
    same permutation distribution: check it against 60,000 permutations at p = 1e-3."""
    import scipy.sparse as sp

    from audit.analyses.stats import permuted_labels
    from audit.analyses.term_statistics import normal_tail_p_values

    rng = np.random.default_rng(0)
    codes = np.repeat([0, 1, 2], [3000, 2000, 1000])
    sizes = np.bincount(codes).astype(float)
    documents = rng.choice(codes.size, 400, replace=False)
    values = np.zeros(codes.size)
    values[documents] = rng.gamma(2.0, 0.05, 400)
    null = []
    for _ in range(12):
        labels = permuted_labels(codes, 5000, rng, documents)
        onehot = labels[:, :, None] == np.arange(3)
        means = np.einsum("bdg,d->bg", onehot, values[documents]) / sizes
        null.append(means.var(axis=1))
    threshold = np.quantile(np.concatenate(null), 1 - 1e-3)
    column = sp.csc_matrix(values[:, None])
    p_value = normal_tail_p_values(column, sizes, np.array([threshold]))[0]
    assert 0.6e-3 < p_value < 1.6e-3
