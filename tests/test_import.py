"""`audit import`: locally built datasets with the published schemas -> run directories."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from runs import jpeg_bytes
from typer.testing import CliRunner

from audit.cli import app
from audit.ingest.importer import M4_MODELS, M4_PROMPTS
from audit.store.tables import SCHEMA_VERSION, RunStore

GENDERS = ["woman", "man"]
ETHNICITIES = ["Black", "White", "East Asian"]
AGES = ["20-29", "30-39", "40-49"]
GENERATION_COLUMNS = [
    "sample_id",
    "prompt_id",
    "model_id",
    "prompt",
    "generation",
    "n_new_tokens",
    "finish_reason",
    "error",
    "image_sha256",
]


def m4_rows(n: int = 12, with_age: bool = True) -> dict[str, list]:
    """Rows laid out as HuggingFaceM4/m4-bias-eval-*: one per image, a column per model x prompt."""
    rows: dict[str, list] = {
        "image": [{"bytes": jpeg_bytes(i), "path": None} for i in range(n)],
        "gender_phrase": [GENDERS[i % 2] for i in range(n)],
        "ethnicity_phrase": [ETHNICITIES[i % 3] for i in range(n)],
    }
    if with_age:
        rows["age_range"] = [AGES[i % 3] for i in range(n)]
    for model in ("9B", "80B"):
        for prompt in ("resume", "dating", "arrest"):
            rows[f"{model}_{prompt}"] = [f"{model} {prompt} text for image {i}" for i in range(n)]
    return rows


def m4_dataset(n: int = 12, with_age: bool = True):
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "gender_phrase": datasets.Value("string"),
            "ethnicity_phrase": datasets.Value("string"),
            **({"age_range": datasets.ClassLabel(names=AGES)} if with_age else {}),
            **{
                f"{m}_{p}": datasets.Value("string")
                for m in ("9B", "80B")
                for p in ("resume", "dating", "arrest")
            },
        }
    )
    return datasets.Dataset.from_dict(m4_rows(n, with_age), features=features)


def invoke(*args: str):
    result = CliRunner().invoke(app, ["import", *args])
    return result


def test_m4_preset_from_parquet(tmp_path: Path) -> None:
    source = tmp_path / "m4-bias-eval-fair-face.parquet"
    pd.DataFrame(m4_rows(12)).to_parquet(source)
    result = invoke(str(source), "--preset", "m4-bias-eval", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    dirs = sorted((tmp_path / "runs").iterdir())
    assert [d.name for d in dirs] == [
        "m4-bias-eval-fair-face-idefics-80b-instruct",
        "m4-bias-eval-fair-face-idefics-9b-instruct",
    ]
    frames = {}
    for run_dir, model_key in zip(dirs, ("80B", "9B"), strict=True):
        store = RunStore.open(run_dir)
        manifest = store.manifest().to_json()
        assert manifest["schema_version"] == SCHEMA_VERSION
        assert manifest["status"] == "imported"
        assert manifest["group_axes"] == ["gender", "ethnicity", "age"]
        assert manifest["model"]["id"] == M4_MODELS[model_key]
        assert manifest["prompts"] == [{"id": p, "text": t} for p, t in M4_PROMPTS.items()]
        assert manifest["rows"] == {"generations": 36, "classifications": 0, "errors": 0}
        assert manifest["prompt_layout"]["layout"] == "split_template"  # the card's script
        generations = store.read("generations")
        assert list(generations.columns) == [
            *GENERATION_COLUMNS[:3],
            "gender",
            "ethnicity",
            "age",
            *GENERATION_COLUMNS[3:],
        ]
        assert len(generations) == 36
        assert not generations.duplicated(["sample_id", "prompt_id"]).any()
        row = generations.set_index(["sample_id", "prompt_id"]).loc[
            (f"{source}::train:7", "dating")
        ]
        assert row["generation"] == f"{model_key} dating text for image 7"
        assert (row["gender"], row["ethnicity"], row["age"]) == ("man", "White", "30-39")
        assert row["prompt"] == M4_PROMPTS["dating"]
        # The digest of the decoded pixels, not of the JPEG file's bytes.
        pixels = Image.open(io.BytesIO(jpeg_bytes(7))).convert("RGB")
        expected = hashlib.sha256(b"RGB 40x48\n" + pixels.tobytes()).hexdigest()
        assert row["image_sha256"] == expected
        assert expected != hashlib.sha256(jpeg_bytes(7)).hexdigest()
        samples = pd.read_parquet(run_dir / "samples.parquet")
        assert (
            samples.set_index("sample_id")["image_sha256"].to_dict()
            == (
                generations.drop_duplicates("sample_id").set_index("sample_id")["image_sha256"]
            ).to_dict()
        )
        thumbnails = store.read("thumbnails")
        assert set(thumbnails["sample_id"]) == set(generations["sample_id"])
        assert Image.open(io.BytesIO(thumbnails["jpeg"].iloc[0])).size == (40, 48)
        frames[model_key] = generations
    # Both models' runs name the same images the same way, so runs can be compared pairwise.
    assert set(frames["9B"]["sample_id"]) == set(frames["80B"]["sample_id"])


@pytest.mark.parametrize("layout", ["save_to_disk", "hub_folder"])
def test_m4_preset_from_dataset_folders(tmp_path: Path, layout: str) -> None:
    dataset = m4_dataset(9)
    folder = tmp_path / "m4-bias-eval-stable-bias"
    if layout == "save_to_disk":
        dataset.save_to_disk(str(folder))
    else:
        (folder / "data").mkdir(parents=True)
        dataset.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    result = invoke(str(folder), "--preset", "m4-bias-eval", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.output
    store = RunStore.open(tmp_path / "runs" / "m4-bias-eval-stable-bias-idefics-9b-instruct")
    generations = store.read("generations")
    assert len(generations) == 27
    assert sorted(generations["age"].unique()) == AGES  # class labels stored as their names
    assert store.count("thumbnails") == 9
    assert store.manifest().dataset["source"] == ("disk" if layout == "save_to_disk" else "hub")


def test_reimport_adds_nothing_twice(tmp_path: Path) -> None:
    source = tmp_path / "gens.parquet"
    pd.DataFrame(m4_rows(6, with_age=False)).to_parquet(source)
    out = tmp_path / "runs"
    assert invoke(str(source), "--preset", "m4-bias-eval", "--out", str(out)).exit_code == 0
    run_dir = out / "gens-idefics-9b-instruct"
    parts = RunStore(run_dir).parts("generations")
    probe = RunStore.open(run_dir).manifest().to_json()["probe"]
    probe["analysis"]["toxicity"]["scorer"] = "detoxify:unbiased"  # the user's own setting
    RunStore(run_dir).update_manifest(probe=probe)
    assert invoke(str(source), "--preset", "m4-bias-eval", "--out", str(out)).exit_code == 0
    store = RunStore.open(run_dir)
    assert store.manifest().probe["analysis"]["toxicity"]["scorer"] == "detoxify:unbiased"
    assert store.parts("generations") == parts
    assert len(pq_rows(store, "generations")) == 18
    assert len(pq_rows(store, "thumbnails")) == 6
    # A bigger export of the same source adds only its new images.
    pd.DataFrame(m4_rows(8, with_age=False)).to_parquet(source)
    assert invoke(str(source), "--preset", "m4-bias-eval", "--out", str(out)).exit_code == 0
    assert len(pq_rows(store, "generations")) == 24
    assert store.manifest().to_json()["rows"]["generations"] == 24
    assert store.manifest().to_json()["group_axes"] == ["gender", "ethnicity"]


def pq_rows(store: RunStore, table: str) -> pd.DataFrame:
    """Every stored row of every part, duplicates included (what ``read`` would hide)."""
    return pd.concat([pd.read_parquet(p) for p in store.parts(table)], ignore_index=True)


def test_mapped_csv_one_run_per_model(tmp_path: Path) -> None:
    rows = []
    for model in ("org/model-a", "org/model-b"):
        for image in range(4):
            for prompt in ("job", "story"):
                text = None if (model, image, prompt) == ("org/model-b", 2, "story") else "hi"
                rows.append(
                    {
                        "img": f"face{image}",
                        "task": prompt,
                        "text": text,
                        "who": model,
                        "sex": GENDERS[image % 2],
                        "question": f"Write a {prompt}.",
                    }
                )
    source = tmp_path / "external.csv"
    pd.DataFrame(rows).to_csv(source, index=False)
    result = invoke(
        str(source),
        "--out",
        str(tmp_path / "runs"),
        "--map",
        "sample_id=img",
        "--map",
        "prompt_id=task",
        "--map",
        "generation=text",
        "--map",
        "model_id=who",
        "--map",
        "prompt=question",
        "--group",
        "gender=sex",
    )
    assert result.exit_code == 0, result.output
    store_a = RunStore.open(tmp_path / "runs" / "external-model-a")
    store_b = RunStore.open(tmp_path / "runs" / "external-model-b")
    a, b = store_a.read("generations"), store_b.read("generations")
    assert len(a) == len(b) == 8
    assert set(a["sample_id"]) == {f"face{i}" for i in range(4)}
    assert a.loc[a["sample_id"].eq("face1"), "gender"].unique().tolist() == ["man"]
    assert store_a.manifest().to_json()["prompts"] == [
        {"id": "job", "text": "Write a job."},
        {"id": "story", "text": "Write a story."},
    ]
    errors = b[b["finish_reason"].eq("error")]
    assert errors[["sample_id", "prompt_id"]].values.tolist() == [["face2", "story"]]
    assert store_b.manifest().to_json()["rows"]["errors"] == 1
    assert store_a.count("thumbnails") == 0  # no image column: no thumbnails, no failure


def test_single_prompt_file_with_prompt_id(tmp_path: Path) -> None:
    source = tmp_path / "one.parquet"
    pd.DataFrame({"generation": ["a", "b", "c"], "race": ["x", "y", None]}).to_parquet(source)
    result = invoke(
        str(source),
        "--out",
        str(tmp_path / "runs"),
        "--prompt-id",
        "resume",
        "--group",
        "race",
        "--model-id",
        "me/my-vlm",
    )
    assert result.exit_code == 0, result.output
    generations = RunStore.open(tmp_path / "runs" / "one-my-vlm").read("generations")
    assert generations["prompt_id"].tolist() == ["resume"] * 3
    assert generations["sample_id"].tolist() == [f"{source}::train:{i}" for i in range(3)]
    assert generations["race"].tolist() == ["x", "y", "(missing)"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["{tmp}/nope.parquet", "--preset", "m4-bias-eval"], "nope.parquet: no such file"),
        (["{src}", "--preset", "m4-bias"], "unknown preset 'm4-bias'"),
        (
            ["{src}", "--map", "generation=txt", "--group", "gender_phrase", "--prompt-id", "p"],
            "no column 'txt'",
        ),
        (["{src}", "--map", "words=9B_resume", "--group", "gender_phrase"], "unknown role 'words'"),
        (
            ["{src}", "--map", "generation=9B_resume", "--group", "sex", "--prompt-id", "p"],
            "--group sex: no column 'sex'",
        ),
        (["{src}", "--map", "generation=9B_resume", "--group", "gender_phrase"], "--prompt-id"),
        (["{tmp}/m4.csv", "--preset", "m4-bias-eval"], "no column 'gender_phrase'"),
        (
            ["HuggingFaceM4/m4-bias-eval-fair-face", "--preset", "m4-bias-eval"],
            "hf download HuggingFaceM4/m4-bias-eval-fair-face --repo-type dataset",
        ),
    ],
)
def test_bad_input_exits_2_naming_file_and_column(
    tmp_path: Path, args: list[str], expected: str
) -> None:
    source = tmp_path / "src.parquet"
    rows = m4_rows(3, with_age=False)
    pd.DataFrame(rows).to_parquet(source)
    pd.DataFrame({k: v for k, v in rows.items() if k not in {"image", "gender_phrase"}}).to_csv(
        tmp_path / "m4.csv", index=False
    )
    filled = [a.format(tmp=tmp_path, src=source) for a in args]
    result = invoke(*filled, "--out", str(tmp_path / "runs"))
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert filled[0] in result.output
    assert "Traceback" not in result.output


def test_refuses_to_mix_into_another_run(tmp_path: Path) -> None:
    source = tmp_path / "gens.parquet"
    pd.DataFrame(m4_rows(3, with_age=False)).to_parquet(source)
    RunStore(tmp_path / "runs" / "gens-idefics-9b-instruct").write_manifest(
        {"status": "complete", "group_axes": ["gender", "race"]}
    )
    result = invoke(str(source), "--preset", "m4-bias-eval", "--out", str(tmp_path / "runs"))
    assert result.exit_code == 2
    assert "holds another run (status 'complete'" in result.output


def test_imported_runs_leave_unknown_lengths_and_finish_reasons_out_of_the_statistics(
    tmp_path: Path,
) -> None:
    source = tmp_path / "m4.parquet"
    m4_dataset(n=20).to_parquet(str(source))
    assert (
        invoke(str(source), "--preset", "m4-bias-eval", "--out", str(tmp_path / "runs")).exit_code
        == 0
    )
    run_dir = next((tmp_path / "runs").iterdir())
    result = CliRunner().invoke(app, ["analyze", str(run_dir), "--only", "generation_stats"])
    assert result.exit_code == 0, result.output
    table = RunStore.open(run_dir).read_analysis("generation_stats")
    assert set(table["metric"]) == {"error_rate"}
    overall = table[(table["axis"] == "all") & (table["prompt_id"] == "resume")]
    assert overall["value"].tolist() == [0.0] and overall["n"].tolist() == [20]


def test_image_paths_stay_inside_the_source_folder(tmp_path: Path) -> None:
    from PIL import Image

    outside = tmp_path / "private"
    outside.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(outside / "secret.png")
    source = tmp_path / "shared"
    (source / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (0, 0, 200)).save(source / "images" / "ok.png")
    (source / "images" / "link.png").symlink_to(outside / "secret.png")
    paths = [
        "images/ok.png",
        "../private/secret.png",
        str(outside / "secret.png"),
        "images/link.png",
        "http://example.com/secret.png",
        "file:///etc/passwd",
    ]
    frame = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(len(paths))],
            "text": [f"text {i}" for i in range(len(paths))],
            "sex": ["a", "b"] * 3,
            "image": paths,
        }
    )
    frame.to_parquet(source / "rows.parquet")
    result = invoke(
        str(source / "rows.parquet"),
        "--out",
        str(tmp_path / "runs"),
        "--prompt-id",
        "p",
        "--group",
        "gender=sex",
        "--map",
        "generation=text",
        "--map",
        "sample_id=id",
        "--map",
        "image=image",
    )
    assert result.exit_code == 0, result.output
    assert "5 image path(s) in" in result.output and "lead out of its folder" in result.output
    store = RunStore.open(next((tmp_path / "runs").iterdir()))
    thumbnails = store.read("thumbnails")
    assert thumbnails["sample_id"].tolist() == ["s0"]  # the private image was never read
    assert len(store.read("generations")) == len(paths)  # the rows themselves are kept
