"""Analyses record the rows they were computed from: a report of a run that grew (or was never
analysed) refuses with one instruction instead of showing old numbers as current."""

from __future__ import annotations

from pathlib import Path

from runs import write_probe
from typer.testing import CliRunner

from audit.cli import app


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


def test_a_report_refuses_analyses_of_fewer_rows_than_the_run_holds(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    probe = write_probe(tmp_path, model_dirs["idefics2"], analysis={"n_permutations": 100})
    run = tmp_path / "run"
    assert _invoke("run", str(probe), "--out", str(run), "--limit", "4")[0] == 0
    code, output = _invoke("report", str(run))
    assert code == 2 and "not analysed yet" in output and f"audit analyze {run}" in output
    only = ["--only", "classification", "--only", "refusal"]
    assert _invoke("analyze", str(run), *only)[0] == 0
    assert _invoke("report", str(run))[0] == 0

    code, output = _invoke("run", str(probe), "--out", str(run))  # grown to the whole probe
    assert code == 0 and "resuming: 16 of 48 rows stored, 0 errors to retry" in output
    code, output = _invoke("report", str(run))
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "stale" in lines[0]
    assert "computed from 8 generations, 8 classifications" in lines[0]
    assert "now holds 24 generations, 24 classifications" in lines[0]

    # Re-analysing part of the run leaves the other tables on the rows they were computed from.
    assert _invoke("analyze", str(run), "--only", "classification")[0] == 0
    code, output = _invoke("report", str(run))
    assert code == 2, output
    assert "the analyses refusal were computed from other rows or settings" in output

    assert _invoke("analyze", str(run), *only)[0] == 0
    assert _invoke("report", str(run))[0] == 0
    # ... and so does a change of settings for part of them.
    assert _invoke("analyze", str(run), "--only", "refusal", "--set", "seed=5")[0] == 0
    code, output = _invoke("report", str(run))
    assert code == 2 and "the analyses classification were computed" in output, output
    assert _invoke("analyze", str(run), *only)[0] == 0
    assert _invoke("report", str(run))[0] == 0
    # A setting the other analysis does not read leaves it current.
    assert (
        _invoke("analyze", str(run), "--only", "classification", "--set", "n_bootstrap=200")[0] == 0
    )
    assert _invoke("report", str(run))[0] == 0
    provenance = (run / "report.md").read_text(encoding="utf-8")
    line = next(x for x in provenance.splitlines() if x.startswith("| rows analysed |"))
    assert "24 generations" in line and "24 classifications" in line


def test_the_resume_hint_repeats_the_options_the_run_was_started_with(
    tmp_path: Path, model_dirs: dict[str, Path]
) -> None:
    import shlex

    from audit.store.tables import RunStore

    probe = write_probe(tmp_path, "not-this-model")  # the model comes from --model only
    run = tmp_path / "run"
    model = str(model_dirs["idefics2"])
    args = ["run", str(probe), "--out", str(run), "--model", model, "--limit", "3"]
    assert _invoke(*args, "--batch-size", "2")[0] == 0
    RunStore(run).update_manifest(status="partial")  # as an interrupted run leaves it
    code, output = _invoke("status", str(run))
    hint = next(line for line in output.splitlines() if line.startswith("resume with: "))
    words = shlex.split(hint.removeprefix("resume with: audit "))
    assert words[words.index("--model") + 1] == model and "--limit" in words
    code, output = _invoke(*words)
    assert code == 0, output
    assert "resuming: 12 of 12 rows stored" in output
