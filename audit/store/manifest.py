"""manifest.json: what a run is (probe, model, data, software) and how far it got."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path
from typing import Any

import pandas as pd

from audit.errors import RunDirError
from audit.spec import ProbeSpec
from audit.store.lock import run_lock
from audit.store.provenance import hardware, now_iso, package_versions
from audit.store.samples import SAMPLES_FILE, record_image_hashes, write_samples
from audit.store.schema import (
    Expected,
    Manifest,
    ModelInfo,
    Producer,
    PromptEntry,
    RunStatus,
    TaskEntry,
)
from audit.store.shard import Shard
from audit.store.shard_record import read_shard_records, start_shard_record, write_shard_record
from audit.store.tables import RunStore

# Parts of a probe that change what is generated; batch size, limit, device and fast paths
# (checked against the plain path) do not.
_FINGERPRINT_EXCLUDE = {
    "dataset": {"limit"},
    "generation": {"batch_size"},
    "model": {"device", "device_map", "fast_paths"},
}


#: How an endpoint is reached and driven, not what it computes: a run may resume through
#: another address of the same served model (the manifest records the latest).
_ENDPOINT_TUNING = {
    "url",
    "api_key_env",
    "concurrency",
    "timeout_s",
    "max_retries",
    "retry_backoff_s",
    "max_tokens_field",
}


def probe_fingerprint(spec: ProbeSpec) -> dict[str, str]:
    """A short hash per probe section, to refuse resuming into a run of another probe."""
    data = spec.model_dump(mode="json")
    sections = {}
    for key in ("dataset", "model", "generation", "preamble", "prompts", "classification"):
        value = data[key]
        if isinstance(value, dict):
            value = {
                k: v for k, v in value.items() if k not in _FINGERPRINT_EXCLUDE.get(key, set())
            }
        if key == "model":  # a local model's hash stays what it was before endpoints existed
            endpoint = value.pop("endpoint", None)
            if endpoint is not None:
                value["endpoint"] = {k: v for k, v in endpoint.items() if k not in _ENDPOINT_TUNING}
        encoded = json.dumps(value, sort_keys=True).encode()
        sections[key] = hashlib.sha256(encoded).hexdigest()[:16]
    return sections


def resume_command(manifest: Manifest, run_dir: Path, shard: Shard | None = None) -> str | None:
    """The command that resumes the run as it was started: the probe, the run directory and the
    options that changed the probe (``None`` when the run was not made by ``audit run``)."""
    if not manifest.probe_path:
        return None
    words = [manifest.probe_path, "--out", str(run_dir), *manifest.run_arguments]
    if shard is not None and shard.count > 1:
        words += ["--shard", f"{shard.index + 1}/{shard.count}"]
    return "audit run " + " ".join(shlex.quote(word) for word in words)


def check_same_probe(store: RunStore, spec: ProbeSpec) -> None:
    """``RunDirError`` when the run directory holds a run of another probe: how to resume it
    (the options it was started with), how to start another beside it."""
    manifest = store.manifest()
    differs = [k for k, v in probe_fingerprint(spec).items() if manifest.fingerprint.get(k) != v]
    if differs:
        command = resume_command(manifest, store.root)
        resume = (
            f"to resume it, run it as it was started: {command}" if command else "it is not a run"
        )
        raise RunDirError(
            f"{store.root}: holds a run of a different probe (differs in: {', '.join(differs)}); "
            f"{resume}; for a new run, pass --out with another directory (--fresh moves this "
            "run aside and starts over in its place)"
        )


def start_manifest(
    store: RunStore,
    spec: ProbeSpec,
    source: Any,
    backend: Any,
    shard: Shard,
    probe_path: Any,
    launcher: str | None = None,
    arguments: list[str] | None = None,
    layout: dict[str, Any] | None = None,
) -> Manifest:
    """Create the manifest, or mark an existing run as running again after checking it matches.

    Held under the run directory's lock: the processes of a sharded run start side by side, and
    only one of them may create the manifest.
    """
    with run_lock(store.root):
        manifest = _start_manifest(
            store, spec, source, backend, probe_path, arguments or [], layout
        )
        write_samples(store, _sample_ids(source))
    start_shard_record(store.root, shard, launcher)
    return manifest


def read_sample_ids(store: RunStore) -> list[str] | None:
    """The samples a complete run covers (``None`` for runs without the list: runs and
    imports written by earlier versions). A list that cannot be read is a ``RunDirError``: it
    is written anew whenever the run is resumed."""
    path = store.root / SAMPLES_FILE
    if not path.exists() and not path.is_symlink():
        return None
    problem = None
    try:
        frame = pd.read_parquet(path) if path.is_file() else None
    except (OSError, ValueError) as error:  # pyarrow's errors derive from these
        frame, problem = None, f"cannot be read as parquet ({error})"
    if frame is not None and "sample_id" not in frame.columns:
        problem = "has no 'sample_id' column"
    elif frame is None and problem is None:
        problem = "is not a file"
    if problem:
        raise RunDirError(
            f"{path}: {problem}; it only lists the samples the run should cover, and resuming "
            "the run ('audit run') writes it anew"
        )
    return frame["sample_id"].astype(str).tolist()


def _sample_ids(source: Any) -> list[str]:
    """Every sample a complete run covers (images are not decoded), for ``audit status``."""
    return [s.sample_id for s in source.samples()]


def _start_manifest(
    store: RunStore,
    spec: ProbeSpec,
    source: Any,
    backend: Any,
    probe_path: Any,
    arguments: list[str],
    layout: dict[str, Any] | None,
) -> Manifest:
    n_samples = len(source)
    expected = {
        "generations": n_samples * len(spec.prompts),
        "classifications": n_samples * len(spec.classification),
    }
    info = backend.info()
    model = {
        "id": spec.model.id,
        "revision": info.revision,
        "backend": info.backend,
        "model_type": info.model_type,
        "dtype": info.dtype,
        "device": info.device,
        "image_processor": info.image_processor,
        **info.extra,
    }
    if store.exists():
        check_same_probe(store, spec)
        manifest = store.update_manifest(
            status="running",
            expected=expected,
            resumed_at=now_iso(),
            run_arguments=arguments,
            model=model,
            dataset={**source.describe(), "n_samples": n_samples},
            prompt_layout=layout,
        )
    else:
        manifest = store.write_manifest(
            Manifest(
                run_id=store.root.name,
                producer=Producer.RUN,
                status=RunStatus.RUNNING,
                probe=spec.model_dump(mode="json"),
                probe_path=str(probe_path) if probe_path else None,
                run_arguments=arguments,
                fingerprint=probe_fingerprint(spec),
                model=ModelInfo(**model),
                dataset={**source.describe(), "n_samples": n_samples},
                group_axes=list(spec.dataset.groups),
                prompts=[PromptEntry(id=p.id, text=p.text) for p in spec.prompts],
                tasks=[
                    TaskEntry(id=t.id, target=t.target, labels=dict(t.labels))
                    for t in spec.classification
                ],
                expected=Expected(**expected),
                seed=spec.generation.seed,
                versions=package_versions(),
                hardware=hardware(),
                started_at=now_iso(),
                prompt_layout=layout,
            )
        )
    return manifest


def finalize_manifest(
    store: RunStore, shard: Shard, *, process_status: str, elapsed_s: float
) -> Manifest:
    """Record this process's end and the run's status as the store now shows it.

    Every process of a sharded run finalises under the run directory's lock, so counts and
    status are computed from what all of them stored, one process at a time. Compaction
    happens only once every expected row is stored (nothing is left to write, and other
    processes' reads tolerate parts vanishing under them). A run that is not complete stays
    ``running`` while another shard's process is alive, and is ``partial`` once none is.
    """
    write_shard_record(
        store.root,
        shard,
        status=process_status,
        finished_at=now_iso(),
        updated_at=now_iso(),
        elapsed_s=round(elapsed_s, 3),
    )
    with run_lock(store.root):
        record_image_hashes(store)
        rows = store.row_counts()
        expected = store.manifest().expected.model_dump()
        complete = all(rows.get(t, 0) >= n for t, n in expected.items())
        if complete:
            for table in ("generations", "classifications", "thumbnails"):
                store.compact(table)
            status = RunStatus.COMPLETE
        else:
            others = [r for r in read_shard_records(store.root) if r.shard != shard]
            status = RunStatus.RUNNING if any(r.is_live() for r in others) else RunStatus.PARTIAL
        return store.update_manifest(
            rows=rows, status=status, finished_at=now_iso(), elapsed_s=round(elapsed_s, 3)
        )
