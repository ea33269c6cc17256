"""`audit run` end to end on tiny local models of every family: schema, resume, shards, errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from audit.store.tables import RunStore
from tests.runs import FAMILIES, crash_on_batch, kill_mid_run, run_cli, write_probe

GENERATION_COLUMNS = {
    "sample_id",
    "prompt_id",
    "model_id",
    "gender",
    "race",
    "prompt",
    "generation",
    "n_new_tokens",
    "finish_reason",
    "error",
}
CLASSIFICATION_COLUMNS = {
    "sample_id",
    "task_id",
    "model_id",
    "gender",
    "race",
    "target",
    "prediction",
    "correct",
    "error",
}


@pytest.fixture(scope="session")
def models(model_dirs: dict[str, Path]) -> dict[str, Path]:
    return model_dirs


def stored(run_dir: Path, table: str) -> pd.DataFrame:
    return RunStore.open(run_dir).read(table)


def assert_one_row_per_key(run_dir: Path, n_samples: int = 12) -> None:
    generations = stored(run_dir, "generations")
    classifications = stored(run_dir, "classifications")
    assert len(generations) == n_samples * 2
    assert not generations.duplicated(["sample_id", "prompt_id"]).any()
    assert len(classifications) == n_samples * 2
    assert not classifications.duplicated(["sample_id", "task_id"]).any()
    # And the raw parts agree: nothing duplicated on disk either, once a run completed.
    raw = pd.concat(pd.read_parquet(p) for p in RunStore(run_dir).parts("generations"))
    assert len(raw) == len(generations)


@pytest.mark.parametrize("family", FAMILIES)
def test_run_stores_every_table_with_its_schema(
    family: str, models: dict[str, Path], tmp_path: Path
) -> None:
    probe = write_probe(tmp_path, models[family])
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "run"), "--no-progress")
    assert code == 0, output
    run_dir = tmp_path / "run"
    generations = stored(run_dir, "generations")
    classifications = stored(run_dir, "classifications")
    assert set(generations.columns) >= GENERATION_COLUMNS
    assert set(classifications.columns) >= CLASSIFICATION_COLUMNS
    assert set(generations["finish_reason"]) <= {"eos", "length"}
    assert generations["error"].isna().all()
    assert (generations["n_new_tokens"] <= 5).all()
    assert (
        generations["prompt"]
        .isin(["Describe this person. Then write a resume.", "Write an article."])
        .all()
    )
    for _, row in classifications.iterrows():
        scores = {
            c[len("score_") :]: row[c]
            for c in classifications.columns
            if c.startswith("score_") and pd.notna(row[c])
        }
        assert row["prediction"] == max(scores, key=scores.get)
        assert row["correct"] == (row["prediction"] == row["target"])
        assert all(row[f"n_tokens_{value}"] >= 1 for value in scores)
    assert_one_row_per_key(run_dir)
    manifest = RunStore.open(run_dir).manifest().to_json()
    assert manifest["status"] == "complete"
    assert manifest["rows"] == {"generations": 24, "classifications": 24, "errors": 0}
    assert manifest["model"]["model_type"] == family
    assert manifest["group_axes"] == ["gender", "race"]
    assert set(stored(run_dir, "thumbnails")["sample_id"]) == set(generations["sample_id"])
    assert "next: audit analyze" in output


def test_resume_after_an_exception_loses_and_duplicates_nothing(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audit.run.runner import RunOptions, run_probe_file

    probe = write_probe(tmp_path, models["idefics2"])
    reference = tmp_path / "reference"
    run_probe_file(probe, RunOptions(out=reference, progress=False))
    run_dir = tmp_path / "run"
    with monkeypatch.context() as patch:
        crash_on_batch(patch, 2, "simulated crash in the middle of a run")
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_probe_file(probe, RunOptions(out=run_dir, progress=False, flush_rows=1))
    kept = len(stored(run_dir, "generations")) + len(stored(run_dir, "classifications"))
    assert 0 < kept < 48
    assert RunStore.open(run_dir).manifest().to_json()["status"] == "partial"

    result = run_probe_file(probe, RunOptions(out=run_dir, progress=False))
    assert result.rows_written == 48 - kept
    assert_one_row_per_key(run_dir)
    keys = ["sample_id", "prompt_id"]
    merged = stored(run_dir, "generations").merge(
        stored(reference, "generations"), on=keys, suffixes=("", "_ref")
    )
    assert len(merged) == 24
    assert (merged["generation"] == merged["generation_ref"]).all()


def test_resume_after_sigkill(models: dict[str, Path], tmp_path: Path) -> None:
    probe = write_probe(
        tmp_path,
        models["idefics"],
        dataset={"n": 16},
        generation={"max_new_tokens": 8, "batch_size": 2},
    )
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "audit.cli",
        "run",
        str(probe),
        "--out",
        str(run_dir),
        "--flush-every",
        "1",
        "--no-progress",
    ]
    kill_mid_run(command, run_dir)
    before = len(stored(run_dir, "generations"))
    assert 0 < before < 32, "the kill should land in the middle of the run"

    code, output = run_cli("run", str(probe), "--out", str(run_dir), "--no-progress")
    assert code == 0, output
    assert_one_row_per_key(run_dir, n_samples=16)


def test_two_shards_equal_one_run(models: dict[str, Path], tmp_path: Path) -> None:
    probe = write_probe(tmp_path, models["idefics3"])
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert run_cli("run", str(probe), "--out", str(whole), "--no-progress")[0] == 0
    for k in ("1/2", "2/2"):
        assert (
            run_cli("run", str(probe), "--out", str(sharded), "--shard", k, "--no-progress")[0] == 0
        )
    for table, keys in (
        ("generations", ["sample_id", "prompt_id"]),
        ("classifications", ["sample_id", "task_id"]),
    ):
        a = stored(whole, table).sort_values(keys).reset_index(drop=True)
        b = stored(sharded, table).sort_values(keys).reset_index(drop=True)
        pd.testing.assert_frame_equal(a[b.columns], b, check_dtype=False)
    assert RunStore.open(sharded).manifest().to_json()["status"] == "complete"
    code, status = run_cli("status", str(sharded))
    assert code == 0 and "shard 1-of-2" in status and "shard 2-of-2" in status


def test_another_probe_into_the_same_directory_is_refused(
    models: dict[str, Path], tmp_path: Path
) -> None:
    probe = write_probe(tmp_path / "a", models["idefics2"], dataset={"n": 4})
    other = write_probe(
        tmp_path / "b",
        models["idefics2"],
        dataset={"n": 4},
        prompts=[{"id": "x", "text": "Other."}],
    )
    run_dir = tmp_path / "run"
    assert run_cli("run", str(probe), "--out", str(run_dir), "--no-progress")[0] == 0
    code, output = run_cli("run", str(other), "--out", str(run_dir), "--no-progress")
    assert code == 2 and "different probe" in output and "prompts" in output
    code, output = run_cli("run", str(other), "--out", str(run_dir), "--fresh", "--no-progress")
    assert code == 0, output
    assert set(stored(run_dir, "generations")["prompt_id"]) == {"x"}
