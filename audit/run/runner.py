"""Probe x dataset x backend -> batches -> run store, with progress, resume and shards."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from audit.backends.registry import check_backend_name
from audit.errors import AuditError, ProbeError, RunDirError
from audit.run.executor import (
    BatchExecutor,
    BatchPlan,
    BatchRows,
    LoadedItem,
    WorkItem,
    batched,
    load_item,
)
from audit.run.interrupt import StopSignals
from audit.run.placement import launcher_name, place_on_local_gpu
from audit.run.prefetch import prefetch
from audit.run.setting import (
    check_same_layout,
    drop_preamble,
    prepare_preamble,
    served_contexts,
    settle_card_context,
)
from audit.spec import ProbeSpec, check_labels, load_probe
from audit.store.lock import run_lock
from audit.store.manifest import (
    check_same_probe,
    finalize_manifest,
    resume_command,
    start_manifest,
)
from audit.store.provenance import now_iso
from audit.store.schema import Manifest, Producer, RunStatus
from audit.store.shard import WHOLE, Shard
from audit.store.shard_record import read_shard_records, write_shard_record
from audit.store.tables import RunStore, is_error_row

logger = logging.getLogger(__name__)

DEFAULT_FLUSH_ROWS = 512
DEFAULT_FLUSH_S = 60.0


@dataclass(frozen=True)
class RunOptions:
    """What the command line may change about a probe, and how the run behaves."""

    out: Path | None = None
    model: str | None = None
    limit: int | None = None
    batch_size: int | str | None = None
    device: str | None = None
    shard: Shard | None = None
    fresh: bool = False
    progress: bool = True
    flush_rows: int = DEFAULT_FLUSH_ROWS
    flush_s: float = DEFAULT_FLUSH_S
    launcher: str | None = None
    fast_paths: bool = True
    #: ``--endpoint URL``: the model is served there (``backend: endpoint``).
    endpoint: str | None = None
    #: ``--concurrency N``: an endpoint's requests in flight.
    concurrency: int | None = None
    #: ``--api-key-env NAME``: the variable holding the endpoint's API key.
    api_key_env: str | None = None

    @classmethod
    def from_cli(
        cls, *, shard: str | None = None, batch_size: str | None = None, **kwargs: Any
    ) -> RunOptions:
        size: int | str | None = batch_size
        if batch_size is not None and batch_size != "auto":
            if not batch_size.isdigit() or int(batch_size) < 1:
                raise AuditError(
                    f"--batch-size: expected a positive integer or 'auto', got '{batch_size}'"
                )
            size = int(batch_size)
        if kwargs.get("limit") is not None and kwargs["limit"] < 1:
            raise AuditError(f"--limit: expected a positive integer, got {kwargs['limit']}")
        if kwargs.get("concurrency") is not None and kwargs["concurrency"] < 1:
            raise AuditError(
                f"--concurrency: expected a positive integer, got {kwargs['concurrency']}"
            )
        if kwargs.get("flush_rows", 1) < 1:
            raise AuditError(
                f"--flush-every: expected a positive integer, got {kwargs['flush_rows']}"
            )
        chosen = Shard.parse(shard) if shard else Shard.from_env()
        return cls(shard=chosen, batch_size=size, **kwargs)

    def probe_arguments(self) -> list[str]:
        """The command-line options that change the probe, as typed again to resume the run
        (the model as resolved: a local folder by its absolute path)."""
        arguments: list[str] = []
        if self.endpoint:
            arguments += ["--endpoint", self.endpoint]
        if self.concurrency:
            arguments += ["--concurrency", str(self.concurrency)]
        if self.api_key_env:
            arguments += ["--api-key-env", self.api_key_env]
        if self.model:
            model = Path(self.model)
            local = model.exists() and not self.endpoint  # a served model's name stays as given
            arguments += ["--model", str(model.resolve()) if local else self.model]
        if self.limit:
            arguments += ["--limit", str(self.limit)]
        if self.batch_size is not None:
            arguments += ["--batch-size", str(self.batch_size)]
        if self.device:
            arguments += ["--device", self.device]
        if not self.fast_paths:
            arguments.append("--no-fast-paths")
        return arguments

    def apply(self, spec: ProbeSpec) -> ProbeSpec:
        """The probe with this run's overrides."""
        dataset = (
            spec.dataset.model_copy(update={"limit": self.limit}) if self.limit else spec.dataset
        )
        model_update = _endpoint_update(
            spec, self.endpoint, {"concurrency": self.concurrency, "api_key_env": self.api_key_env}
        )
        served = self.endpoint or spec.model.endpoint is not None
        if self.model:
            model_update["id"] = (
                str(Path(self.model).resolve())
                if Path(self.model).exists() and not served
                else self.model
            )
        if self.device:
            model_update["device"] = self.device
        if not self.fast_paths:
            model_update["fast_paths"] = False
        generation = spec.generation
        if self.batch_size is not None:
            generation = generation.model_copy(update={"batch_size": self.batch_size})
        return spec.model_copy(
            update={
                "dataset": dataset,
                "model": spec.model.model_copy(update=model_update),
                "generation": generation,
            }
        )

    def run_dir_for(self, spec: ProbeSpec) -> Path:
        if self.out is not None:
            return self.out
        model = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(spec.model.id.rstrip("/")).name)
        return Path("runs") / f"{spec.name}-{model}"


def _endpoint_update(spec: ProbeSpec, url: str | None, tuning: dict[str, Any]) -> dict[str, Any]:
    """``--endpoint``, ``--concurrency``, ``--api-key-env`` as changes to the probe's ``model``
    section."""
    from pydantic import ValidationError

    from audit.spec import EndpointSpec

    update: dict[str, Any] = {k: v for k, v in tuning.items() if v is not None}
    if url is None and not update:
        return {}
    current = spec.model.endpoint
    if current is None and url is None:
        names = ", ".join(f"--{k.replace('_', '-')}" for k in update)
        raise AuditError(f"{names}: only for a served model (--endpoint URL)")
    if url:
        update["url"] = url
    try:
        endpoint = EndpointSpec.model_validate(
            {**(current.model_dump() if current else {}), **update}
        )
    except ValidationError as error:
        problem = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise AuditError(f"--endpoint: {problem}") from None
    return {"backend": "endpoint", "endpoint": endpoint}


#: ``audit run``'s exit status when the run is not finished: stopped by a signal, or error rows
#: left to retry (0: done; 2: bad input).
EXIT_PARTIAL = 3


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    status: str
    rows_written: int
    errors_written: int
    elapsed_s: float
    manifest: Manifest = field(default_factory=Manifest)
    #: The signal that stopped this process (``SIGINT``, ``SIGTERM``), if one did.
    interrupted: str | None = None
    #: The command that resumes the run (this process's shard) as it was started.
    resume: str | None = None

    @property
    def exit_code(self) -> int:
        """3 when this process's part is unfinished: stopped, or rows it stored as errors (it
        retried every earlier one); other shards' progress is theirs to report."""
        return EXIT_PARTIAL if self.interrupted or self.errors_written else 0

    def describe(self) -> str:
        lines = [f"run: {self.run_dir}  status: {self.status}"]
        if self.interrupted:
            lines.append(f"stopped by {self.interrupted}: every row computed before it is stored")
        lines += [
            f"this process: {self.rows_written} rows ({self.errors_written} errors) "
            f"in {self.elapsed_s:.1f} s",
            *self.manifest.stored_lines(),
        ]
        errors = self.manifest.rows.errors
        if errors:
            lines.append(f"{errors} rows are stored as errors; resuming retries them")
        if self.status == RunStatus.RUNNING:  # this shard is done, others are still writing
            lines.append(f"other shards are still running: audit status {self.run_dir}")
        elif self.exit_code and self.resume:
            lines.append(f"resume with: {self.resume}")
        if self.status == RunStatus.COMPLETE:
            lines.append(f"next: audit analyze {self.run_dir}")
        return "\n".join(lines)


#: The options ``RunOptions.probe_arguments`` writes, and whether each takes a value.
_ARGUMENTS = {
    "--model": True,
    "--limit": True,
    "--batch-size": True,
    "--device": True,
    "--endpoint": True,
    "--concurrency": True,
    "--api-key-env": True,
}
_SWITCHES = {"--no-fast-paths": ("fast_paths", False)}


def resume_arguments(run_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The probe file and the options a run was started with, for ``audit run RUN_DIR``
    (``RunDirError`` when it is not a run ``audit run`` made, or its probe file is gone)."""
    store = RunStore.open(run_dir)
    manifest = store.manifest()
    where = store.manifest_path
    if manifest.producer != Producer.RUN or not manifest.probe_path:
        raise RunDirError(
            f"{where}: producer: made by '{manifest.producer.value}', not by 'audit run' from a "
            "probe file; there is nothing to resume"
        )
    probe = Path(manifest.probe_path)
    if not probe.is_file():
        raise RunDirError(
            f"{where}: probe_path: the probe file '{probe}' the run was started with is not "
            f"there (seen from {Path.cwd()}); pass it: {resume_command(manifest, store.root)}"
        )
    options: dict[str, Any] = {}
    words = list(manifest.run_arguments)
    while words:
        word = words.pop(0)
        if word in _SWITCHES:
            key, value = _SWITCHES[word]
            options[key] = value
        elif word in _ARGUMENTS and words:
            key = word.removeprefix("--").replace("-", "_")
            value = words.pop(0)
            numeric = key in {"limit", "concurrency"} and value.isdigit()
            options[key] = int(value) if numeric else value
        else:
            raise RunDirError(
                f"{where}: run_arguments: '{word}' is not an option 'audit run' records "
                f"(expected {sorted([*_ARGUMENTS, *_SWITCHES])})"
            )
    return probe, options


def run_probe_file(path: str | Path, options: RunOptions) -> RunResult:
    return run_probe(load_probe(path), options, probe_path=Path(path))


def run_probe(spec: ProbeSpec, options: RunOptions, probe_path: Path | None = None) -> RunResult:
    """Run what is missing of ``spec`` into the run directory; returns what was done. SIGINT and
    SIGTERM stop it cleanly (``run.interrupt``); stopped before its first batch, it raises
    ``interrupt.Interrupted``."""
    with StopSignals(_announce).installed() as stop:
        return _run_probe(spec, options, probe_path, stop)


def _run_probe(
    spec: ProbeSpec, options: RunOptions, probe_path: Path | None, stop: StopSignals
) -> RunResult:
    from audit.backends import load_backend
    from audit.backends.presets import apply_preset
    from audit.datasets import open_dataset

    spec = place_on_local_gpu(options.apply(spec))
    origin = str(probe_path or spec.name)
    check_backend_name(spec, origin)
    store = RunStore(options.run_dir_for(spec))
    shard = options.shard or WHOLE
    if options.fresh and shard.count > 1:
        raise AuditError(
            f"--fresh with shard {shard.index + 1}/{shard.count}: it would move aside what the "
            "other shards wrote; start the shards with --out and a new run directory instead"
        )
    if options.fresh:
        move_aside(store)
    source = open_dataset(spec)
    check_labels(spec, source.group_values(), origin)
    preamble, layout = prepare_preamble(spec, origin)
    if layout.get("preamble_complete") is False:
        logger.warning(
            "warning: %d preamble image(s) missing (%s): the run shows the system prompt alone; "
            "the manifest and the report say so",
            len(layout["missing_images"]),
            ", ".join(layout["missing_images"]),
        )
    backend = load_backend(spec.model_location(), spec.model, preamble)
    _check_capabilities(backend, spec, origin)
    if not backend.supports_preamble and drop_preamble(layout, preamble, backend.info().model_type):
        logger.warning(
            "warning: %s; the manifest and the report say so",
            layout["preamble"].removeprefix("none: "),
        )
    if not backend.supports_card_context and (changed := served_contexts(layout)):
        logger.warning(
            "warning: classification %s: backend '%s' wraps every request in the server's chat "
            "template, so the card's context (the image, then the template, nothing else) cannot "
            "be laid out; labels are scored in the server's template without the preamble",
            ", ".join(changed),
            backend.name,
        )
    spec, presets = apply_preset(spec, backend.info().model_type)
    if presets:
        layout["presets"] = presets
    if store.exists():  # before the weights load: a run of another probe is refused at once
        check_same_probe(store, spec)
        check_same_layout(store.manifest().prompt_layout, layout, store.root)
    backend.load()
    try:
        backend.check_settings(_settings(spec))
    except ValueError as error:
        raise ProbeError(f"{origin}: {error}") from None
    if backend.supports_card_context and (
        changed := settle_card_context(layout, backend.card_layout())
    ):
        logger.warning(
            "warning: classification %s: a %s model cannot be shown the image and the "
            "template with nothing around them (the card's context); its labels are scored "
            "as the answer in its own prompt format, and the manifest and the report say so",
            ", ".join(changed),
            backend.info().model_type,
        )
    start_manifest(
        store,
        spec,
        source,
        backend,
        shard,
        probe_path,
        launcher=options.launcher or launcher_name(),
        arguments=options.probe_arguments(),
        layout=layout,
    )

    started = time.perf_counter()
    batch_size = _batch_samples(spec, backend.info().device)
    plan = BatchPlan(images=batch_size, prompts=len(spec.prompts))
    executor = BatchExecutor(backend, spec, _settings(spec), plan, spec.model.id)
    stored = StoredKeys.read(store)
    total = sum(item.n_rows for item in _pending(stored, spec, source, shard))
    expected = _shard_rows(spec, source, shard)
    retried = _error_rows(stored, source, shard)
    if expected > total or retried:  # some of this shard's rows are stored already
        logger.info(
            "resuming: %d of %d rows stored, %d errors to retry",
            expected - total,
            expected,
            retried,
        )
    counts = Counts()
    status = "failed"
    try:
        pending = _pending(stored, spec, source, shard)
        with stop.deferring():
            _execute(
                store,
                spec,
                pending,
                shard,
                executor,
                (expected - total, expected),
                options,
                batch_size,
                stop,
                counts,
            )
        status = "interrupted" if stop.stop_requested else "done"
    except KeyboardInterrupt:  # a second signal: the batch in flight is dropped
        status = "interrupted"
    finally:
        manifest = finalize_manifest(
            store, shard, process_status=status, elapsed_s=time.perf_counter() - started
        )
    return RunResult(
        store.root,
        manifest.status.value,
        counts.written,
        counts.errors,
        time.perf_counter() - started,
        manifest,
        interrupted=(stop.first or "SIGINT") if status == "interrupted" else None,
        resume=resume_command(manifest, store.root, shard),
    )


def move_aside(store: RunStore) -> None:
    """``--fresh``: the old run goes to a sibling folder, never deleted, and never while a
    process still writes it."""
    live = [r for r in read_shard_records(store.root) if r.is_live()] if store.exists() else []
    if live:
        raise AuditError(
            f"--fresh: {store.root} is being written by a running process "
            f"({', '.join(r.shard.label for r in live)}); stop it first, or pass --out with "
            "another directory"
        )
    moved = store.move_aside()
    if moved is not None:
        logger.info("--fresh: moved the previous run in %s to %s", store.root, moved)


def _announce(line: str) -> None:
    from tqdm.auto import tqdm

    with tqdm.external_write_mode(file=sys.stderr):  # the progress bar steps aside
        logger.warning("%s", line)


@dataclass
class Counts:
    """Rows this process wrote, and how many of them are error rows."""

    written: int = 0
    errors: int = 0

    def add(self, buffer: BatchRows) -> None:
        rows = (*buffer.generations, *buffer.classifications)
        self.written += buffer.n_rows
        self.errors += sum(is_error_row(r) for r in rows)


def _execute(
    store: RunStore,
    spec: ProbeSpec,
    pending: Iterator[WorkItem],
    shard: Shard,
    executor: BatchExecutor,
    progress: tuple[int, int],
    options: RunOptions,
    batch_size: int,
    stop: StopSignals,
    counts: Counts,
) -> None:
    """Run ``pending`` in batches, flushing as it goes, into ``counts``; ``progress``: rows of
    this shard stored before, and in all (the bar starts at the first). Stops after a batch
    when ``stop`` asks; whatever ends it, the rows of finished batches are written."""
    from tqdm.auto import tqdm

    buffer = BatchRows()
    last_flush = started = time.monotonic()
    checked = False
    work = batched(pending, batch_size)
    with tqdm(
        initial=progress[0],
        total=progress[1],
        unit="row",
        disable=not options.progress,
        desc=f"{spec.name} {shard.label}",
        dynamic_ncols=True,
    ) as bar:
        try:
            for loaded in prefetch(work, load_item):
                if stop.stop_requested:
                    break
                checked = checked or _check_fast_paths(store, shard, executor, loaded)
                rows = executor.run(loaded)
                buffer.extend(rows)
                bar.update(rows.n_rows)
                due = time.monotonic() - last_flush >= options.flush_s
                if buffer.n_rows >= options.flush_rows or due or stop.stop_requested:
                    # Swapped out first: a write that fails is not written again below.
                    full, buffer, last_flush = buffer, BatchRows(), time.monotonic()
                    with stop.writing():
                        _flush(store, full, counts)
                        _beat(store, shard, counts, time.monotonic() - started)
        finally:
            with stop.writing():  # whatever finished before a failure or a signal is kept
                _flush(store, buffer, counts)
                _beat(store, shard, counts, time.monotonic() - started)


def _check_fast_paths(
    store: RunStore, shard: Shard, executor: BatchExecutor, batch: list[LoadedItem]
) -> bool:
    """The backend's fast-path self-check on ``batch``: its lines printed, its outcome in the
    manifest and this process's shard record. False when ``batch`` had no image to check on."""
    from tqdm.auto import tqdm

    lines = executor.check_fast_paths(batch)
    if lines is None:
        return False
    with tqdm.external_write_mode(file=sys.stderr):  # the progress bar steps aside
        for line in lines:
            logger.warning("warning: %s", line)
    record = executor.backend.fast_path_record()
    if record:
        with run_lock(store.root):
            store.update_manifest(fast_paths=record)
        write_shard_record(store.root, shard, fast_paths=record)
    return True


def _check_capabilities(backend: Any, spec: ProbeSpec, origin: str) -> None:
    """Refuse a probe the chosen backend cannot serve, before any model loads."""
    missing = [
        f"{key} (backend '{backend.name}' cannot {what})"
        for key, needed, able, what in (
            ("prompts", spec.prompts, backend.supports_generation, "generate"),
            ("classification", spec.classification, backend.supports_label_scoring, "score labels"),
            (
                "split_template",
                spec.split_template,
                backend.supports_split_template,
                "lay out the card script's split template (IDEFICS v1 only)",
            ),
        )
        if needed and not able
    ]
    if missing:
        raise ProbeError(f"{origin}: " + "; ".join(missing))


def _beat(store: RunStore, shard: Shard, counts: Counts, elapsed_s: float) -> None:
    """This process's heartbeat and counts in its shard record (``audit status`` reads them)."""
    write_shard_record(
        store.root,
        shard,
        rows_written=counts.written,
        errors_written=counts.errors,
        elapsed_s=round(elapsed_s, 3),
        updated_at=now_iso(),
    )


def _flush(store: RunStore, buffer: BatchRows, counts: Counts) -> None:
    # Thumbnails first: a generation row never refers to a sample without its thumbnail.
    store.append("thumbnails", pd.DataFrame(buffer.thumbnails))
    store.append("generations", pd.DataFrame(buffer.generations))
    store.append("classifications", pd.DataFrame(buffer.classifications))
    counts.add(buffer)


@dataclass(frozen=True)
class StoredKeys:
    """What the store already holds, read once per run: keys done (skipped), and keys stored as
    error rows (retried)."""

    generations: set[tuple[str, ...]]
    classifications: set[tuple[str, ...]]
    thumbnails: set[str]
    errors: set[tuple[str, ...]]

    @classmethod
    def read(cls, store: RunStore) -> StoredKeys:
        generations, failed_generations = store.keys_by_status("generations")
        classifications, failed_classifications = store.keys_by_status("classifications")
        return cls(
            generations,
            classifications,
            {key[0] for key in store.done_keys("thumbnails")},
            failed_generations | failed_classifications,
        )


def _shard_rows(spec: ProbeSpec, source: Any, shard: Shard) -> int:
    """Rows this shard's samples hold when complete."""
    per_sample = len(spec.prompts) + len(spec.classification)
    return per_sample * sum(1 for s in source.samples() if shard.owns(s.sample_id))


def _error_rows(stored: StoredKeys, source: Any, shard: Shard) -> int:
    """Error rows stored for this shard's samples (a resumed run retries them)."""
    owned = {s.sample_id for s in source.samples() if shard.owns(s.sample_id)}
    return sum(1 for key in stored.errors if key[0] in owned)


def _pending(stored: StoredKeys, spec: ProbeSpec, source: Any, shard: Shard) -> Iterator[WorkItem]:
    """Samples of this shard with what is not stored yet."""
    done_generations, done_classifications = stored.generations, stored.classifications
    thumbnails = stored.thumbnails
    for sample in source.samples():
        if not shard.owns(sample.sample_id):
            continue
        sid = sample.sample_id
        prompts = tuple(p for p in spec.prompts if (sid, p.id) not in done_generations)
        tasks = tuple(t for t in spec.classification if (sid, t.id) not in done_classifications)
        if prompts or tasks:
            yield WorkItem(sample, prompts, tasks, needs_thumbnail=sid not in thumbnails)


# ``--batch-size auto``: start large on a GPU; the backend halves a batch on out-of-memory and
# remembers the size that fit, so the run settles on the largest batch that fits.
AUTO_BATCH = {"cuda": 64, "cpu": 8}


def _batch_samples(spec: ProbeSpec, device: str) -> int:
    size = spec.generation.batch_size
    if isinstance(size, int):
        return size
    return AUTO_BATCH["cuda" if device.startswith("cuda") else "cpu"]


def _settings(spec: ProbeSpec) -> Any:
    from audit.backends.base import GenerationSettings

    g = spec.generation
    return GenerationSettings(
        max_new_tokens=g.max_new_tokens,
        min_new_tokens=g.min_new_tokens,
        do_sample=g.do_sample,
        temperature=g.temperature,
        top_p=g.top_p,
        seed=g.seed,
        stop_strings=tuple(g.stop_strings),
        stop_tokens=tuple(g.stop_tokens),
        order=g.order,
    )
