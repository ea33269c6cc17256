"""A corpus of injection payloads (``payloads.PAYLOADS``) in every text field an imported run
holds (generations, sample ids, prompts, group values, model id), through ``audit import``,
``analyze``, ``status`` and ``report``: inert in the terminal, in ``report.md`` as GitHub renders
it (cmark-gfm with its extensions, raw HTML kept), and on every dashboard page. The HTML report
in Chromium: ``test_browser_dashboard.py``."""

from __future__ import annotations

import html
import re

import cmarkgfm
import pytest
from cmarkgfm.cmark import Options
from payloads import AUTOLINKS, HTML, PAYLOADS, TERMINAL, UNSAFE_FOR_TERMINAL, payload_run
from test_dashboard_app import assert_clean, run_pages

# What the report's own Markdown makes; anything else came from data.
REPORT_TAGS = {
    "code",
    "em",
    "h2",
    "h3",
    "h4",
    "li",
    "p",
    "strong",
    "table",
    "tbody",
    "td",
    "th",
    "thead",
    "tr",
    "ul",
    "ol",
    "br",
    "hr",
    "blockquote",
}


def _gfm(markdown: str) -> str:
    extensions = ["autolink", "tagfilter", "table", "strikethrough", "tasklist"]
    return cmarkgfm.markdown_to_html_with_extensions(
        markdown, options=Options.CMARK_OPT_UNSAFE, extensions=extensions
    )


def _visible(rendered: str) -> str:
    text = html.unescape(re.sub(r"<[^>]+>", "", rendered))
    return " ".join(text.replace("\u2060", "").split())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return payload_run(tmp_path_factory)


def test_the_corpus_is_large_and_reaches_every_field(corpus) -> None:  # type: ignore[no-untyped-def]
    from audit.store.tables import RunStore

    run, _ = corpus
    assert len(PAYLOADS) >= 50
    generations = RunStore(run).read("generations")
    assert set(PAYLOADS) <= set(generations["generation"])
    assert HTML[1] in set(generations["gender"]) and TERMINAL[0] + "id" in set(
        generations["sample_id"]
    )


def test_terminal_output_holds_no_control_or_direction_character(corpus) -> None:  # type: ignore[no-untyped-def]
    _, outputs = corpus
    for command, output in outputs.items():
        found = sorted({repr(c) for c in UNSAFE_FOR_TERMINAL if c in output})
        assert not found, f"audit {command} printed {found}"
    assert "\\x1b]0;pwned title\\x07" in outputs["status"]  # shown, as an escape


def test_markdown_renders_as_text_on_github(corpus) -> None:  # type: ignore[no-untyped-def]
    run, _ = corpus
    markdown = (run / "report.md").read_text(encoding="utf-8")
    rendered = _gfm(markdown)
    tags = set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", rendered))
    assert tags <= REPORT_TAGS, f"markup from data: {tags - REPORT_TAGS}"
    assert "href=" not in rendered and "src=" not in rendered.replace("src=x", "")
    visible = _visible(rendered)
    for payload in (HTML[1], AUTOLINKS[7]):  # group values, in every table
        assert " ".join(payload.split()) in visible, payload
    assert not any(c in markdown for c in UNSAFE_FOR_TERMINAL if c not in "\t")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_each_payload_escaped_renders_back_to_itself_on_github(payload: str) -> None:
    from audit.report.formatting import escape_markdown
    from audit.terminal import escape_controls

    rendered = _gfm(escape_markdown(payload))
    assert re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", rendered) == ["p"], rendered
    assert _visible(rendered) == " ".join(escape_controls(" ".join(payload.split())).split())


def test_every_dashboard_page_shows_the_corpus_as_text(
    corpus,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    run, _ = corpus
    pages = 0
    for page, app in run_pages([run], monkeypatch):
        assert_clean(page, app)
        pages += 1
        for element in (*app.markdown, *app.caption, *app.info, *app.warning):
            body = str(element.value)
            assert "<script" not in body and "<img" not in body, f"{page}: raw payload"
            assert not any(c in body for c in UNSAFE_FOR_TERMINAL if c not in "\t\n"), page
    assert pages == 7


@pytest.mark.parametrize("damaged", ["analysis/term_variance.parquet", "generations", "thumbnails"])
def test_dashboard_on_a_damaged_run_names_the_file(
    corpus,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,
    damaged: str,  # type: ignore[no-untyped-def]
) -> None:
    import shutil

    run, _ = corpus
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    path = copy / damaged
    path = sorted(path.glob("part-*.parquet"))[0] if path.is_dir() else path
    path.write_bytes(path.read_bytes()[:64])
    messages = []
    for page, app in run_pages([copy], monkeypatch):
        assert not app.exception, f"{page}: {[e.value for e in app.exception]}"
        messages += [str(e.value).replace("\\", "") for e in (*app.error, *app.warning)]
    assert any(path.name in m and "cannot be read" in m for m in messages), messages


def test_compare_runs_with_term_variance_rows_without_a_term(
    corpus,
    tmp_path,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    import shutil

    run, _ = corpus
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    *_, (page, app) = run_pages([run, copy], monkeypatch)
    assert page.endswith("Compare_runs.py")
    next(s for s in app.selectbox if s.label == "Analysis").set_value("term_variance").run()
    assert_clean(page, app)
    terms = next(s for s in app.selectbox if s.label == "Term")
    assert terms.options and all(isinstance(t, str) for t in terms.options)
    # 'plain-2' has too few images per group: its rows hold no term.
    next(s for s in app.selectbox if s.label == "Prompt / task").set_value("plain-2").run()
    assert_clean(page, app)


def test_html_report_shows_control_characters_as_escapes(corpus) -> None:  # type: ignore[no-untyped-def]
    run, _ = corpus
    page = (run / "report.html").read_text(encoding="utf-8")
    # plotly.js, embedded once, holds binary signatures in its own code: not data.
    library = max(re.findall(r"<script[^>]*>.*?</script>", page, flags=re.S), key=len)
    page = page.replace(library, "")
    found = sorted({repr(c) for c in UNSAFE_FOR_TERMINAL if c in page})
    assert not found, f"report.html holds {found}"
    assert "\\x1b]0;pwned title\\x07" in html.unescape(page)
