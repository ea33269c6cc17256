"""A dataset source over a ``datasets.Dataset`` (from the hub, parquet files or ``save_to_disk``).

The arrow table is memory-mapped and read in slices of the label columns only; an image is
fetched by row index and decoded when its sample's ``load_image`` is called. So a 100,000-image
dataset is never held in memory, and a corrupt image raises in ``load_image`` (the runner turns it
into an error row) rather than when the dataset is opened.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from audit.datasets.base import DatasetSource, Sample
from audit.datasets.columns import (
    MISSING_GROUP,
    check_column,
    check_group_columns,
    check_unique_ids,
    group_text,
)
from audit.errors import DatasetError
from audit.spec import DatasetSpec

if TYPE_CHECKING:
    import datasets

#: Rows of label columns read per slice: big enough to amortise arrow calls, small in memory.
_SLICE_ROWS = 1024


class ArrowSource(DatasetSource):
    """Samples of a ``datasets.Dataset``; see ``audit.datasets.hub`` for how one is opened.

    ``provenance`` holds what ``describe()`` reports (``source``, ``path``, ``config``, ``split``,
    ...); ``path``, ``config`` and ``split`` as written in the probe also make the sample ids.
    ``image_root`` resolves images stored as relative file paths.
    """

    def __init__(
        self,
        table: datasets.Dataset,
        dataset: DatasetSpec,
        provenance: dict[str, str | int],
        image_root: Path | None = None,
    ) -> None:
        where = str(provenance.get("resolved", provenance.get("path", "the dataset")))
        columns = list(table.column_names)
        check_group_columns(dataset, columns, where)
        check_column(
            "dataset.image_column",
            dataset.image_column,
            columns,
            where,
            "Set dataset.image_column to the column that holds the images.",
        )
        if dataset.id_column:
            check_column(
                "dataset.id_column",
                dataset.id_column,
                columns,
                where,
                "Name a column with one unique id per row, or leave the key out.",
            )
        self._dataset = dataset
        self._where = where
        self._provenance = provenance
        self._image_root = image_root
        self._n_rows = len(table)
        self._n = min(self._n_rows, dataset.limit or self._n_rows)
        label_columns = [
            *dataset.groups.values(),
            *([dataset.id_column] if dataset.id_column else []),
        ]
        self._labels = table.select_columns(list(dict.fromkeys(label_columns)))
        self._class_names = _class_label_names(table, self._labels.column_names)
        self._images = _undecoded_images(table, dataset.image_column, where)
        if dataset.id_column:
            check_unique_ids((s.sample_id for s in self.samples()), "dataset.id_column", where)

    def __len__(self) -> int:
        return self._n

    def samples(self) -> Iterator[Sample]:
        for start in range(0, self._n, _SLICE_ROWS):
            rows = self._labels[start : min(start + _SLICE_ROWS, self._n)]
            for offset in range(len(next(iter(rows.values())))):
                yield self._sample(start + offset, {c: v[offset] for c, v in rows.items()})

    def group_values(self) -> dict[str, list[str]]:
        values: dict[str, list[str]] = {}
        for axis, column in self._dataset.groups.items():
            names = self._class_names.get(column)
            if names is not None:
                values[axis] = list(names)
            else:
                # Dataset.unique reads this one column of the memory-mapped table, nothing else.
                values[axis] = sorted({group_text(v) for v in self._labels.unique(column)})
        return values

    def describe(self) -> dict[str, str | int]:
        return {**self._provenance, "n_rows": self._n_rows, "n_samples": self._n}

    def _sample(self, row: int, labels: dict[str, Any]) -> Sample:
        groups = {
            axis: self._label_text(column, labels[column])
            for axis, column in self._dataset.groups.items()
        }
        if self._dataset.id_column:
            sample_id = self._label_text(self._dataset.id_column, labels[self._dataset.id_column])
        else:
            p = self._provenance
            sample_id = f"{p.get('path', '')}:{p.get('config', '')}:{p.get('split', '')}:{row}"
        return Sample(sample_id=sample_id, groups=groups, load_image=partial(self._load_image, row))

    def _label_text(self, column: str, value: Any) -> str:
        names = self._class_names.get(column)
        if names is None:
            return group_text(value)
        # ClassLabel stores -1 (or null) for a missing label.
        if value is None or not 0 <= int(value) < len(names):
            return MISSING_GROUP
        return names[int(value)]

    def _load_image(self, row: int) -> Image.Image:
        import datasets

        value = self._images[row][self._dataset.image_column]
        if isinstance(value, bytes):
            value = {"bytes": value, "path": None}
        elif isinstance(value, str):
            value = {"bytes": None, "path": value}
        if not value or (value.get("bytes") is None and not value.get("path")):
            raise DatasetError(
                f"{self._where}: row {row} has no image in column '{self._dataset.image_column}'"
            )
        value = {**value, "path": self._resolve_image_path(value.get("path"))}
        image = datasets.Image().decode_example(value)
        return image.convert("RGB")

    def _resolve_image_path(self, path: str | None) -> str | None:
        if not path or "://" in path or self._image_root is None or Path(path).is_absolute():
            return path
        return str(self._image_root / path)


def _class_label_names(table: datasets.Dataset, columns: list[str]) -> dict[str, list[str]]:
    import datasets

    return {
        column: list(table.features[column].names)
        for column in columns
        if isinstance(table.features[column], datasets.ClassLabel)
    }


def _undecoded_images(table: datasets.Dataset, column: str, where: str) -> datasets.Dataset:
    """The image column alone, left as stored (bytes and/or path) so decoding waits for use."""
    import datasets

    images = table.select_columns([column])
    feature = images.features[column]
    if isinstance(feature, datasets.Image):
        return images.cast_column(column, datasets.Image(decode=False))
    if isinstance(feature, datasets.Value) and feature.dtype in {"binary", "large_binary"}:
        return images
    if isinstance(feature, datasets.Value) and feature.dtype in {"string", "large_string"}:
        return images
    raise DatasetError(
        f"dataset.image_column: column '{column}' in {where} holds {feature!r}; expected images "
        "(a datasets Image feature, image file bytes, or image file paths)"
    )
