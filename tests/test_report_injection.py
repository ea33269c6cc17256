"""Model and dataset text is untrusted: script, image and Markdown injections stay inert in
``report.html`` and ``report.md`` (the browser test also runs the HTML in chromium)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt
from test_report_fixture import IMG, LINK, PAYLOADS, PIPE, SCRIPT, write_handmade_run

from audit.report.build import build_report
from audit.report.formatting import escape_markdown


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self._script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self._script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._script = self._script and tag != "script"

    def handle_data(self, data: str) -> None:
        if not self._script:
            self.text.append(data)


def _elements(html: str) -> _Elements:
    parser = _Elements()
    parser.feed(html)
    return parser


def _assert_inert(html: str, own_nonce: str | None) -> None:
    parsed = _elements(html)
    for tag, attrs in parsed.elements:
        assert tag not in {"img", "iframe", "object", "embed"}, f"<{tag}> from data"
        assert not any(name.startswith("on") for name in attrs), f"event handler on <{tag}>"
        href = (attrs.get("href") or "").strip().lower()
        assert not href.startswith("javascript:"), f"javascript link {href}"
        if tag == "script":
            assert own_nonce is not None and attrs.get("nonce") == own_nonce, "foreign <script>"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("inject")
    runs = [
        write_handmade_run(root / "run-a", n=30, payload=True),
        write_handmade_run(root / "run-b", n=30, payload=True, seed=1),
    ]
    html_path, md_path = build_report(runs, root / "out")
    return html_path.read_text(encoding="utf-8"), md_path.read_text(encoding="utf-8")


def test_html_has_no_foreign_element_and_shows_payloads_as_text(report: tuple[str, str]) -> None:
    html, _ = report
    nonce = re.search(r"'nonce-([^']+)'", html).group(1)
    _assert_inert(html, nonce)
    visible = "".join(_elements(html).text)
    for payload in (SCRIPT, IMG, LINK):
        assert payload in visible, f"{payload!r} not shown as text"


def test_markdown_renders_inert_under_commonmark_with_html_on(report: tuple[str, str]) -> None:
    _, markdown = report
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    _assert_inert(rendered, None)
    assert "<script" not in rendered and "<img" not in rendered and "<a " not in rendered
    visible = "".join(_elements(rendered).text)
    assert SCRIPT in visible and LINK in visible


def test_pipes_do_not_break_markdown_tables(report: tuple[str, str]) -> None:
    _, markdown = report
    rendered = MarkdownIt("commonmark").enable("table").render(markdown)
    for table in re.findall(r"<table>.*?</table>", rendered, flags=re.S):
        header = len(re.findall(r"<th[ >]", table.split("</thead>")[0]))
        for row in re.findall(r"<tr>(.*?)</tr>", table.split("</thead>")[1], flags=re.S):
            assert len(re.findall(r"<td[ >]", row)) == header
    assert PIPE.replace("|", "\\|") in markdown


@pytest.mark.parametrize("payload", [*PAYLOADS, "line one\nline two", "\\` escaped backtick"])
def test_escaped_text_renders_back_to_itself(payload: str) -> None:
    rendered = MarkdownIt("commonmark", {"html": True}).render(escape_markdown(payload))
    parsed = _elements(rendered)
    assert [tag for tag, _ in parsed.elements] == ["p"]
    assert "".join(parsed.text).strip() == " ".join(payload.split())


def test_markdown_escaping_leaves_plain_words_alone() -> None:
    assert escape_markdown("East Asian, 20-29 years old.") == "East Asian, 20-29 years old."
