"""``classification`` and ``confusion`` against fairlearn's MetricFrame and direct counts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from fairlearn.metrics import MetricFrame
from scipy.stats import norm
from sklearn.metrics import accuracy_score
from statsmodels.stats.proportion import proportion_confint

from audit.analyses import analyze_run
from audit.ingest.simulate import PlantedRate, Simulation, simulate_classifications
from tests.test_analyses import AXES, write_run

TASKS = [
    {"id": "gender", "target": "gender", "labels": {"man": "Male", "woman": "Female"}},
    {"id": "race", "target": "race", "labels": {"a": "A", "b": "B", "c": "C", "d": "D"}},
]
LENGTHS = {"Male": 1, "Female": 4, "A": 1, "B": 2, "C": 5, "D": 3}


def _classifications(seed: int = 0) -> pd.DataFrame:
    simulation = Simulation(
        n_images=180,
        axes=AXES,
        classification_axes=("gender", "race"),
        accuracy=0.8,
        planted_accuracy=(PlantedRate("race", "B", 0.45),),
        seed=seed,
    )
    frame = simulate_classifications(simulation)
    # Labels of different lengths: per-token means then rank labels differently from sums.
    for value, length in LENGTHS.items():
        if f"n_tokens_{value}" in frame:
            frame[f"n_tokens_{value}"] = frame[f"n_tokens_{value}"].where(
                frame[f"score_{value}"].isna(), length
            )
    failed = frame.index[::37]
    frame["correct"] = frame["correct"].astype(object)
    frame.loc[failed, "error"] = "PIL.UnidentifiedImageError: cannot identify image"
    frame.loc[failed, [c for c in frame.columns if c.startswith("score_")]] = np.nan
    frame.loc[failed, ["prediction", "correct"]] = [None, None]
    return frame


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    frame = _classifications()
    run_dir = write_run(tmp_path_factory.mktemp("cls") / "run", classifications=frame, tasks=TASKS)
    result = analyze_run(run_dir, only=["classification", "confusion"])
    tables = {
        name: pd.read_parquet(run_dir / "analysis" / f"{name}.parquet")
        for name in ("classification", "confusion")
    }
    return frame, tables, result


def _predictions(rows: pd.DataFrame, values: list[str], per_token: bool) -> np.ndarray:
    scores = rows[[f"score_{v}" for v in values]].to_numpy(dtype=float)
    if per_token:
        scores = scores / rows[[f"n_tokens_{v}" for v in values]].to_numpy(dtype=float)
    return np.array(values)[scores.argmax(axis=1)]


def _valid(frame: pd.DataFrame, task: str) -> pd.DataFrame:
    return frame[(frame["task_id"] == task) & frame["error"].isna()].reset_index(drop=True)


@pytest.mark.parametrize("per_token", [False, True])
def test_accuracy_by_group_equals_fairlearn_metricframe(analysed, per_token):
    frame, tables, _ = analysed
    result = tables["classification"]
    metric = "accuracy_per_token" if per_token else "accuracy"
    for task in TASKS:
        rows = _valid(frame, task["id"])
        values = [v for v in task["labels"].values() if f"score_{v}" in rows]
        predicted = _predictions(rows, values, per_token)
        mine = result[(result["prompt_id"] == task["id"]) & (result["metric"] == metric)]
        for features in (["gender"], ["race"], ["gender", "race"]):
            metric_frame = MetricFrame(
                metrics=accuracy_score,
                y_true=rows["target"],
                y_pred=predicted,
                sensitive_features=rows[features],
            )
            axis = " x ".join(features)
            for key, expected in metric_frame.by_group.items():
                group = " x ".join(key) if isinstance(key, tuple) else key
                row = mine[(mine["axis"] == axis) & (mine["group"] == group)].iloc[0]
                assert row["value"] == pytest.approx(expected, abs=1e-12)
        overall = mine[mine["axis"] == "all"].iloc[0]
        assert overall["value"] == pytest.approx(accuracy_score(rows["target"], predicted))
        assert overall["n"] == len(rows)
        low, high = proportion_confint(int(overall["successes"]), len(rows), method="wilson")
        assert (overall["ci_low"], overall["ci_high"]) == pytest.approx((low, high))


def test_sum_and_per_token_predictions_differ_here(analysed):
    frame, _, _ = analysed
    rows = _valid(frame, "race")
    values = ["A", "B", "C"]
    assert (_predictions(rows, values, False) != _predictions(rows, values, True)).any()
    assert (_predictions(rows, values, False) == rows["prediction"]).all()


def test_gap_worst_group_and_minimum_detectable_gap(analysed):
    frame, tables, _ = analysed
    result = tables["classification"]
    rows = _valid(frame, "race")
    by_race = (rows["prediction"] == rows["target"]).groupby(rows["race"]).agg(["mean", "size"])
    gap = result[
        (result["prompt_id"] == "race")
        & (result["metric"] == "accuracy_gap")
        & (result["axis"] == "race")
    ].iloc[0]
    assert gap["worst_group"] == "B" == by_race["mean"].idxmin()
    assert gap["value"] == pytest.approx(by_race["mean"].max() - by_race["mean"].min())
    assert gap["ci_low"] <= gap["value"] <= gap["ci_high"]
    assert gap["p_value"] < 0.01
    p = (rows["prediction"] == rows["target"]).mean()
    best, worst = by_race.loc[gap["best_group"], "size"], by_race.loc["B", "size"]
    expected = (norm.ppf(0.975) + norm.ppf(0.8)) * np.sqrt(p * (1 - p) * (1 / best + 1 / worst))
    assert gap["min_detectable_gap"] == pytest.approx(expected)
    gender_gap = result[
        (result["prompt_id"] == "gender")
        & (result["metric"] == "accuracy_gap")
        & (result["axis"] == "gender")
    ].iloc[0]
    assert gender_gap["p_value"] > 0.05  # nothing planted between genders


def test_card_std_and_the_std_noise_alone_gives(analysed):
    frame, tables, _ = analysed
    result = tables["classification"]
    for task in ("gender", "race"):
        rows = _valid(frame, task)
        correct = rows["prediction"] == rows["target"]
        cells = correct.groupby([rows["gender"], rows["race"]]).agg(["mean", "size"])
        std = result[(result["prompt_id"] == task) & (result["metric"] == "cell_accuracy_std")]
        assert std["value"].iloc[0] == pytest.approx(np.std(cells["mean"], ddof=0))
        noise = result[
            (result["prompt_id"] == task) & (result["metric"] == "cell_accuracy_std_noise")
        ].iloc[0]
        p = correct.mean()
        k = len(cells)
        analytic = np.sqrt((k - 1) / k * np.mean(p * (1 - p) / cells["size"]))
        assert noise["value"] == pytest.approx(analytic, rel=0.15)
        assert noise["ci_low"] < noise["value"] < noise["ci_high"]
    race_std = result[(result["prompt_id"] == "race") & (result["metric"] == "cell_accuracy_std")]
    assert race_std["p_value"].iloc[0] < 0.05  # the planted gap is more than noise


def test_error_rows_and_zero_row_groups(analysed):
    frame, tables, result = analysed
    table = tables["classification"]
    assert result.summary["excluded_error_rows"]["classifications"] == frame["error"].notna().sum()
    overall = table[
        (table["prompt_id"] == "race") & (table["axis"] == "all") & (table["metric"] == "accuracy")
    ]
    assert overall["n"].iloc[0] == len(_valid(frame, "race"))
    empty = table[(table["prompt_id"] == "race") & (table["group"] == "D")]
    assert len(empty) == 2  # both scorings: a label value no image has
    assert empty["value"].isna().all() and (empty["note"] == "insufficient data").all()
    assert (empty["n"] == 0).all()


def test_confusion_matrices_equal_crosstabs(analysed):
    frame, tables, _ = analysed
    confusion = tables["confusion"]
    for task in TASKS:
        rows = _valid(frame, task["id"])
        values = [v for v in task["labels"].values() if f"score_{v}" in rows]
        for scoring, per_token in (("sum", False), ("mean", True)):
            predicted = _predictions(rows, values, per_token)
            for axis in ("all", "gender"):
                groups = ["all"] if axis == "all" else sorted(rows[axis].unique())
                for group in groups:
                    members = np.ones(len(rows), bool) if axis == "all" else rows[axis] == group
                    crosstab = pd.crosstab(rows["target"][members], predicted[members])
                    mine = confusion[
                        (confusion["prompt_id"] == task["id"])
                        & (confusion["scoring"] == scoring)
                        & (confusion["axis"] == axis)
                        & (confusion["group"] == group)
                    ]
                    counts = mine.pivot(index="target", columns="prediction", values="count")
                    counts = counts.loc[crosstab.index, crosstab.columns]
                    np.testing.assert_array_equal(counts.to_numpy(), crosstab.to_numpy())
                    shares = mine[mine["n"] > 0].groupby("target")["value"].sum()
                    np.testing.assert_allclose(shares, 1.0)
