"""``audit report``: one self-contained ``report.html`` and a ``report.md`` model-card section.

The HTML embeds plotly.js once, inline, and declares a Content-Security-Policy that allows no
network request at all, so the file opens offline and cannot call out. Both files come from
Jinja2 templates in ``audit/templates/`` (packaged with ``audit``): the HTML with autoescape
on, the Markdown with every inserted value backslash-escaped unless the report wrote it itself.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

import audit
from audit.errors import AuditError
from audit.locations import public_name
from audit.report.blocks import Block, Section
from audit.report.comparison_section import comparison_section
from audit.report.figures import figure_html, look_script, plotly_js
from audit.report.formatting import (
    NOT_ANALYSED,
    MarkdownText,
    html_finalize,
    markdown_finalize,
)
from audit.report.provenance_table import analysis_settings, provenance_block
from audit.report.run_data import RunData, load_current_runs
from audit.report.sections import build_sections
from audit.report.simulation_section import simulation_section
from audit.store.tables import REPORT_HTML, REPORT_MD, write_atomic

TEMPLATES = Path(__file__).resolve().parent / "templates"

METHODS = (
    "Observations cluster by image (each image carries several prompts), so every bootstrap "
    "and permutation resamples images, within the groups of the analysed axis, never rows.",
    "Rates and accuracies: Wilson score intervals; a rate pooled over prompts uses Wilson at "
    "its effective sample size (Kish's design effect over images). Means: expanded percentile "
    "bootstrap intervals over images (widened for small groups as Student's t would be: "
    "Hesterberg 2015). Seeds are fixed, so re-running the analysis gives the same numbers.",
    "Gaps (highest minus lowest group): the pair is picked by the data, so its interval and "
    "p-value come from one procedure that accounts for the pick, simultaneous over every pair "
    "of groups (studentized differences, maximum over pairs, group labels permuted over "
    "images); the interval excludes 0 exactly when p < 0.05, and n counts the two groups' "
    "images.",
    "TF-IDF term variance: IDF fitted on all generations of a prompt; per-group mean TF-IDF "
    "vectors; terms ranked by the spread of the group means; permutation p-values, refined "
    "until more permutations could not change a term's decision, with Benjamini-Hochberg "
    "q-values over the terms of one prompt and axis; a term is flagged only at q < 0.05.",
    "Multiple testing: Benjamini-Hochberg q-values within each family, one prompt or task and "
    "one axis of one analysis: every tested term (term variance), every label and metric "
    "(toxicity), the gaps and cell stds of both scorings (classification), the one test of "
    "refusal and of leakage (q = p). Paired comparisons of runs: the same families, one "
    "prompt or task and one axis, its groups the tests.",
    "Error rows (failed generations, unreadable images) are counted in the generation "
    "statistics and excluded from every other analysis.",
    "A value marked 'insufficient data' had too few observations for an estimate.",
)
LIMITATIONS = (
    "Group labels are the dataset's annotations (perceived, not self-identified), with the "
    "dataset's categories; people outside them are not represented.",
    "Findings hold for the prompts, decoding settings and images of this probe; other prompts "
    "can show other associations.",
    "Automatic toxicity and refusal detectors are models with their own biases and error rates.",
    "A term flagged as differing between groups is a statistical association in the generated "
    "text, not by itself a judgement of harm; read the example generations.",
    "Zero-shot accuracy by label likelihood depends on the label wording; summed log-likelihood "
    "favours short labels.",
)


def _environment(markdown: bool) -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=not markdown,
        finalize=markdown_finalize if markdown else html_finalize,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    environment.filters["trusted"] = MarkdownText if markdown else (lambda text: text)
    environment.filters["figure_html"] = figure_html
    environment.tests["report_text"] = lambda value: isinstance(value, MarkdownText)
    return environment


def _settings_block(runs: Sequence[RunData]) -> Block:
    settings = [analysis_settings(run) for run in runs]
    keys = list(dict.fromkeys(key for item in settings for key in item))
    rows = [[key, *[_setting_text(_public(item.get(key))) for item in settings]] for key in keys]
    columns = ["setting", *([run.label for run in runs] if len(runs) > 1 else ["value"])]
    return Block(
        title="Analysis settings",
        columns=columns,
        rows=rows,
        caption="" if rows else "The manifests record no analysis settings.",
    )


#: Settings that name a model, a folder or a file: shown by name, never as a path here.
_LOCATIONS = {"scorer", "huggingface_config_path", "checkpoint", "path"}


def _public(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: public_name(v) if k in _LOCATIONS and isinstance(v, str) else _public(v)
            for k, v in value.items()
        }
    return value


def _setting_text(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_setting_text(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return "—" if value is None else str(value)


def report_context(runs: Sequence[RunData]) -> dict[str, Any]:
    """Everything both templates show, as plain data."""
    sections: list[Section] = build_sections(runs)
    # The first screen: the findings and the accuracy table; then what compares runs.
    keys = [section.key for section in sections]
    after = keys.index("classification") + 1 if "classification" in keys else 1
    extra = [simulation_section(runs), comparison_section(runs)]
    sections[after:after] = [section for section in extra if section is not None]
    return {
        "runs": runs,
        "sections": sections,
        "provenance": provenance_block(runs),
        "settings": _settings_block(runs),
        "methods": METHODS,
        "limitations": LIMITATIONS,
        "warnings": [f"{run.label}: {caveat}." for run in runs if (caveat := run.caveat())],
        "not_analysed": NOT_ANALYSED.capitalize(),
        "audit_version": audit.__version__,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def render_html(context: dict[str, Any]) -> str:
    """The self-contained HTML page: plotly.js inline, every script bound to a one-time nonce."""
    return (
        _environment(markdown=False)
        .get_template("report.html.j2")
        .render(
            **context,
            plotly_js=Markup(plotly_js()),  # noqa: S704 - the plotly.js library itself
            look_js=Markup(look_script()),  # noqa: S704 - our own constant, JSON-escaped
            nonce=secrets.token_urlsafe(16),
        )
    )


def render_markdown(context: dict[str, Any]) -> str:
    """The Markdown section for a model card."""
    return _environment(markdown=True).get_template("report.md.j2").render(**context)


def build_report(run_dirs: Sequence[Path], out: Path | None = None) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for one or more run directories.

    ``out`` is the folder to write to (default: the first run directory). Returns both paths.
    Raises ``RunDirError`` for a path that is not a readable run directory, and for a run whose
    analyses are missing or stale (``RunStore.analysis_staleness``): a report never shows
    numbers of rows the run no longer holds as current.
    """
    runs = load_current_runs(list(run_dirs))
    folder = Path(out) if out is not None else runs[0].root
    if folder.exists() and not folder.is_dir():
        raise AuditError(
            f"--out {folder}: exists and is not a folder; give a folder for the report"
        )
    context = report_context(runs)
    if out is None:
        html_path, md_path = runs[0].store().report_paths()
    else:
        html_path, md_path = folder / REPORT_HTML, folder / REPORT_MD
    write_atomic(html_path, render_html(context).encode("utf-8"))
    write_atomic(md_path, render_markdown(context).encode("utf-8"))
    return html_path, md_path
