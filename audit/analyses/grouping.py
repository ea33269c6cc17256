"""Group axes of a run: which groups exist, which group each row belongs to, error rows.

An axis is a group column named in the manifest's ``group_axes`` (``gender``) or an
intersection of two (``gender x race``, groups ``Female x Black``). Groups are coded in the order
they first appear when rows are sorted by ``sample_id``, so codes (and every seeded resample that
depends on them) do not change when rows are reordered or groups renamed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from audit.analyses.table import MIN_GROUP_SIZE, insufficient
from audit.errors import RunDirError
from audit.store.schema import Manifest
from audit.store.tables import error_mask

INTERSECTION = " x "
Row = dict[str, Any]


@dataclass(frozen=True)
class GroupAxis:
    """One axis or intersection and its groups, in code order."""

    name: str
    groups: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        return self.name.split(INTERSECTION)

    def labels(self, frame: pd.DataFrame) -> pd.Series:
        """Each row's group as a string; missing where any of the axis columns is missing."""
        return group_labels(frame, self.name)

    def codes(self, frame: pd.DataFrame) -> np.ndarray:
        """Each row's group code ``0..G-1``; ``-1`` for rows with no (known) group."""
        lookup = {group: code for code, group in enumerate(self.groups)}
        return self.labels(frame).map(lookup).fillna(-1).to_numpy(dtype=int)


def group_labels(frame: pd.DataFrame, axis: str) -> pd.Series:
    """Group of every row on ``axis`` (an axis or an ``a x b`` intersection)."""
    columns = axis.split(INTERSECTION)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise RunDirError(
            f"group column(s) {missing} named in the manifest's group_axes are not in the table "
            f"(it has {sorted(map(str, frame.columns))})"
        )
    parts = [frame[c].astype(object).where(frame[c].notna()) for c in columns]
    known = pd.concat([p.notna() for p in parts], axis=1).all(axis=1)
    text = parts[0].astype(str)
    for part in parts[1:]:
        text = text + INTERSECTION + part.astype(str)
    return text.where(known)


def intersections(axes: Sequence[str]) -> list[str]:
    """Every pair of axes, in the probe's order (``gender x race``, ``gender x age``, ...)."""
    return [f"{a}{INTERSECTION}{b}" for a, b in itertools.combinations(axes, 2)]


def discover_axes(
    frame: pd.DataFrame, names: Iterable[str], extra: dict[str, Iterable[str]] | None = None
) -> list[GroupAxis]:
    """The groups of each axis: every value seen in ``frame`` (error rows included, so a group
    whose rows all failed still shows up) plus ``extra`` values known from elsewhere."""
    ordered = sort_rows(frame, ["sample_id"]) if "sample_id" in frame else frame
    axes = []
    for name in names:
        seen = list(dict.fromkeys(group_labels(ordered, name).dropna()))
        more = sorted(set(map(str, (extra or {}).get(name, ()))) - set(seen))
        axes.append(GroupAxis(name=name, groups=tuple(seen + more)))
    return axes


def prompt_ids(manifest: Manifest, frame: pd.DataFrame) -> list[str]:
    """The manifest's prompts in probe order, then any other prompt found in the table (a
    listed prompt with no rows still gets its rows marked ``insufficient data``)."""
    listed = manifest.prompt_ids()
    found = sorted(set(frame["prompt_id"].astype(str))) if "prompt_id" in frame else []
    return list(dict.fromkeys(listed + found))


def sort_rows(frame: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """Rows in a canonical order, so results do not depend on how the table was stored."""
    present = [k for k in keys if k in frame.columns]
    if not present:
        return frame.reset_index(drop=True)
    return frame.sort_values(present, kind="stable").reset_index(drop=True)


def restrict(
    codes: np.ndarray, included: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray]:
    """The rows whose group (code, ``-1``: none) is ``included``, and their group renumbered
    ``0..K-1`` in the order of ``included``."""
    recode = np.full(n_groups, -1)
    recode[included] = np.arange(included.size)
    rows = np.flatnonzero(np.isin(codes, included))
    return rows, recode[codes[rows]]


@dataclass(frozen=True)
class GroupSizes:
    """Images per group of one axis within one prompt, and which groups are large enough."""

    axis: GroupAxis
    codes: np.ndarray
    sizes: np.ndarray
    included: np.ndarray

    @classmethod
    def of(cls, axis: GroupAxis, rows: pd.DataFrame, minimum: int = MIN_GROUP_SIZE) -> GroupSizes:
        codes = axis.codes(rows)
        sizes = np.bincount(codes[codes >= 0], minlength=len(axis.groups))
        return cls(axis, codes, sizes, np.flatnonzero(sizes >= minimum))

    def restricted(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows of included groups, and their group renumbered ``0..K-1``."""
        return restrict(self.codes, self.included, len(self.axis.groups))

    def left_out(self, item: str, metric: str, groups: Iterable[int] | None = None) -> list[Row]:
        """``insufficient data`` rows for ``groups`` (default: every group too small)."""
        chosen = set(self.included.tolist())
        codes = range(len(self.axis.groups)) if groups is None else groups
        return [
            insufficient(item, self.axis.name, self.axis.groups[g], metric, int(self.sizes[g]))
            for g in codes
            if groups is not None or g not in chosen
        ]


@dataclass(frozen=True)
class ItemRows:
    """One prompt's (or classification task's) rows, in canonical order."""

    id: str
    every: pd.DataFrame
    """Its rows, error rows included."""
    valid: pd.DataFrame
    """Its successful rows."""


@dataclass(frozen=True)
class Split:
    """A stored table as every analysis reads it: per prompt (or task), then per group axis."""

    table: pd.DataFrame
    """Every row, error rows included, in canonical order."""
    items: list[ItemRows]
    axes: list[GroupAxis]

    @property
    def valid(self) -> pd.DataFrame:
        """The successful rows of every item."""
        return self.table[~error_mask(self.table)].reset_index(drop=True)

    @property
    def ids(self) -> list[str]:
        return [item.id for item in self.items]


def split_table(
    frame: pd.DataFrame,
    id_column: str,
    item_ids: Sequence[str],
    axes: Sequence[str],
    extra: dict[str, Iterable[str]] | None = None,
) -> Split:
    """``frame`` split by ``item_ids`` (the values of ``id_column``), with the groups of every
    axis in ``axes`` (``discover_axes``; ``extra``: groups known from elsewhere)."""
    frame = sort_rows(frame, ["sample_id", id_column])
    failed = error_mask(frame).to_numpy()
    ids = frame[id_column].astype(str).to_numpy()
    items = [
        ItemRows(
            item,
            frame[ids == item].reset_index(drop=True),
            frame[(ids == item) & ~failed].reset_index(drop=True),
        )
        for item in item_ids
    ]
    return Split(frame, items, discover_axes(frame, axes, extra))
