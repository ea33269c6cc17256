"""`audit run --ray` on a local 2-CPU Ray cluster: the rows equal a single-process run's, one per
key, also when an actor's process is killed in the middle of its shard."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from audit.store.shard import Shard
from tests.runs import ci_import
from tests.test_scaleout import assert_same_run, build_case, invoke

# Optional for users (pip install 'vlm-bias-audit[ray]'), in the locked install CI tests.
ray = ci_import("ray", "ray (the locked install's dev extras)")


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_case(tmp_path_factory.mktemp("ray"))


def test_ray_run_equals_a_single_process_run(
    cluster: None, case: tuple[Path, Path], tmp_path: Path
) -> None:
    probe, reference = case
    run_dir = tmp_path / "run"
    code, output = invoke(
        "run", str(probe), "--out", str(run_dir), "--ray", "auto", "--ray-shards", "3"
    )
    assert code == 0, output
    assert "3 shards on 2 CPU actors" in output
    assert output.count(" done: ") == 3 and "status: complete" in output
    assert_same_run(run_dir, reference)
    records = [json.loads(p.read_text()) for p in (run_dir / "shards").glob("*.json")]
    assert sorted(r["shard"] for r in records) == ["1-of-3", "2-of-3", "3-of-3"]
    assert {r["launcher"] for r in records} == {"ray"}


def test_a_killed_actor_is_restarted_and_its_shard_resumed(
    cluster: None, case: tuple[Path, Path], tmp_path: Path
) -> None:
    from audit.run.ray_launch import RayPlan, run_on_ray
    from audit.run.runner import RunOptions

    probe, reference = case
    run_dir = tmp_path / "run"
    options = RunOptions(out=run_dir, batch_size=1, flush_rows=1, progress=False)
    outcome: dict[str, object] = {}

    def drive() -> None:
        outcome["result"] = run_on_ray(probe, options, RayPlan("auto", n_shards=2), lambda _: None)

    driver = threading.Thread(target=drive)
    driver.start()
    rows = 4 * sum(Shard(0, 2).owns(f"synthetic:{i}") for i in range(12))
    killed = _kill_a_shard_midway(run_dir / "shards" / "1-of-2.json", rows, deadline_s=120)
    driver.join(timeout=180)
    assert not driver.is_alive()
    result = outcome["result"]
    assert [o.status for o in result.outcomes] == ["done", "done"], result.describe()
    assert_same_run(run_dir, reference)
    record = json.loads((run_dir / "shards" / "1-of-2.json").read_text())
    assert record["pid"] != killed and record["status"] == "done"


def _kill_a_shard_midway(record_path: Path, rows: int, deadline_s: float) -> int:
    """SIGKILL the process running a shard once it stored some rows but not all of them."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            record = json.loads(record_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            record = {}
        if record.get("status") == "running" and 0 < (record.get("rows_written") or 0) < rows:
            os.kill(record["pid"], signal.SIGKILL)
            return int(record["pid"])
        assert record.get("status") in (None, "running"), f"the shard ended unkilled: {record}"
        time.sleep(0.02)
    raise AssertionError("the shard never started writing")
