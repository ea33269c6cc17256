"""Dataset sources read for real through ``open_dataset``: hub layout, parquet, disk, synthetic.

Every dataset is built here with the ``datasets`` library or pandas and read back through the
same loaders a real audit uses (``load_dataset`` of a local folder works offline).
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
from PIL import Image

from audit.datasets import DatasetSource, open_dataset
from audit.datasets.columns import MISSING_GROUP
from audit.datasets.face_drawing import AGES, GENDERS, RACES
from audit.datasets.synthetic import (
    build_synthetic_dataset,
    synthetic_image,
    synthetic_labels,
    write_synthetic_hub_folder,
    write_synthetic_parquet,
)
from audit.errors import DatasetError
from audit.spec import ProbeSpec, check_labels, load_probe, parse_probe

AXES = ["gender", "race", "age"]


def probe(folder: Path, **dataset: Any) -> ProbeSpec:
    data = {
        "name": "t",
        "dataset": dataset,
        "model": {"id": "m"},
        "prompts": [{"id": "p", "text": "x"}],
    }
    return parse_probe(data, str(folder / "probe.yaml"), folder)


def jpeg(colour: tuple[int, int, int], size: int = 24) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def read_all(source: DatasetSource) -> list[tuple[str, dict[str, str]]]:
    return [(s.sample_id, dict(s.groups)) for s in source.samples()]


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_hub_folder(
        tmp_path_factory.mktemp("hub") / "fairface", configs=("0.25", "1.25"), n=40, seed=2
    )


def test_hub_layout_folder_maps_class_labels_to_names(hub_folder: Path) -> None:
    spec = probe(
        hub_folder.parent,
        source="hub",
        path="fairface",
        config="1.25",
        split="validation",
        groups=AXES,
    )
    source = open_dataset(spec)
    rows = read_all(source)
    assert len(source) == len(rows) == 40
    assert [sid for sid, _ in rows] == [f"fairface:1.25:validation:{i}" for i in range(40)]
    assert [groups for _, groups in rows] == [synthetic_labels(i) for i in range(40)]
    assert source.group_values() == {
        "gender": list(GENDERS),
        "race": list(RACES),
        "age": list(AGES),
    }
    info = source.describe()
    assert info["source"] == "hub" and info["config"] == "1.25" and info["split"] == "validation"
    assert info["n_samples"] == 40 and info["fingerprint"]


def test_hub_images_decode_lazily_to_the_stored_pictures(hub_folder: Path) -> None:
    spec = probe(
        hub_folder.parent,
        source="hub",
        path="fairface",
        config="1.25",
        split="validation",
        groups={"ethnicity": "race"},
        limit=5,
    )
    samples = list(open_dataset(spec).samples())
    assert len(samples) == 5 and all(set(s.groups) == {"ethnicity"} for s in samples)
    for i, sample in enumerate(samples):
        image = sample.load_image()
        expected = synthetic_image(i, seed=3)
        assert image.mode == "RGB" and image.size == expected.size
        diff = sum(abs(a - b) for a, b in zip(image.tobytes(), expected.tobytes(), strict=True))
        assert diff / len(image.tobytes()) < 8  # JPEG loss only


def test_hub_id_unreachable_offline_names_the_key() -> None:
    spec = probe(
        Path("."), source="hub", path="nobody-here/no-such-dataset", config="1.25", groups=AXES
    )
    with pytest.raises(DatasetError, match=r"dataset\.path: cannot reach .*no-such-dataset"):
        open_dataset(spec)


def test_hub_config_and_split_errors_name_their_keys(hub_folder: Path) -> None:
    no_config = probe(
        hub_folder.parent, source="hub", path="fairface", split="validation", groups=AXES
    )
    with pytest.raises(DatasetError, match=r"dataset\.config: .*1\.25"):
        open_dataset(no_config)
    bad_split = probe(
        hub_folder.parent, source="hub", path="fairface", config="1.25", split="test", groups=AXES
    )
    with pytest.raises(DatasetError, match=r"dataset\.split: .*validation"):
        open_dataset(bad_split)
    missing = probe(hub_folder.parent, source="hub", path="./not-there", groups=AXES)
    with pytest.raises(DatasetError, match=r"dataset\.path: folder .*not-there does not exist"):
        open_dataset(missing)


def test_parquet_file_and_folder_with_limit(tmp_path: Path) -> None:
    write_synthetic_parquet(tmp_path / "faces" / "part-0.parquet", 9)
    single = open_dataset(
        probe(tmp_path, source="parquet", path="faces/part-0.parquet", groups=AXES, limit=4)
    )
    assert len(single) == 4
    assert read_all(single) == [
        (f"faces/part-0.parquet::train:{i}", synthetic_labels(i)) for i in range(4)
    ]
    write_synthetic_parquet(tmp_path / "faces" / "part-1.parquet", 3, seed=1)
    folder = open_dataset(
        probe(tmp_path, source="parquet", path="faces", split="validation", groups=AXES)
    )
    rows = read_all(folder)
    assert len(folder) == len(rows) == 12
    assert rows[-1] == ("faces::validation:11", synthetic_labels(2))
    assert all(s.load_image().size == (64, 64) for s in list(folder.samples())[::5])


def test_disk_dataset_and_dataset_dict(tmp_path: Path) -> None:
    build_synthetic_dataset(6).save_to_disk(str(tmp_path / "plain"))
    plain = open_dataset(probe(tmp_path, source="disk", path="plain", groups=["race"]))
    assert read_all(plain) == [
        (f"plain::train:{i}", {"race": synthetic_labels(i)["race"]}) for i in range(6)
    ]
    splits = datasets.DatasetDict(
        {"test": build_synthetic_dataset(5), "train": build_synthetic_dataset(2)}
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    test_split = open_dataset(
        probe(tmp_path, source="disk", path="dict", split="test", groups=AXES)
    )
    assert len(test_split) == 5 and next(test_split.samples()).load_image().mode == "RGB"
    with pytest.raises(
        DatasetError, match=r"dataset\.split: split 'validation' not found .*test, train"
    ):
        open_dataset(probe(tmp_path, source="disk", path="dict", split="validation", groups=AXES))
    with pytest.raises(DatasetError, match=r"dataset\.path: folder .*nowhere does not exist"):
        open_dataset(probe(tmp_path, source="disk", path="nowhere", groups=AXES))


def test_plain_parquet_with_path_and_bytes_columns_and_id_column(tmp_path: Path) -> None:
    (tmp_path / "data" / "img").mkdir(parents=True)
    for i in range(3):
        (tmp_path / "data" / "img" / f"{i}.jpg").write_bytes(jpeg((80 * i, 50, 50)))
    frame = pd.DataFrame(
        {
            "uid": ["a7", "b2", "c9"],
            "file": [f"img/{i}.jpg" for i in range(3)],  # relative to the parquet file's folder
            "blob": [jpeg((10, 200, 10)), b"not an image", jpeg((0, 0, 250))],
            "gender_phrase": ["woman", None, "man"],
            "year": [1990, 2001, 1990],
        }
    )
    frame.to_parquet(tmp_path / "data" / "plain.parquet")
    by_path = open_dataset(
        probe(
            tmp_path,
            source="parquet",
            path="data/plain.parquet",
            image_column="file",
            id_column="uid",
            groups={"gender": "gender_phrase", "year": "year"},
        )
    )
    assert read_all(by_path) == [
        ("a7", {"gender": "woman", "year": "1990"}),
        ("b2", {"gender": MISSING_GROUP, "year": "2001"}),
        ("c9", {"gender": "man", "year": "1990"}),
    ]
    assert by_path.group_values() == {
        "gender": [MISSING_GROUP, "man", "woman"],
        "year": ["1990", "2001"],
    }
    assert [s.load_image().getpixel((5, 5))[0] for s in by_path.samples()] == pytest.approx(
        [0, 80, 160], abs=6
    )
    by_bytes = list(
        open_dataset(
            probe(
                tmp_path,
                source="parquet",
                path="data/plain.parquet",
                image_column="blob",
                groups=["year"],
            )
        ).samples()
    )
    assert by_bytes[2].load_image().getpixel((5, 5))[2] > 200
    with pytest.raises(Exception, match="cannot identify image"):
        by_bytes[1].load_image()


def test_corrupt_image_raises_only_when_loaded(tmp_path: Path) -> None:
    good = {"bytes": jpeg((200, 10, 10)), "path": None}
    table = datasets.Dataset.from_dict(
        {
            "image": [good, {"bytes": b"\xff\xd8garbage", "path": None}, good],
            "gender": ["Female", "Male", "Female"],
        },
        features=datasets.Features({"image": datasets.Image(), "gender": datasets.Value("string")}),
    )
    table.to_parquet(str(tmp_path / "c.parquet"))
    source = open_dataset(probe(tmp_path, source="parquet", path="c.parquet", groups=["gender"]))
    samples = list(source.samples())
    assert len(source) == 3 and samples[0].load_image().size == (24, 24)
    with pytest.raises(Exception):  # noqa: B017 - whatever PIL raises, the runner records it
        samples[1].load_image()
    assert samples[2].load_image().getpixel((3, 3))[0] > 150


def test_missing_columns_name_the_probe_key_and_the_columns_there(tmp_path: Path) -> None:
    write_synthetic_parquet(tmp_path / "f.parquet", 3)
    cases = {
        r"dataset\.groups\.ethnicity: column 'ethnicity' not found in .*f\.parquet; it has: "
        r"image, gender, race, age": {"groups": {"ethnicity": "ethnicity", "gender": "gender"}},
        r"dataset\.image_column: column 'picture' not found": {
            "groups": AXES,
            "image_column": "picture",
        },
        r"dataset\.id_column: column 'uid' not found": {"groups": AXES, "id_column": "uid"},
        r"dataset\.id_column: the id 'Male' occurs more than once": {
            "groups": AXES,
            "id_column": "gender",
        },
        r"dataset\.image_column: column 'gender' .* expected images": {
            "groups": AXES,
            "image_column": "gender",
        },
    }
    for message, keys in cases.items():
        with pytest.raises(DatasetError, match=message):
            open_dataset(probe(tmp_path, source="parquet", path="f.parquet", **keys))
    with pytest.raises(DatasetError, match=r"dataset\.path: .*absent\.parquet does not exist"):
        open_dataset(probe(tmp_path, source="parquet", path="absent.parquet", groups=AXES))


def test_synthetic_is_balanced_deterministic_and_image_sensitive() -> None:
    spec = probe(Path("."), source="synthetic", n=126, seed=5, groups=AXES)
    source = open_dataset(spec)
    rows = read_all(source)
    assert [sid for sid, _ in rows] == [f"synthetic:{i}" for i in range(126)]
    cells = Counter((g["gender"], g["race"], g["age"]) for _, g in rows)
    assert len(cells) == 2 * 7 * 9 and set(cells.values()) == {1}
    for n in (10, 56):
        for axis in AXES:
            counts = Counter(g[axis] for _, g in rows[:n])
            assert max(counts.values()) - min(counts.values()) <= 1
    assert len(open_dataset(probe(Path("."), source="synthetic", n=126, limit=7, groups=AXES))) == 7
    samples = list(source.samples())
    assert samples[3].load_image().tobytes() == samples[3].load_image().tobytes()
    other_seed = next(
        open_dataset(probe(Path("."), source="synthetic", seed=6, groups=AXES)).samples()
    )
    assert other_seed.load_image().tobytes() != samples[0].load_image().tobytes()
    # Skin sits at the head's centre: its brightness follows the race label.
    brightness: dict[str, list[float]] = {}
    for sample in samples:
        pixel = sample.load_image().getpixel((32, 36))
        brightness.setdefault(sample.groups["race"], []).append(sum(pixel) / 3)
    mean = {race: sum(v) / len(v) for race, v in brightness.items()}
    assert mean["Black"] + 60 < mean["Indian"] + 30 < mean["White"]
    with pytest.raises(DatasetError, match=r"dataset\.groups\.skin: column 'skin' not found"):
        open_dataset(probe(Path("."), source="synthetic", groups=["skin"]))


def test_fairface_probe_runs_on_the_synthetic_lookalikes(hub_folder: Path) -> None:
    """The shipped FairFace probe's labels all name values the synthetic sources can hold."""
    shipped = load_probe(Path(__file__).resolve().parents[1] / "probes" / "fairface.yaml")
    assert shipped.dataset.config == "1.25" and shipped.classification
    lookalikes = {
        "hub folder": {"path": str(hub_folder)},
        "synthetic": {"source": "synthetic", "path": None, "config": None},
    }
    for name, change in lookalikes.items():
        spec = shipped.model_copy(update={"dataset": shipped.dataset.model_copy(update=change)})
        source = open_dataset(spec)
        check_labels(spec, source.group_values(), name)  # raises ProbeError on an unknown value
        assert set(next(source.samples()).groups) == set(shipped.dataset.groups)
