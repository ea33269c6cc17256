"""``shards/<k>-of-<n>.json``: what one process of a sharded run is doing, or last did.

Each process writes only its own record (atomically), at start, after every flush (a heartbeat
with its row counts) and at the end. ``audit status`` reads them all, and the manifest uses
them to tell a run whose other shards are still working (``running``) from one that stopped
early (``partial``).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from audit.errors import AuditError
from audit.store.provenance import now_iso
from audit.store.shard import Shard
from audit.store.tables import write_json_atomic

SHARDS_FOLDER = "shards"
# A record still saying "running" whose process cannot be checked (another host) counts as
# alive for this long after its last heartbeat; the runner writes one at least every flush.
STALE_AFTER_S = 15 * 60.0


@dataclass(frozen=True)
class ShardRecord:
    """One process's progress, as stored."""

    shard: Shard
    status: str
    host: str | None = None
    pid: int | None = None
    launcher: str | None = None
    started_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    elapsed_s: float | None = None
    rows_written: int | None = None
    errors_written: int | None = None
    #: Which fast paths this process used, after its self-check (``fast_paths.FastPathPolicy``).
    fast_paths: dict[str, Any] | None = None

    @classmethod
    def from_json(cls, data: Any) -> ShardRecord:
        """A record as stored; ``ValueError`` naming the field for one that does not fit."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        k, n = (int(x) for x in str(data.get("shard")).split("-of-"))
        fields = {name: data.get(name) for name in cls.__dataclass_fields__ if name != "shard"}
        for name, value in fields.items():
            expected = _FIELD_TYPES[name]
            if value is not None and (
                isinstance(value, bool) is not (bool in expected) or not isinstance(value, expected)
            ):
                raise ValueError(f"{name}: expected {expected[0].__name__}, got {value!r:.40}")
        for name in ("started_at", "updated_at", "finished_at"):
            if fields[name] is not None:
                try:
                    datetime.fromisoformat(fields[name])
                except ValueError:
                    raise ValueError(f"{name}: not a time ({fields[name]!r:.40})") from None
        return cls(shard=Shard(k - 1, n), **{**fields, "status": fields["status"] or "?"})

    def age_s(self, now: datetime | None = None) -> float | None:
        """Seconds since the last heartbeat (or start)."""
        stamp = self.updated_at or self.started_at
        if not stamp:
            return None
        now = now or datetime.now(UTC)
        then = datetime.fromisoformat(stamp)
        if then.tzinfo is None:
            then = then.replace(tzinfo=UTC)
        return (now - then).total_seconds()

    def throughput(self) -> float | None:
        """Rows per second this process wrote in its latest attempt (so far, while running)."""
        if not self.rows_written or not self.elapsed_s:
            return None
        return self.rows_written / self.elapsed_s

    def is_live(self) -> bool:
        """Whether the process is (as far as this machine can tell) still running."""
        if self.status != "running":
            return False
        if self.host == socket.gethostname() and self.pid:
            return _pid_alive(self.pid)
        age = self.age_s()
        return age is not None and age < STALE_AFTER_S


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "status": (str,),
    "host": (str,),
    "pid": (int,),
    "launcher": (str,),
    "started_at": (str,),
    "updated_at": (str,),
    "finished_at": (str,),
    "elapsed_s": (float, int),
    "rows_written": (int,),
    "errors_written": (int,),
    "fast_paths": (dict,),
}


def record_path(root: Path, shard: Shard) -> Path:
    return root / SHARDS_FOLDER / f"{shard.label}.json"


def write_shard_record(root: Path, shard: Shard, **fields: Any) -> None:
    """Update this process's record with ``fields`` (the others' records are never touched)."""
    path = record_path(root, shard)
    try:
        current = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        current = {}
    write_json_atomic(path, {**current, "shard": shard.label, **fields})


def start_shard_record(root: Path, shard: Shard, launcher: str | None) -> None:
    """A new attempt: this process, from now, with nothing written yet."""
    stamp = now_iso()
    write_shard_record(
        root,
        shard,
        status="running",
        host=socket.gethostname(),
        pid=os.getpid(),
        launcher=launcher,
        started_at=stamp,
        updated_at=stamp,
        finished_at=None,
        elapsed_s=None,
        rows_written=0,
        errors_written=0,
        fast_paths=None,
    )


def read_shard_records(root: Path) -> list[ShardRecord]:
    """Every readable record of the run, in shard order."""
    return load_shard_records(root)[0]


def load_shard_records(root: Path) -> tuple[list[ShardRecord], list[str]]:
    """Every readable record of the run, in shard order, and what was wrong with the others
    (records are progress only: one that cannot be read loses no row)."""
    records, problems = [], []
    for path in sorted((root / SHARDS_FOLDER).glob("*-of-*.json")):
        try:
            records.append(ShardRecord.from_json(json.loads(path.read_text(encoding="utf-8"))))
        except (AuditError, OSError, ValueError) as error:
            problems.append(
                f"{path}: this progress record cannot be read ({error}); the rows are not "
                "affected, and the shard's next run writes it anew"
            )
    return sorted(records, key=lambda r: (r.shard.count, r.shard.index)), problems


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that id
        return True
    return True
