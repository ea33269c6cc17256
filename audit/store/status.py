"""``audit status``: how far a run got, per shard, from what the run directory holds.

Every expected row (sample x prompt, sample x classification task) is ``done``, ``error``
(stored with an error: a resumed run retries it) or ``missing``. The expected samples come
from ``samples.parquet``, written when a run starts or an import is stored; runs without it
(written by earlier versions) are measured against the samples they hold and the manifest's
expected counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from audit.errors import RunDirError
from audit.store.manifest import read_sample_ids, resume_command
from audit.store.schema import Manifest, RunStatus
from audit.store.shard import Shard
from audit.store.shard_record import ShardRecord, load_shard_records
from audit.store.tables import RunStore, error_mask

_ITEMS = (("generations", "prompt_id", "prompts"), ("classifications", "task_id", "tasks"))
_COLUMNS = {
    "generations": ["sample_id", "prompt_id", "finish_reason", "error"],
    "classifications": ["sample_id", "task_id", "error"],
}
_SHOWN = 10  # missing samples and error rows listed by name


@dataclass(frozen=True)
class ShardProgress:
    """One shard's rows: those its samples should have, and what became of them."""

    shard: Shard
    expected: int | None
    done: int
    errors: int
    record: ShardRecord | None

    @property
    def missing(self) -> int | None:
        return None if self.expected is None else self.expected - self.done - self.errors


@dataclass(frozen=True)
class RunProgress:
    """Where a run stands: one row per expected key and its state, and each shard's share."""

    run_dir: Path
    manifest: Manifest
    states: pd.DataFrame  # table, sample_id, item, state, error
    samples_known: bool
    shards: list[ShardProgress]
    notes: list[str]  # progress records that could not be read (the rows are unaffected)

    def count(self, table: str, state: str) -> int:
        frame = self.states
        return int(((frame["table"] == table) & (frame["state"] == state)).sum())


def measure_progress(run_dir: str | Path) -> RunProgress:
    """Read a run directory and count done, failed and missing rows, in total and per shard."""
    store = RunStore.open(run_dir)
    manifest = store.manifest()
    frames = {table: store.read(table, columns=_COLUMNS[table]) for table, _, _ in _ITEMS}
    notes = []
    try:
        listed = read_sample_ids(store)
    except RunDirError as error:  # a progress aid, not data: say so and count what is stored
        listed, notes = None, [f"note: {error}"]
    known = listed is not None
    if listed is None:
        listed = sorted(set().union(*(set(f.get("sample_id", [])) for f in frames.values())))
    sample_ids = listed
    states = pd.concat(
        [
            _key_states(table, frames[table], key, sample_ids, _ids(manifest, section))
            for table, key, section in _ITEMS
        ],
        ignore_index=True,
    )
    records, unreadable = load_shard_records(store.root)
    notes += [f"note: {problem}" for problem in unreadable]
    shards = _shard_progress(records, states, sample_ids, known)
    return RunProgress(store.root, manifest, states, known, shards, notes)


def _ids(manifest: Manifest, section: str) -> list[str]:
    return manifest.prompt_ids() if section == "prompts" else manifest.task_ids()


def _key_states(
    table: str, stored: pd.DataFrame, key: str, sample_ids: list[str], items: list[str]
) -> pd.DataFrame:
    expected = pd.MultiIndex.from_product([sample_ids, items], names=["sample_id", "item"])
    frame = expected.to_frame(index=False)
    if len(stored):
        error = stored["error"] if "error" in stored else pd.Series(None, index=stored.index)
        failed = error_mask(stored)
        found = pd.DataFrame(
            {
                "sample_id": stored["sample_id"].astype(str),
                "item": stored[key].astype(str),
                "state": failed.map({True: "error", False: "done"}),
                "error": error.where(failed),
            }
        )
        frame = frame.merge(found, on=["sample_id", "item"], how="left")
    else:
        frame["state"], frame["error"] = None, None
    frame["state"] = frame["state"].fillna("missing")
    frame.insert(0, "table", table)
    return frame


def _shard_progress(
    found: list[ShardRecord], states: pd.DataFrame, sample_ids: list[str], known: bool
) -> list[ShardProgress]:
    records = {r.shard: r for r in found}
    # Every shard of each split the run was started with, so an array task that never ran shows.
    shards = sorted(
        {Shard(k, r.count) for r in records for k in range(r.count)},
        key=lambda s: (s.count, s.index),
    )
    rows_per_sample = states.groupby("sample_id").size()
    progress = []
    for shard in shards:
        owned = [sid for sid in sample_ids if shard.owns(sid)]
        mine = states[states["sample_id"].isin(owned)]
        expected = int(rows_per_sample.reindex(owned).fillna(0).sum()) if known else None
        progress.append(
            ShardProgress(
                shard=shard,
                expected=expected,
                done=int(mine["state"].eq("done").sum()),
                errors=int(mine["state"].eq("error").sum()),
                record=records.get(shard),
            )
        )
    return progress


def describe_status(run_dir: str | Path) -> str:
    """The text ``audit status`` prints."""
    progress = measure_progress(run_dir)
    manifest = progress.manifest
    lines = [
        f"run: {progress.run_dir}",
        f"probe: {manifest.probe_name}  model: {manifest.model.id}  "
        f"status: {manifest.status.value}",
    ]
    for table, _, _ in _ITEMS:
        done, errors = progress.count(table, "done"), progress.count(table, "error")
        total = done + errors + progress.count(table, "missing")
        if not progress.samples_known:
            total = manifest.expected.model_dump().get(table, total)
        if total or done + errors:
            missing = max(total - done - errors, 0)
            lines.append(f"{table}: {done} / {total} done, {errors} errors, {missing} missing")
    lines += [_describe_shard(p) for p in progress.shards] + progress.notes
    lines += _describe_layout(manifest.prompt_layout)
    lines += _describe_fast_paths(manifest.fast_paths)
    lines += _describe_missing(progress.states) + _describe_errors(progress.states)
    command = resume_command(manifest, progress.run_dir)
    if command and (manifest.status != RunStatus.COMPLETE or manifest.rows.errors):
        lines += _describe_resume(progress, command)
    return "\n".join(lines)


def _describe_layout(layout: dict[str, Any] | None) -> list[str]:
    """What the model is shown around each image, where it is not the probe's full preamble."""
    if not isinstance(layout, dict) or not layout.get("preamble"):
        return []
    line = f"prompt: {layout['preamble']}"
    if layout.get("preamble_complete") is False:
        missing = [str(path) for path in layout.get("missing_images") or []]
        line += f" (missing: {', '.join(missing)})"
    return [line]


def _describe_fast_paths(record: Any) -> list[str]:
    """The speedups the run used, and those its self-check turned off (docs/compatibility.md)."""
    paths = record.get("paths") if isinstance(record, dict) else None
    if not isinstance(paths, dict):
        return []
    states = {name: state for name, state in paths.items() if isinstance(state, dict)}
    on = [name for name, state in states.items() if state.get("on") is True]
    line = f"fast paths (transformers {record.get('transformers', '?')}): "
    lines = [line + (f"on: {', '.join(on)}" if on else "none on")]
    for name, state in states.items():
        note = str(state.get("note", ""))
        if state.get("on") is not True and "self-check" in note:
            lines.append(f"  {name}: {note}")
    return lines


def _describe_resume(progress: RunProgress, command: str) -> list[str]:
    """How to finish the run: per shard when it was split one way, else as one process."""
    counts = {p.shard.count for p in progress.shards}
    if len(counts) != 1 or counts == {1} or not progress.samples_known:
        return [f"resume with: {command}"]
    unfinished = [
        p
        for p in progress.shards
        if (p.missing or p.errors) and not (p.record and p.record.is_live())
    ]
    return [
        f"resume shard {p.shard.label} with: {command} --shard {p.shard.index + 1}/{p.shard.count}"
        for p in unfinished
    ]


def _describe_shard(progress: ShardProgress) -> str:
    record = progress.record
    expected = "?" if progress.expected is None else str(progress.expected)
    text = (
        f"  shard {progress.shard.label}: {record.status if record else 'not started'}, "
        f"{progress.done} / {expected} rows done, {progress.errors} errors"
    )
    if progress.missing:
        text += f", {progress.missing} missing"
    if record is None:
        return text
    speed = record.throughput()
    if speed:
        text += f", {speed:.2f} rows/s ({record.rows_written} rows in {record.elapsed_s:.0f} s)"
    age = record.age_s()
    if record.status == "running" and age is not None:
        text += f", last heartbeat {age:.0f} s ago" + ("" if record.is_live() else " (stale)")
    where = " ".join(x for x in (record.launcher, f"on {record.host}" if record.host else "") if x)
    return text + (f", {where}" if where else "")


def _describe_missing(states: pd.DataFrame) -> list[str]:
    missing = states[states["state"] == "missing"]
    if missing.empty:
        return []
    by_item = missing["item"].value_counts().sort_index()
    samples = missing.groupby("sample_id", sort=False)["item"].apply(", ".join)
    lines = [
        f"missing: {len(missing)} rows over {len(samples)} samples ("
        + ", ".join(f"{item} {n}" for item, n in by_item.items())
        + ")"
    ]
    lines += [f"  {sid}: {items}" for sid, items in samples.head(_SHOWN).items()]
    if len(samples) > _SHOWN:
        lines.append(f"  ... and {len(samples) - _SHOWN} more samples")
    return lines


def _describe_errors(states: pd.DataFrame) -> list[str]:
    failed = states[states["state"] == "error"]
    if failed.empty:
        return []
    lines = [f"errors: {len(failed)} rows (retried when the run is resumed)"]
    for row in failed.head(_SHOWN).itertuples(index=False):
        reason = " ".join(str(row.error or "").split())[:120]
        lines.append(f"  {row.sample_id} {row.item}: {reason}")
    if len(failed) > _SHOWN:
        lines.append(f"  ... and {len(failed) - _SHOWN} more")
    return lines
