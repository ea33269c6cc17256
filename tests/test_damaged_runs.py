"""Damaged run directories, as a shared or half-copied run arrives: every command either works
or stops with one ``error:`` paragraph naming the file and what to do (exit 2), never a
traceback, and no stored row is changed or lost.

One real run (a tiny model, two shards, analysed and reported) is copied and damaged once per
case; ``status``, ``report``, ``analyze`` and ``report`` again run on each copy through the CLI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app

COMMANDS = ("status", "report", "analyze", "report")
DATA_FOLDERS = ("generations", "classifications", "thumbnails", "shards")


# -- ways to damage a run ---------------------------------------------------------------------


def _part(run: Path, table: str) -> Path:
    return sorted((run / table).glob("part-*.parquet"))[0]


def _extra_part(table: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable:
    """A second part: the first one's rows, changed (new sample ids unless ``change`` sets them)."""

    def damage(run: Path) -> None:
        rows = pd.read_parquet(_part(run, table)).head(2).assign(sample_id=["zz-1", "zz-2"])
        change(rows).to_parquet(run / table / "part-99999999999999999999-extra.parquet")

    return damage


def _write(relative: str, content: bytes | str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / relative
        path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return damage


def _rewrite_part(table: str, change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = _part(run, table)
        path.write_bytes(change(path.read_bytes()))

    return damage


def _edit_json(relative: str, change: Callable[[Any], Any]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / relative
        path.write_text(json.dumps(change(json.loads(path.read_text()))))

    return damage


def _with(**fields: Any) -> Callable[[dict], dict]:
    return lambda data: {**data, **fields}


def _probe_with(**fields: Any) -> Callable[[dict], dict]:
    return lambda data: {**data, "probe": {**data["probe"], **fields}}


def _self_link(run: Path) -> None:
    part = _part(run, "generations")
    part.unlink()
    os.symlink(part.name, part)


def _into_folder(relative: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        path = run / relative
        path.unlink(missing_ok=True)
        path.mkdir()

    return damage


def _remove(relative: str) -> Callable[[Path], None]:
    return lambda run: (run / relative).unlink()


NEW_PART = "generations/part-5-x.parquet"
# name: (damage, the commands that must refuse, naming this path). A report refuses whatever
# changed the rows since the analysis, and reads the parts to know.
CASES: dict[str, tuple[Callable[[Path], None], tuple[str, ...], str]] = {
    "truncated part": (
        _rewrite_part("generations", lambda b: b[: len(b) // 2]),
        ("status", "analyze", "report"),
        "generations/part-",
    ),
    "garbage part": (
        _rewrite_part("generations", lambda b: os.urandom(len(b))),
        ("status", "analyze", "report"),
        "generations/part-",
    ),
    "zero-byte part": (
        _rewrite_part("generations", lambda b: b""),
        ("status", "analyze", "report"),
        "generations/part-",
    ),
    "JSON named .parquet": (
        _rewrite_part("classifications", lambda b: b'{"a": 1}'),
        ("status", "analyze", "report"),
        "classifications/part-",
    ),
    "self-linked part": (_self_link, ("status", "analyze", "report"), "generations/part-"),
    "link to nowhere": (
        lambda run: os.symlink("nowhere.parquet", run / NEW_PART),
        ("status", "analyze", "report"),
        NEW_PART,
    ),
    "part that is a folder": (_into_folder(NEW_PART), ("status", "analyze", "report"), NEW_PART),
    "part without prompt_id": (
        _extra_part("generations", lambda f: f.drop(columns=["prompt_id"])),
        ("status", "analyze", "report"),
        "part-99999999999999999999-extra",
    ),
    "part without generation": (
        _extra_part("generations", lambda f: f.drop(columns=["generation"])),
        ("status", "analyze", "report"),
        "part-99999999999999999999-extra",
    ),
    "part without task_id": (
        _extra_part("classifications", lambda f: f.drop(columns=["task_id"])),
        ("status", "analyze", "report"),
        "part-99999999999999999999-extra",
    ),
    "generation of numbers": (
        _extra_part("generations", lambda f: f.assign(generation=[1, 2])),
        ("status", "analyze", "report"),
        "part-99999999999999999999-extra",
    ),
    "correct as text": (
        _extra_part("classifications", lambda f: f.assign(correct=["yes", "no"])),
        ("status", "analyze", "report"),
        "part-99999999999999999999-extra",
    ),
    "token counts as text": (
        _extra_part("generations", lambda f: f.assign(n_new_tokens=["5", "7"])),
        ("status", "analyze", "report"),
        "part-99999999999999999999-extra",
    ),
    "label scores as text": (
        _extra_part(
            "classifications",
            lambda f: f.assign(**{c: ["-1.5", "x"] for c in f if c.startswith("score_")}),
        ),
        ("status", "analyze", "report"),
        "part-99999999999999999999-extra",
    ),
    "integer sample ids": (
        _extra_part("generations", lambda f: f.assign(sample_id=[1, 2])),
        ("report",),  # stale until analysed again
        "audit analyze",
    ),
    "garbage thumbnails": (_rewrite_part("thumbnails", lambda b: b[:100]), (), ""),
    "manifest a list": (_write("manifest.json", "[1, 2]"), COMMANDS, "manifest.json"),
    "manifest not JSON": (_write("manifest.json", "{"), COMMANDS, "manifest.json"),
    "manifest not UTF-8": (_write("manifest.json", b"\xff\xfe{"), COMMANDS, "manifest.json"),
    "manifest missing": (_remove("manifest.json"), COMMANDS, "manifest.json"),
    "schema version 99": (
        _edit_json("manifest.json", _with(schema_version=99)),
        COMMANDS,
        "manifest.json",
    ),
    "probe a string": (_edit_json("manifest.json", _with(probe="x")), COMMANDS, "manifest.json"),
    "status a number": (_edit_json("manifest.json", _with(status=3)), COMMANDS, "manifest.json"),
    "model a list": (_edit_json("manifest.json", _with(model=[1])), COMMANDS, "manifest.json"),
    "producer unknown": (
        _edit_json("manifest.json", _with(producer="x")),
        COMMANDS,
        "manifest.json",
    ),
    "fast paths a number": (
        _edit_json("manifest.json", _with(fast_paths=7)),
        COMMANDS,
        "manifest.json",
    ),
    "analysis settings of the wrong type": (
        _edit_json("manifest.json", _probe_with(analysis={"n_bootstrap": "many"})),
        ("analyze",),
        "manifest.json",
    ),
    "prompts a mapping": (_edit_json("manifest.json", _probe_with(prompts={"a": 1})), (), ""),
    "shard record with a bad time": (
        _edit_json("shards/1-of-2.json", _with(updated_at="yesterday")),
        (),
        "",
    ),
    "shard record garbage": (_write("shards/1-of-2.json", b"\x00\x01"), (), ""),
    "shard record a list": (_write("shards/1-of-2.json", "[]"), (), ""),
    "shard record a folder": (_into_folder("shards/1-of-2.json"), (), ""),
    "samples list corrupt": (_write("samples.parquet", b"PAR1garbage"), (), ""),
    "samples list a folder": (_into_folder("samples.parquet"), (), ""),
    "summary a list": (_write("analysis/summary.json", "[]"), ("report",), "summary.json"),
    "summary not JSON": (_write("analysis/summary.json", "{{"), ("report",), "summary.json"),
    "analysis table corrupt": (
        _write("analysis/classification.parquet", b"junk"),
        ("report",),
        "classification.parquet",
    ),
    "analysis table of other columns": (
        lambda run: pd.DataFrame({"x": [1]}).to_parquet(run / "analysis" / "refusal.parquet"),
        ("report",),
        "refusal.parquet",
    ),
    "toxicity scores corrupt": (_write("analysis/toxicity_scores.parquet", b"junk"), (), ""),
    "lock file garbage": (_write(".lock", os.urandom(64)), (), ""),
}


def _digest(run: Path) -> dict[str, str]:
    """Hashes of every stored row's file: what no command may change or lose."""
    files = [p for folder in DATA_FOLDERS for p in sorted((run / folder).glob("*")) if p.is_file()]
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_run_gives_an_error_paragraph_or_works_and_loses_nothing(
    tiny_run: Path, tmp_path: Path, case: str
) -> None:
    damage, refusing, named = CASES[case]
    assert bool(named) == bool(refusing), "a case that is refused names what the error says"
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, symlinks=True)
    damage(run)
    before = _digest(run)
    failures = set()
    for command in COMMANDS:
        result = CliRunner().invoke(app, [command, str(run)])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise AssertionError(f"{command}: traceback") from result.exception
        assert result.exit_code in (0, 2), (command, result.output)
        if result.exit_code == 2:
            failures.add(command)
            errors = [line for line in result.output.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, (command, result.output)
            assert named in errors[0] and str(run) in errors[0], (command, errors[0])
    assert failures == set(refusing), case
    assert _digest(run) == before


@pytest.mark.parametrize("kind", ["file", "empty folder"])
def test_a_run_directory_that_is_not_one(tmp_path: Path, kind: str) -> None:
    run = tmp_path / "run"
    run.write_text("x") if kind == "file" else run.mkdir()
    for command in COMMANDS:
        result = CliRunner().invoke(app, [command, str(run)])
        assert result.exit_code == 2 and result.output.startswith(f"error: {run}"), result.output


def test_status_says_which_progress_records_it_could_not_read(
    tiny_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    _edit_json("shards/1-of-2.json", _with(updated_at="yesterday"))(run)
    _write("samples.parquet", b"PAR1garbage")(run)
    result = CliRunner().invoke(app, ["status", str(run)])
    assert result.exit_code == 0
    assert (
        "1-of-2.json: this progress record cannot be read (updated_at: not a time" in result.output
    )
    assert "samples.parquet: cannot be read as parquet" in result.output
    assert "generations: 24 / 24 done" in result.output  # counted from the rows themselves


def test_unreadable_toxicity_scores_are_made_anew(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    scores = run / "analysis" / "toxicity_scores.parquet"
    expected = pd.read_parquet(scores)
    scores.write_bytes(b"junk")
    result = CliRunner().invoke(app, ["analyze", str(run)])
    assert result.exit_code == 0, result.output
    assert "scoring every generation anew" in result.output
    key = ["sample_id", "prompt_id"]
    got = pd.read_parquet(scores).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected.sort_values(key).reset_index(drop=True))
