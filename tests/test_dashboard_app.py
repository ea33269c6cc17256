"""Every dashboard page runs without exception in Streamlit's ``AppTest``: on hand-built runs with
injected text, on a run analysed by ``audit analyze``, on runs without analyses, on bad input."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest
from test_report_fixture import SCRIPT, analysed_simulated_run, write_handmade_run

from audit.dashboard.launch import RUN_DIRS_ENV, app_entry, run_dirs_env
from audit.store.tables import RunStore

PAGES = sorted(p.name for p in (app_entry().parent / "pages").glob("[0-9]*.py"))
TIMEOUT_S = 60


def run_pages(
    run_dirs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, AppTest]]:
    """Each page after a fresh run of the app started over ``run_dirs``."""
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env(run_dirs))
    app = AppTest.from_file(str(app_entry()), default_timeout=TIMEOUT_S)
    app.run()
    yield "Home.py", app
    for page in PAGES:
        app.switch_page(f"pages/{page}")
        app.run()
        yield page, app


def run_page(run_dirs: list[Path], monkeypatch: pytest.MonkeyPatch, page: str) -> AppTest:
    """The app started over ``run_dirs``, on ``page`` (which must exist)."""
    assert page in PAGES, f"no page {page} (pages: {PAGES})"
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env(run_dirs))
    app = AppTest.from_file(str(app_entry()), default_timeout=TIMEOUT_S).run()
    app.switch_page(f"pages/{page}")
    return app.run()


def assert_clean(page: str, app: AppTest) -> None:
    assert not app.exception, f"{page}: {[e.value for e in app.exception]}"
    assert not app.error, f"{page}: {[e.value for e in app.error]}"


@pytest.fixture(scope="module")
def handmade(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("dash")
    return [
        write_handmade_run(root / "run-a", n=30, payload=True),
        write_handmade_run(root / "run-b", n=30, payload=True, seed=2),
    ]


def test_there_are_six_pages() -> None:
    assert len(PAGES) == 6


def test_every_page_on_two_runs_with_injected_text(
    handmade: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    shown = set()
    for page, app in run_pages(handmade, monkeypatch):
        assert_clean(page, app)
        shown.add(page)
        # Model text reaches Markdown elements only escaped: never as raw HTML.
        for element in (*app.markdown, *app.caption):
            assert SCRIPT not in element.value, f"{page}: raw payload in Markdown"
    assert shown == {"Home.py", *PAGES}


def test_every_page_on_a_run_analysed_by_audit_analyze(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = analysed_simulated_run(tmp_path_factory)
    for page, app in run_pages([run], monkeypatch):
        assert_clean(page, app)
        if page == "Home.py":
            assert any("SIMULATED" in w.value for w in app.warning)
            assert len(app.dataframe) >= 3
        if page.endswith("Compare_runs.py"):
            assert any("two or more run directories" in i.value for i in app.info)
        elif page != "Home.py":
            assert app.dataframe, f"{page}: no table shown"
            assert not app.warning, f"{page}: {[w.value for w in app.warning]}"


_NUMBER = re.compile(r"-?(\d+)(?:\.(\d+))?(?:e([-+]?\d+))?")


def _shown_numbers(text: str) -> list[tuple[float, float]]:
    """The estimate and its interval as a page prints them (``44.6% [30.1%, 59.9%]``,
    ``1.64e-04 [1.52e-04, 1.79e-04]``): each number, as a fraction where the page wrote
    percents, with half a unit of its last printed digit (how far rounding may have moved it)."""
    scale = 0.01 if "%" in text else 1.0
    numbers = []
    for match in _NUMBER.finditer(text.replace(",", "")):
        exponent = int(match.group(3) or 0)
        digits = len(match.group(2) or "")
        numbers.append((float(match.group(0)) * scale, 0.5 * 10.0 ** (exponent - digits) * scale))
    return numbers


@pytest.mark.parametrize(
    ("page", "analysis", "picks"),
    [
        ("2_Toxicity.py", "toxicity", ("Prompt", "Metric")),
        ("3_Refusal.py", "refusal", ("Prompt", "Metric")),
        ("4_Classification.py", "classification", ("Task", "Metric")),
    ],
)
def test_a_metric_pages_numbers_are_the_stored_tables(
    page: str,
    analysis: str,
    picks: tuple[str, str],
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every estimate, interval and n the page shows for the chosen prompt (or task) and metric
    is the stored analysis table's, row by row (to the digits it prints)."""
    run = analysed_simulated_run(tmp_path_factory)
    app = run_page([run], monkeypatch, page)
    assert_clean(page, app)
    boxes = {box.label: box for box in app.selectbox}
    item, metric = (boxes[pick].value for pick in picks)
    stored = RunStore(run).read_analysis(analysis)
    stored = stored[(stored["prompt_id"].astype(str) == item) & (stored["metric"] == metric)]
    shown = next(
        frame.value for frame in app.dataframe if "estimate [95% CI]" in frame.value.columns
    )
    assert len(shown) and len(shown) <= len(stored)
    checked = 0
    for _, row in shown.iterrows():
        match = stored[(stored["axis"] == row["axis"]) & (stored["group"] == row["group"])]
        assert len(match) == 1, (row["axis"], row["group"])
        expected = match.iloc[0]
        assert row["n"] == expected["n"], (row["axis"], row["group"])
        if pd.isna(expected["value"]):
            continue
        numbers = _shown_numbers(row["estimate [95% CI]"])
        wanted = [expected["value"], expected["ci_low"], expected["ci_high"]]
        for (got, tolerance), value in zip(numbers[:3], wanted, strict=True):
            assert abs(got - value) <= tolerance * 1.001, (row["group"], row["estimate [95% CI]"])
        checked += 1
    assert checked >= 3, "too few estimates compared"


def test_term_explorer_follows_the_selected_term(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = analysed_simulated_run(tmp_path_factory)
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env([run]))
    app = AppTest.from_file(str(app_entry()), default_timeout=TIMEOUT_S).run()
    app.switch_page("pages/" + next(p for p in PAGES if "Term" in p)).run()
    app.selectbox(key="term_prompt").set_value("story").run()
    app.selectbox(key="term_axis").set_value("gender").run()
    app.checkbox(key="term_only_flagged").check().run()
    ranked = app.dataframe[0].value
    assert "umbrella" in set(ranked["term"]), "the planted term is not flagged"
    assert set(ranked["flagged"]) == {"yes"}
    app.selectbox(key="term_term").set_value("umbrella").run()
    assert_clean("term explorer", app)
    groups = app.dataframe[1].value
    assert set(groups["group"]) == {"Female", "Male"}
    assert len(app.text) >= 2, "no example generation shown"


def test_group_filter_hides_unselected_groups(
    handmade: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env(handmade[:1]))
    app = AppTest.from_file(str(app_entry()), default_timeout=TIMEOUT_S).run()
    app.switch_page("pages/" + next(p for p in PAGES if "Refusal" in p)).run()
    before = app.dataframe[0].value
    assert "Male" in set(before["group"])
    app.multiselect(key="groups_run-a_gender").set_value(["Female"]).run()
    after = app.dataframe[0].value
    assert "Male" not in set(after["group"]) and "Female" in set(after["group"])
    assert not any(g.startswith("Male x") for g in after["group"])
    assert "all" in set(after["group"])


def test_pages_without_analyses_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bare = write_handmade_run(tmp_path / "bare", n=12, analyses=False)
    for page, app in run_pages([bare], monkeypatch):
        assert not app.exception, f"{page}: {[e.value for e in app.exception]}"
        if any(name in page for name in ("Term", "Toxicity", "Refusal", "Classification")):
            assert any("Not analysed" in w.value for w in app.warning), page


def test_bad_run_directory_is_a_message_not_a_crash(
    tmp_path: Path, handmade: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env([tmp_path / "missing", handmade[0]]))
    app = AppTest.from_file(str(app_entry()), default_timeout=TIMEOUT_S).run()
    assert not app.exception
    assert any("no such run directory" in e.value for e in app.sidebar.error)
    assert any(e.value == "run-a" for e in app.subheader)


def test_no_run_directory_explains_how_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RUN_DIRS_ENV, raising=False)
    app = AppTest.from_file(str(app_entry()), default_timeout=TIMEOUT_S).run()
    assert not app.exception
    assert any("audit dashboard RUN_DIR" in i.value for i in app.info)


def test_generation_browser_filters_by_text(
    handmade: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env(handmade[:1]))
    app = AppTest.from_file(str(app_entry()), default_timeout=TIMEOUT_S).run()
    app.switch_page("pages/" + next(p for p in PAGES if "Generations" in p)).run()
    app.text_input(key="browse_text").set_value("engineer").run()
    shown = app.dataframe[-1].value
    stored = RunStore(handmade[0]).read("generations")
    assert len(shown) == stored["generation"].str.contains("engineer", case=False).sum()
    assert shown["generation"].str.contains("engineer").all()


def test_one_image_shows_every_models_generation_for_each_prompt(
    handmade: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.store.tables import RunStore

    app = run_page(handmade, monkeypatch, "5_Generations.py")
    assert_clean("5_Generations.py", app)
    sample = app.selectbox(key="every_model_sample").value
    texts = [str(element.value) for element in app.text]
    for run in handmade:
        assert any(text.startswith(f"{run.name} · ") for text in texts), run.name
        rows = RunStore(run).read("generations")
        for generation in rows[rows["sample_id"] == sample]["generation"].dropna():
            assert " ".join(str(generation).split())[:20] in " ".join(" ".join(texts).split())


def test_a_run_is_added_in_one_click_and_a_bad_one_says_why_at_once(
    handmade: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env(handmade[:1]))
    app = AppTest.from_file(str(app_entry()), default_timeout=TIMEOUT_S)
    app.run()
    app.sidebar.text_input[0].input(str(tmp_path / "no-such-run"))
    app.sidebar.button[0].click().run()
    assert any("no-such-run" in str(e.value) for e in app.sidebar.error)
    app.sidebar.text_input[0].input(str(handmade[1]))
    app.sidebar.button[0].click().run()
    assert not app.sidebar.error
    assert [h.value for h in app.subheader][:2] == ["run-a", "run-b"]  # both, at once


def test_compare_puts_any_number_of_runs_side_by_side(
    handmade: list[Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    third = write_handmade_run(tmp_path / "run-c", n=30, seed=3)
    app = run_page([*handmade, third], monkeypatch, "6_Compare_runs.py")
    assert_clean("6_Compare_runs.py", app)
    assert app.multiselect(key="side_by_side_runs").value == ["run-a", "run-b", "run-c"]
    table = app.dataframe[0].value
    assert {"run-a", "run-b", "run-c"} <= set(table.columns)


def test_the_top_level_app_serves_a_folder_of_runs_read_only(
    handmade: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``streamlit run app/streamlit_app.py`` (a Space): every run directory of the folder it is
    pointed at, the package's pages, and no box to open other folders of the machine."""
    from audit.dashboard.launch import FIXED_RUNS_ENV

    folder = handmade[0].parent
    # Empty, so the app fills them in; monkeypatch restores them (the app writes os.environ).
    monkeypatch.setenv(RUN_DIRS_ENV, "")
    monkeypatch.setenv(FIXED_RUNS_ENV, "")
    monkeypatch.setenv("AUDIT_RUNS_FOLDER", str(folder))
    entry = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
    app = AppTest.from_file(str(entry), default_timeout=TIMEOUT_S).run()
    assert_clean("streamlit_app.py", app)
    assert [h.value for h in app.subheader][:2] == ["run-a", "run-b"]
    assert not app.sidebar.text_input, "a box to open other folders is offered"
    app.switch_page(str(app_entry().parent / "pages" / "3_Refusal.py")).run()
    assert_clean("3_Refusal.py", app)
    assert app.dataframe
