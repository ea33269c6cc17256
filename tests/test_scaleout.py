"""Many processes, one run: torchrun-style ranks and SLURM array tasks running side by side into
one run directory give exactly the rows of a single-process run, one per key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.store.manifest import SAMPLES_FILE
from audit.store.shard import Shard
from audit.store.tables import RunStore
from tests.runs import write_probe

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KEYS = {"generations": ["sample_id", "prompt_id"], "classifications": ["sample_id", "task_id"]}
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


def build_case(root: Path) -> tuple[Path, Path]:
    """A tiny model, a probe of 12 synthetic faces, and its single-process reference run."""
    from audit.demo.tiny_models import build_tiny_model
    from audit.run.runner import RunOptions, run_probe_file

    model = build_tiny_model("idefics2", root / "model")
    probe = write_probe(root / "probe", model)
    reference = root / "reference"
    run_probe_file(probe, RunOptions(out=reference, progress=False))
    return probe, reference


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """The run holds the reference's rows exactly, one per key, also on disk."""
    store, expected = RunStore.open(run_dir), RunStore.open(reference)
    for table, keys in KEYS.items():
        got = store.read(table).sort_values(keys).reset_index(drop=True)
        want = expected.read(table).sort_values(keys).reset_index(drop=True)
        assert not got.duplicated(keys).any()
        pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)
        raw = pd.concat(pd.read_parquet(p) for p in store.parts(table))
        assert len(raw) == len(want), f"{table}: parts hold duplicates after the run completed"
    thumbnails = store.read("thumbnails")
    assert sorted(thumbnails["sample_id"]) == sorted(expected.read("thumbnails")["sample_id"])
    manifest = store.manifest().to_json()
    assert manifest["status"] == "complete"
    assert manifest["rows"] == {"generations": 24, "classifications": 24, "errors": 0}


def clean_env(**variables: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in LAUNCHER_VARIABLES and not k.startswith("SLURM_")
    }
    return {**env, **variables}


def audit_command(probe: Path, run_dir: Path) -> list[str]:
    """``audit run`` flushing every row, so the processes' writes interleave as much as they can."""
    return [
        sys.executable,
        "-m",
        "audit.cli",
        "run",
        str(probe),
        "--out",
        str(run_dir),
        "--no-progress",
        "--flush-every",
        "1",
    ]


def launch_side_by_side(command: list[str], envs: list[dict[str, str]]) -> None:
    """Start the command once per environment, all at once, and wait for all."""
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for env in envs
    ]
    for process in processes:
        out, err = process.communicate(timeout=240)
        assert process.returncode == 0, out + err


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_case(tmp_path_factory.mktemp("scaleout"))


def test_torchrun_ranks_fill_one_run(case: tuple[Path, Path], tmp_path: Path) -> None:
    probe, reference = case
    run_dir = tmp_path / "run"
    launch_side_by_side(
        audit_command(probe, run_dir),
        [
            clean_env(
                RANK=str(r),
                WORLD_SIZE="2",
                LOCAL_RANK=str(r),
                LOCAL_WORLD_SIZE="2",
                TORCHELASTIC_RUN_ID="test",
            )
            for r in (0, 1)
        ],
    )
    assert_same_run(run_dir, reference)
    records = {p.stem: p.read_text() for p in (run_dir / "shards").glob("*.json")}
    assert set(records) == {"1-of-2", "2-of-2"}
    for text in records.values():
        assert '"launcher": "torchrun"' in text and '"status": "done"' in text
    assert pd.read_parquet(run_dir / SAMPLES_FILE)["sample_id"].nunique() == 12


def test_slurm_array_tasks_fill_one_run(case: tuple[Path, Path], tmp_path: Path) -> None:
    """The example sbatch script's array tasks, as SLURM would start them (ids 3 and 4 of
    ``--array=3-4``), with ``srun`` running its command in place as it does for one task."""
    probe, reference = case
    run_dir = tmp_path / "run"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "srun").chmod(0o755)
    audit = " ".join(audit_command(probe, run_dir)[:3])  # python -m audit.cli
    launch_side_by_side(
        ["bash", str(EXAMPLES / "slurm_fairface.sbatch")],
        [
            clean_env(
                SLURM_ARRAY_TASK_ID=str(task),
                SLURM_ARRAY_TASK_COUNT="2",
                SLURM_ARRAY_TASK_MIN="3",
                SLURM_ARRAY_TASK_MAX="4",
                SLURM_JOB_ID="77",
                PROBE=str(probe),
                RUN_DIR=str(run_dir),
                AUDIT=audit,
                PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            )
            for task in (3, 4)
        ],
    )
    assert_same_run(run_dir, reference)
    code, output = invoke("status", str(run_dir))
    assert code == 0
    for shard in (Shard(0, 2), Shard(1, 2)):
        rows = 4 * sum(shard.owns(f"synthetic:{i}") for i in range(12))
        assert f"shard {shard.label}: done, {rows} / {rows} rows done, 0 errors" in output
    assert "slurm-array" in output and "missing:" not in output


def test_slurm_script_submits_the_array_then_a_dependent_report(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch-calls"
    # Records each submission and answers with a job id, as `sbatch --parsable` does.
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nprintf "%s\\n---\\n" "$*" >> {calls}\necho 4242\n')
    (bin_dir / "sbatch").chmod(0o755)
    env = clean_env(RUN_DIR="runs/ff", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(
        ["bash", str(EXAMPLES / "slurm_fairface.sbatch")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    array, report = calls.read_text().split("\n---\n")[:2]
    assert array.strip() == f"--parsable {EXAMPLES / 'slurm_fairface.sbatch'}"
    assert "--dependency=afterany:4242" in report
    assert "audit status 'runs/ff'" in report and "audit analyze 'runs/ff'" in report
    assert "submitted array job 4242" in done.stdout


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def test_fresh_is_refused_for_one_shard_of_many(case: tuple[Path, Path], tmp_path: Path) -> None:
    probe, _ = case
    code, output = invoke(
        "run",
        str(probe),
        "--out",
        str(tmp_path / "run"),
        "--shard",
        "2/4",
        "--fresh",
        "--no-progress",
    )
    assert code == 2
    assert "--fresh" in output and "other shards" in output and "Traceback" not in output
    assert not (tmp_path / "run" / "manifest.json").exists()
