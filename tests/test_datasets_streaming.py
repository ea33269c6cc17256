"""Samples stream: iterating a large dataset without loading images keeps memory flat.

The arrow table is memory-mapped, so reading the image column would show up in the resident set
(``VmRSS`` counts mapped file pages once touched). 20,000 images of ~6 KB make ~120 MB of image
data; iterating every sample's labels must add only a small fraction of that.
"""

from __future__ import annotations

import gc
import io
import random
from collections import Counter
from pathlib import Path

import datasets
import pytest
from PIL import Image

from audit.datasets import open_dataset
from audit.spec import parse_probe

N_ROWS = 20_000


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status VmRSS on this system")


def noise_jpeg(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64 * 3)))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_iterating_20000_samples_does_not_load_images(tmp_path: Path) -> None:
    # A few distinct noise pictures repeated: incompressible bytes, cheap to build.
    pictures = [noise_jpeg(seed) for seed in range(8)]
    genders = ["Female", "Male"]
    table = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": pictures[i % 8], "path": None} for i in range(N_ROWS)],
            "gender": [i % 2 for i in range(N_ROWS)],
            "uid": [f"face-{i:05d}" for i in range(N_ROWS)],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "gender": datasets.ClassLabel(names=genders),
                "uid": datasets.Value("string"),
            }
        ),
    )
    table.to_parquet(str(tmp_path / "big.parquet"))
    image_mb = N_ROWS * sum(map(len, pictures)) / len(pictures) / 2**20
    del table
    spec = parse_probe(
        {
            "name": "big",
            "model": {"id": "m"},
            "prompts": [{"id": "p", "text": "x"}],
            "dataset": {
                "source": "parquet",
                "path": "big.parquet",
                "groups": ["gender"],
                "id_column": "uid",
            },
        },
        str(tmp_path / "probe.yaml"),
        tmp_path,
    )
    source = open_dataset(spec)
    gc.collect()
    before_mb = resident_mb()
    counts: Counter[str] = Counter()
    last_id = ""
    for sample in source.samples():
        counts[sample.groups["gender"]] += 1
        last_id = sample.sample_id
    growth_mb = resident_mb() - before_mb
    assert len(source) == N_ROWS and counts == {"Female": N_ROWS // 2, "Male": N_ROWS // 2}
    assert last_id == f"face-{N_ROWS - 1:05d}"
    assert image_mb > 100
    assert growth_mb < 0.15 * image_mb, (
        f"RSS grew {growth_mb:.1f} MB for {image_mb:.0f} MB of images"
    )
