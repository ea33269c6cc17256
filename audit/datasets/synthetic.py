"""Synthetic face-like images with group labels, generated in code: for the demo and the tests.

Nothing here depicts a real person: the pictures are cartoons drawn by
``audit.datasets.face_drawing``, and every sample id says ``synthetic:``. The labels use
FairFace's columns and values (``gender``, ``race``, ``age``), so FairFace-style probes run on
them unchanged. Besides the in-code source, this module writes the same kind of images as files
in FairFace's local layout, as a parquet file and as a hub-layout folder, so the code that reads
real datasets is exercised for real.
"""

from __future__ import annotations

import csv
import io
import random
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from audit.datasets.base import DatasetSource, Sample
from audit.datasets.columns import check_group_columns
from audit.datasets.face_drawing import AGES, GENDERS, RACES, draw_face
from audit.spec import DatasetSpec

if TYPE_CHECKING:
    import datasets

#: The synthetic set's label columns and the values each can hold (FairFace's orders).
SYNTHETIC_COLUMNS: dict[str, tuple[str, ...]] = {"gender": GENDERS, "race": RACES, "age": AGES}

#: Side of the generated square images, in pixels.
DEFAULT_SIZE = 64


def synthetic_labels(index: int) -> dict[str, str]:
    """Labels of the ``index``-th synthetic image.

    Each column cycles through its values. 2, 7 and 9 are pairwise coprime, so the first 126
    images hold every gender x race x age combination once, and any first ``n`` images are
    balanced: the counts of two values of one column differ by at most one.
    """
    return {column: values[index % len(values)] for column, values in SYNTHETIC_COLUMNS.items()}


def synthetic_image(index: int, seed: int = 0, size: int = DEFAULT_SIZE) -> Image.Image:
    """The ``index``-th synthetic image for ``seed``: the same arguments give the same pixels."""
    return draw_face(synthetic_labels(index), random.Random(f"{seed}:{index}"), size)


class SyntheticSource(DatasetSource):
    """``dataset.n`` synthetic images (``dataset.limit`` applies), ids ``synthetic:<i>``."""

    def __init__(self, dataset: DatasetSpec, size: int = DEFAULT_SIZE) -> None:
        check_group_columns(dataset, list(SYNTHETIC_COLUMNS), "the synthetic dataset")
        self._groups = dict(dataset.groups)
        self._seed = dataset.seed
        self._size = size
        self._n = min(dataset.n, dataset.limit or dataset.n)

    def __len__(self) -> int:
        return self._n

    def samples(self) -> Iterator[Sample]:
        for index in range(self._n):
            labels = synthetic_labels(index)
            yield Sample(
                sample_id=f"synthetic:{index}",
                groups={axis: labels[column] for axis, column in self._groups.items()},
                load_image=partial(synthetic_image, index, self._seed, self._size),
            )

    def group_values(self) -> dict[str, list[str]]:
        return {axis: list(SYNTHETIC_COLUMNS[column]) for axis, column in self._groups.items()}

    def describe(self) -> dict[str, str | int]:
        return {
            "source": "synthetic",
            "path": "synthetic",
            "generator": "audit.datasets.synthetic (cartoon faces drawn in code, not real people)",
            "seed": self._seed,
            "image_size": self._size,
            "n_samples": self._n,
        }


def write_fairface_folder(
    labels_csv: Path, root: Path, *, limit: int | None = None, seed: int = 0, size: int = 32
) -> int:
    """Write one synthetic JPEG per row of a FairFace label CSV, at ``root / row["file"]``.

    Each picture is drawn for its row's ``gender``, ``race`` and ``age``. Returns the number of
    files written (the first ``limit`` rows when given).
    """
    with Path(labels_csv).open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))[:limit]
    made: set[Path] = set()
    for index, row in enumerate(rows):
        target = Path(root) / row["file"]
        if target.parent not in made:
            target.parent.mkdir(parents=True, exist_ok=True)
            made.add(target.parent)
        draw_face(row, random.Random(f"{seed}:{index}"), size).save(target, "JPEG", quality=85)
    return len(rows)


def build_synthetic_dataset(n: int, *, seed: int = 0, size: int = DEFAULT_SIZE) -> datasets.Dataset:
    """A ``datasets.Dataset`` of ``n`` synthetic images with FairFace's schema.

    Columns ``image`` (Image feature, JPEG bytes) and ``gender``, ``race``, ``age`` as ClassLabel
    integers, as on the hub's ``HuggingFaceM4/FairFace``.
    """
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            **{c: datasets.ClassLabel(names=list(v)) for c, v in SYNTHETIC_COLUMNS.items()},
        }
    )
    labels = [synthetic_labels(i) for i in range(n)]
    columns = {
        "image": [{"bytes": _jpeg(synthetic_image(i, seed, size)), "path": None} for i in range(n)],
        **{c: [v.index(row[c]) for row in labels] for c, v in SYNTHETIC_COLUMNS.items()},
    }
    return datasets.Dataset.from_dict(columns, features=features)


def write_synthetic_parquet(path: Path, n: int, *, seed: int = 0, size: int = DEFAULT_SIZE) -> Path:
    """Write ``build_synthetic_dataset(n)`` as one parquet file (features kept in its metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    build_synthetic_dataset(n, seed=seed, size=size).to_parquet(str(path))
    return path


def write_synthetic_hub_folder(
    root: Path,
    *,
    configs: tuple[str, ...] = ("1.25",),
    split: str = "validation",
    n: int = 56,
    seed: int = 0,
) -> Path:
    """A local folder laid out like a hub dataset repository, one parquet file per config.

    ``load_dataset(str(root), config, split=split)`` reads it offline as it would read
    ``HuggingFaceM4/FairFace``; the README's YAML header declares each config's data files.
    Config ``k`` of ``configs`` holds the synthetic images of seed ``seed + k``.
    """
    root = Path(root)
    header = ["---", "configs:"]
    for offset, config in enumerate(configs):
        write_synthetic_parquet(
            root / config / f"{split}-00000-of-00001.parquet", n, seed=seed + offset
        )
        header += [
            f'- config_name: "{config}"',
            "  data_files:",
            f"  - split: {split}",
            f'    path: "{config}/{split}-*"',
        ]
    header += ["---", "# Synthetic faces (cartoons drawn in code, not real people)", ""]
    (root / "README.md").write_text("\n".join(header), encoding="utf-8")
    return root


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()
