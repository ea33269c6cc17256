"""Checks and conversions shared by the sources that read labelled columns (arrow and CSV)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from audit.errors import DatasetError
from audit.spec import DatasetSpec

#: The group value given to a row whose label is empty or null, so it stays visible in analyses.
MISSING_GROUP = "(missing)"


def group_text(value: object) -> str:
    """A group label as text: ``None`` and empty strings become ``MISSING_GROUP``."""
    if value is None:
        return MISSING_GROUP
    text = str(value)
    return text if text else MISSING_GROUP


def check_group_columns(dataset: DatasetSpec, available: Sequence[str], where: str) -> None:
    """Every column named in ``dataset.groups`` exists; all problems reported at once."""
    problems = [
        _missing_column(f"dataset.groups.{axis}", column, available, where)
        + f" Map the axis to one of them (groups: {{{axis}: COLUMN}})."
        for axis, column in dataset.groups.items()
        if column not in available
    ]
    if problems:
        raise DatasetError("\n".join(problems))


def check_column(key: str, column: str, available: Sequence[str], where: str, hint: str) -> None:
    """Raise ``DatasetError`` naming the probe ``key`` when ``column`` is not ``available``."""
    if column not in available:
        raise DatasetError(f"{_missing_column(key, column, available, where)} {hint}")


def check_unique_ids(ids: Iterable[str], key: str, where: str) -> None:
    """Sample ids are keys of the run store: a duplicate would silently overwrite rows."""
    seen: set[str] = set()
    for sample_id in ids:
        if sample_id in seen:
            raise DatasetError(
                f"{key}: the id '{sample_id}' occurs more than once in {where}; "
                "name a column whose values are unique, or leave the key out to use row positions"
            )
        seen.add(sample_id)


def _missing_column(key: str, column: str, available: Sequence[str], where: str) -> str:
    listed = ", ".join(available) if available else "(no columns)"
    return f"{key}: column '{column}' not found in {where}; it has: {listed}."
