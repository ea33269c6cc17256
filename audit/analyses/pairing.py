"""Which samples of two runs show the same image, and the group names they are compared under.

Two runs of different sources number their images differently (a FairFace run's
``HuggingFaceM4/FairFace:1.25:validation:17`` may be an import's
``HuggingFaceM4/m4-bias-eval-fair-face::train:3``), so samples pair by the digest of their
decoded pixels (``image_sha256``) where both runs stored one, and otherwise by ``sample_id``,
as runs written before digests existed did. Two samples whose digests differ never pair by id;
they pair only by appearance (``appearance``: their thumbnails show one picture, as a lossy
re-encoding leaves it), counted apart. A picture a run holds twice (two samples,
one digest) pairs once per copy the other run holds, in ``sample_id`` order; the extra copies
are counted, not hidden.

Groups are A's labels, renamed by ``group_names`` so that both runs' axes and values line up;
each run's values that the table cannot name, and paired images whose two labels still differ,
are reported.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from audit.analyses.appearance import match_by_appearance
from audit.analyses.group_names import AxisPair, align_axes, name_values
from audit.store.samples import sample_table
from audit.store.schema import IMAGE_HASH
from audit.store.tables import RunStore

#: B's sample id beside A's in a frame of pairs.
OTHER_ID = "sample_id_b"


@dataclass(frozen=True)
class AxisNaming:
    """How one of A's axes is compared: its name, B's counterpart, what could not be named."""

    name: str
    a: str
    b: str | None
    unmapped_a: list[str]
    unmapped_b: list[str]
    #: Values one table entry would have merged within a run (kept apart).
    merged_a: list[str]
    merged_b: list[str]
    #: Paired images whose two labels differ under the compared names.
    disagree: int


@dataclass(frozen=True)
class Pairing:
    """How many images paired, by which identity, and how many found no partner."""

    by_digest: int
    by_sample_id: int
    #: Digests differ, thumbnails show one picture (a copy re-encoded with loss).
    by_appearance: int
    only_a: int
    only_b: int
    #: Samples whose picture another sample of the same run repeats (same digest).
    repeated_a: int
    repeated_b: int
    axes: tuple[AxisNaming, ...]

    @property
    def paired(self) -> int:
        return self.by_digest + self.by_sample_id + self.by_appearance

    def to_json(self) -> dict[str, Any]:
        """As stored beside a comparison (plain JSON types)."""
        data: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return {**data, "paired": self.paired}


@dataclass(frozen=True)
class SamplePairs:
    """A's sample ids with their partners in B and the compared group columns."""

    #: ``sample_id`` (A's), ``sample_id_b``, one column per compared axis (A's labels, renamed).
    frame: pd.DataFrame
    pairing: Pairing

    @property
    def axes(self) -> list[str]:
        """The compared axis names, in A's order."""
        return [axis.name for axis in self.pairing.axes]

    def base_rows(self, rows: pd.DataFrame) -> pd.DataFrame:
        """A's rows of paired samples, with the compared group columns (A's own dropped)."""
        own = [c for c in (*self.axes, *(a.a for a in self.pairing.axes)) if c in rows]
        groups = self.frame.drop(columns=OTHER_ID)
        return rows.drop(columns=own).merge(groups, on="sample_id")

    def other_rows(self, rows: pd.DataFrame) -> pd.DataFrame:
        """B's rows of paired samples under A's sample id, without B's group columns."""
        own = [a.b for a in self.pairing.axes if a.b is not None and a.b in rows]
        ids = self.frame[["sample_id", OTHER_ID]]
        rows = rows.drop(columns=own).rename(columns={"sample_id": OTHER_ID})
        return rows.merge(ids, on=OTHER_ID).drop(columns=OTHER_ID)


def pair_runs(base: RunStore, other: RunStore) -> SamplePairs:
    """The samples of ``base`` (A) and ``other`` (B) that show the same image."""
    aligned = align_axes(base.manifest().group_axes, other.manifest().group_axes)
    a = sample_table(base, [axis.a for axis in aligned])
    b = sample_table(other, [axis.b for axis in aligned if axis.b is not None])
    matched, repeated_a, repeated_b = _match(a, b)
    matched = _with_appearance_pairs(matched, a, b, base, other)
    frame = matched[["sample_id", OTHER_ID]].copy()
    namings = []
    for axis in aligned:
        named, naming = _name_axis(axis, a, b, matched)
        frame[axis.name] = named
        namings.append(naming)
    by_digest = int(matched["by_digest"].sum())
    by_appearance = int(matched["by_appearance"].sum())
    pairing = Pairing(
        by_digest=by_digest,
        by_sample_id=len(matched) - by_digest - by_appearance,
        by_appearance=by_appearance,
        only_a=len(a) - len(matched),
        only_b=len(b) - len(matched),
        repeated_a=repeated_a,
        repeated_b=repeated_b,
        axes=tuple(namings),
    )
    return SamplePairs(frame.reset_index(drop=True), pairing)


def _match(a: pd.DataFrame, b: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Pairs ``sample_id, sample_id_b, by_digest``: by digest, then by id where a side lacks
    one; and how many samples of each run repeat a picture of the same run."""
    copies_a, copies_b = _copies(a), _copies(b)
    by_digest = copies_a.merge(copies_b, on=[IMAGE_HASH, "copy"], suffixes=("", "_b"))
    by_digest = by_digest[["sample_id", OTHER_ID]].assign(by_digest=True)
    rest_a = a[~a["sample_id"].isin(by_digest["sample_id"])]
    rest_b = b[~b["sample_id"].isin(by_digest[OTHER_ID])][["sample_id", IMAGE_HASH]]
    by_id = rest_a[["sample_id", IMAGE_HASH]].merge(rest_b, on="sample_id", suffixes=("", "_b"))
    # Two digests that differ are two pictures: the same id does not make them one.
    by_id = by_id[by_id[IMAGE_HASH].isna() | by_id[f"{IMAGE_HASH}_b"].isna()]
    by_id = by_id.assign(**{OTHER_ID: by_id["sample_id"], "by_digest": False})
    matched = pd.concat([by_digest, by_id[["sample_id", OTHER_ID, "by_digest"]]])
    repeated = [int((c["copy"] > 0).sum()) for c in (copies_a, copies_b)]
    return matched.reset_index(drop=True), repeated[0], repeated[1]


def _with_appearance_pairs(
    matched: pd.DataFrame, a: pd.DataFrame, b: pd.DataFrame, base: RunStore, other: RunStore
) -> pd.DataFrame:
    """``matched`` and the samples left whose thumbnails show one picture (both with digests:
    their digests differ, so a lossy copy is the only way they can be one picture)."""
    rest_a = a[~a["sample_id"].isin(matched["sample_id"]) & a[IMAGE_HASH].notna()]
    rest_b = b[~b["sample_id"].isin(matched[OTHER_ID]) & b[IMAGE_HASH].notna()]
    matched = matched.assign(by_appearance=False)
    if rest_a.empty or rest_b.empty:
        return matched
    pairs = match_by_appearance(
        _thumbnails(base, rest_a["sample_id"]), _thumbnails(other, rest_b["sample_id"])
    )
    found = pd.DataFrame(pairs, columns=["sample_id", OTHER_ID])
    found = found.assign(by_digest=False, by_appearance=True)
    return pd.concat([matched, found], ignore_index=True)


def _thumbnails(store: RunStore, sample_ids: pd.Series) -> dict[str, bytes]:
    thumbnails = store.read("thumbnails")
    if thumbnails.empty:
        return {}
    wanted = thumbnails[thumbnails["sample_id"].isin(set(sample_ids.astype(str)))]
    return dict(zip(wanted["sample_id"].astype(str), wanted["jpeg"], strict=True))


def _copies(frame: pd.DataFrame) -> pd.DataFrame:
    """Samples with a digest, numbered within their digest in ``sample_id`` order."""
    known = frame[frame[IMAGE_HASH].notna()].sort_values("sample_id")
    copy = known.groupby(IMAGE_HASH, sort=False).cumcount()
    return known[["sample_id", IMAGE_HASH]].assign(copy=copy.to_numpy())


def _name_axis(
    axis: AxisPair, a: pd.DataFrame, b: pd.DataFrame, matched: pd.DataFrame
) -> tuple[pd.Series, AxisNaming]:
    """A's labels of the paired samples under the compared names, and what naming found."""
    values_a = _values(a[axis.a])
    values_b = _values(b[axis.b]) if axis.b is not None else []
    names = name_values(axis, values_a, values_b)
    labels_a = a.set_index("sample_id")[axis.a].astype(str)
    named_a = matched["sample_id"].map(labels_a).map(names.a)
    disagree = 0
    if axis.b is not None:
        labels_b = b.set_index("sample_id")[axis.b].astype(str)
        named_b = matched[OTHER_ID].map(labels_b).map(names.b)
        disagree = int((named_a.notna() & named_b.notna() & (named_a != named_b)).sum())
    naming = AxisNaming(
        axis.name,
        axis.a,
        axis.b,
        names.unmapped_a,
        names.unmapped_b,
        names.merged_a,
        names.merged_b,
        disagree,
    )
    return named_a.to_numpy(), naming  # type: ignore[return-value]


def _values(column: pd.Series) -> list[str]:
    return sorted({str(v) for v in column.dropna()})
