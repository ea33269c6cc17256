"""The run directory: the one interface between stages.

Layout (docs/run_directory.md has the column contracts)::

    manifest.json              resolved probe, model provenance, versions, status, row counts
    generations/part-*.parquet
    classifications/part-*.parquet
    thumbnails/part-*.parquet  small JPEGs keyed by sample_id
    shards/<k>-of-<n>.json     per-process progress of a sharded run
    analysis/<name>.parquet    one tidy table per analysis
    analysis/summary.json

Invariant: reading a table gives one row per key, whoever wrote it. Parts are written to a hidden
temporary file and renamed, so a crash never leaves a half-written part visible; a key that is
stored twice (a retried error row, a shard re-run after a crash) resolves to its successful row.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from audit.errors import RunDirError
from audit.spec import format_validation_error
from audit.store.schema import SCHEMA_VERSION, TABLES, Manifest, TableSchema

TABLE_KEYS: dict[str, tuple[str, ...]] = {name: schema.keys for name, schema in TABLES.items()}

MANIFEST = "manifest.json"
ANALYSIS_FOLDER = "analysis"
SUMMARY = "summary.json"
#: Comparisons of this run against others (``audit analyze RUN --against OTHER``).
COMPARISONS_FOLDER = "comparisons"
REPORT_HTML, REPORT_MD = "report.html", "report.md"
#: What ``audit card`` writes: the card, its numbers, and the model-index metadata (one file per
#: run when a card covers several: ``model-index-<run>.yaml``).
CARD_MD, CARD_JSON, MODEL_INDEX = "card.md", "card.json", "model-index.yaml"
_READ_ATTEMPTS = 5


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str).encode())


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


#: The columns that say whether a row failed (``error_mask``).
STATUS_COLUMNS = ("finish_reason", "error")


def error_mask(frame: pd.DataFrame) -> pd.Series:
    """Which rows are error rows, the one rule every reader uses: ``finish_reason`` is
    ``"error"`` or ``error`` holds text (an empty or blank string is no error). A resumed run
    retries error rows; analyses leave them out and count them."""
    failed = pd.Series(False, index=frame.index)
    if "finish_reason" in frame:
        failed |= frame["finish_reason"].astype(object).eq("error")
    if "error" in frame:
        text = frame["error"].astype(object)
        failed |= text.notna() & text.astype(str).str.strip().ne("")
    return failed


def is_error_row(row: Mapping[str, Any]) -> bool:
    """``error_mask`` for one row as a mapping (rows not stored yet)."""
    error = row.get("error")
    return row.get("finish_reason") == "error" or (error is not None and str(error).strip() != "")


def damaged(path: Path, problem: str) -> RunDirError:
    """The error for a part of a run that cannot be used, with what to do about it."""
    return RunDirError(
        f"{path}: {problem}. The run's other files are not affected: delete this one and make "
        "its rows again (the same 'audit run' or 'audit import'; 'audit status' shows what is "
        "missing), or start the run over with --fresh, which moves the old run aside"
    )


def _part_schema(path: Path) -> pa.Schema:
    """A part's schema from its footer; ``RunDirError`` for anything that is not a parquet file
    (a folder, a link that leads nowhere, a truncated or foreign file)."""
    try:
        mode = path.stat().st_mode  # one stat: a part compacted away meanwhile is simply gone
    except FileNotFoundError:
        if path.is_symlink():
            raise damaged(path, "is a link that leads nowhere") from None
        raise  # compacted away meanwhile: the caller lists the parts again
    except OSError as error:
        raise damaged(path, f"cannot be opened ({_first_line(error)})") from None
    if not stat.S_ISREG(mode):
        raise damaged(path, "is not a file")
    try:
        return pq.read_schema(path)
    except FileNotFoundError:
        raise  # compacted away meanwhile: the caller lists the parts again
    except (OSError, pa.ArrowException) as error:
        raise damaged(path, f"cannot be read as parquet ({_first_line(error)})") from None


def _read_part(path: Path, table: str, columns: list[str] | None) -> pa.Table:
    """One part's rows (``columns``: those of them it has), its key columns as text. A part
    that lacks a column its table requires (or one asked for), or holds a text column of
    another type, is ``damaged``: read on, it would be analysed as if the column held nothing."""
    part_schema = _part_schema(path)
    schema = TABLES.get(table)
    if schema is not None:
        _check_part(path, part_schema, schema, columns)
    present = None if columns is None else [c for c in columns if c in part_schema.names]
    try:
        part = pq.read_table(path, columns=present)
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as error:
        raise damaged(path, f"cannot be read as parquet ({_first_line(error)})") from None
    return _keys_as_text(part, schema.keys if schema else ())


def _check_part(
    path: Path, part: pa.Schema, schema: TableSchema, columns: list[str] | None
) -> None:
    declared = {*schema.leading, *schema.trailing}
    asked = (set(schema.required) | (set(columns or ()) & declared)) - set(schema.optional)
    missing = sorted(asked - set(part.names))
    if missing:
        raise damaged(path, f"has no column(s) {missing}, which every {schema.name} part holds")
    for name in schema.text:
        if name in part.names:
            kind = part.field(name).type
            if pa.types.is_dictionary(kind):  # a categorical column: its values are what count
                kind = kind.value_type
            if not any(check(kind) for check in _TEXT_TYPES):
                raise damaged(path, f"its column '{name}' holds {kind}, where text is expected")
    numeric = [
        name
        for name in part.names
        if name in schema.numbers or name.startswith(schema.per_value or ("\0",))
    ]
    typed = [(name, _NUMBER_TYPES, "numbers") for name in numeric]
    typed += [(name, _FLAG_TYPES, "true or false") for name in schema.flags if name in part.names]
    for name, checks, expected in typed:
        kind = part.field(name).type
        if not any(check(kind) for check in checks):
            raise damaged(path, f"its column '{name}' holds {kind}, where {expected} is expected")


_NUMBER_TYPES = (pa.types.is_integer, pa.types.is_floating, pa.types.is_null)
_FLAG_TYPES = (pa.types.is_boolean, pa.types.is_null)
_TEXT_TYPES = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_string_view,
    pa.types.is_null,
)


def _keys_as_text(part: pa.Table, keys: tuple[str, ...]) -> pa.Table:
    """Key columns as strings, whatever type a writer gave them (ids are text)."""
    for key in keys:
        if key in part.column_names and not pa.types.is_string(part.schema.field(key).type):
            index = part.column_names.index(key)
            part = part.set_column(index, key, part.column(key).cast(pa.string()))
    return part


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _settings_changed(entry: Mapping[str, Any], settings: Mapping[str, Any]) -> bool:
    """Whether the settings an analysis table was computed with differ from the latest ones,
    in the settings it reads (``summary.json``'s entry for it names them)."""
    keys = entry.get("settings_keys")
    if "settings_fingerprint" not in entry or not isinstance(keys, list):
        return False  # written before tables recorded their settings
    latest = settings_fingerprint({k: settings.get(k) for k in keys if isinstance(k, str)})
    return bool(entry["settings_fingerprint"] != latest)


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    """A digest of the analysis settings a table was computed with."""
    encoded = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def rows_fingerprint(frames: Mapping[str, pd.DataFrame]) -> str:
    """``RunStore.rows_fingerprint`` of generations and classifications already read."""
    digest = hashlib.sha256()
    for table in ("generations", "classifications"):
        frame = frames.get(table)
        if frame is None or frame.empty:
            continue
        keys = list(TABLE_KEYS[table])
        lines = frame[keys].astype(str).agg("\x1f".join, axis=1)
        lines = table + "\x1f" + lines + "\x1f" + error_mask(frame).astype(int).astype(str)
        for line in sorted(lines):
            digest.update(line.encode() + b"\n")
    return digest.hexdigest()[:16]


def _status_columns(parts: list[Path]) -> list[str]:
    """The columns ``error_mask`` reads that every part has (read from the footers only)."""
    names = [set(_part_schema(p).names) for p in parts]
    return [c for c in STATUS_COLUMNS if names and all(c in n for n in names)]


def _rows_to_keep(parts: list[Path], table: str, keys: list[str]) -> list[np.ndarray]:
    """Per part, the row numbers ``read`` keeps: one per key, a successful row over an error."""
    if not keys:
        return [np.arange(_read_part(p, table, None).num_rows) for p in parts]
    columns = keys + _status_columns(parts)
    frames = []
    for index, part in enumerate(parts):
        frame = _read_part(part, table, columns).to_pandas()
        frames.append(frame.assign(_part=index, _row=np.arange(len(frame))))
    frame = pd.concat(frames, ignore_index=True)
    frame["_error"] = error_mask(frame).to_numpy()
    frame = frame.sort_values("_error", kind="stable").drop_duplicates(keys, keep="first")
    rows = frame.groupby("_part")["_row"].apply(np.sort)
    return [rows.get(index, np.array([], dtype=np.int64)) for index in range(len(parts))]


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns and types (a column it lacks becomes nulls)."""
    columns = [
        table.column(f.name).cast(f.type)
        if f.name in table.column_names
        else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, run_dir: str | Path) -> None:
        self.root = Path(run_dir)

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def open(cls, run_dir: str | Path) -> RunStore:
        """An existing run directory; ``RunDirError`` if it is not one."""
        store = cls(run_dir)
        if not store.root.is_dir():
            raise RunDirError(f"{store.root}: no such run directory")
        if not (store.root / MANIFEST).is_file():
            raise RunDirError(
                f"{store.root}: not a run directory (no {MANIFEST}); "
                "create one with 'audit run PROBE.yaml' or 'audit import'"
            )
        store.manifest()  # checks it
        return store

    def move_aside(self) -> Path | None:
        """Move the run to a sibling folder ``<name>.replaced-<UTC time>`` and start an empty
        one (``--fresh``): nothing is deleted. Returns where it went (``None``: it held
        nothing)."""
        if not self.root.is_dir() or not any(self.root.iterdir()):
            self.root.mkdir(parents=True, exist_ok=True)
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.root.with_name(f"{self.root.name}.replaced-{stamp}")
        for n in itertools.count(2):
            if not target.exists():
                break
            target = self.root.with_name(f"{self.root.name}.replaced-{stamp}-{n}")
        self.root.rename(target)
        self.root.mkdir()
        return target

    def clear(self) -> None:
        """Remove every stored table of this run; keeps nothing but the folder (for runs the
        caller owns outright, such as the demo's)."""
        if self.root.exists():
            for child in self.root.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        self.root.mkdir(parents=True, exist_ok=True)

    # -- manifest --------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.root / MANIFEST).is_file()

    def manifest(self) -> Manifest:
        """The manifest, checked (``RunDirError`` naming the file and the key if it is not)."""
        path = self.root / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{self.root}: not a run directory (no {MANIFEST})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunDirError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{path}: expected a JSON object of keys, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RunDirError(
                f"{path}: schema_version {version!r} is not supported "
                f"(this version of audit reads {SCHEMA_VERSION})"
            )
        try:
            return Manifest.model_validate(data)
        except ValidationError as error:
            raise RunDirError(format_validation_error(str(path), error)) from None

    def write_manifest(self, manifest: Manifest | dict[str, Any]) -> Manifest:
        """Write the manifest (a mapping is checked against ``Manifest`` first)."""
        if not isinstance(manifest, Manifest):
            manifest = Manifest.model_validate(manifest)
        write_json_atomic(self.root / MANIFEST, manifest.to_json())
        return manifest

    def update_manifest(self, **fields: Any) -> Manifest:
        """The stored manifest with ``fields`` changed, written back."""
        return self.write_manifest({**self.manifest().to_json(), **fields})

    # -- tables ----------------------------------------------------------------------------
    def parts(self, table: str) -> list[Path]:
        folder = self.root / table
        if not folder.is_dir():
            return []
        return sorted(folder.glob("part-*.parquet"))

    def append(self, table: str, frame: pd.DataFrame) -> Path | None:
        """Store rows as a new part; returns its path (None for an empty frame).

        Rows of a declared table (``schema.TABLES``) must hold its key: a writer that leaves it
        out is a bug, refused before anything is written."""
        if frame.empty:
            return None
        schema = TABLES.get(table)
        missing = [c for c in schema.keys if c not in frame.columns] if schema else []
        if missing:
            raise ValueError(f"{table} rows without their key column(s) {missing}")
        # Time first so parts sort in write order; the uuid keeps concurrent writers apart.
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        path = self.root / table / name
        write_parquet_atomic(path, frame)
        return path

    def read(self, table: str, columns: Iterable[str] | None = None) -> pd.DataFrame:
        """All rows of a table, one per key (a successful row wins over an error row)."""
        tables = self._read_parts(table, columns)
        if not tables:  # nothing written (a probe without prompts has no generations)
            schema = TABLES.get(table)
            empty = schema.columns() if schema else list(TABLE_KEYS.get(table, ()))
            wanted = list(columns) if columns is not None else empty
            return pd.DataFrame(columns=[c for c in empty if c in wanted] or wanted)
        # Permissive: a part whose rows are all scored stores token counts as integers, one with
        # an error row as floats (null); parts written by different shards must still combine.
        try:
            frame = pa.concat_tables(tables, promote_options="permissive").to_pandas()
        except pa.ArrowException as error:
            raise RunDirError(
                f"{self.root / table}: its parts disagree on a column's type "
                f"({_first_line(error)}); find the odd part with 'audit status' and delete it, "
                "or start the run over with --fresh, which moves the old run aside"
            ) from None
        keys = list(TABLE_KEYS.get(table, ()))
        if not keys or not set(keys) <= set(frame.columns):
            return frame
        frame["_error"] = error_mask(frame)
        frame["_order"] = range(len(frame))
        frame = frame.sort_values(["_error", "_order"], kind="stable")
        frame = frame.drop_duplicates(keys, keep="first").sort_values("_order", kind="stable")
        return frame.drop(columns=["_error", "_order"]).reset_index(drop=True)

    def _read_parts(self, table: str, columns: Iterable[str] | None) -> list[pa.Table]:
        # Another process may compact the table while this one reads it: a part listed a moment
        # ago can be gone, but the merged part holding its rows was written first, so listing
        # the parts again finds them.
        for attempt in range(_READ_ATTEMPTS):
            try:
                wanted = list(columns) if columns else None
                return [_read_part(p, table, wanted) for p in self.parts(table)]
            except FileNotFoundError:
                if attempt == _READ_ATTEMPTS - 1:
                    raise
        return []

    def done_keys(self, table: str) -> set[tuple[str, ...]]:
        """Keys stored without error: a resumed run skips these and retries error rows."""
        return self.keys_by_status(table)[0]

    def keys_by_status(self, table: str) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
        """Keys stored without error, and keys stored as error rows (retried on resume)."""
        keys = list(TABLE_KEYS[table])
        # Keys and status only: the texts and thumbnails of a large run need not be in memory.
        frame = self.read(table, columns=keys + _status_columns(self.parts(table)))
        if frame.empty:
            return set(), set()
        failed = error_mask(frame).to_numpy()
        as_keys = frame[keys].astype(str)
        return (
            set(as_keys[~failed].itertuples(index=False, name=None)),
            set(as_keys[failed].itertuples(index=False, name=None)),
        )

    def compact(self, table: str) -> None:
        """Merge a table's parts into one, holding one part in memory at a time.

        Safe beside writers: the merged part is visible before the old parts go, and reads
        resolve the overlap to one row per key. The rows kept are the ones ``read`` returns.
        """
        parts = self.parts(table)
        if len(parts) < 2:
            return
        kept = _rows_to_keep(parts, table, list(TABLE_KEYS.get(table, ())))
        keys = TABLE_KEYS.get(table, ())
        schemas = [_keys_as_text(_part_schema(p).empty_table(), keys).schema for p in parts]
        schema = pa.unify_schemas(schemas, promote_options="permissive").remove_metadata()
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.parquet"
        path = self.root / table / name
        tmp = path.parent / f".{name}.{uuid.uuid4().hex}.tmp"
        with pq.ParquetWriter(tmp, schema) as writer:
            for part, rows in zip(parts, kept, strict=True):
                if len(rows):
                    writer.write_table(_conform(_read_part(part, table, None).take(rows), schema))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        for part in parts:
            part.unlink(missing_ok=True)

    def row_counts(self) -> dict[str, int]:
        """Rows stored per table (one per key) and how many of them are error rows."""
        counts, errors = {}, 0
        for table in ("generations", "classifications"):
            frame = self.read(
                table, columns=[*TABLE_KEYS[table], *_status_columns(self.parts(table))]
            )
            counts[table] = len(frame)
            errors += int(error_mask(frame).sum())
        return {**counts, "errors": errors}

    def rows_fingerprint(self) -> str:
        """A digest of which rows the run holds and which of them are errors (keys and status,
        not file times): analyses record it, and a run that changed since shows as stale."""
        frames = {
            table: self.read(
                table, columns=[*TABLE_KEYS[table], *_status_columns(self.parts(table))]
            )
            for table in ("generations", "classifications")
        }
        return rows_fingerprint(frames)

    def analysis_staleness(self) -> str | None:
        """Why the stored analyses do not describe the rows the run holds now (never analysed,
        analysed before rows were added or retried, or some tables left from an earlier
        ``--only`` run on other rows or settings), as one instruction; ``None`` when they do."""
        summary = self.summary_if_present()
        command = f"run 'audit analyze {self.root}'"
        if summary is None:
            return f"{self.root}: not analysed yet; {command} first"
        analysed, current = summary.get("rows_fingerprint"), self.rows_fingerprint()
        entries = summary.get("analyses") if isinstance(summary.get("analyses"), dict) else {}
        settings = summary.get("settings") if isinstance(summary.get("settings"), dict) else {}
        behind = [
            name
            for name, entry in entries.items()
            if isinstance(entry, dict)
            and (
                entry.get("rows_fingerprint", current) != current
                or _settings_changed(entry, settings)
            )
        ]
        if analysed == current and behind:
            return (
                f"{self.root}: the analyses {', '.join(behind)} were computed from other rows or "
                f"settings than the others (an earlier 'audit analyze --only'); {command} again"
            )
        if analysed != current:
            counts = summary.get("counts") or {}
            stored = {t: c.get("stored") for t, c in counts.items() if isinstance(c, dict)}
            now = self.row_counts()
            was = ", ".join(f"{stored.get(t, '?')} {t}" for t in ("generations", "classifications"))
            holds = ", ".join(f"{now[t]} {t}" for t in ("generations", "classifications"))
            return (
                f"{self.root}: its analyses are stale (computed from {was}; the run now holds "
                f"{holds}, {now['errors']} of them errors); {command} again"
            )
        return None

    def count(self, table: str) -> int:
        return len(self.read(table, columns=TABLE_KEYS.get(table)))

    # -- analysis outputs --------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        """The manifest's path (for messages that name the file)."""
        return self.root / MANIFEST

    def analysis_path(self, name: str) -> Path:
        """Where the analysis table ``name`` is stored."""
        return self.root / ANALYSIS_FOLDER / f"{name}.parquet"

    def write_analysis(self, name: str, frame: pd.DataFrame) -> Path:
        path = self.analysis_path(name)
        write_parquet_atomic(path, frame)
        return path

    def read_analysis(self, name: str) -> pd.DataFrame:
        frame = self.analysis_if_present(name)
        if frame is None:
            raise RunDirError(
                f"{self.analysis_path(name)}: missing; run 'audit analyze {self.root}' first"
            )
        return frame

    def analysis_if_present(self, name: str, required: Iterable[str] = ()) -> pd.DataFrame | None:
        """The analysis table ``name``, or ``None`` when it was not written (``RunDirError``
        when it cannot be read or lacks a ``required`` column)."""
        path = self.analysis_path(name)
        if not path.exists() and not path.is_symlink():
            return None
        try:
            if not path.is_file():
                raise OSError("not a file")
            frame = pq.read_table(path).to_pandas()
        except (OSError, pa.ArrowException) as error:
            raise RunDirError(
                f"{path}: cannot be read as parquet ({_first_line(error)}); "
                f"re-run 'audit analyze {self.root}'"
            ) from None
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise RunDirError(
                f"{path}: has no column(s) {missing}, which every {name} table holds; "
                f"re-run 'audit analyze {self.root}'"
            )
        return frame

    def write_comparison(self, name: str, frame: pd.DataFrame, meta: dict[str, Any]) -> Path:
        """Store a comparison of this run against another, and how it was made."""
        path = self.root / ANALYSIS_FOLDER / COMPARISONS_FOLDER / f"{name}.parquet"
        write_json_atomic(path.with_suffix(".json"), meta)
        write_parquet_atomic(path, frame)
        return path

    def read_comparison(self, name: str) -> tuple[pd.DataFrame, dict[str, Any]] | None:
        """A stored comparison and how it was made; ``None`` when absent or unreadable (it can
        always be computed again)."""
        path = self.root / ANALYSIS_FOLDER / COMPARISONS_FOLDER / f"{name}.parquet"
        try:
            meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            frame = pq.read_table(path).to_pandas()
        except (OSError, ValueError, pa.ArrowException):
            return None
        return (frame, meta) if isinstance(meta, dict) else None

    def has_analysis(self, name: str) -> bool:
        return self.analysis_path(name).is_file()

    @property
    def summary_path(self) -> Path:
        """Where ``audit analyze`` writes its headline findings."""
        return self.root / ANALYSIS_FOLDER / SUMMARY

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_path, summary)

    def read_summary(self) -> dict[str, Any]:
        summary = self.summary_if_present()
        if summary is None:
            raise RunDirError(
                f"{self.summary_path}: missing; run 'audit analyze {self.root}' first"
            )
        return summary

    def summary_if_present(self) -> dict[str, Any] | None:
        """``analysis/summary.json``, or ``None`` when the run was not analysed."""
        path = self.summary_path
        if not path.is_file():
            return None
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise RunDirError(f"{path}: not valid JSON ({error}); re-run 'audit analyze'") from None
        if not isinstance(summary, dict):
            raise RunDirError(
                f"{path}: expected a JSON object with 'findings'; "
                f"re-run 'audit analyze {self.root}'"
            )
        return summary

    # -- what readers outside the store need -------------------------------------------------
    def columns(self, table: str) -> list[str]:
        """The columns of a table as its first part stores them (none when it has no part)."""
        parts = self.parts(table)
        return list(_part_schema(parts[0]).names) if parts else []

    def read_thumbnails(self, sample_ids: Iterable[str]) -> dict[str, bytes]:
        """JPEG bytes of the given samples' thumbnails (those that exist)."""
        wanted = sorted({str(s) for s in sample_ids})
        found: dict[str, bytes] = {}
        if not wanted:
            return found
        for part in self.parts("thumbnails"):
            _part_schema(part)  # a damaged part is a RunDirError naming it
            # A filter pushed into the reader keeps a large run from loading every JPEG.
            try:
                table = pq.read_table(
                    part, columns=["sample_id", "jpeg"], filters=[("sample_id", "in", wanted)]
                )
            except (OSError, pa.ArrowException) as error:
                raise damaged(part, f"cannot be read as parquet ({_first_line(error)})") from None
            ids, jpegs = table.column("sample_id").to_pylist(), table.column("jpeg").to_pylist()
            for sample_id, jpeg in zip(ids, jpegs, strict=True):
                found.setdefault(str(sample_id), jpeg)
        return found

    def change_token(self) -> str:
        """Changes whenever a file of the manifest, the tables or the analyses is written (a
        cache key for readers that keep what they read)."""
        stamps = []
        folders = (self.root, self.root / ANALYSIS_FOLDER, *(self.root / t for t in TABLE_KEYS))
        for folder in folders:
            if folder.is_dir():
                with os.scandir(folder) as entries:
                    stamps += [f"{e.name}:{e.stat().st_mtime_ns}" for e in entries if e.is_file()]
        return str(hash(tuple(sorted(stamps))))

    def report_paths(self) -> tuple[Path, Path]:
        """Where ``audit report`` writes into this run directory: HTML and Markdown."""
        return self.root / REPORT_HTML, self.root / REPORT_MD

    def card_path(self, name: str) -> Path:
        """Where ``audit card`` writes ``name`` (``CARD_MD``, ``CARD_JSON``, ``MODEL_INDEX`` or
        ``model-index-<run>.yaml``) into this run directory."""
        stem = MODEL_INDEX.removesuffix(".yaml")
        named = name.startswith(f"{stem}-") and name.endswith(".yaml") and "/" not in name
        if name not in (CARD_MD, CARD_JSON, MODEL_INDEX) and not named:
            raise ValueError(f"not a file audit card writes: {name!r}")
        return self.root / name
