"""The names one group axis and its values go by in different sources, declared once.

A run keeps its dataset's own names (docs/run_directory.md): a FairFace run has axes ``gender,
race, age`` and values ``Male``, ``East Asian``, ``20-29``; an import of the IDEFICS team's
published generations (``HuggingFaceM4/m4-bias-eval-fair-face``) has ``gender, ethnicity, age``
from its ``gender_phrase``, ``ethnicity_phrase`` and ``age_range`` columns. When two runs are
paired, ``NAMES`` lines their axes and values up under one canonical name (FairFace's).

What is assumed: the published datasets' value strings were not checked against the data. Their
model card's text names FairFace groups ``man``, ``East Asian``, ``Indian``, ``Black``,
``Southeast Asian``, ``White``, ``Middle Eastern`` and Stable Bias groups ``man``, ``woman``,
``non-binary``; the aliases below cover those and close spellings. Matching ignores case,
surrounding and repeated spaces, and ``_``, ``-``, ``/`` (as spaces). A value the table does not
know is kept as it is and reported when the other run has no value of the same text; a table
entry that would merge two values one run keeps apart (``Latino`` and ``Hispanic`` of Stable
Bias) is not applied to that run, and is reported too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AxisNames:
    """One axis: its canonical name, the names sources give it, and its values' names."""

    canonical: str
    aliases: tuple[str, ...]
    #: Canonical value -> the other names it goes by (the canonical name always matches too).
    values: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


_AGE_SPANS = ((0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69))

NAMES: tuple[AxisNames, ...] = (
    AxisNames(
        "gender",
        ("gender", "gender_phrase", "sex"),
        {"Male": ("man", "men", "a man", "male"), "Female": ("woman", "women", "a woman")},
    ),
    AxisNames(
        "race",
        ("race", "ethnicity", "ethnicity_phrase"),
        {
            "East Asian": (),
            "Indian": (),
            "Black": (),
            "White": (),
            "Middle Eastern": (),
            "Latino_Hispanic": ("Latino or Hispanic", "Hispanic or Latino", "Latino", "Hispanic"),
            "Southeast Asian": (),
        },
    ),
    AxisNames(
        "age",
        ("age", "age_range", "age_group"),
        {
            **{
                f"{low}-{high}": (f"{low} to {high}", f"between {low} and {high} years old")
                for low, high in _AGE_SPANS
            },
            "more than 70": ("70+", "over 70", "more than 70 years old", "70 and over"),
        },
    ),
)

_SEPARATORS = re.compile(r"[\s_/\-]+")


def normalise(text: str) -> str:
    """The form names are matched in: case, spacing and ``_ - /`` do not count."""
    return _SEPARATORS.sub(" ", str(text)).strip().casefold()


def axis_names(name: str) -> AxisNames | None:
    """The table's entry for an axis name (any of its aliases), or ``None``."""
    key = normalise(name)
    for entry in NAMES:
        if key in {normalise(alias) for alias in (entry.canonical, *entry.aliases)}:
            return entry
    return None


def canonical_value(entry: AxisNames | None, value: str) -> str | None:
    """The canonical value ``value`` names on this axis, or ``None`` when the table has none."""
    if entry is None:
        return None
    key = normalise(value)
    for canonical, aliases in entry.values.items():
        if key in {normalise(v) for v in (canonical, *aliases)}:
            return canonical
    return None


@dataclass(frozen=True)
class AxisPair:
    """An axis of run A and its counterpart in run B (``None``: B has none), as compared."""

    name: str
    a: str
    b: str | None


def align_axes(axes_a: list[str], axes_b: list[str]) -> list[AxisPair]:
    """A's axes with B's counterparts: the same name, or two names of one table entry (then
    named canonically). Each of B's axes pairs with at most one of A's."""
    free = list(axes_b)
    pairs = []
    for axis in axes_a:
        if axis in free:
            pairs.append(AxisPair(axis, axis, axis))
            free.remove(axis)
            continue
        entry = axis_names(axis)
        match = next((b for b in free if entry is not None and axis_names(b) == entry), None)
        if match is None:
            pairs.append(AxisPair(entry.canonical if entry else axis, axis, None))
        else:
            pairs.append(AxisPair(entry.canonical, axis, match))  # type: ignore[union-attr]
            free.remove(match)
    return pairs


@dataclass(frozen=True)
class ValueNames:
    """How one axis's values of two runs are named when compared."""

    #: Each run's own value -> the value it is compared as.
    a: dict[str, str]
    b: dict[str, str]
    #: Values of each run the table does not know and the other run does not hold as text.
    unmapped_a: list[str]
    unmapped_b: list[str]
    #: Values of each run that one table entry would have merged (kept apart, as they are).
    merged_a: list[str]
    merged_b: list[str]


def name_values(axis: AxisPair, values_a: list[str], values_b: list[str]) -> ValueNames:
    """Compared names for the values of one aligned axis of two runs: the table's canonical
    name where it has one; else the value itself, B's matched to A's of the same text."""
    entry = axis_names(axis.a) or (axis_names(axis.b) if axis.b else None)
    map_a, merged_a = _side(entry, values_a)
    map_b, merged_b = _side(entry, values_b)
    texts_a = {normalise(v): map_a[v] for v in values_a}
    texts_b = {normalise(v) for v in values_b}
    for value in values_b:
        if map_b[value] == value.strip() and normalise(value) in texts_a:
            map_b[value] = texts_a[normalise(value)]
    unmapped_a = [
        v for v in values_a if canonical_value(entry, v) is None and normalise(v) not in texts_b
    ]
    unmapped_b = [
        v for v in values_b if canonical_value(entry, v) is None and normalise(v) not in texts_a
    ]
    return ValueNames(map_a, map_b, unmapped_a, unmapped_b, merged_a, merged_b)


def _side(entry: AxisNames | None, values: list[str]) -> tuple[dict[str, str], list[str]]:
    """One run's values -> compared names; values one entry would merge stay as they are."""
    named = {v: canonical_value(entry, v) for v in values}
    by_canonical: dict[str, set[str]] = {}
    for value, canonical in named.items():
        if canonical is not None:
            by_canonical.setdefault(canonical, set()).add(normalise(value))
    merged = sorted(v for v, c in named.items() if c is not None and len(by_canonical[c]) > 1)
    mapping = {v: (c if c is not None and v not in merged else v.strip()) for v, c in named.items()}
    return mapping, merged
