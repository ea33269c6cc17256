"""Deterministic split of a dataset into N shards by sample id.

A sample belongs to one shard whatever the order, the limit or the machine, so N processes
(GPUs, SLURM array tasks, Ray actors) can fill one run directory side by side, and the union of
the shards is the run whatever N was.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

from audit.errors import AuditError


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (0-based) of ``count`` shards."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise AuditError(
                f"--shard: shard {self.index + 1} of {self.count} does not exist; "
                "expected K/N with 1 <= K <= N"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"K/N"`` with K counted from 1, as a user writes it."""
        try:
            k, n = (int(part) for part in text.split("/"))
        except ValueError:
            raise AuditError(f"--shard: '{text}' is not of the form K/N (e.g. 2/8)") from None
        return cls(k - 1, n)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Shard | None:
        """The shard a launcher assigned: torchrun/accelerate (RANK, WORLD_SIZE) or a SLURM
        array job (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN,
        SLURM_ARRAY_TASK_STEP). When an array task itself runs several ranks, shards are
        numbered task by task: task t's rank r runs shard ``t * WORLD_SIZE + r``."""
        env = os.environ if env is None else env
        array = _array_shard(env)
        ranks = _rank_shard(env)
        if array and ranks:
            return cls(array.index * ranks.count + ranks.index, array.count * ranks.count)
        return array or ranks

    @property
    def label(self) -> str:
        return f"{self.index + 1}-of-{self.count}"

    def owns(self, sample_id: str) -> bool:
        digest = hashlib.blake2b(sample_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index


WHOLE = Shard(0, 1)


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None and default is not None:
        return default
    try:
        return int(str(raw))
    except ValueError:
        raise AuditError(f"{name}: expected an integer in the environment, got '{raw}'") from None


def _array_shard(env: Mapping[str, str]) -> Shard | None:
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    task = _env_int(env, "SLURM_ARRAY_TASK_ID")
    count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
    first = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
    step = max(_env_int(env, "SLURM_ARRAY_TASK_STEP", 1), 1)
    offset, remainder = divmod(task - first, step)
    if remainder or not 0 <= offset < count:
        raise AuditError(
            f"SLURM_ARRAY_TASK_ID {task} is not one of the {count} tasks of an array from "
            f"{first} in steps of {step}: submit a contiguous array (sbatch --array=0-{count - 1}) "
            "or pass --shard K/N"
        )
    return Shard(offset, count)


def _rank_shard(env: Mapping[str, str]) -> Shard | None:
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise AuditError(
            f"RANK {rank} is outside WORLD_SIZE {world}: expected 0 <= RANK < WORLD_SIZE"
        )
    return Shard(rank, world)
