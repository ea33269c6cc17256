"""FairFace's local layout (label CSV + image folder), on the real validation label file.

The 10,954 labels are FairFace's own; the images are tiny synthetic JPEGs written for each row,
so the loader is exercised at full size without the real pictures.
"""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from audit.datasets import open_dataset
from audit.datasets.synthetic import write_fairface_folder
from audit.errors import DatasetError
from audit.spec import ProbeSpec, parse_probe
from tests.runs import ci_needs

LABELS = Path(__file__).resolve().parents[2] / "shared" / "data" / "fairface_label_val.csv"
AXES = ["gender", "race", "age"]

needs_labels = pytest.mark.usefixtures("labels_file")


@pytest.fixture
def labels_file(ci_requires: Any) -> Path:
    if not LABELS.is_file():
        ci_requires(f"FairFace's validation label file at {LABELS} (shared/data)")
    return LABELS


def probe(folder: Path, **dataset: Any) -> ProbeSpec:
    data = {
        "name": "t",
        "dataset": {"source": "fairface_csv", **dataset},
        "model": {"id": "m"},
        "prompts": [{"id": "p", "text": "x"}],
    }
    return parse_probe(data, str(folder / "probe.yaml"), folder)


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def fairface_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not LABELS.is_file():
        ci_needs(f"FairFace's validation label file at {LABELS} (shared/data)")
    root = tmp_path_factory.mktemp("fairface")
    shutil.copy(LABELS, root / "fairface_label_val.csv")
    write_fairface_folder(root / "fairface_label_val.csv", root, size=16)
    return root


@needs_labels
def test_full_validation_labels_stream_with_the_csv_counts(fairface_root: Path) -> None:
    source = open_dataset(
        probe(fairface_root, path=".", labels_csv="fairface_label_val.csv", groups=AXES)
    )
    samples = list(source.samples())
    expected = csv_rows(LABELS)
    assert len(source) == len(samples) == len(expected) == 10_954
    assert [s.sample_id for s in samples] == [row["file"] for row in expected]
    for axis in AXES:
        assert Counter(s.groups[axis] for s in samples) == Counter(row[axis] for row in expected)
        assert source.group_values()[axis] == sorted({row[axis] for row in expected})
    assert samples[0].sample_id == "fairface/val/1.jpg"
    assert dict(samples[0].groups) == {"gender": "Male", "race": "East Asian", "age": "3-9"}
    for sample in samples[:: len(samples) // 7]:
        assert sample.load_image().size == (16, 16)
    info = source.describe()
    assert info["source"] == "fairface_csv" and info["n_samples"] == 10_954


@needs_labels
def test_limit_takes_the_first_rows_and_renamed_axes(fairface_root: Path) -> None:
    source = open_dataset(
        probe(
            fairface_root,
            path=str(fairface_root),
            limit=25,
            labels_csv=str(fairface_root / "fairface_label_val.csv"),
            groups={"ethnicity": "race"},
        )
    )
    expected = csv_rows(LABELS)[:25]
    assert len(source) == 25
    assert [(s.sample_id, dict(s.groups)) for s in source.samples()] == [
        (row["file"], {"ethnicity": row["race"]}) for row in expected
    ]
    assert len(source.group_values()["ethnicity"]) == 7  # the label file's values, not the limit's


def test_missing_and_corrupt_images_raise_only_in_load_image(tmp_path: Path) -> None:
    rows = [
        {
            "file": f"val/{i}.jpg",
            "age": "20-29",
            "gender": g,
            "race": "Black",
            "service_test": "True",
        }
        for i, g in enumerate(["Male", "Female"] * 3)
    ]
    with (tmp_path / "labels.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert write_fairface_folder(tmp_path / "labels.csv", tmp_path / "img") == 6
    (tmp_path / "img" / "val" / "2.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "img" / "val" / "4.jpg").unlink()
    source = open_dataset(probe(tmp_path, path="img", labels_csv="labels.csv", groups=AXES))
    samples = list(source.samples())
    assert len(samples) == 6
    loaded = []
    for sample in samples:
        try:
            loaded.append(sample.load_image().size)
        except Exception as error:  # what the runner turns into an error row
            loaded.append(type(error).__name__)
    assert loaded == [
        (32, 32),
        (32, 32),
        "UnidentifiedImageError",
        (32, 32),
        "DatasetError",
        (32, 32),
    ]
    with pytest.raises(DatasetError, match=r"img/val/4\.jpg does not exist"):
        samples[4].load_image()


def test_label_file_errors_name_the_probe_key(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    (tmp_path / "labels.csv").write_text("file,age,gender,race\nval/1.jpg,3-9,Male,White\n")
    with pytest.raises(
        DatasetError,
        match=r"dataset\.groups\.ethnicity: column 'ethnicity' not found in .*labels\.csv; "
        r"it has: file, age, gender, race\. Map the axis",
    ):
        open_dataset(probe(tmp_path, path="img", labels_csv="labels.csv", groups=["ethnicity"]))
    with pytest.raises(DatasetError, match=r"dataset\.labels_csv: label file .*nope\.csv does not"):
        open_dataset(probe(tmp_path, path="img", labels_csv="nope.csv", groups=AXES))
    with pytest.raises(DatasetError, match=r"dataset\.path: image folder .*absent does not exist"):
        open_dataset(probe(tmp_path, path="absent", labels_csv="labels.csv", groups=AXES))
    (tmp_path / "twice.csv").write_text("file,gender\na.jpg,Male\na.jpg,Female\n")
    with pytest.raises(DatasetError, match=r"dataset\.id_column: the id 'a\.jpg' occurs more"):
        open_dataset(probe(tmp_path, path="img", labels_csv="twice.csv", groups=["gender"]))
    (tmp_path / "short.csv").write_text("file,gender\na.jpg,Male\nb.jpg\n")
    with pytest.raises(DatasetError, match=r"short\.csv line 3 does not have as many fields"):
        open_dataset(probe(tmp_path, path="img", labels_csv="short.csv", groups=["gender"]))
