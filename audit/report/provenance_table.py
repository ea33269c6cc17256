"""Where each run's numbers come from: model, revision, dataset, backend, versions, settings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from audit.locations import public_name
from audit.report.blocks import Block
from audit.report.card_table import context_text
from audit.report.run_data import RunData, served_model

_VERSION_KEYS = (
    "audit",
    "python",
    "torch",
    "transformers",
    "datasets",
    "tokenizers",
    "scikit-learn",
    "detoxify",
)


def _text(value: Any) -> str:
    if value is None or value == "" or value == {}:
        return "—"
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, ""))
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def provenance(run: RunData) -> dict[str, str]:
    """Ordered facts from the manifest (all values from the run directory, to be escaped)."""
    manifest = run.manifest
    model = manifest.model
    dataset = manifest.dataset
    versions = manifest.versions
    summary = run.summary or {}
    facts = {
        "run": run.run_id,
        "status": run.status,
        "model": run.model_name,
        "revision": _text(model.revision),
        "backend": _text(model.backend),
        "model type": _text(model.model_type),
        "dtype / device": f"{_text(model.dtype)} / {_text(model.device)}",
        "image processor": _text(model.image_processor),
        "dataset": public_name(str(dataset.get("path") or dataset.get("source") or "—")),
        "dataset config / split": f"{_text(dataset.get('config'))} / {_text(dataset.get('split'))}",
        "samples": _text(dataset.get("n_samples")),
        "group axes": _text(run.group_axes),
        "prompts": _text(manifest.prompt_ids()),
        "prompt layout": _text(run.prompt_layout()),
        "classification tasks": _text(manifest.task_ids()),
        "classification context": context_text(run.classification_contexts(), long=True),
        "card context layout": card_layout_text(run.manifest.prompt_layout or {}),
        "rows stored / expected": (
            f"{_text(manifest.rows.model_dump())} / {_text(manifest.expected.model_dump())}"
        ),
        "seed": _text(manifest.seed),
        "started / finished": f"{_text(manifest.started_at)} / {_text(manifest.finished_at)}",
        "hardware": _text(
            {k: v for k, v in manifest.hardware.items() if not isinstance(v, (dict, list))}
        ),
        "versions": _text({k: versions[k] for k in _VERSION_KEYS if k in versions}),
        "analysis status": _text(summary.get("status")) if summary else "not analysed",
        "rows analysed": _analysed_rows(summary),
    }
    endpoint = served_model(manifest)
    if endpoint is not None:
        facts["served at"] = f"{_text(endpoint.get('url'))} (weights not under the audit's control)"
        facts["settings sent"] = _text(endpoint.get("settings_sent"))
        facts["classification method"] = _text(endpoint.get("label_scoring"))
    return facts


def card_layout_text(layout: dict[str, Any]) -> str:
    """How the card's context was laid out for the model: the image's text and the BOS; or
    which tasks were scored in a chat instead, since the model cannot be laid out so."""
    card = layout.get("card_layout")
    unavailable = layout.get("card_context_unavailable")
    if unavailable:
        return (
            f"not available for this model type ({_text(unavailable)} scored as the answer in "
            "its own prompt format instead)"
        )
    if not isinstance(card, dict):
        return "—"
    bos = "a BOS written by the processor" if card.get("bos") else "no BOS"
    return f"the image as {card.get('image')!r}, then the template; {bos}"


def _analysed_rows(summary: dict[str, Any] | None) -> str:
    """The rows the analyses were computed from (beside ``rows stored``: they agree, or the
    report is refused as stale)."""
    counts = (summary or {}).get("counts")
    if not isinstance(counts, dict):
        return "not analysed"
    parts = [
        f"{_text(c.get('stored'))} {table} ({_text(c.get('errors'))} errors)"
        for table, c in counts.items()
        if isinstance(c, dict)
    ]
    return ", ".join(parts) or "—"


def provenance_block(runs: Sequence[RunData]) -> Block:
    """Facts as rows, runs as columns."""
    facts = [provenance(run) for run in runs]
    keys = list(dict.fromkeys(key for fact in facts for key in fact))
    rows = [[key, *[fact.get(key, "—") for fact in facts]] for key in keys]
    columns = ["", *[run.label for run in runs]] if len(runs) > 1 else ["", "value"]
    return Block(title="", columns=columns, rows=rows)


def analysis_settings(run: RunData) -> dict[str, Any]:
    """The probe's analysis settings as recorded in the manifest (empty when not recorded)."""
    return dict(run.manifest.probe.get("analysis") or {})
