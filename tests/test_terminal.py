"""What the command prints is inert: escapes and direction controls from data are shown, not
acted on; probe files that are not UTF-8 text are a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.ingest.simulate import write_simulated_run
from audit.store.tables import RunStore
from audit.terminal import terminal_text

PAYLOADS = ("\x1b]0;title rewritten\x07", "\x1b[2J", "abc\u202edcba", "nul\x00byte", "\x9b31m")


def test_terminal_text_escapes_controls_and_keeps_lines() -> None:
    assert terminal_text("a\tb\nc") == "a\tb\nc"
    assert terminal_text("\x1b[31mred") == "\\x1b[31mred"
    assert terminal_text("x\u202ey") == "x\\u202ey"
    for payload in PAYLOADS:
        shown = terminal_text(payload)
        assert not any(ch in shown for ch in "\x1b\x07\x00\x9b\u202e")


def test_status_and_analyze_print_data_inert(tmp_path: Path) -> None:
    store = RunStore(write_simulated_run(tmp_path / "run", seed=2))
    model = store.manifest().model.model_copy(update={"id": "evil" + "".join(PAYLOADS)})
    store.update_manifest(model=model, status="partial", probe_path="x" + PAYLOADS[0])
    for command in (["status", str(store.root)], ["analyze", str(store.root), "--only", "refusal"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0, result.output
        assert not any(ch in result.output for ch in "\x1b\x07\x00\x9b\u202e"), result.output
    assert (
        "\\x1b]0;title rewritten\\x07"
        in CliRunner().invoke(app, ["status", str(store.root)]).output
    )


@pytest.mark.parametrize(
    "content", [b"\x00\x01\x02\xff\xfe binary", "name: probe\n".encode("utf-16")]
)
def test_a_probe_that_is_not_utf8_text_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    probe = tmp_path / "probe.yaml"
    probe.write_bytes(content)
    result = CliRunner().invoke(app, ["validate", str(probe)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{probe}: byte " in result.output and "not UTF-8 text" in result.output
