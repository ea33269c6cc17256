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
        array job (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT, SLURM_ARRAY_TASK_MIN)."""
        env = os.environ if env is None else env
        if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
            first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
            return cls(int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]))
        if "RANK" in env and "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) > 1:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]))
        return None

    @property
    def label(self) -> str:
        return f"{self.index + 1}-of-{self.count}"

    def owns(self, sample_id: str) -> bool:
        digest = hashlib.blake2b(sample_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % self.count == self.index


WHOLE = Shard(0, 1)
