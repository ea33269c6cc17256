"""The pieces a sharded run stands on, without a model: shards from launchers' environments, the
GPU per rank, the run directory's lock, reads beside compaction, Ray's install hint."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.errors import AuditError
from audit.run.placement import device_for_rank, launcher_name
from audit.store.shard import Shard
from audit.store.tables import RunStore

IDS = [f"img-{i}" for i in range(200)]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"RANK": "1", "WORLD_SIZE": "2"}, Shard(1, 2)),
        ({"RANK": "0", "WORLD_SIZE": "1"}, None),
        (
            {
                "SLURM_ARRAY_TASK_ID": "4",
                "SLURM_ARRAY_TASK_COUNT": "2",
                "SLURM_ARRAY_TASK_MIN": "3",
            },
            Shard(1, 2),
        ),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "3"}, Shard(0, 3)),
        # --array=10-30:10 gives ids 10, 20, 30
        (
            {
                "SLURM_ARRAY_TASK_ID": "20",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_ARRAY_TASK_MIN": "10",
                "SLURM_ARRAY_TASK_STEP": "10",
            },
            Shard(1, 3),
        ),
        # array task 2 of 3, each task a torchrun of 4 ranks: rank 1 there is shard 2*4+1 of 12
        (
            {
                "SLURM_ARRAY_TASK_ID": "2",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "RANK": "1",
                "WORLD_SIZE": "4",
            },
            Shard(9, 12),
        ),
        ({}, None),
    ],
)
def test_shard_from_launcher_environment(env: dict[str, str], expected: Shard | None) -> None:
    assert Shard.from_env(env) == expected


def test_composed_shards_partition_the_samples() -> None:
    owners: dict[str, list[Shard]] = {sid: [] for sid in IDS}
    for task in range(3):
        for rank in range(4):
            env = {
                "SLURM_ARRAY_TASK_ID": str(task),
                "SLURM_ARRAY_TASK_COUNT": "3",
                "RANK": str(rank),
                "WORLD_SIZE": "4",
            }
            shard = Shard.from_env(env)
            assert shard is not None
            for sid in IDS:
                if shard.owns(sid):
                    owners[sid].append(shard)
    assert all(len(shards) == 1 for shards in owners.values())


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK: expected an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK 2 is outside WORLD_SIZE 2"),
        ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2"}, "sbatch --array=0-1"),
        (
            {
                "SLURM_ARRAY_TASK_ID": "15",
                "SLURM_ARRAY_TASK_COUNT": "3",
                "SLURM_ARRAY_TASK_MIN": "10",
                "SLURM_ARRAY_TASK_STEP": "10",
            },
            "SLURM_ARRAY_TASK_ID 15",
        ),
    ],
)
def test_bad_launcher_environment_is_a_user_error(env: dict[str, str], message: str) -> None:
    with pytest.raises(AuditError, match=message):
        Shard.from_env(env)


@pytest.mark.parametrize(
    ("requested", "env", "gpus", "device"),
    [
        ("auto", {"LOCAL_RANK": "3"}, 8, "cuda:3"),
        ("cuda", {"LOCAL_RANK": "1"}, 2, "cuda:1"),
        ("auto", {"LOCAL_RANK": "3"}, 1, "cuda"),  # the launcher gave each process one GPU
        ("auto", {"LOCAL_RANK": "1"}, 0, "auto"),  # no GPU: the backend picks the CPU
        ("cuda:5", {"LOCAL_RANK": "1"}, 8, "cuda:5"),  # an explicit GPU is kept
        ("cpu", {"LOCAL_RANK": "1"}, 8, "cpu"),
        ("auto", {}, 8, "auto"),
    ],
)
def test_device_for_rank(requested: str, env: dict[str, str], gpus: int, device: str) -> None:
    assert device_for_rank(requested, env, gpus) == device


def test_more_ranks_than_gpus_is_a_user_error() -> None:
    with pytest.raises(AuditError, match="LOCAL_RANK is 4 but this process sees 4 GPUs"):
        device_for_rank("auto", {"LOCAL_RANK": "4"}, 4)


def test_launcher_name() -> None:
    assert launcher_name({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}) == "torchrun"
    accelerate = {"RANK": "0", "WORLD_SIZE": "2", "ACCELERATE_MIXED_PRECISION": "no"}
    assert launcher_name(accelerate) == "accelerate"
    assert launcher_name({"SLURM_ARRAY_TASK_ID": "1"}) == "slurm-array"
    assert launcher_name({}) == "cli"


_COUNTER_SCRIPT = """
import sys, time
from pathlib import Path
from audit.store.lock import run_lock
root = Path(sys.argv[1])
for _ in range(25):
    with run_lock(root):
        path = root / "counter"
        value = int(path.read_text()) if path.exists() else 0
        time.sleep(0.002)  # widen the window a lost update would need
        path.write_text(str(value + 1))
"""


def test_run_lock_excludes_other_processes(tmp_path: Path) -> None:
    processes = [
        subprocess.Popen([sys.executable, "-c", _COUNTER_SCRIPT, str(tmp_path)]) for _ in range(4)
    ]
    assert all(p.wait(timeout=60) == 0 for p in processes)
    assert (tmp_path / "counter").read_text() == "100"


def test_reads_see_every_row_while_another_process_compacts(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    stored: list[str] = []
    stop = threading.Event()

    def write_and_compact() -> None:
        try:
            for i in range(150):
                row = {
                    "sample_id": [f"s{i}"],
                    "prompt_id": ["p"],
                    "generation": ["text"],
                    "finish_reason": ["eos"],
                }
                store.append("generations", pd.DataFrame(row))
                stored.append(f"s{i}")
                if i % 3 == 2:
                    store.compact("generations")
        finally:
            stop.set()  # a writer that failed must not leave the reader looping

    writer = threading.Thread(target=write_and_compact)
    writer.start()
    reads = 0
    while not stop.is_set():
        before = set(stored)
        frame = store.read("generations")
        assert before <= set(frame["sample_id"])
        assert not frame["sample_id"].duplicated().any()
        reads += 1
    writer.join()
    assert reads > 10 and len(store.read("generations")) == 150


def test_ray_missing_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is absent
    probe = tmp_path / "probe.yaml"
    probe.write_text("name: x\n")
    result = CliRunner().invoke(app, ["run", str(probe), "--ray", "auto"])
    assert result.exit_code == 2
    assert "install with: pip install 'vlm-bias-audit[ray]'" in result.output
    assert "Traceback" not in result.output
