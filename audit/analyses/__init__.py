"""Analyses: pure functions from a run's stored tables to one tidy long table each.

``analyze_run(run_dir, only=None)`` runs them and writes ``analysis/<name>.parquet`` and
``analysis/summary.json``. ``registry.ANALYSIS_MODULES`` lists them; each module declares its
``ANALYSIS``.
"""

from __future__ import annotations

from audit.analyses.pipeline import AnalysisResult, analyze_run

__all__ = ["AnalysisResult", "analyze_run"]
