"""Bad input gets one clear message naming the file and key, exit code 2, no traceback;
a bad sample becomes an error row and the run goes on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from audit.store.tables import RunStore
from tests.runs import run_cli, write_fairface_probe, write_probe


@pytest.fixture(scope="module")
def model(model_dirs: dict[str, Path]) -> Path:
    return model_dirs["idefics2"]


def test_malformed_yaml(tmp_path: Path) -> None:
    probe = tmp_path / "broken.yaml"
    probe.write_text("name: x\nprompts: [\n")
    code, output = run_cli("validate", str(probe))
    assert code == 2
    assert f"{probe}: line" in output and "not valid YAML" in output
    assert "Traceback" not in output


def test_every_schema_problem_is_reported_at_once(tmp_path: Path) -> None:
    probe = tmp_path / "probe.yaml"
    probe.write_text(
        "name: x\n"
        "dataset: {source: synthetic, groups: [gender], colour: red}\n"
        "model: {id: m, temprature: 0.1}\n"
        "generation: {max_new_tokens: zero}\n"
        "prompts: []\n"
    )
    code, output = run_cli("run", str(probe))
    assert code == 2
    assert f"{probe}: dataset.colour: unknown key" in output
    assert f"{probe}: model.temprature: unknown key" in output
    assert f"{probe}: generation.max_new_tokens:" in output
    assert "Traceback" not in output


def test_empty_prompts_and_duplicate_ids(tmp_path: Path) -> None:
    probe = tmp_path / "probe.yaml"
    probe.write_text(
        "name: x\ndataset: {source: synthetic, groups: [gender]}\nmodel: {id: m}\n"
        "prompts: [{id: a, text: one}, {id: a, text: two}]\n"
    )
    code, output = run_cli("validate", str(probe))
    assert code == 2 and f"{probe}: prompts: id 'a' is used twice" in output
    probe.write_text(
        "name: x\ndataset: {source: synthetic, groups: [gender]}\nmodel: {id: m}\nprompts: []\n"
    )
    code, output = run_cli("validate", str(probe))
    assert code == 2 and f"{probe}: prompts: is empty" in output


def test_label_that_maps_to_no_dataset_value(model: Path, tmp_path: Path) -> None:
    probe = write_probe(
        tmp_path,
        model,
        classification=[
            {
                "id": "gender",
                "target": "gender",
                "template": "a {label}.",
                "labels": {"man": "Man", "woman": "Female"},
            }
        ],
    )
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "run"))
    assert code == 2
    assert (
        f"{probe}: classification[0].labels.man: 'Man' is not a value of column 'gender'" in output
    )


def test_missing_dataset_column(model: Path, tmp_path: Path) -> None:
    probe = write_probe(
        tmp_path, model, dataset={"groups": {"gender": "gender", "race": "ethnicity_phrase"}}
    )
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "run"))
    assert code == 2
    assert "ethnicity_phrase" in output and "Traceback" not in output


def test_unknown_model_path(tmp_path: Path) -> None:
    probe = write_probe(tmp_path, tmp_path / "no-such-model")
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "run"))
    assert code == 2
    assert "no-such-model" in output and "Traceback" not in output


def test_corrupt_and_missing_images_become_error_rows(model: Path, tmp_path: Path) -> None:
    root = tmp_path / "faces"
    (root / "val").mkdir(parents=True)
    rows = []
    for i, (gender, race) in enumerate([("Male", "White"), ("Female", "Black")] * 3):
        name = f"val/{i}.jpg"
        rows.append(
            {"file": name, "age": "20-29", "gender": gender, "race": race, "service_test": True}
        )
        if i == 1:
            (root / name).write_bytes(b"this is not a jpeg")
        elif i != 4:  # image 4 is missing on disk
            Image.new("RGB", (40, 40), (40 * i, 90, 200 - 20 * i)).save(root / name)
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    probe = write_fairface_probe(tmp_path, model, root)
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "run"), "--no-progress")
    # The run goes on; error rows left to retry make it partial for the exit status (3).
    assert code == 3, output
    assert "6 rows are stored as errors; resuming retries them" in output
    assert f"resume with: audit run {probe} --out {tmp_path / 'run'}" in output
    generations = RunStore.open(tmp_path / "run").read("generations")
    assert len(generations) == 12
    failed = generations[generations["finish_reason"] == "error"]
    assert set(failed["sample_id"]) == {"val/1.jpg", "val/4.jpg"}
    assert failed["error"].str.len().gt(0).all() and failed["generation"].isna().all()
    classifications = RunStore.open(tmp_path / "run").read("classifications")
    assert classifications["error"].notna().sum() == 2
    manifest = RunStore.open(tmp_path / "run").manifest().to_json()
    assert manifest["status"] == "complete" and manifest["rows"]["errors"] == 6
