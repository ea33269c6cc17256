"""Analyses are pure functions from a run's stored tables to one tidy long table, by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pandas as pd

from audit.spec import AnalysisSpec
from audit.store.tables import RunStore


@dataclass
class AnalysisContext:
    """What an analysis may read: the run's tables, its manifest and the probe's settings."""

    store: RunStore
    manifest: dict[str, Any]
    settings: AnalysisSpec = field(default_factory=AnalysisSpec)

    @property
    def group_axes(self) -> list[str]:
        return list(self.manifest.get("group_axes", []))

    @cached_property
    def generations(self) -> pd.DataFrame:
        """All generation rows, error rows included (``finish_reason == 'error'``)."""
        return self.store.read("generations")

    @cached_property
    def classifications(self) -> pd.DataFrame:
        """All classification rows, error rows included (``error`` not null)."""
        return self.store.read("classifications")


Analysis = Callable[[AnalysisContext], pd.DataFrame]

REGISTRY: dict[str, Analysis] = {}


def register(name: str) -> Callable[[Analysis], Analysis]:
    """Register an analysis under ``name``; its table is written to ``analysis/<name>.parquet``."""

    def decorator(function: Analysis) -> Analysis:
        if name in REGISTRY:
            raise ValueError(f"analysis '{name}' is registered twice")
        REGISTRY[name] = function
        return function

    return decorator
