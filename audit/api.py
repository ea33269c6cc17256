"""The Python API, for notebooks: a run directory as DataFrames, estimates by group, runs side by
side. In the style of fairlearn's ``MetricFrame``: ``by_group`` is one row per group, ``overall``
the figure over everyone, each with its 95% interval and its n.

    import audit

    run = audit.load_run("runs/fairface-idefics-9b-instruct")
    run.generations                                    # the stored rows, one per image and prompt
    run.by_group("classification", "accuracy", axis="race", prompt="gender")
    audit.compare([run, audit.load_run("runs/other")], "refusal", "refusal_rate", axis="gender")

Everything is read from the run directory (``audit analyze`` computes the analysis tables); nothing
here runs a model or an analysis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pandas as pd

from audit.analyses.cross_run import agreement_table, compare_runs
from audit.analyses.pairing import Pairing, pair_runs
from audit.analyses.registry import analysis_tables
from audit.analyses.table import ALL, ID
from audit.report.run_data import RunData
from audit.report.run_data import load_run as load_run_data
from audit.store.schema import Manifest
from audit.store.tables import RunStore

#: The columns ``by_group`` and ``overall`` give, where the table has them.
ESTIMATE = ["value", "ci_low", "ci_high", "n", "p_value", "q_value", "note"]


@dataclass(frozen=True)
class Run:
    """One run directory: its stored rows and its analysis tables as DataFrames."""

    data: RunData

    @property
    def path(self) -> Path:
        return self.data.root

    @property
    def name(self) -> str:
        """The run directory's folder name."""
        return self.path.name

    @property
    def model(self) -> str:
        """The model as a reader knows it (hub id, or a local folder's name)."""
        return self.data.model_name

    @property
    def manifest(self) -> Manifest:
        return self.data.manifest

    @cached_property
    def generations(self) -> pd.DataFrame:
        """Every stored generation, error rows included (their ``error`` says why)."""
        return RunStore(self.path).read("generations")

    @cached_property
    def classifications(self) -> pd.DataFrame:
        """Every stored zero-shot classification, error rows included."""
        return RunStore(self.path).read("classifications")

    @property
    def analyses(self) -> list[str]:
        """The analysis tables this run holds."""
        return [name for name in analysis_tables() if self.data.table(name) is not None]

    def table(self, analysis: str) -> pd.DataFrame:
        """An analysis table as ``audit analyze`` wrote it (``KeyError`` naming the ones there
        are)."""
        frame = self.data.table(analysis)
        if frame is None:
            raise KeyError(
                f"{self.path}: no '{analysis}' table (it holds {self.analyses}; "
                "'audit analyze' writes them)"
            )
        return frame.copy()

    @property
    def findings(self) -> pd.DataFrame:
        """The headline findings, ranked by evidence (significant ones first)."""
        return pd.DataFrame.from_records((self.data.summary or {}).get("findings") or [])

    def by_group(
        self, analysis: str, metric: str, axis: str, prompt: str | None = None, **where: str
    ) -> pd.DataFrame:
        """One row per group of ``axis`` (an axis, or an ``a x b`` intersection): the estimate,
        its interval, n and, where the analysis tests, p and q. ``prompt``: the prompt or
        classification task (needed when the table holds several); ``where``: other columns to
        match (``scoring="sum"``, ``label="toxicity"``, ``term="nurse"``)."""
        rows = self._rows(analysis, metric, prompt, where)
        rows = rows[(rows["axis"].astype(str) == axis) & (rows["group"].astype(str) != ALL)]
        if rows.empty:
            axes = sorted(set(self._rows(analysis, metric, prompt, where)["axis"].astype(str)))
            raise KeyError(f"no '{metric}' rows for axis '{axis}' (axes there: {axes})")
        return rows.set_index("group")[[c for c in ESTIMATE if c in rows]]

    def overall(
        self, analysis: str, metric: str, prompt: str | None = None, **where: str
    ) -> pd.Series:
        """The estimate over every image (axis ``all``), with its interval and n."""
        rows = self._rows(analysis, metric, prompt, where)
        rows = rows[rows["axis"].astype(str) == ALL]
        if rows.empty:
            raise KeyError(f"no overall '{metric}' row in '{analysis}'")
        return rows[[c for c in ESTIMATE if c in rows]].iloc[0]

    def paired_with(self, base: Run) -> pd.DataFrame:
        """This run minus ``base`` on the images both hold: McNemar for accuracy, paired
        bootstrap for scores (the stored comparison when still current). Images pair by the
        digest of their pixels, or by sample id where a run has no digests (``pairing_with``),
        and are grouped by ``base``'s labels under the names both runs share."""
        return compare_runs(RunStore(base.path), RunStore(self.path)).table

    def pairing_with(self, base: Run) -> Pairing:
        """How this run's images paired with ``base``'s: how many by image digest and by
        sample id, how many found no partner on each side, and how each axis was named
        (values the name table could not name, paired images whose labels differ)."""
        return pair_runs(RunStore(base.path), RunStore(self.path)).pairing

    def agreement_with(self, base: Run) -> pd.DataFrame:
        """When both runs are of one model: the share of paired images with identical
        generations, per prompt, overall (axis ``all``) and per group, with its Wilson
        interval and n. Empty when the models differ."""
        base_store, store = RunStore(base.path), RunStore(self.path)
        return agreement_table(base_store, store, pair_runs(base_store, store))

    def _rows(
        self, analysis: str, metric: str, prompt: str | None, where: dict[str, str]
    ) -> pd.DataFrame:
        table = self.table(analysis)
        rows = table[table["metric"].astype(str) == metric]
        if rows.empty:
            metrics = sorted(set(table["metric"].astype(str)))
            raise KeyError(f"'{analysis}' has no metric '{metric}' (it has {metrics})")
        items = sorted(set(rows[ID].astype(str)))
        if prompt is None and len(items) > 1:
            raise KeyError(f"'{analysis}' holds several prompts or tasks {items}: pass prompt=")
        if prompt is not None:
            rows = rows[rows[ID].astype(str) == prompt]
        if "scoring" in rows and "scoring" not in where:
            rows = rows[rows["scoring"].astype(str) == "sum"]  # the card's scoring
        for column, value in where.items():
            if column not in rows:
                raise KeyError(f"'{analysis}' has no column '{column}'")
            rows = rows[rows[column].astype(str) == str(value)]
        return rows


def load_run(path: str | Path) -> Run:
    """A run directory (``RunDirError`` if it is not one)."""
    return Run(load_run_data(path))


def compare(
    runs: Sequence[Run],
    analysis: str,
    metric: str,
    axis: str,
    prompt: str | None = None,
    **where: str,
) -> pd.DataFrame:
    """``by_group`` of several runs side by side: one row per group, columns ``(run, value |
    ci_low | ci_high | n)``, runs by folder name (by path where two share one)."""
    names = [run.name for run in runs]
    if len(set(names)) != len(names):  # folders of one name in different places
        names = [str(run.path) for run in runs]
    frames = {
        name: run.by_group(analysis, metric, axis, prompt, **where)[
            ["value", "ci_low", "ci_high", "n"]
        ]
        for name, run in zip(names, runs, strict=True)
    }
    return pd.concat(frames, axis=1, names=["run", "estimate"])
