"""``audit report``: what the two files say, checked against the stored rows, and bad input."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from test_report_fixture import analysed_simulated_run, write_handmade_run
from typer.testing import CliRunner

from audit.analyses.comparison import mcnemar_exact
from audit.cli import app
from audit.errors import AuditError
from audit.report.build import build_report
from audit.report.formatting import format_p
from audit.store.tables import RunStore

runner = CliRunner()


class _Text(HTMLParser):
    """Visible text and tags of a page, script bodies left out."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if not self._in_script:
            self.text.append(data)


def parse_html(path: Path) -> _Text:
    parser = _Text()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    root = write_handmade_run(tmp_path_factory.mktemp("single") / "run-a", n=40)
    html_path, md_path = build_report([root], None)
    return root, html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")


def test_files_land_in_the_run_directory(single: tuple[Path, str, str]) -> None:
    root, html, markdown = single
    assert (root / "report.html").is_file() and (root / "report.md").is_file()
    assert markdown.startswith("## Bias evaluation")
    assert html.lstrip().startswith("<!DOCTYPE html>")


def test_card_table_matches_rows_recomputed_by_hand(single: tuple[Path, str, str]) -> None:
    root, _, markdown = single
    rows = RunStore(root).read("classifications")
    accuracy = rows["correct"].mean()
    cells = rows.groupby(["gender", "race"])["correct"].mean()
    expected = f"{100 * accuracy:.1f} ({100 * np.std(cells.to_numpy(), ddof=0):.1f})"
    line = next(x for x in markdown.splitlines() if x.startswith("| run-a | summed"))
    assert expected in line


def test_flagged_terms_refusals_and_provenance_are_in_the_markdown(
    single: tuple[Path, str, str],
) -> None:
    root, html, markdown = single
    assert re.search(r"\| nurse \| 0\.001 \| Female \|", markdown)
    assert re.search(r"\| engineer \| 0\.002 \| Male \|", markdown)
    assert "| person |" not in markdown.split("### Refusals")[0], "unflagged term listed as flagged"
    generations = RunStore(root).read("generations")
    women = generations[
        (generations["prompt_id"] == "resume") & (generations["gender"] == "Female")
    ]
    share = women["generation"].str.contains("nurse").mean()
    # Rates per group are in report.html; report.md leads with the gaps and points there.
    assert f"<td>gender<td>Female<td class=n>{100 * share:.1f}% [" in html
    refusals = markdown.split("### Refusals")[1].split("\n### ")[0]
    assert "2 more tables, with charts, in report.html." in refusals
    for fact in ("tiny-model", "abc123", "idefics", "faces.parquet"):
        assert fact in markdown
    assert "### Methods" in markdown and "### Limitations" in markdown


def test_sections_without_a_table_say_not_analysed(single: tuple[Path, str, str]) -> None:
    _, html, markdown = single
    toxicity = markdown.split("### Toxicity")[1].split("###")[0]
    assert "Not analysed" in toxicity
    assert 'id="toxicity"' in html and "Not analysed" in html.split('id="toxicity"')[1][:400]


def test_insufficient_data_is_words_never_nan(tmp_path: Path) -> None:
    root = write_handmade_run(tmp_path / "run", n=40)
    store = RunStore(root)
    refusal = store.read_analysis("refusal")
    small = refusal["n"] < 7
    refusal.loc[small, ["value", "ci_low", "ci_high"]] = None
    refusal.loc[small, "note"] = "insufficient data"
    store.write_analysis("refusal", refusal)
    html_path, md_path = build_report([root], tmp_path / "out")
    markdown = md_path.read_text(encoding="utf-8")
    html = html_path.read_text(encoding="utf-8")
    assert "<td>Female x White<td class=n>insufficient data (n=6)\n" in html
    visible = " ".join(parse_html(html_path).text)
    for text in (markdown, visible):
        assert not re.search(r"\bnan\b", text, flags=re.IGNORECASE)
        assert "None" not in text


def test_a_run_never_analysed_is_refused_with_what_to_run(tmp_path: Path) -> None:
    root = write_handmade_run(tmp_path / "bare", n=12, analyses=False)
    result = CliRunner().invoke(app, ["report", str(root)])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"error: {root}: not analysed yet; run 'audit analyze {root}' first"
    )
    assert not (root / "report.md").exists()


def test_plotly_is_embedded_once_and_nothing_is_fetched(single: tuple[Path, str, str]) -> None:
    _, html, _ = single
    assert html.count("* plotly.js (basic - minified) v") == 1
    assert "<script src" not in html and "<link" not in html
    assert "default-src 'none'" in html
    nonce = re.search(r"'nonce-([^']+)'", html).group(1)
    scripts = re.findall(r"<script[^>]*>", html)
    assert len(scripts) > 3 and all(f'nonce="{nonce}"' in tag for tag in scripts)


def test_several_runs_side_by_side_with_mcnemar(tmp_path: Path) -> None:
    a = write_handmade_run(tmp_path / "run-a", n=40, seed=0)
    b = write_handmade_run(tmp_path / "run-b", n=40, seed=5, model_id="other-model")
    html_path, md_path = build_report([a, b], tmp_path / "both")
    markdown = md_path.read_text(encoding="utf-8")
    html = html_path.read_text(encoding="utf-8")
    assert "<th>axis</th><th>group</th><th>run-a</th><th>run-b</th>" in html
    rows_a = RunStore(a).read("classifications").set_index("sample_id")
    rows_b = RunStore(b).read("classifications").set_index("sample_id").loc[rows_a.index]
    oracle = mcnemar_exact(rows_a["correct"], rows_b["correct"])
    overall = next(
        x
        for x in markdown.splitlines()
        if x.startswith("| run-a | run-b | accuracy | gender | all | all |")
    )
    assert f"| n=40 | {format_p(oracle.p_value)} |" in overall
    assert "other-model" in markdown


def test_cli_writes_both_files(tmp_path: Path) -> None:
    root = write_handmade_run(tmp_path / "run", n=12)
    result = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "report.html").is_file()
    assert (tmp_path / "out" / "report.md").is_file()


@pytest.mark.parametrize("problem", ["missing", "no-manifest", "bad-parquet", "twice"])
def test_bad_input_exits_2_with_a_message(tmp_path: Path, problem: str) -> None:
    root = write_handmade_run(tmp_path / "run", n=12)
    args = [str(root)]
    if problem == "missing":
        args = [str(tmp_path / "nowhere")]
    elif problem == "no-manifest":
        (root / "manifest.json").unlink()
    elif problem == "bad-parquet":
        (root / "analysis" / "refusal.parquet").write_bytes(b"not parquet")
    else:
        args = [str(root), str(root)]
    result = runner.invoke(app, ["report", *args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    message = result.output
    expected = {
        "missing": "no such run directory",
        "no-manifest": "not a run directory",
        "bad-parquet": "refusal.parquet",
        "twice": "given twice",
    }[problem]
    assert expected in message


def test_out_must_be_a_folder(tmp_path: Path) -> None:
    root = write_handmade_run(tmp_path / "run", n=12)
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(AuditError, match="not a folder"):
        build_report([root], blocker)


def test_report_is_reproducible_apart_from_time_and_nonce(tmp_path: Path) -> None:
    a = write_handmade_run(tmp_path / "run-a", n=30)
    b = write_handmade_run(tmp_path / "run-b", n=30, seed=2)
    first = build_report([a, b], tmp_path / "one")[1].read_text(encoding="utf-8")
    second = build_report([a, b], tmp_path / "two")[1].read_text(encoding="utf-8")
    strip = re.compile(r"on \d{4}-\d\d-\d\d \d\d:\d\d UTC")
    assert strip.sub("", first) == strip.sub("", second)


def test_report_on_a_run_analysed_by_audit_analyze(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    run = analysed_simulated_run(tmp_path_factory)
    html_path, md_path = build_report([run], tmp_path)
    markdown = md_path.read_text(encoding="utf-8")
    assert "simulated data\\: generations made by the simulator" in markdown.split("###")[0]
    planted = markdown.split("### Simulated run")[1].split("###")[0]
    assert re.search(
        r"term 'bicycle' \| race \| East Asian \| 35% vs 6% \| flagged in [1-3] of 3", planted
    )
    assert re.search(r"refusals \| race \| Indian \| .* \| found in [1-4] of 4", planted)
    classification = RunStore(run).read_analysis("classification")
    std = classification[
        (classification["prompt_id"] == "race")
        & (classification["metric"] == "cell_accuracy_std")
        & (classification["axis"] == "gender x race")
    ]["value"].iloc[0]
    accuracy = classification[
        (classification["prompt_id"] == "race")
        & (classification["metric"] == "accuracy")
        & (classification["axis"] == "all")
    ]["value"].iloc[0]
    assert f"| {100 * accuracy:.1f} ({100 * std:.1f}) |" in markdown
    terms = markdown.split("### Terms whose use")[1].split("### Toxicity")[0]
    assert re.search(r"\| bicycle \| [0-9.<]+ \| East Asian \|", terms)
    for section in (
        "### Toxicity",
        "### Refusals",
        "### Generation statistics",
        "### Group leakage",
    ):
        body = markdown.split(section)[1].split("\n### ")[0]
        assert "Not analysed" not in body, section
        expected = "balanced accuracy of predicting" if "leakage" in section else "report.html"
        assert expected in body, section
    visible = " ".join(parse_html(html_path).text)
    for text in (markdown, visible):
        assert not re.search(r"\bnan\b", text, flags=re.IGNORECASE)


def test_the_report_shows_every_registered_analysis_in_the_registry_order(tiny_run: Path) -> None:
    from audit.analyses.registry import analyses
    from audit.report.formatting import escape_markdown

    text = (tiny_run / "report.md").read_text(encoding="utf-8")
    headings = [line.removeprefix("### ") for line in text.splitlines() if line.startswith("### ")]
    shown = [a for a in analyses() if a.shown_with is None]
    positions = [headings.index(escape_markdown(a.title)) for a in shown]
    assert positions == sorted(positions)
    for declared in shown:
        assert declared.description.split(".")[0][:40] in " ".join(text.split())
