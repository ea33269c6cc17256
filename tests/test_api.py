"""The Python API for notebooks: a run's tables as DataFrames, estimates by group, runs side by
side; and the README's example, run as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

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


def test_runs_side_by_side(tiny_run: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    runs = [audit.load_run(tiny_run), audit.load_run(other)]
    both = audit.compare(runs, "refusal", "refusal_rate", axis="gender", prompt="resume")
    assert list(both.columns.get_level_values(0).unique()) == [runs[0].name, "other"]
    assert (both[runs[0].name]["value"] == both["other"]["value"]).all()
    paired = runs[1].paired_with(runs[0])
    assert {"prompt_id", "difference", "ci_low", "ci_high", "q_value"} <= set(paired.columns)


def test_the_readme_example_runs(tiny_run: Path, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    section = README.read_text(encoding="utf-8").split("## Python API")[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    (tmp_path / "runs").mkdir()
    for name in re.findall(r'load_run\("runs/([^"]+)"\)', code):
        shutil.copytree(tiny_run, tmp_path / "runs" / name)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {})  # noqa: S102 - the README's own example
