"""One run directory as the report and the dashboard see it: manifest, summary, analysis tables.

Reads only what ``audit analyze`` and ``audit run`` wrote; a missing analysis table is simply
absent (its section then says "not analysed"), a damaged one is a ``RunDirError``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from audit.analyses.registry import analysis_tables, table_columns
from audit.errors import RunDirError
from audit.locations import public_name
from audit.store.schema import Manifest, Producer
from audit.store.tables import RunStore, error_mask

#: Cached raw scores beside the analysis tables; read on demand, not as an analysis.
TOXICITY_SCORES = "toxicity_scores"


@dataclass(frozen=True)
class RunData:
    """A loaded run directory. ``tables`` holds every analysis table that exists."""

    root: Path
    manifest: Manifest
    summary: dict[str, Any] | None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: Shown instead of the run id when several runs loaded together share one (copies).
    name: str | None = None

    @property
    def run_id(self) -> str:
        return self.manifest.run_id or self.root.name

    @property
    def model_id(self) -> str:
        return self.manifest.model.id

    @property
    def label(self) -> str:
        """Short name for tables and legends: the run id, or ``name`` where that is set."""
        return self.name or self.run_id

    @property
    def model_name(self) -> str:
        """The model as a reader knows it: its hub id, or a local folder's name marked
        ``(local)``; never a path of the machine that ran it."""
        model_id = str(self.manifest.model.id or "unknown model")
        if served_model(self.manifest) is not None:
            return f"{model_id} (served)"  # the server's name for it, not a path here
        return public_name(model_id)

    def caveat(self) -> str | None:
        """What a reader must know before the numbers, if anything: simulated data, random
        weights (the demo's models), or generations made elsewhere."""
        manifest = self.manifest
        sources = {str(manifest.dataset.get("source", "")), str(manifest.model.backend or "")}
        if manifest.producer == Producer.SIMULATION or manifest.simulated or "simulated" in sources:
            return (
                "simulated data: generations made by the simulator with planted associations; "
                "its findings describe no real model"
            )
        if getattr(manifest.model, "random_weights", False):
            return (
                "a model with random weights (the demo's): its text is meaningless and its "
                "findings describe no real model"
            )
        if manifest.producer == Producer.IMPORT:
            return "imported generations, made outside 'audit run' (see the provenance)"
        endpoint = served_model(manifest)
        if endpoint is not None:
            method = endpoint.get("label_scoring")
            choice = (
                "; classification by the model naming one label (an answer naming none counts "
                f"as wrong: {self._invalid_answers()}), not comparable with label log-likelihood"
                if method == "choice" and manifest.tasks
                else ""
            )
            return (
                "a model served elsewhere: its weights were not under the audit's control "
                f"(see the provenance){choice}"
            )
        return None

    def labels_chosen(self) -> bool:
        """Whether the model named its labels (an endpoint's ``choice`` method) rather than
        their log-likelihood ranking them."""
        endpoint = served_model(self.manifest)
        return endpoint is not None and endpoint.get("label_scoring") == "choice"

    def classification_contexts(self) -> dict[str, str]:
        """Task id -> where its labels were scored (``card`` or ``chat``)."""
        layout = self.manifest.prompt_layout or {}
        if "classification_context" in layout:
            return {str(k): str(v) for k, v in layout["classification_context"].items()}
        # Runs that predate the setting scored every label in a chat.
        tasks = self.manifest.probe.get("classification") or []
        return {str(t.get("id")): str(t.get("context", "chat")) for t in tasks}

    def prompt_layout(self, detail: bool = True) -> str | None:
        """What the model saw around each image, in words (``None``: not recorded); without
        ``detail``, the split template's quirks are counted rather than listed."""
        layout = self.manifest.prompt_layout or {}
        if not layout:
            return None
        text = str(layout.get("preamble", ""))
        if layout.get("preamble_complete") is False:
            missing = ", ".join(Path(str(p)).name for p in layout.get("missing_images", []))
            text += f" (missing: {missing})" if missing else ""
        quirks = layout.get("quirks") or []
        if quirks and detail:
            text += "; " + "; ".join(str(q) for q in quirks)
        elif quirks:
            text += f", its {len(quirks)} quirks reproduced (listed in the report's provenance)"
        return text or None

    def _invalid_answers(self) -> str:
        """``"3 of 24 answers named no label"`` over the stored ``choice`` rows."""
        columns = ["scoring_method", "prediction", "error"]
        rows = self.store().read("classifications", columns=columns)
        if "scoring_method" not in rows:
            return "no rows"
        chosen = rows[(rows["scoring_method"] == "choice") & ~error_mask(rows)]
        return f"{int(chosen['prediction'].isna().sum())} of {len(chosen)} answers named no label"

    @property
    def group_axes(self) -> list[str]:
        return list(self.manifest.group_axes)

    @property
    def status(self) -> str:
        return self.manifest.status.value

    def table(self, name: str) -> pd.DataFrame | None:
        """The analysis table ``name``, or None when it was not analysed."""
        return self.tables.get(name)

    def store(self) -> RunStore:
        return RunStore(self.root)


def served_model(manifest: Manifest) -> dict[str, Any] | None:
    """What the manifest records of the server that ran the model (``backend: endpoint``)."""
    record = manifest.model.model_dump().get("endpoint")
    return record if isinstance(record, dict) else None


def load_run(run_dir: str | Path, analyses: Iterable[str] | None = None) -> RunData:
    """Load a run directory with its analysis tables (``analyses``: these only; default every
    table ``analyses.registry`` declares); ``RunDirError`` if it is not one or a table is
    unreadable."""
    store = RunStore.open(run_dir)
    analyses = analysis_tables() if analyses is None else analyses
    tables = {}
    for name in analyses:
        frame = store.analysis_if_present(name, table_columns(name))
        if frame is not None:
            tables[name] = frame
    return RunData(
        root=store.root,
        manifest=store.manifest(),
        summary=store.summary_if_present(),
        tables=tables,
    )


def load_current_runs(run_dirs: Sequence[str | Path]) -> list[RunData]:
    """``load_runs``, refusing a run whose analyses are missing or stale
    (``RunStore.analysis_staleness``): what is published never shows numbers of rows the run no
    longer holds as current."""
    runs = load_runs(run_dirs)
    for run in runs:
        stale = run.store().analysis_staleness()
        if stale is not None:
            raise RunDirError(stale)
    return runs


def load_runs(run_dirs: Sequence[str | Path]) -> list[RunData]:
    """Load several run directories; two paths naming the same folder are an error."""
    if not run_dirs:
        raise RunDirError("no run directory given; pass one or more run directories")
    runs = [load_run(path) for path in run_dirs]
    seen: dict[Path, Path] = {}
    for path, run in zip(run_dirs, runs, strict=True):
        resolved = run.root.resolve()
        if resolved in seen:
            raise RunDirError(f"{path}: given twice (also as {seen[resolved]})")
        seen[resolved] = Path(path)
    return with_distinct_labels(runs)


def with_distinct_labels(runs: list[RunData]) -> list[RunData]:
    """The runs, those sharing a run id (copies of one run) labelled with their folder too:
    its last parts, as few as tell them apart (never a whole path of this machine)."""
    counts = Counter(run.run_id for run in runs)
    shared = [run for run in runs if counts[run.run_id] > 1]
    tails = {id(run): _distinct_tail(run, shared) for run in shared}
    return [
        replace(run, name=f"{run.run_id} ({tails[id(run)]})") if id(run) in tails else run
        for run in runs
    ]


def _distinct_tail(run: RunData, shared: Sequence[RunData]) -> str:
    """The fewest last parts of ``run``'s folder that no other run of ``shared`` with its run
    id ends with."""
    others = [o.root.resolve().parts for o in shared if o is not run and o.run_id == run.run_id]
    parts = run.root.resolve().parts
    for k in range(1, len(parts) + 1):
        if all(other[-k:] != parts[-k:] for other in others):
            return "/".join(parts[-k:])
    return run.root.name


def read_generations(run: RunData, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The run's generations (one row per sample and prompt), only ``columns`` if given."""
    return _read_table(run, "generations", columns)


def read_classifications(run: RunData, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The run's classification rows (one per sample and task), only ``columns`` if given."""
    return _read_table(run, "classifications", columns)


def _read_table(run: RunData, table: str, columns: Sequence[str] | None) -> pd.DataFrame:
    store = run.store()
    if columns is None:
        return store.read(table)
    available = set(store.columns(table))
    wanted = [c for c in columns if c in available]
    if not wanted:
        return pd.DataFrame(columns=list(columns))
    return store.read(table, columns=wanted)


def read_toxicity_scores(run: RunData) -> pd.DataFrame | None:
    """Cached toxicity scores (``sample_id, prompt_id, scorer, <labels>``), or None."""
    return run.store().analysis_if_present(TOXICITY_SCORES)


def read_thumbnails(run: RunData, sample_ids: Iterable[str]) -> dict[str, bytes]:
    """JPEG bytes of the given samples' thumbnails (those that exist)."""
    return run.store().read_thumbnails(sample_ids)
