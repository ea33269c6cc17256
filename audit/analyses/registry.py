"""Every analysis, declared once: what it reads, the tables it writes, its headline findings.

An analysis is a pure function from a run's stored tables to one tidy long table
(``table.build_table``), declared in its module as ``ANALYSIS``. ``ANALYSIS_MODULES`` lists the
modules in the order ``audit analyze`` runs them and the report and the dashboard show them;
nothing else lists analyses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache, cached_property
from typing import Any

import numpy as np
import pandas as pd

from audit.analyses.grouping import Split, prompt_ids, split_table
from audit.analyses.stats import seeded_rng
from audit.analyses.table import COMMON_COLUMNS, ID
from audit.scoring.toxicity import read_scores
from audit.spec import AnalysisSpec
from audit.store.schema import Manifest
from audit.store.tables import RunStore

#: The analysis modules, in the order they run and are shown.
ANALYSIS_MODULES = (
    "audit.analyses.classification",
    "audit.analyses.confusion",
    "audit.analyses.term_variance",
    "audit.analyses.toxicity",
    "audit.analyses.refusal",
    "audit.analyses.generation_stats",
    "audit.analyses.leakage",
)


@dataclass
class AnalysisContext:
    """What an analysis may read: the run's tables, its manifest and the probe's settings."""

    store: RunStore
    manifest: Manifest
    settings: AnalysisSpec = field(default_factory=AnalysisSpec)

    @property
    def group_axes(self) -> list[str]:
        return list(self.manifest.group_axes)

    @cached_property
    def generations(self) -> pd.DataFrame:
        """All generation rows, error rows included (``store.tables.error_mask`` tells)."""
        return self.store.read("generations")

    @cached_property
    def classifications(self) -> pd.DataFrame:
        """All classification rows, error rows included."""
        return self.store.read("classifications")

    def generation_split(self, needs: str = "generation") -> Split | None:
        """The generations per prompt (the manifest's, in probe order, then any other found)
        and group axis; ``None`` when the run has none or they lack the column ``needs``."""
        frame = self.generations
        if frame.empty or needs not in frame:
            return None
        return split_table(frame, "prompt_id", prompt_ids(self.manifest, frame), self.group_axes)

    def rng(self, *keys: str) -> np.random.Generator:
        """The generator of one result (analysis, prompt, axis, ...): reproducible on its own."""
        return seeded_rng(self.settings.seed, *keys)

    @property
    def toxicity_scores(self) -> pd.DataFrame:
        """The scoring stage's table (``audit.scoring.toxicity``), of every scorer."""
        return read_scores(self.store)


Finding = dict[str, Any]
#: A table derived from an analysis' table, written with it.
Companion = Callable[[pd.DataFrame, AnalysisContext], pd.DataFrame]


@dataclass(frozen=True)
class Analysis:
    """One analysis: its function, the stored tables it reads, what it writes and says."""

    name: str
    run: Callable[[AnalysisContext], pd.DataFrame]
    #: The stored tables it reads: ``generations``, ``classifications``, or a scoring stage's
    #: table (``toxicity_scores``), which ``analyze_run`` brings up to date first.
    inputs: tuple[str, ...]
    #: Headline findings from its table (default: ``findings.generic_findings``).
    findings: Callable[[pd.DataFrame], list[Finding]] | None = None
    #: Tables computed from its table and written with it, by name.
    companions: dict[str, Companion] = field(default_factory=dict)
    #: The columns of each companion table.
    companion_columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: The analysis settings (``AnalysisSpec`` fields) it reads: a change to one of them makes
    #: its table stale, a change to another does not (``None``: every one).
    settings: tuple[str, ...] | None = None
    #: How the report and the dashboard present it: a title, and what its numbers are.
    title: str = ""
    description: str = ""
    #: The metrics the Markdown snippet shows (default: all); the others are in report.html.
    markdown_metrics: frozenset[str] | None = None
    #: Shown within another analysis' section (``confusion`` with ``classification``).
    shown_with: str | None = None

    @property
    def tables(self) -> tuple[str, ...]:
        """Every table it writes under ``analysis/``, its own first."""
        return (self.name, *self.companions)

    def columns(self, table: str) -> tuple[str, ...]:
        """The columns every copy of ``table`` (one of ``tables``) holds, whoever wrote it:
        for its own table the common ones (its own columns are read where present)."""
        if table == self.name:
            return (ID, *COMMON_COLUMNS)
        return self.companion_columns[table]


@cache
def analyses() -> tuple[Analysis, ...]:
    """Every analysis, in ``ANALYSIS_MODULES`` order (imports their modules)."""
    found = tuple(importlib.import_module(module).ANALYSIS for module in ANALYSIS_MODULES)
    names = [a.name for a in found]
    if len(set(names)) != len(names):
        raise ValueError(f"an analysis name is declared twice: {names}")
    return found


def analysis(name: str) -> Analysis:
    """The analysis called ``name`` (``KeyError`` for an unknown name)."""
    for candidate in analyses():
        if candidate.name == name:
            return candidate
    raise KeyError(name)


def table_columns(table: str) -> tuple[str, ...]:
    """The columns of the analysis table ``table`` (``KeyError`` for an unknown table)."""
    for candidate in analyses():
        if table in candidate.tables:
            return candidate.columns(table)
    raise KeyError(table)


def analysis_tables() -> tuple[str, ...]:
    """Every table the analyses write, in the order they are shown."""
    return tuple(table for a in analyses() for table in a.tables)
