"""Analyses: pure functions from a run's stored tables to one tidy long table each.

``analyze_run(run_dir, only=None)`` runs them and writes ``analysis/<name>.parquet`` and
``analysis/summary.json``. Importing this package registers every analysis module.
"""

from __future__ import annotations

import importlib
import importlib.util

from audit.analyses import (  # noqa: F401  (imported to register the analyses)
    classification,
    confusion,
    generation_stats,
    leakage,
    refusal,
    term_variance,
)
from audit.analyses.pipeline import AnalysisResult, analyze_run

# Toxicity is written separately; register it whenever its module is present.
if importlib.util.find_spec("audit.analyses.toxicity") is not None:
    importlib.import_module("audit.analyses.toxicity")

__all__ = ["AnalysisResult", "analyze_run"]
