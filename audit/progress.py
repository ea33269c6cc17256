"""``audit status``: how far a run got, per shard, from what the run directory holds."""

from __future__ import annotations

import json
from pathlib import Path

from audit.shard import Shard
from audit.store import RunStore


def describe_status(run_dir: str | Path) -> str:
    store = RunStore.open(run_dir)
    manifest = store.manifest()
    expected = manifest.get("expected", {})
    generations = store.read("generations", columns=["sample_id", "prompt_id", "finish_reason"])
    classifications = store.read("classifications", columns=["sample_id", "task_id", "error"])
    lines = [
        f"run: {store.root}",
        f"probe: {manifest.get('probe', {}).get('name', '?')}  model: "
        f"{manifest.get('model', {}).get('id', '?')}  status: {manifest.get('status', '?')}",
    ]
    gen_errors = int(generations["finish_reason"].eq("error").sum()) if len(generations) else 0
    cls_errors = int(classifications["error"].notna().sum()) if len(classifications) else 0
    for table, frame, errors in (
        ("generations", generations, gen_errors),
        ("classifications", classifications, cls_errors),
    ):
        total = expected.get(table, 0)
        if not total and frame.empty:
            continue
        missing = max(total - len(frame), 0)
        lines.append(
            f"{table}: {len(frame)} / {total} stored, {errors} errors, {missing} missing"
        )
    sample_ids = set(generations.get("sample_id", [])) | set(classifications.get("sample_id", []))
    for path in sorted((store.root / "shards").glob("*-of-*.json")):
        info = json.loads(path.read_text())
        k, n = (int(x) for x in info["shard"].split("-of-"))
        shard = Shard(k - 1, n)
        owned = [sid for sid in sample_ids if shard.owns(sid)]
        rows = int(generations["sample_id"].isin(owned).sum()) if len(generations) else 0
        rows += int(classifications["sample_id"].isin(owned).sum()) if len(classifications) else 0
        elapsed = info.get("elapsed_s")
        speed = f", {rows / elapsed:.2f} rows/s" if elapsed else ""
        lines.append(
            f"  shard {info['shard']}: {info.get('status', '?')}, {len(owned)} samples, "
            f"{rows} rows{speed}"
            + (f", host {info['host']}" if info.get("host") else "")
        )
    if manifest.get("status") != "complete" and manifest.get("probe_path"):
        lines.append(f"resume with: audit run {manifest['probe_path']} --out {store.root}")
    return "\n".join(lines)
