"""The report's account of how two runs were paired, and the agreement of one model's runs."""

from __future__ import annotations

from collections.abc import Sequence

from audit.analyses.cross_run import Comparison
from audit.analyses.table import ALL, ID
from audit.report.blocks import Block, estimate_cell
from audit.report.formatting import MarkdownText
from audit.report.run_data import RunData

PAIRING_COLUMNS = [
    "A",
    "B",
    "paired images",
    "by image digest",
    "by sample id",
    "by appearance",
    "only in A",
    "only in B",
    "repeated pictures in A / B",
]
NAMING_COLUMNS = [
    "A",
    "B",
    "axis compared",
    "A's axis",
    "B's axis",
    "A's values not named",
    "B's values not named",
    "values kept apart",
    "paired images whose labels differ",
]
AGREEMENT_COLUMNS = ["A", "B", "prompt", "axis", "group", "identical generations [95% CI], n"]
_NAMING_CAPTION = (
    "Groups are A's labels. Axes and values that the two runs name differently (FairFace's "
    "race / Male, the published generations' ethnicity / man) are compared under one name from "
    "the declared name table (audit/analyses/group_names.py); matching ignores case, spacing "
    "and _ - /. A value the table does not know is kept as it is, and listed here when the other "
    "run holds no value of the same text; values the table would merge within one run are kept "
    "apart and listed."
)


def _count(n: int) -> MarkdownText:
    return MarkdownText(f"{n:,}")


def pairing_block(runs: Sequence[RunData], comparisons: Sequence[Comparison]) -> Block:
    """One row per compared run: how many images paired, by which identity, and the rest."""
    rows = []
    for other, comparison in zip(runs[1:], comparisons, strict=True):
        p = comparison.pairing
        rows.append(
            [
                runs[0].label,
                other.label,
                _count(p.paired),
                _count(p.by_digest),
                _count(p.by_sample_id),
                _count(p.by_appearance),
                _count(p.only_a),
                _count(p.only_b),
                MarkdownText(f"{p.repeated_a:,} / {p.repeated_b:,}"),
            ]
        )
    return Block(
        title="How the images were paired",
        columns=PAIRING_COLUMNS,
        rows=rows,
        caption=(
            "Images pair by the digest of their decoded pixels (image_sha256) where both runs "
            "stored one, otherwise by sample id (runs written before digests were stored); two "
            "different digests never pair by id. A picture stored again without loss (JPEG to "
            "PNG) keeps its digest; one re-encoded with loss (a JPEG saved again) does not, and "
            "pairs by appearance only: the two thumbnails, at 16 x 16 grey levels, are each "
            "other's nearest, close, and much closer than any other. Only paired images enter "
            "the tests below."
        ),
    )


def naming_block(runs: Sequence[RunData], comparisons: Sequence[Comparison]) -> Block:
    """One row per compared axis: the names it goes by and what could not be named."""
    rows: list[list[str]] = []
    for other, comparison in zip(runs[1:], comparisons, strict=True):
        for axis in comparison.pairing.axes:
            rows.append(
                [
                    runs[0].label,
                    other.label,
                    axis.name,
                    axis.a,
                    axis.b if axis.b is not None else "(none)",
                    ", ".join(axis.unmapped_a) or "none",
                    ", ".join(axis.unmapped_b) or "none",
                    ", ".join(sorted({*axis.merged_a, *axis.merged_b})) or "none",
                    _count(axis.disagree),
                ]
            )
    return Block(
        title="Group names as compared", columns=NAMING_COLUMNS, rows=rows, caption=_NAMING_CAPTION
    )


def agreement_blocks(
    runs: Sequence[RunData], comparisons: Sequence[Comparison]
) -> tuple[Block, Block | None]:
    """The share of identical generations per prompt; and per group (HTML only), if any."""
    overall: list[list[str]] = []
    groups: list[list[str]] = []
    for other, comparison in zip(runs[1:], comparisons, strict=True):
        for _, row in comparison.agreement.iterrows():
            cells = [
                runs[0].label,
                other.label,
                str(row[ID]),
                str(row["axis"]),
                str(row["group"]),
                estimate_cell(row, percent=True),
            ]
            (overall if str(row["axis"]) == ALL else groups).append(cells)
    title = "Agreement of runs of one model"
    if not overall:
        caption = (
            "No agreement figures: they are computed when both runs are of the same model (the "
            "same id, or the same last part of the path), on paired images with a generation "
            "in both."
        )
        return Block(title=title, columns=[], rows=[], caption=caption), None
    caption = (
        "Both runs are of the same model: the share of paired images whose generation is "
        "identical (surrounding whitespace aside) per prompt, with a Wilson 95% interval over "
        "images. Greedy decoding with the same weights, prompt and stopping gives identical text; "
        "a lower share measures how far the setting differs."
    )
    lead = Block(title=title, columns=AGREEMENT_COLUMNS, rows=overall, caption=caption)
    by_group = Block(
        title=f"{title}, by group", columns=AGREEMENT_COLUMNS, rows=groups, html_only=True
    )
    return lead, by_group
