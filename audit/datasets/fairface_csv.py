"""FairFace's original local layout: a label CSV plus a folder of image files.

The label file has one row per image, ``file,age,gender,race,service_test``, with paths such as
``fairface/val/1.jpg`` relative to ``dataset.path``. Only the labels are read at open (a few MB for
100,000 rows); each image is read from disk when its sample's ``load_image`` is called, so a
missing or corrupt file becomes that sample's error row, not a failure of the whole dataset.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from PIL import Image

from audit.datasets.base import DatasetSource, Sample
from audit.datasets.columns import check_column, check_group_columns, check_unique_ids, group_text
from audit.errors import DatasetError
from audit.spec import ProbeSpec

#: FairFace's own name for the column of image paths.
FILE_COLUMN = "file"


class FairFaceCsvSource(DatasetSource):
    """Images listed in a label CSV; ``sample_id`` is the image path as written in the CSV."""

    def __init__(self, spec: ProbeSpec) -> None:
        dataset = spec.dataset
        self._path, self._labels_csv = str(dataset.path), str(dataset.labels_csv)
        self._root = spec.resolve_path(str(dataset.path))
        self._csv = spec.resolve_path(str(dataset.labels_csv))
        if not self._root.is_dir():
            raise DatasetError(
                f"dataset.path: image folder {self._root} does not exist; it is the folder the "
                "paths in the label CSV are relative to (resolved from the probe file's folder)"
            )
        header, rows = _read_csv(self._csv)
        where = str(self._csv)
        check_group_columns(dataset, header, where)
        # The probe's image_column names the path column when the CSV has it; else FairFace's own.
        self._file_column = dataset.image_column if dataset.image_column in header else FILE_COLUMN
        check_column(
            "dataset.image_column",
            self._file_column,
            header,
            where,
            "Set dataset.image_column to the column of image paths.",
        )
        id_column = dataset.id_column or self._file_column
        check_column(
            "dataset.id_column",
            id_column,
            header,
            where,
            "Name a column with one unique id per row, or leave the key out.",
        )
        check_unique_ids((row[id_column] for row in rows), "dataset.id_column", where)
        self._axes = list(dataset.groups)
        # Only the columns the probe uses are kept, as tuples: 100,000 rows stay a few MB.
        self._records = [
            (
                row[id_column],
                row[self._file_column],
                tuple(group_text(row[c]) for c in dataset.groups.values()),
            )
            for row in rows
        ]
        self._n = min(len(rows), dataset.limit or len(rows))

    def __len__(self) -> int:
        return self._n

    def samples(self) -> Iterator[Sample]:
        for sample_id, file, values in self._records[: self._n]:
            yield Sample(
                sample_id=sample_id,
                groups=dict(zip(self._axes, values, strict=True)),
                load_image=partial(_load_image, self._root / file),
            )

    def group_values(self) -> dict[str, list[str]]:
        return {
            axis: sorted({values[i] for _, _, values in self._records})
            for i, axis in enumerate(self._axes)
        }

    def describe(self) -> dict[str, str | int]:
        return {
            "source": "fairface_csv",
            "path": self._path,
            "labels_csv": self._labels_csv,
            "resolved": str(self._root),
            "resolved_labels_csv": str(self._csv),
            "n_rows": len(self._records),
            "n_samples": self._n,
        }


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise DatasetError(
            f"dataset.labels_csv: label file {path} does not exist; give FairFace's label CSV "
            "(file,age,gender,race,service_test), relative to the probe file's folder"
        )
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = list(reader.fieldnames or [])
        rows = list(reader)
    if not header:
        raise DatasetError(f"dataset.labels_csv: {path} is empty; expected a header row first")
    ragged = next((i for i, row in enumerate(rows) if None in row or None in row.values()), None)
    if ragged is not None:
        raise DatasetError(
            f"dataset.labels_csv: {path} line {ragged + 2} does not have as many fields as "
            f"the header ({', '.join(header)})"
        )
    return header, rows


def _load_image(path: Path) -> Image.Image:
    if not path.is_file():
        raise DatasetError(f"image file {path} does not exist (listed in the label CSV)")
    with Image.open(path) as image:
        return image.convert("RGB")
