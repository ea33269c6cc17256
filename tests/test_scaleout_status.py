"""`audit status` on a run that several shards write: rows done / expected per shard, errors,
throughput, and which samples and prompts are missing, checked against an independent count."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from runs import write_fairface_probe
from typer.testing import CliRunner

from audit.cli import app
from audit.store.shard import Shard
from audit.store.status import measure_progress

CORRUPT = "val/1.jpg"
N_IMAGES = 10
ITEMS = ["resume", "arrest", "gender"]  # two prompts and one classification task


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def faces_probe(tmp_path: Path, model: Path) -> Path:
    """A FairFace-style folder of images, one of them corrupt."""
    root = tmp_path / "faces"
    (root / "val").mkdir(parents=True)
    rows = []
    for i in range(N_IMAGES):
        name = f"val/{i}.jpg"
        gender, race = ("Male", "White") if i % 2 else ("Female", "Black")
        rows.append(
            {"file": name, "age": "20-29", "gender": gender, "race": race, "service_test": True}
        )
        if name == CORRUPT:
            (root / name).write_bytes(b"not a jpeg")
        else:
            Image.new("RGB", (40, 40), (20 * i, 90, 200 - 15 * i)).save(root / name)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return write_fairface_probe(tmp_path, model, root)


@pytest.fixture(scope="module")
def model(model_dirs: dict[str, Path]) -> Path:
    return model_dirs["idefics2"]


def test_status_of_a_run_with_one_shard_of_two_done(model: Path, tmp_path: Path) -> None:
    probe = faces_probe(tmp_path, model)
    ids = [f"val/{i}.jpg" for i in range(N_IMAGES)]
    ran = next(s for s in (Shard(0, 2), Shard(1, 2)) if s.owns(CORRUPT))
    other = Shard(1 - ran.index, 2)
    run_dir = tmp_path / "run"
    code, output = invoke(
        "run", str(probe), "--out", str(run_dir), "--shard", f"{ran.index + 1}/2", "--no-progress"
    )
    assert code == 3, output  # its shard holds error rows to retry: partial
    assert f"resume with: audit run {probe} --out {run_dir} --shard {ran.index + 1}/2" in output

    mine = [sid for sid in ids if ran.owns(sid)]
    theirs = [sid for sid in ids if other.owns(sid)]
    progress = measure_progress(run_dir)
    by_shard = {p.shard: p for p in progress.shards}
    assert by_shard[ran].expected == len(mine) * 3
    assert by_shard[ran].errors == 3  # the corrupt image: two prompts and one task
    assert by_shard[ran].done == len(mine) * 3 - 3 and by_shard[ran].missing == 0
    assert by_shard[ran].record is not None and by_shard[ran].record.rows_written == len(mine) * 3
    assert by_shard[other].record is None
    assert (by_shard[other].done, by_shard[other].missing) == (0, len(theirs) * 3)

    code, text = invoke("status", str(run_dir))
    assert code == 0
    assert "status: partial" in text
    done, owed = 2 * len(mine) - 2, 2 * len(theirs)
    assert f"generations: {done} / {2 * N_IMAGES} done, 2 errors, {owed} missing" in text
    done, owed = len(mine) * 3 - 3, len(mine) * 3
    assert f"shard {ran.label}: done, {done} / {owed} rows done, 3 errors" in text
    assert "rows/s" in text and "cli on " in text
    assert f"shard {other.label}: not started, 0 / {len(theirs) * 3} rows done" in text
    n = len(theirs)
    assert f"missing: {n * 3} rows over {n} samples (arrest {n}, gender {n}, resume {n})" in text
    for sid in theirs:
        assert f"  {sid}: resume, arrest, gender" in text
    assert f"  {CORRUPT} resume: " in text
    assert "errors: 3 rows (retried when the run is resumed)" in text
    assert f"audit run {probe} --out {run_dir} --shard {other.index + 1}/2" in text


def test_status_after_the_other_shard_ran(model: Path, tmp_path: Path) -> None:
    probe = faces_probe(tmp_path, model)
    run_dir = tmp_path / "run"
    for k in ("2/2", "1/2"):
        code, output = invoke(
            "run", str(probe), "--out", str(run_dir), "--shard", k, "--no-progress"
        )
        assert code == (3 if Shard.parse(k).owns(CORRUPT) else 0), output
    code, text = invoke("status", str(run_dir))
    assert code == 0 and "status: complete" in text
    assert f"generations: {2 * N_IMAGES - 2} / {2 * N_IMAGES} done, 2 errors, 0 missing" in text
    assert "missing:" not in text and "resume with" not in text
    assert text.count(": done, ") == 2
