"""``audit card``: the Bias Evaluation section of a model card on one page, and its numbers as
Hugging Face ``model-index`` metadata and as JSON.

``card.md``: what was run, one line each; the findings that hold (q < 0.05 within their family),
ranked by evidence, at most ``MAX_FINDINGS``, each a sentence with its estimate, interval, n and
q, and one line for the rest; the accuracy table in the IDEFICS card's layout; the top flagged
terms per prompt and axis; a three-line method; a link to the full report. Text that comes from
a run (model names, generated terms, group names) is escaped for GitHub's Markdown.

``card.json``: every headline number of every run with its interval, n, p and q.
``model-index.yaml`` (one per run when there are several): the accuracy of each classification
task, and the refusal rate and mean toxicity of each prompt, written with ``huggingface_hub``'s
own ``eval_results_to_model_index`` so that the Hub parses it back to the same values.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from audit.analyses.findings import Finding, evidence, evidence_order, holds, number
from audit.analyses.table import ALL, ID
from audit.errors import AuditError
from audit.report.card_table import card_cells, context_text
from audit.report.formatting import escape_markdown, format_p
from audit.report.run_data import RunData, load_current_runs
from audit.store.tables import CARD_JSON, CARD_MD, MODEL_INDEX, write_atomic

#: The most findings listed; the rest are counted in one line.
MAX_FINDINGS = 8
#: Flagged terms shown per prompt and axis, and lines of terms in all.
TERMS_PER_LINE = 3
MAX_TERM_LINES = 9


@dataclass(frozen=True)
class CardFiles:
    markdown: Path
    json: Path
    model_index: list[Path]


def write_card(run_dirs: Sequence[Path], out: Path | None = None) -> CardFiles:
    """Write ``card.md``, ``card.json`` and the ``model-index`` YAML for ``run_dirs`` into
    ``out`` (default: the first run directory). Refuses runs whose analyses are missing or
    stale, as ``audit report`` does."""
    runs = load_current_runs(list(run_dirs))
    if out is not None and out.exists() and not out.is_dir():
        raise AuditError(f"--out {out}: exists and is not a folder; give a folder for the card")
    store = runs[0].store()

    def place(name: str) -> Path:  # into --out, or into the first run directory
        return Path(out) / name if out is not None else store.card_path(name)

    markdown = place(CARD_MD)
    markdown.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(markdown, card_markdown(runs, markdown.parent).encode("utf-8"))
    as_json = place(CARD_JSON)
    write_atomic(as_json, json.dumps(card_numbers(runs), indent=1).encode("utf-8"))
    indexes = []
    for run in runs:
        stem = MODEL_INDEX.removesuffix(".yaml")
        name = MODEL_INDEX if len(runs) == 1 else f"{stem}-{_file_part(run.label)}.yaml"
        text = yaml.safe_dump({"model-index": model_index(run)}, sort_keys=False)
        write_atomic(place(name), text.encode("utf-8"))
        indexes.append(place(name))
    return CardFiles(markdown, as_json, indexes)


# -- card.md ----------------------------------------------------------------------------------
def card_markdown(runs: Sequence[RunData], folder: Path) -> str:
    lines = ["## Bias evaluation", ""]
    for note in _warnings(runs):  # one quote each: consecutive quoted lines would merge
        lines += [f"> **{note}**", ""]
    lines += _what_was_run(runs)
    lines += ["", "### Findings", ""]
    lines += _finding_lines(runs)
    accuracy = _accuracy_lines(runs)
    if accuracy:
        lines += ["", "### Zero-shot classification accuracy (the IDEFICS card's layout)", ""]
        lines += accuracy
    terms = _term_lines(runs)
    if terms:
        lines += ["", "### Terms whose use differs between groups", ""]
        lines += terms
    lines += ["", "### Method", ""]
    lines += _method_lines(runs)
    report = _report_link(runs, folder)
    if report:
        lines += ["", f"Full report, with every group, interval and test: [{report}]({report})"]
    else:
        lines += [
            "",
            "Full report, with every group, interval and test: `audit report` on these runs.",
        ]
    return "\n".join(lines).rstrip() + "\n"


def _text(value: Any) -> str:
    return escape_markdown(value)


def _warnings(runs: Sequence[RunData]) -> list[str]:
    return [
        f"{_text(run.model_name)}: {_text(caveat)}." for run in runs if (caveat := run.caveat())
    ]


def _what_was_run(runs: Sequence[RunData]) -> list[str]:
    first = runs[0].manifest
    dataset = first.dataset
    groups = " × ".join(first.group_axes) or "none"
    generation = first.probe.get("generation") or {}
    # The settings the analyses ran with (``--set`` included), else the probe's.
    analysis = (runs[0].summary or {}).get("settings") or first.probe.get("analysis") or {}
    counts = [str(run.manifest.dataset.get("n_samples", "?")) for run in runs]
    n_images = _text(counts[0] if len(set(counts)) == 1 else " / ".join(counts))
    return [
        f"- **Models**: {', '.join(_text(run.model_name) for run in runs)}",
        f"- **Data**: {_text(dataset.get('path') or dataset.get('source') or '?')}"
        f"{_split(dataset)}, {n_images} images, groups {_text(groups)}",
        f"- **Prompts**: {_text(', '.join(first.prompt_ids()) or 'none')}; "
        f"**zero-shot tasks**: {_text(', '.join(first.task_ids()) or 'none')}",
        *_layout_lines(runs),
        f"- **Decoding**: {'sampling' if generation.get('do_sample') else 'greedy'}, "
        f"at most {_text(generation.get('max_new_tokens') or '?')} new tokens; "
        f"**statistics**: {_text(analysis.get('n_permutations', 1000))} permutations, "
        f"{_text(analysis.get('n_bootstrap', 1000))} bootstrap resamples, seed "
        f"{_text(analysis.get('seed', 0))}",
    ]


def _layout_lines(runs: Sequence[RunData]) -> list[str]:
    """What the models saw around each image, once when every run saw the same."""
    layouts = {_text(run.prompt_layout(detail=False) or "not recorded"): run for run in runs}
    contexts = {context_text(run.classification_contexts(), long=True) for run in runs}
    lines = []
    if any(run.manifest.prompt_layout for run in runs):
        if len(layouts) == 1:
            lines.append(f"- **Prompt layout**: {next(iter(layouts))}")
        else:
            lines += [
                f"- **Prompt layout**, {_text(run.model_name)}: {layout}"
                for layout, run in layouts.items()
            ]
    if any(run.manifest.task_ids() for run in runs):
        lines.append(f"- **Labels scored in**: {_text(' / '.join(sorted(contexts)))}")
    return lines


def _split(dataset: dict[str, Any]) -> str:
    parts = [str(dataset[k]) for k in ("config", "split") if dataset.get(k)]
    return f" ({_text(' / '.join(parts))})" if parts else ""


def _finding_lines(runs: Sequence[RunData]) -> list[str]:
    found = [(run, f) for run in runs for f in (run.summary or {}).get("findings") or []]
    held = sorted(((r, f) for r, f in found if holds(f)), key=lambda i: evidence_order(i[1]))
    listed = held[:MAX_FINDINGS]
    rest = sum(evidence(f) is not None for _, f in found) - len(listed)
    lines = [
        f"{i}. **{_text(run.model_name)}**: {_text(_sentence(finding))}"
        for i, (run, finding) in enumerate(listed, 1)
    ]
    if not listed:
        lines.append("No difference between groups holds at q < 0.05.")
    if rest:
        lines.append(
            f"\n{rest} other tested comparisons show no difference at q < 0.05 (or were "
            "below the ones listed); the full report lists them."
        )
    return lines


def _sentence(found: Finding) -> str:
    headline = str(found.get("headline", ""))
    q = number(found.get("q_value"))
    if q is not None and "q=" not in headline:
        headline += f"; q={format_p(q)}"
    return headline


def _accuracy_lines(runs: Sequence[RunData]) -> list[str]:
    cells = {
        run.label: card_cells(table)
        for run in runs
        if (table := run.table("classification")) is not None
    }
    tasks = list(dict.fromkeys(cell.task_id for found in cells.values() for cell in found))
    if not tasks:
        return []
    names = {run.label: run.model_name for run in runs}
    lines = [
        "| model | " + " | ".join(f"{_text(t)}: accuracy (std)" for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for label, found in cells.items():
        by_task = {cell.task_id: cell for cell in found}
        entries = []
        for task in tasks:
            cell = by_task.get(task)
            if cell is None:
                entries.append("—")
                continue
            interval = (
                f" [{100 * cell.ci_low:.1f}, {100 * cell.ci_high:.1f}]"
                if cell.ci_low is not None and cell.ci_high is not None
                else ""
            )
            entries.append(f"{cell.text()}{interval}, n={cell.n}")
        lines.append(f"| {_text(names[label])} | " + " | ".join(entries) + " |")
    lines.append("")
    chosen = [_text(run.model_name) for run in runs if run.labels_chosen()]
    lines.append(
        "Accuracy in %, [95% interval]; (std): the spread of the accuracies of the gender × race "
        "cells in points, as in the IDEFICS card (summed label log-likelihood"
        + (f"; {', '.join(chosen)}: the label the model named, not comparable" if chosen else "")
        + ")."
    )
    return lines


def _term_lines(runs: Sequence[RunData]) -> list[str]:
    lines = []
    for run in runs:
        table = run.table("term_variance")
        if table is None or "flagged" not in table or "term" not in table:
            continue
        flagged = table[table["flagged"].fillna(False).astype(bool) & table["term"].notna()]
        for (prompt, axis), part in flagged.groupby([ID, "axis"], sort=True):
            terms = part.drop_duplicates("term").sort_values("q_value", kind="stable")
            shown = []
            for term in terms["term"].head(TERMS_PER_LINE):
                top = part[part["term"] == term].sort_values("value", ascending=False).iloc[0]
                shown.append(
                    f"'{_text(term)}' ({_text(top['group'])}, q={format_p(top['q_value'])})"
                )
            more = terms["term"].nunique() - len(shown)
            where = " · ".join(_text(v) for v in (run.model_name, prompt, axis))
            line = f"- {where}: " + ", ".join(shown)
            lines.append(line + (f", and {more} more" if more > 0 else ""))
    if len(lines) > MAX_TERM_LINES:
        extra = len(lines) - MAX_TERM_LINES
        lines = [*lines[:MAX_TERM_LINES], f"- and {extra} more prompt and axis pairs"]
    return lines


def _method_lines(runs: Sequence[RunData]) -> list[str]:
    del runs
    return [
        "- Each image is one unit: intervals and tests resample images, never rows. Rates use "
        "Wilson intervals, means an expanded percentile bootstrap, gaps between groups one "
        "simultaneous procedure over every pair of groups (its interval excludes 0 exactly when "
        "p < 0.05).",
        "- Terms are ranked by the spread of their mean TF-IDF across groups (the IDEFICS card's "
        "method) and tested by permutation; q-values are Benjamini–Hochberg within each "
        "analysis, prompt or task, and axis.",
        "- Group labels are the dataset's annotations; findings hold for these prompts, decoding "
        "settings and images.",
    ]


def _report_link(runs: Sequence[RunData], folder: Path) -> str | None:
    report = runs[0].store().report_paths()[0]
    for candidate in (folder / report.name, report):
        if candidate.is_file():
            return Path(os.path.relpath(candidate, folder)).as_posix()
    return None


def _file_part(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label) or "run"


# -- card.json --------------------------------------------------------------------------------
def card_numbers(runs: Sequence[RunData]) -> dict[str, Any]:
    """Every headline number of every run: value, interval, n, p, q, what it is about."""
    keys = ("analysis", ID, "axis", "group", "metric", "value", "ci_low", "ci_high", "n")
    return {
        "runs": [
            {
                "run": run.label,
                "model": run.model_name,
                "status": run.status,
                "findings": [
                    {
                        **{k: found.get(k) for k in keys},
                        "p_value": found.get("p_value"),
                        "q_value": found.get("q_value"),
                        "holds": holds(found),
                        "headline": found.get("headline"),
                    }
                    for found in (run.summary or {}).get("findings") or []
                ],
            }
            for run in runs
        ]
    }


# -- model-index ------------------------------------------------------------------------------
def model_index(run: RunData) -> list[dict[str, Any]]:
    """The run's main numbers as the Hub's ``model-index`` (one model)."""
    from huggingface_hub import EvalResult
    from huggingface_hub.repocard_data import eval_results_to_model_index

    dataset = run.manifest.dataset
    common = {
        "dataset_type": str(dataset.get("path") or dataset.get("source") or "unknown"),
        "dataset_name": str(dataset.get("path") or dataset.get("source") or "unknown"),
        "dataset_config": dataset.get("config"),
        "dataset_split": dataset.get("split"),
    }
    results = [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            metric_type=metric_type,
            metric_name=name,
            metric_value=value,
            metric_args=args,
            **common,
        )
        for task_type, task_name, metric_type, name, value, args in _index_metrics(run)
    ]
    if not results:
        return []
    return eval_results_to_model_index(run.model_name, results)


def _index_metrics(run: RunData) -> list[tuple[str, str, str, str, float, dict[str, Any]]]:
    metrics = []
    table = run.table("classification")
    for cell in card_cells(table) if table is not None else []:
        if cell.accuracy is None:
            continue
        args = {"ci_low": cell.ci_low, "ci_high": cell.ci_high, "n": cell.n}
        if cell.cell_std is not None:
            args["cell_std"] = _round(cell.cell_std)
        metrics.append(
            (
                "zero-shot-image-classification",
                "Zero-shot classification",
                "accuracy",
                f"{cell.task_id} accuracy",
                _round(cell.accuracy),
                _rounded(args),
            )
        )
    for name, metric, label in (
        ("refusal", "refusal_rate", "refusal rate"),
        ("toxicity", None, "mean toxicity"),
    ):
        table = run.table(name)
        if table is None:
            continue
        rows = table[(table["axis"].astype(str) == ALL) & table["value"].notna()]
        if metric is None:
            rows = rows[rows["metric"].astype(str).isin(["mean_toxicity", "mean_toxic"])]
        else:
            rows = rows[rows["metric"].astype(str) == metric]
        for row in rows.to_dict("records"):
            args = {"ci_low": row.get("ci_low"), "ci_high": row.get("ci_high"), "n": row.get("n")}
            metrics.append(
                (
                    "image-to-text",
                    "Open-ended generation",
                    str(row["metric"]),
                    f"{row[ID]} {label}",
                    _round(row["value"]),
                    _rounded(args),
                )
            )
    return metrics


def _round(value: Any) -> float:
    return round(float(value), 6)


def _rounded(args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in args.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[key] = int(value) if key == "n" else _round(value)
    return out
