"""The Python API for notebooks: a run's tables as DataFrames, estimates by group, runs side by
side; and the README's example, run as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import audit
from audit.store.tables import RunStore

README = Path(__file__).resolve().parents[1] / "README.md"


def test_a_run_as_dataframes(tiny_run: Path) -> None:
    run = audit.load_run(tiny_run)
    stored = RunStore(tiny_run)
    assert len(run.generations) == len(stored.read("generations"))
    assert {"classification", "refusal", "term_variance"} <= set(run.analyses)
    assert run.model == "idefics2 (local)"

    accuracy = run.by_group("classification", "accuracy", axis="race", prompt="race")
    table = stored.read_analysis("classification")
    expected = table[
        (table["prompt_id"] == "race")
        & (table["metric"] == "accuracy")
        & (table["axis"] == "race")
        & (table["scoring"] == "sum")
    ].set_index("group")
    pd.testing.assert_series_equal(accuracy["value"], expected["value"], check_names=False)
    assert list(accuracy.columns[:4]) == ["value", "ci_low", "ci_high", "n"]
    overall = run.overall("classification", "accuracy", prompt="race")
    assert overall["n"] == expected["n"].sum()  # every image has a race
    assert not run.findings.empty and "headline" in run.findings


def test_mistakes_name_what_there_is(tiny_run: Path) -> None:
    run = audit.load_run(tiny_run)
    with pytest.raises(KeyError, match="holds several prompts or tasks"):
        run.by_group("classification", "accuracy", axis="race")
    with pytest.raises(KeyError, match="has no metric 'acuracy'"):
        run.by_group("classification", "acuracy", axis="race", prompt="race")
    with pytest.raises(KeyError, match="axes there"):
        run.by_group("classification", "accuracy", axis="age", prompt="race")
    with pytest.raises(KeyError, match="no 'leak' table"):
        run.table("leak")


def _rewrite_parts(run: Path, table: str, change: Any) -> None:
    """Every part of ``table`` rewritten with ``change(frame)`` (the same rows, other values)."""
    for part in RunStore(run).parts(table):
        change(pd.read_parquet(part)).to_parquet(part)


def test_runs_side_by_side(tiny_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    runs = [audit.load_run(tiny_run), audit.load_run(other)]
    both = audit.compare(runs, "refusal", "refusal_rate", axis="gender", prompt="resume")
    assert list(both.columns.get_level_values(0).unique()) == [runs[0].name, "other"]
    assert (both[runs[0].name]["value"] == both["other"]["value"]).all()


def test_the_paired_comparison_of_two_different_runs_is_the_hand_computed_one(
    tiny_run: Path, tmp_path: Path
) -> None:
    """B differs from A on known rows: three correct gender answers made wrong, and the resume
    generations two tokens shorter for half the images. B − A, by hand, on the 12 images."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_run, a)
    shutil.copytree(tiny_run, b)
    rows = RunStore(a).read("classifications")
    gender = rows[rows["task_id"] == "gender"].sort_values("sample_id")
    flipped = set(gender[gender["correct"].astype(bool)]["sample_id"][:3])
    assert len(flipped) == 3

    def wrong(frame: pd.DataFrame) -> pd.DataFrame:
        hit = (frame["task_id"] == "gender") & frame["sample_id"].isin(flipped)
        other = {"Male": "Female", "Female": "Male"}
        frame.loc[hit, "prediction"] = frame.loc[hit, "target"].map(other)
        frame.loc[hit, "correct"] = False
        return frame

    generations = RunStore(a).read("generations")
    resume = generations[generations["prompt_id"] == "resume"].sort_values("sample_id")
    shorter = set(resume["sample_id"][::2])

    def cut(frame: pd.DataFrame) -> pd.DataFrame:
        hit = (frame["prompt_id"] == "resume") & frame["sample_id"].isin(shorter)
        frame.loc[hit, "n_new_tokens"] = frame.loc[hit, "n_new_tokens"] - 2
        return frame

    _rewrite_parts(b, "classifications", wrong)
    _rewrite_parts(b, "generations", cut)
    paired = audit.load_run(b).paired_with(audit.load_run(a))

    def row(metric: str, item: str) -> pd.Series:
        hit = paired[
            (paired["metric"] == metric) & (paired["prompt_id"] == item) & (paired["axis"] == "all")
        ]
        assert len(hit) == 1, (metric, item)
        return hit.iloc[0]

    accuracy = row("accuracy", "gender")
    n_correct = int(gender["correct"].astype(bool).sum())
    assert accuracy["n"] == 12
    assert accuracy["value_a"] == pytest.approx(n_correct / 12)
    assert accuracy["value_b"] == pytest.approx((n_correct - 3) / 12)
    assert accuracy["difference"] == pytest.approx(-3 / 12)
    assert accuracy["ci_low"] <= -3 / 12 <= accuracy["ci_high"]
    tokens = row("new tokens", "resume")
    assert tokens["n"] == 12
    assert tokens["value_a"] == pytest.approx(resume["n_new_tokens"].mean())
    assert tokens["difference"] == pytest.approx(-2 * len(shorter) / 12)
    assert tokens["ci_high"] <= 0  # every paired difference is 0 or -2
    untouched = row("new tokens", "arrest")
    assert untouched["difference"] == 0


def test_the_readme_example_runs_and_prints_the_stored_numbers(  # type: ignore[no-untyped-def]
    tiny_run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    section = README.read_text(encoding="utf-8").split("## Python API")[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    (tmp_path / "runs").mkdir()
    for name in re.findall(r'load_run\("runs/([^"]+)"\)', code):
        shutil.copytree(tiny_run, tmp_path / "runs" / name)
    monkeypatch.chdir(tmp_path)
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        exec(compile(code, str(README), "exec"), {})  # noqa: S102 - the README's own example
    printed = capsys.readouterr().out
    stored = RunStore(tiny_run)
    # The first line: the model as a reader knows it, and the run's generation count.
    assert printed.startswith(f"idefics2 (local) {len(stored.read('generations'))} ")
    # The by-group accuracy: every race group, each with its stored accuracy and n.
    table = stored.read_analysis("classification")
    race = table[
        (table["prompt_id"] == "race")
        & (table["metric"] == "accuracy")
        & (table["axis"] == "race")
        & (table["scoring"] == "sum")
    ]
    lines = printed.splitlines()
    for _, row in race.iterrows():  # 12 images: every race group is too small to estimate
        line = next(line for line in lines if line.startswith(str(row["group"])))
        assert f" {int(row['n'])} " in line, line
        expected = "insufficient data" if pd.isna(row["value"]) else f"{row['value']:.6f}"
        assert expected in line, line
    # The overall accuracy, as stored.
    overall = table[
        (table["prompt_id"] == "race")
        & (table["metric"] == "accuracy")
        & (table["axis"] == "all")
        & (table["scoring"] == "sum")
    ].iloc[0]
    assert re.search(rf"value\s+{overall['value']:.6f}", printed), printed
    # Two copies of one run: every paired difference is zero.
    paired = audit.load_run("runs/other").paired_with(audit.load_run(tiny_run))
    assert (paired["difference"].dropna() == 0).all()
