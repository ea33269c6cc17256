"""Text for a terminal: what the user reads, with anything from data made inert.

Model ids, probe names, sample ids, generations and error texts come from files other people
made. Printed raw, an escape sequence among them can rewrite the terminal's title or hide
lines, and a direction override can make text read backwards. Every line the command prints
goes through ``terminal_text``: control characters (but newline and tab) and Unicode
direction controls are shown as escapes instead of acted on. The report and the dashboard show
data through the same ``escape_controls``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

# C0 and C1 controls but tab and newline; DEL; bidirectional embeddings, overrides, isolates
# and marks (U+061C, U+200E/F, U+202A-U+202E, U+2066-U+2069).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """``text`` with every control and direction character written as ``\\xNN``/``\\uNNNN``."""
    return _UNSAFE.sub(_escape, text)


def terminal_text(text: str) -> str:
    """A line for the terminal: ``escape_controls``."""
    return escape_controls(text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


@contextmanager
def transformers_bars_off(only_off_a_terminal: bool = False) -> Iterator[None]:
    """transformers' own progress bars (loading and saving weights) off for the duration, and
    as they were afterwards; with ``only_off_a_terminal``, only when stderr is not a terminal
    (a log, a pipe: there a bar is a stream of carriage returns)."""
    import sys

    from transformers.utils import logging as hf_logging

    if only_off_a_terminal and sys.stderr.isatty():
        yield
        return
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()
