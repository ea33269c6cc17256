"""How numbers and untrusted text are written into the report and the dashboard.

Every estimate is written with its 95% interval and sample size; a value marked "insufficient
data" (or missing) is written as words, never as ``nan``. Text that comes from a model or a
dataset is escaped for the medium it lands in (``escape_markdown`` here; Jinja's autoescape for
HTML).
"""

from __future__ import annotations

import math
import re
from typing import Any

from markupsafe import Markup

from audit.terminal import escape_controls

INSUFFICIENT = "insufficient data"
NOT_ANALYSED = "not analysed"


class MarkdownText(str):
    """Markdown written by the report itself (formatted numbers, table rules): not escaped."""


def is_missing(value: Any) -> bool:
    """True for None, NaN, pandas NA and empty strings."""
    if value is None:
        return True
    if isinstance(value, str):
        return value.strip() == ""
    try:
        return bool(math.isnan(value))
    except (TypeError, ValueError):
        return value.__class__.__name__ in {"NAType", "NaTType"}


def format_number(value: Any, percent: bool = False, digits: int = 3) -> str:
    """``0.523`` or ``52.3%``; ``—`` for a missing value."""
    if is_missing(value):
        return "—"
    number = float(value)
    if percent:
        return f"{100 * number:.1f}%"
    magnitude = abs(number)
    if number != 0 and (magnitude >= 1e5 or magnitude < 10**-digits):
        return f"{number:.{digits - 1}e}"
    return f"{number:.1f}" if magnitude >= 100 else f"{number:.{digits}f}"


def format_interval(low: Any, high: Any, percent: bool = False) -> str:
    """``[0.41, 0.63]``, or empty when the interval is not defined."""
    if is_missing(low) or is_missing(high):
        return ""
    return f"[{format_number(low, percent)}, {format_number(high, percent)}]"


def format_count(n: Any) -> str:
    if is_missing(n):
        return "n=?"
    return f"n={int(n):,}"


def format_points(value: Any) -> str:
    """A difference or spread of proportions in percentage points: ``12.3``."""
    return "—" if is_missing(value) else f"{100 * float(value):.1f}"


def format_estimate(row: Any, percent: bool = False, points: bool = False) -> str:
    """``0.523 [0.41, 0.63], n=120`` from a row with value/ci_low/ci_high/n/note; with
    ``points``, a difference of proportions: ``12.3 points [4.1, 20.5], n=120``."""
    note = str(_get(row, "note") or "").strip()
    value = _get(row, "value")
    count = format_count(_get(row, "n"))
    if note == INSUFFICIENT or is_missing(value):
        return f"{note or INSUFFICIENT} ({count})"
    low, high = _get(row, "ci_low"), _get(row, "ci_high")
    if points:
        interval = (
            ""
            if is_missing(low) or is_missing(high)
            else (f"[{format_points(low)}, {format_points(high)}]")
        )
        text = f"{format_points(value)} points"
    else:
        interval = format_interval(low, high, percent)
        text = format_number(value, percent)
    text = f"{text} {interval}" if interval else text
    suffix = f"; {note}" if note else ""
    return f"{text}, {count}{suffix}"


def format_p(value: Any) -> str:
    """p- and q-values: ``0.012``, ``0.00099`` (two significant digits below 0.001: a
    permutation p-value is an estimate, not a bound), or ``—``."""
    if is_missing(value):
        return "—"
    number = float(value)
    return f"{number:.2g}" if number < 0.001 else f"{number:.3f}"


def _get(row: Any, key: str) -> Any:
    return row.get(key) if hasattr(row, "get") else getattr(row, key, None)


# Markdown punctuation that can start markup (links, emphasis, code, tables, raw HTML, headings),
# and ``:``, which GFM's autolinks look back from for a scheme (``https:``, ``mailto:``).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#!|~&$:])")
# The dot GFM's ``www.`` autolink looks for: escaped, the raw text no longer reads ``www.``.
_WWW = re.compile(r"(?i)\b(www)\.")
# GFM links e-mail addresses after escapes are resolved, so a backslash cannot stop it: a word
# joiner (invisible, zero-width) after ``@`` leaves no address to find.
_AT = "@\u2060"
_WHITESPACE = re.compile(r"\s+")
# What starts a block at the beginning of a line: a list item (``-``, ``+``, ``1.``; ``1)`` has
# its parenthesis escaped already) or a setext heading's underline (``=``).
_LINE_START = re.compile(r"^([-+=]|\d+(?=\.))")


def escape_markdown(text: Any) -> str:
    """Untrusted text made inert in Markdown as GitHub renders it: one line, every markup
    character backslashed, no autolink, control characters shown as escapes.

    CommonMark and GitHub render a backslash-escaped ASCII punctuation character as itself, so
    ``<script>`` stays text, ``[x](javascript:...)`` is no link and ``|`` cannot end a table cell;
    ``https\\://``, ``www\\.`` and ``a@`` + U+2060 + ``b.org`` are no autolinks (tested with
    cmark-gfm). Control and direction characters are shown as escapes (``escape_controls``).
    """
    if is_missing(text):
        return ""
    flat = escape_controls(_WHITESPACE.sub(" ", str(text)).strip())
    escaped = _MARKDOWN_SPECIAL.sub(r"\\\1", flat)
    escaped = _LINE_START.sub(_escape_line_start, escaped, count=1)
    return _WWW.sub(r"\1\\.", escaped).replace("@", _AT)


def _escape_line_start(match: re.Match[str]) -> str:
    start = match.group()
    return f"{start}\\" if start[0].isdigit() else f"\\{start}"


def html_finalize(value: Any) -> Any:
    """Jinja ``finalize`` for HTML templates (autoescape follows): text from data with its
    control and direction characters shown as escapes; the report's own markup as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return escape_controls(value)
    return value


def markdown_finalize(value: Any) -> str:
    """Jinja ``finalize`` for Markdown templates: escape everything not marked ``MarkdownText``."""
    if isinstance(value, MarkdownText):
        return str(value)
    if value is None:
        return ""
    return escape_markdown(value)


def shorten(text: Any, limit: int = 300) -> str:
    """Untrusted text cut to ``limit`` characters on one line (still to be escaped)."""
    if is_missing(text):
        return ""
    flat = _WHITESPACE.sub(" ", str(text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


#: What a metric of the analysis tables is, for titles and axis labels.
_METRIC_NAMES = {
    "accuracy": "accuracy",
    "accuracy_gap": "largest accuracy gap between groups",
    "cell_accuracy_std": "spread of cell accuracies (std)",
    "cell_accuracy_std_noise": "spread noise alone gives (std)",
    "refusal_rate": "refusal rate",
    "mean_new_tokens": "new tokens (mean)",
    "share_eos": "share ended by an end token",
    "share_length": "share cut at the token limit",
    "error_rate": "error rate",
    "balanced_accuracy": "balanced accuracy of predicting the group",
    "recall": "recall of the group from the text",
    "mean_tfidf": "mean TF-IDF",
    "share": "share predicted",
}


def metric_title(metric: str) -> str:
    """``share_toxic_above_threshold`` -> ``share with toxic score above the threshold``."""
    name = str(metric)
    suffix = ""
    if name.endswith("_per_token"):
        name, suffix = name.removesuffix("_per_token"), " (per-token scoring)"
    if name in _METRIC_NAMES:
        return _METRIC_NAMES[name] + suffix
    if name.startswith("gap_mean_"):
        return f"largest gap in mean {name.removeprefix('gap_mean_')} score" + suffix
    if name.startswith("mean_"):
        return f"mean {name.removeprefix('mean_')} score" + suffix
    if name.startswith("share_") and name.endswith("_above_threshold"):
        label = name.removeprefix("share_").removesuffix("_above_threshold")
        return f"share with {label} score above the threshold" + suffix
    return name.replace("_", " ") + suffix


def natural_key(group: str) -> tuple[tuple[int, float, str], ...]:
    """Order groups as a reader expects: ranges by their first number ("3-9" before "10-19",
    "more than 70" last), other names as they are; intersections part by part."""
    parts = str(group).split(" x ")
    key = []
    for part in parts:
        found = re.search(r"\d+(?:\.\d+)?", part)
        key.append((0, float(found.group()), part) if found else (1, 0.0, part))
    return tuple(key)
