"""What a run directory holds, declared once: its tables' columns and keys, and its manifest.

Runs, imports and simulations write rows in the ``TableSchema`` layouts and a ``Manifest``;
every reader gets a manifest back from ``RunStore.manifest()``, or a ``RunDirError`` naming the
file and the key that is wrong. Keys this version does not know are kept, so a manifest
written by another version survives a round trip.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Bump when a stored column or manifest key changes meaning; readers check it first.
SCHEMA_VERSION = 1

#: The digest of an image's decoded pixels (``audit.datasets.image_hash``): the identity that
#: pairs two runs image by image across datasets that number their rows differently. Runs
#: written before it existed lack the column and pair on ``sample_id``.
IMAGE_HASH = "image_sha256"


@dataclass(frozen=True)
class TableSchema:
    """A stored table: its columns around the probe's group columns, and its key."""

    name: str
    #: One row per key, whoever wrote it.
    keys: tuple[str, ...]
    #: Columns before the group columns.
    leading: tuple[str, ...]
    #: Columns after the group columns.
    trailing: tuple[str, ...] = ()
    #: Prefixes of the columns a row holds per candidate value (``score_Male``).
    per_value: tuple[str, ...] = ()
    #: Columns every part holds, whoever wrote it: without them a part would be analysed as if
    #: they held nothing.
    required: tuple[str, ...] = ()
    #: Columns that hold text (or nothing, in a part of error rows).
    text: tuple[str, ...] = ()
    #: Columns that hold numbers (or nothing); ``per_value`` columns hold numbers too.
    numbers: tuple[str, ...] = ()
    #: Columns that hold true or false (or nothing).
    flags: tuple[str, ...] = ()
    #: Columns that parts written by earlier versions lack: read as nulls, never ``damaged``.
    optional: tuple[str, ...] = ()

    def columns(self, group_axes: Iterable[str] = (), *, optional: bool = True) -> list[str]:
        """The table's columns, in order, for a run with these group columns (``optional``:
        with the columns a writer may leave out, such as the image digest of a run without
        images)."""
        columns = [*self.leading, *group_axes, *self.trailing]
        return columns if optional else [c for c in columns if c not in self.optional]


GENERATIONS = TableSchema(
    "generations",
    keys=("sample_id", "prompt_id"),
    leading=("sample_id", "prompt_id", "model_id"),
    trailing=("prompt", "generation", "n_new_tokens", "finish_reason", "error", IMAGE_HASH),
    required=("sample_id", "prompt_id", "generation"),
    text=("model_id", "prompt", "generation", "finish_reason", "error", IMAGE_HASH),
    numbers=("n_new_tokens",),
    optional=(IMAGE_HASH,),
)
#: ``score_<value>``: summed log-likelihood of the value's label; ``n_tokens_<value>``: its
#: token count (docs/run_directory.md). Rows of a backend with more than one method (a served
#: model) also hold ``scoring_method`` (``loglikelihood`` or ``choice``) and, for ``choice``,
#: the model's ``answer``; parts without them are label log-likelihood.
CLASSIFICATIONS = TableSchema(
    "classifications",
    keys=("sample_id", "task_id"),
    leading=("sample_id", "task_id", "model_id"),
    trailing=("target", "prediction", "correct", "error", IMAGE_HASH),
    per_value=("score_", "n_tokens_"),
    required=("sample_id", "task_id", "target", "prediction"),
    text=("model_id", "target", "prediction", "error", IMAGE_HASH, "scoring_method", "answer"),
    flags=("correct",),
    optional=(IMAGE_HASH,),
)
THUMBNAILS = TableSchema(
    "thumbnails", keys=("sample_id",), leading=("sample_id", "jpeg"), required=("sample_id", "jpeg")
)
TABLES: dict[str, TableSchema] = {t.name: t for t in (GENERATIONS, CLASSIFICATIONS, THUMBNAILS)}
#: ``samples.parquet``: every sample a complete run covers, with its image digest once the
#: image was read (null before, and in lists written by earlier versions). One file, not parts.
SAMPLES = TableSchema(
    "samples",
    keys=("sample_id",),
    leading=("sample_id", IMAGE_HASH),
    required=("sample_id",),
    text=("sample_id", IMAGE_HASH),
    optional=(IMAGE_HASH,),
)


class Producer(StrEnum):
    """What filled the run directory."""

    RUN = "run"  # audit run: a model
    IMPORT = "import"  # audit import: generations made elsewhere
    SIMULATION = "simulation"  # planted effects, no model


class RunStatus(StrEnum):
    """How far the run got."""

    RUNNING = "running"  # a process is (or was, if it died) writing it
    PARTIAL = "partial"  # stopped before every row was stored
    COMPLETE = "complete"  # every expected row is stored
    FAILED = "failed"
    IMPORTED = "imported"  # what an import held (complete by definition)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow")


class PromptEntry(_Entry):
    id: str
    text: str = ""


class TaskEntry(_Entry):
    id: str
    target: str = ""
    labels: dict[str, str] = Field(default_factory=dict)


class ModelInfo(_Entry):
    """The model that produced the run, as its backend described it."""

    id: str = "unknown model"
    revision: str | None = None
    backend: str | None = None
    model_type: str | None = None
    dtype: str | None = None
    device: str | None = None
    image_processor: str | None = None


class Expected(_Entry):
    generations: int = 0
    classifications: int = 0


class Stored(Expected):
    errors: int = 0


class Manifest(BaseModel):
    """``manifest.json``: what a run is and how far it got (docs/run_directory.md)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    schema_version: int = SCHEMA_VERSION
    run_id: str = ""
    producer: Producer = Producer.RUN
    status: RunStatus = RunStatus.RUNNING
    #: The resolved probe (every default filled in), as JSON.
    probe: dict[str, Any] = Field(default_factory=dict)
    probe_path: str | None = None
    #: The command-line options that changed the probe (``--model``, ``--limit``, ...), latest
    #: start: the resume command repeats them.
    run_arguments: list[str] = Field(default_factory=list)
    #: A short hash per probe section, to refuse resuming into a run of another probe.
    fingerprint: dict[str, str] = Field(default_factory=dict)
    model: ModelInfo = Field(default_factory=ModelInfo)
    dataset: dict[str, Any] = Field(default_factory=dict)
    group_axes: list[str] = Field(default_factory=list)
    prompts: list[PromptEntry] = Field(default_factory=list)
    tasks: list[TaskEntry] = Field(default_factory=list)
    expected: Expected = Field(default_factory=Expected)
    rows: Stored = Field(default_factory=Stored)
    seed: int | None = None
    versions: dict[str, Any] = Field(default_factory=dict)
    hardware: dict[str, Any] = Field(default_factory=dict)
    started_at: str | None = None
    resumed_at: str | None = None
    finished_at: str | None = None
    elapsed_s: float | None = None
    #: What the model was shown around each image: the preamble as run (complete, or the
    #: system prompt alone when example images were missing), the card script's split template
    #: and its quirks, the classification contexts, stop tokens, order and family presets.
    prompt_layout: dict[str, Any] | None = None
    #: Which speedups the run used after its self-check (``backends.hf.fast.policy``).
    fast_paths: dict[str, Any] | None = None
    #: A simulated run, and what was planted in it.
    simulated: bool = False
    simulation: dict[str, Any] | None = None
    #: An imported run: where from, and how its columns were mapped.
    provenance: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _producer_of_older_manifests(cls, data: Any) -> Any:
        if isinstance(data, dict) and "producer" not in data:
            if data.get("simulated"):
                data = {**data, "producer": Producer.SIMULATION}
            elif data.get("status") == RunStatus.IMPORTED:
                data = {**data, "producer": Producer.IMPORT}
        return data

    @property
    def probe_name(self) -> str:
        return str(self.probe.get("name") or "?")

    def task_ids(self) -> list[str]:
        return [task.id for task in self.tasks]

    def prompt_ids(self) -> list[str]:
        return [prompt.id for prompt in self.prompts]

    def stored_lines(self) -> list[str]:
        """``generations: 48 / 48 stored`` for each table the run expects rows in."""
        rows, expected = self.rows.model_dump(), self.expected.model_dump()
        return [
            f"{table}: {rows.get(table, 0)} / {expected[table]} stored"
            for table in ("generations", "classifications")
            if expected.get(table)
        ]

    def to_json(self) -> dict[str, Any]:
        """As stored: plain JSON types, ``schema_version`` first."""
        return self.model_dump(mode="json")
