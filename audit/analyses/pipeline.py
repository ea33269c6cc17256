"""``analyze_run``: every registered analysis over one run directory, written back into it.

Reads ``generations``/``classifications`` and the manifest, runs the analyses (all, or those
named by ``only``), writes ``analysis/<name>.parquet`` atomically and ``analysis/summary.json``.
Seeds come from ``probe.analysis.seed``, so running it twice writes the same tables.
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import ValidationError

from audit.analyses.findings import Finding, findings_for, rank_findings
from audit.analyses.registry import Analysis, AnalysisContext, analyses
from audit.errors import AuditError, ProbeError, RunDirError
from audit.scoring.toxicity import SCORES_TABLE, ScoringInput, score_toxicity
from audit.spec import AnalysisSpec, format_validation_error
from audit.store.schema import Manifest
from audit.store.tables import RunStore, error_mask, rows_fingerprint, settings_fingerprint
from audit.terminal import terminal_text


@dataclass(frozen=True)
class AnalysisResult:
    """What ``analyze_run`` wrote: the tables, their row counts and the summary."""

    run_dir: Path
    tables: dict[str, Path]
    rows: dict[str, int]
    summary: dict[str, Any]
    #: Analyses that could not run, and why (their tables are not written).
    failures: dict[str, str] = field(default_factory=dict)
    #: Analyses run, failed or not.
    selected: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """0 all analysed; 3 some analyses failed, the others written; 2 every one failed."""
        if not self.failures:
            return 0
        return 2 if set(self.failures) >= set(self.selected) else 3

    def describe(self, max_findings: int = 40) -> str:
        """Which analyses ran, rows, headline findings with n and interval, where files are."""
        s = self.summary
        counts = s.get("counts", {})
        lines = [
            f"analyzed {terminal_text(str(self.run_dir))} (run status: {s.get('run_status')}; "
            f"analysis status: {s.get('status')})",
            "  rows: "
            + ", ".join(
                f"{t} {c.get('stored', 0)}/{c.get('expected') or '?'}"
                f" ({c.get('errors', 0)} error rows excluded)"
                for t, c in counts.items()
            ),
        ]
        if s.get("status") == "partial":
            lines.append(f"  PARTIAL: {s.get('status_detail', '')}")
        lines += [f"  {terminal_text(note)}" for note in _all_errors_notes(counts)]
        for name, path in self.tables.items():
            lines.append(f"  {name:<18} {self.rows.get(name, 0):>7} rows  {path}")
        for name, message in self.failures.items():
            lines.append(f"  {name:<18} FAILED: {terminal_text(message)}")
        findings: list[Finding] = s.get("findings", [])
        lines.append(f"findings ({len(findings)}):" if findings else "findings: none")
        shown = findings[:max_findings]
        lines += [f"  - [{f['analysis']}] {terminal_text(f['headline'])}" for f in shown]
        if len(findings) > len(shown):
            lines.append(f"  ... {len(findings) - len(shown)} more in the summary")
        lines.append(f"summary: {RunStore(self.run_dir).summary_path}")
        return "\n".join(lines)


def _all_errors_notes(counts: dict[str, dict[str, Any]]) -> list[str]:
    """One line per table whose every row is an error: what it means and what to try."""
    notes = []
    for table, c in counts.items():
        if c.get("stored") and c.get("errors") == c.get("stored"):
            notes.append(
                f"every one of the {c['stored']} {table} rows is an error (first: "
                f"{c.get('first_error') or '?'}), so the analyses of {table} are empty; "
                "'audit status RUN' lists the errors, and 'audit run RUN' retries them once "
                "the cause is fixed"
            )
    return notes


def analysis_settings(
    manifest: Manifest, manifest_path: Path, overrides: Sequence[str] = ()
) -> AnalysisSpec:
    """The probe's ``analysis`` section from the manifest (defaults when absent), with
    ``KEY=VALUE`` overrides (``audit analyze --set``) applied on top."""
    data = manifest.probe.get("analysis")
    data = dict(data) if isinstance(data, dict) else {}
    origin = str(manifest_path)
    try:
        AnalysisSpec.model_validate(data)
    except ValidationError as error:
        text = format_validation_error(origin, error)
        raise ProbeError(text.replace(f"{origin}: ", f"{origin}: probe.analysis.")) from None
    for override in overrides:
        data = _with_override(data, override)
    try:
        return AnalysisSpec.model_validate(data)
    except ValidationError as error:
        text = format_validation_error("--set", error)
        raise ProbeError(text) from None


def _with_override(data: dict[str, Any], override: str) -> dict[str, Any]:
    """``data`` with ``key.path=value`` set (the value read as YAML: numbers, lists, null)."""
    key, sep, raw = override.partition("=")
    path = [part for part in key.strip().split(".") if part]
    if not sep or not path:
        raise ProbeError(
            f"--set {override}: expected KEY=VALUE with KEY a setting of the probe's analysis "
            "section, e.g. --set n_permutations=5000 or --set toxicity.scorer=detoxify:original"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not YAML: the text as it is
    result = dict(data)
    node = result
    for part in path[:-1]:
        child = node.get(part)
        node[part] = dict(child) if isinstance(child, dict) else {}
        node = node[part]
    node[path[-1]] = value
    return result


def _selected(only: Sequence[str] | None) -> list[Analysis]:
    known = {a.name: a for a in analyses()}
    if not only:
        return list(known.values())
    unknown = [name for name in only if name not in known]
    if unknown:
        raise AuditError(
            f"unknown analysis {', '.join(repr(u) for u in unknown)}; known analyses: "
            f"{', '.join(known)}"
        )
    return [known[name] for name in dict.fromkeys(only)]


def _counts(context: AnalysisContext) -> dict[str, dict[str, Any]]:
    expected = context.manifest.expected.model_dump()
    counts = {}
    for table in ("generations", "classifications"):
        frame = context.generations if table == "generations" else context.classifications
        errors = error_mask(frame)
        counts[table] = {
            "stored": len(frame),
            "errors": int(errors.sum()),
            "expected": expected.get(table),
        }
        if errors.all() and len(frame) and "error" in frame:
            first = str(frame.loc[errors, "error"].iloc[0]).strip().splitlines()
            counts[table]["first_error"] = first[0] if first else ""
    return counts


def _status(manifest: Manifest, counts: dict[str, dict[str, Any]]) -> tuple[str, str]:
    run_status = manifest.status.value
    missing = [
        f"{c['stored']} of {c['expected']} {t} stored"
        for t, c in counts.items()
        if isinstance(c["expected"], int) and c["stored"] < c["expected"]
    ]
    if run_status in {"running", "partial", "failed"} or missing:
        detail = "; ".join(missing) or f"the run's status is '{run_status}'"
        return "partial", f"analysed as far as the run goes: {detail}"
    return "complete", ""


@dataclass(frozen=True)
class _Failure:
    message: str
    #: Set where the analysis itself raised (a bug, not a setup the user can fix).
    traceback: str | None = None


def _run_one(
    analysis: Analysis, context: AnalysisContext, trusted: Sequence[Path]
) -> tuple[dict[str, pd.DataFrame], _Failure | None]:
    try:
        _bring_up_to_date(analysis, context, trusted)
        table = analysis.run(context)
        tables = {analysis.name: table}
        for companion_name, function in analysis.companions.items():
            tables[companion_name] = function(table, context)
    except AuditError as error:
        return {}, _Failure(str(error))
    except Exception as error:  # one analysis' bug must not lose the others' tables
        return {}, _Failure(f"{type(error).__name__}: {error}", traceback.format_exc())
    for table_name, frame in tables.items():
        context.store.write_analysis(table_name, frame)
    return tables, None


def _inputs_without_rows(analysis: Analysis, context: AnalysisContext) -> list[str]:
    """The stored tables ``analysis`` reads that hold no successful row."""
    frames = {"generations": context.generations, "classifications": context.classifications}
    return [
        name for name in analysis.inputs if name in frames and not (~error_mask(frames[name])).any()
    ]


def _bring_up_to_date(
    analysis: Analysis, context: AnalysisContext, trusted: Sequence[Path]
) -> None:
    """Run the scoring stages whose tables ``analysis`` reads (they score only what is new)."""
    if SCORES_TABLE in analysis.inputs:
        stage = ScoringInput(
            context.store,
            context.manifest,
            context.generations,
            context.settings.toxicity,
            tuple(trusted),
        )
        score_toxicity(stage)


def analyze_run(
    run_dir: str | Path,
    only: list[str] | None = None,
    overrides: Sequence[str] = (),
    trusted_checkpoints: Sequence[Path] = (),
) -> AnalysisResult:
    """Run the registered analyses (or ``only`` these) and write their tables and the summary.

    ``overrides`` (``KEY=VALUE``, ``audit analyze --set``) change the probe's analysis settings
    for this analysis without editing the manifest; the summary records them.
    ``trusted_checkpoints``: scorer checkpoints the user vouches for (``--trust-checkpoint``),
    the only ones loaded when they hold more than weights.

    An analysis that cannot run (a scorer that is not there, or an error in the analysis
    itself) is recorded in the summary as failed, with its message, and the others still run:
    ``AnalysisResult.failures`` and ``exit_code`` say so. An analysis whose input holds no
    successful row writes its tables empty, with a note saying why.

    Raises ``RunDirError`` for a folder that is not a run directory or holds no rows, and
    ``AuditError`` for an unknown analysis name.
    """
    store = RunStore.open(run_dir)
    manifest = store.manifest()
    selected = _selected(only)
    settings = analysis_settings(manifest, store.manifest_path, overrides)
    context = AnalysisContext(store=store, manifest=manifest, settings=settings)
    if context.generations.empty and context.classifications.empty:
        raise RunDirError(
            f"{store.root}: no generations or classifications stored yet; "
            "run 'audit run' (or 'audit import') first"
        )
    fingerprint = rows_fingerprint(
        {"generations": context.generations, "classifications": context.classifications}
    )
    every_setting = settings.model_dump(mode="json")
    written: dict[str, Path] = {}
    rows: dict[str, int] = {}
    entries: dict[str, dict[str, Any]] = {}
    findings: list[Finding] = []
    failures: dict[str, str] = {}
    for analysis in selected:
        name = analysis.name
        # What its tables are computed from: a later '--only' run leaves them as they are, and
        # they show as stale when the rows, or the settings it reads, are no longer theirs.
        keys = list(every_setting) if analysis.settings is None else list(analysis.settings)
        inputs = {
            "rows_fingerprint": fingerprint,
            "settings_keys": keys,
            "settings_fingerprint": settings_fingerprint({k: every_setting[k] for k in keys}),
        }
        tables, failure = _run_one(analysis, context, trusted_checkpoints)
        if failure is not None:
            failures[name] = failure.message
            entries[name] = {
                "rows": 0,
                "status": "failed",
                "note": f"failed: {failure.message}",
                **inputs,
                **({"traceback": failure.traceback} if failure.traceback else {}),
            }
            continue
        without = _inputs_without_rows(analysis, context)
        for table_name, frame in tables.items():
            written[table_name] = store.analysis_path(table_name)
            rows[table_name] = len(frame)
            note = "" if len(frame) else "no rows"
            if without:
                note = f"not computed: no successful rows in {' and '.join(without)}"
            entries[table_name] = {"rows": len(frame), "note": note, **inputs}
        findings += findings_for(analysis, tables[name])
    summary = _summary(store, manifest, _counts(context), entries, findings)
    summary["settings"] = every_setting
    summary["settings_overrides"] = list(overrides)
    summary["rows_fingerprint"] = fingerprint
    store.write_summary(summary)
    return AnalysisResult(
        store.root, written, rows, summary, failures, tuple(a.name for a in selected)
    )


def _summary(
    store: RunStore,
    manifest: Manifest,
    counts: dict[str, dict[str, Any]],
    entries: dict[str, dict[str, Any]],
    findings: list[Finding],
) -> dict[str, Any]:
    status, detail = _status(manifest, counts)
    previous = _previous_summary(store)
    kept = {k: v for k, v in (previous.get("analyses") or {}).items() if k not in entries}
    kept_findings = [f for f in previous.get("findings") or [] if f.get("analysis") in kept]
    return {
        "status": status,
        "status_detail": detail,
        "run_status": manifest.status.value,
        "simulated": manifest.simulated,
        "counts": counts,
        "excluded_error_rows": {t: c["errors"] for t, c in counts.items()},
        "analyses": {**kept, **entries},
        "findings": rank_findings(kept_findings + findings),
    }


def _previous_summary(store: RunStore) -> dict[str, Any]:
    # Analyses not re-run now (``--only``) keep their earlier entries and findings.
    try:
        previous = store.read_summary()
    except (RunDirError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}
