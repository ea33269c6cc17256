"""Identity across sources: a run of FairFace-shaped data and an import of the card's published
generations (the m4-bias-eval layout) over the same pictures, stored in another container and
another row order, pair image by image; older runs without image digests pair by sample id."""

from __future__ import annotations

import csv
import hashlib
import io
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from runs import fairface_dataset, wilson, write_probe
from typer.testing import CliRunner

import audit
from audit.analyses.table import MIN_GROUP_SIZE
from audit.cli import app
from audit.ingest.importer import M4_PROMPTS
from audit.store.tables import RunStore

N = 12
#: FairFace labels per picture, each combination once (a wrong pairing shows as a disagreement).
RACES = ["East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic"]
LABELS = [
    ("Male" if i % 2 else "Female", RACES[i % 6], ["20-29", "30-39", "more than 70"][i // 6 % 3])
    for i in range(N)
]
#: How the published generations are assumed to spell them (case and spacing vary on purpose).
PHRASES = {
    "Male": "man",
    "Female": "woman",
    "East Asian": " east asian",
    "Indian": "Indian",
    "Black": "black",
    "White": "White ",
    "Middle Eastern": "Middle  Eastern",
    "Latino_Hispanic": "Latino",
}
#: The published rows in another order than FairFace's.
ORDER = random.Random(3).sample(range(N), N)
#: Images whose published "arrest" generation differs from the new run's.
CHANGED = {0, 5, 9}


def picture(i: int) -> Image.Image:
    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def pixel_digest(image: Image.Image) -> str:
    """The documented digest, computed here independently."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"RGB {rgb.width}x{rgb.height}\n".encode() + rgb.tobytes()).hexdigest()


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def fairface_folder(root: Path) -> Path:
    """FairFace's local layout: JPEG files and a label CSV, in FairFace's order."""
    (root / "val").mkdir(parents=True)
    with (root / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "age", "gender", "race", "service_test"])
        for i, (gender, race, age) in enumerate(LABELS):
            picture(i).save(root / "val" / f"{i}.jpg", "JPEG", quality=90)
            writer.writerow([f"val/{i}.jpg", age, gender, race, "False"])
    return root


def m4_parquet(path: Path, images: Path, generations: pd.DataFrame, **race: str) -> Path:
    """The published layout: one row per picture (re-encoded as PNG: same pixels, other bytes),
    a column per model x prompt, phrases for labels; ``race`` overrides a picture's phrase."""
    text = generations.set_index(["sample_id", "prompt_id"])["generation"]
    rows: dict[str, list] = {"image": [], "gender_phrase": [], "ethnicity_phrase": []}
    rows["age_range"] = []
    columns = {f"{m}_{p}": [] for m in ("9B", "80B") for p in M4_PROMPTS}
    for i in ORDER:
        jpeg = (images / "val" / f"{i}.jpg").read_bytes()
        png = io.BytesIO()
        Image.open(io.BytesIO(jpeg)).save(png, "PNG")
        assert png.getvalue() != jpeg
        rows["image"].append({"bytes": png.getvalue(), "path": None})
        gender, ethnicity, age = LABELS[i]
        rows["gender_phrase"].append(PHRASES[gender])
        rows["ethnicity_phrase"].append(race.get(str(i), PHRASES[ethnicity]))
        rows["age_range"].append(age)
        for prompt in M4_PROMPTS:
            same = text[(f"val/{i}.jpg", prompt)]
            changed = prompt == "arrest" and i in CHANGED
            columns[f"9B_{prompt}"].append(f"{same} (not the same)" if changed else same)
            columns[f"80B_{prompt}"].append(f"80B {prompt} {i}")
    pd.DataFrame({**rows, **columns}).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def new_run(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Path:
    """A run of the tiny IDEFICS model, in a folder named like the card's model, over FairFace's
    layout with the card's three prompts."""
    root = tmp_path_factory.mktemp("identity")
    images = fairface_folder(root / "fairface")
    model = shutil.copytree(model_dirs["idefics"], root / "idefics-9b-instruct")
    probe = write_probe(
        root,
        model,
        dataset=fairface_dataset(images, ["gender", "race", "age"]),
        prompts=[{"id": p, "text": t} for p, t in M4_PROMPTS.items()],
        classification=[
            {
                "id": "gender",
                "target": "gender",
                "template": "a photo of a {label} person.",
                "labels": {"man": "Male", "woman": "Female"},
            }
        ],
        generation={"max_new_tokens": 4, "batch_size": 4},
    )
    run = root / "runs" / "new-model"
    invoke("run", str(probe), "--out", str(run))
    return run


def imported(root: Path, new_run: Path, name: str, **race: str) -> Path:
    """The published generations of ``new_run``'s pictures, imported; the 9B run's folder."""
    generations = RunStore.open(new_run).read("generations")
    images = new_run.parents[1] / "fairface"
    source = m4_parquet(root / f"{name}.parquet", images, generations, **race)
    invoke("import", str(source), "--preset", "m4-bias-eval", "--out", str(root / "runs"))
    return root / "runs" / f"{name}-idefics-9b-instruct"


def test_a_run_stores_the_digest_of_each_image_with_every_row(new_run: Path) -> None:
    store = RunStore.open(new_run)
    generations = store.read("generations")
    assert len(generations) == N * len(M4_PROMPTS)
    for i in range(N):
        decoded = Image.open(new_run.parents[1] / "fairface" / "val" / f"{i}.jpg")
        rows = generations[generations["sample_id"] == f"val/{i}.jpg"]
        assert set(rows["image_sha256"]) == {pixel_digest(decoded)}
    classifications = store.read("classifications")
    assert len(classifications) == N
    digests = generations.drop_duplicates("sample_id").set_index("sample_id")["image_sha256"]
    assert classifications.set_index("sample_id")["image_sha256"].to_dict() == digests.to_dict()
    samples = pd.read_parquet(new_run / "samples.parquet").set_index("sample_id")
    assert samples["image_sha256"].to_dict() == (
        generations.drop_duplicates("sample_id").set_index("sample_id")["image_sha256"].to_dict()
    )


def test_an_import_pairs_with_a_fairface_run_image_by_image(new_run: Path, tmp_path: Path) -> None:
    card = imported(tmp_path, new_run, "m4-bias-eval-fair-face")
    base, other = audit.load_run(new_run), audit.load_run(card)
    # The two sources number the pictures differently: no sample id is shared.
    assert not set(base.generations["sample_id"]) & set(other.generations["sample_id"])

    pairing = other.pairing_with(base)
    assert (pairing.paired, pairing.by_digest, pairing.by_sample_id) == (N, N, 0)
    assert (pairing.only_a, pairing.only_b, pairing.repeated_a, pairing.repeated_b) == (0, 0, 0, 0)
    assert [(a.name, a.a, a.b) for a in pairing.axes] == [
        ("gender", "gender", "gender"),
        ("race", "race", "ethnicity"),
        ("age", "age", "age"),
    ]
    # Every paired picture carries the same labels on both sides: each combination is unique,
    # so one wrong pair would disagree.
    for axis in pairing.axes:
        assert (axis.unmapped_a, axis.unmapped_b, axis.disagree) == ([], [], 0), axis

    agreement = other.agreement_with(base).set_index(["prompt_id", "axis", "group"]).sort_index()
    for prompt, identical in (("resume", N), ("dating", N), ("arrest", N - len(CHANGED))):
        row = agreement.loc[(prompt, "all", "all")]
        assert (row["n"], row["value"]) == (N, pytest.approx(identical / N))
        low, high = wilson(identical, N)
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    # Groups are named canonically (FairFace's names), one per picture's label.
    races = agreement.loc[("resume", "race")].index.tolist()
    assert races == sorted(set(RACES))
    # ... and an image-by-image oracle per group: the changed pictures' groups only.
    for group, rows in agreement.loc["arrest"].groupby(level="axis"):
        if group == "all":
            continue
        axis_index = ["gender", "race", "age"].index(group)
        for value, row in rows.droplevel("axis").iterrows():
            members = [i for i in range(N) if LABELS[i][axis_index] == value]
            kept = sum(i not in CHANGED for i in members)
            assert row["n"] == len(members), (group, value)
            if len(members) >= MIN_GROUP_SIZE:
                assert row["value"] == pytest.approx(kept / len(members)), (group, value)
            else:  # too few pictures for an estimate: said so, not estimated
                assert pd.isna(row["value"]) and "insufficient" in str(row["note"]), (group, value)

    invoke("analyze", str(new_run), "--only", "refusal")
    stored = invoke("analyze", str(card), "--only", "refusal", "--against", str(new_run))
    assert f"images paired: {N} ({N} by image digest, 0 by sample id, 0 by appearance)" in stored
    assert "only in A: 0, only in B: 0" in stored
    out = tmp_path / "report"
    invoke("report", str(new_run), str(card), "--out", str(out))
    markdown = (out / "report.md").read_text()
    assert "How the images were paired" in markdown
    assert f"| {N} | {N} | 0 | 0 | 0 | 0 | 0 / 0 |" in markdown
    assert "| race | race | ethnicity | none | none |" in markdown
    assert f"{100 * (N - len(CHANGED)) / N:.1f}% [" in markdown
    assert f"n={N}" in markdown


def test_the_dashboard_compares_an_import_with_a_run_image_by_image(
    new_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamlit.testing.v1 import AppTest

    from audit.dashboard.launch import RUN_DIRS_ENV, app_entry, run_dirs_env

    card = imported(tmp_path, new_run, "m4-bias-eval-fair-face")
    for run in (new_run, card):
        invoke("analyze", str(run), "--only", "refusal")
    # The import first: its labels (man, ethnicity) are compared under FairFace's names.
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env([card, new_run]))
    page = AppTest.from_file(str(app_entry()), default_timeout=60).run()
    page.switch_page("pages/6_Compare_runs.py").run()
    assert not page.exception and not page.error
    assert any(f"Images paired: {N} ({N} by image digest" in c.value for c in page.caption)
    naming = next(d.value for d in page.dataframe if "axis compared" in d.value)
    assert naming["axis compared"].tolist() == ["gender", "race", "age"]
    assert naming["paired images whose labels differ"].tolist() == [0, 0, 0]
    agreement = next(d.value for d in page.dataframe if "identical" in d.value)
    overall = agreement[agreement["axis"] == "all"].set_index("prompt")["identical"]
    assert overall.to_dict() == {"arrest": "75.0%", "dating": "100.0%", "resume": "100.0%"}


def test_values_the_name_table_cannot_name_are_reported_not_dropped(
    new_run: Path, tmp_path: Path
) -> None:
    odd = "<script>alert(1)</script> Martian"
    card = imported(tmp_path, new_run, "odd", **{"4": odd})
    base, other = audit.load_run(new_run), audit.load_run(card)
    pairing = other.pairing_with(base)
    assert pairing.paired == N  # the picture still pairs; its label is what differs
    race = next(axis for axis in pairing.axes if axis.name == "race")
    assert (race.unmapped_b, race.disagree) == ([odd], 1)
    invoke("analyze", str(new_run), "--only", "refusal")
    invoke("analyze", str(card), "--only", "refusal")
    invoke("report", str(new_run), str(card), "--out", str(tmp_path / "report"))
    html = (tmp_path / "report" / "report.html").read_text()
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Martian" in html and "Martian" in markdown
    assert "<script>alert(1)</script>" not in html + markdown


def test_runs_without_digests_pair_by_sample_id_and_different_pictures_never_pair(
    new_run: Path, tmp_path: Path
) -> None:
    generations = RunStore.open(new_run).read("generations")
    images = new_run.parents[1] / "fairface"
    source = m4_parquet(tmp_path / "same-name.parquet", images, generations)
    invoke("import", str(source), "--preset", "m4-bias-eval", "--out", str(tmp_path / "one"))
    first = tmp_path / "one" / "same-name-idefics-9b-instruct"
    # The same source file gives the same sample ids; one picture is another this time.
    frame = pd.read_parquet(source)
    other_picture = io.BytesIO()
    picture(99).save(other_picture, "PNG")
    frame.at[0, "image"] = {"bytes": other_picture.getvalue(), "path": None}
    frame.to_parquet(source)
    invoke("import", str(source), "--preset", "m4-bias-eval", "--out", str(tmp_path / "two"))
    second = tmp_path / "two" / "same-name-idefics-9b-instruct"
    pairing = audit.load_run(second).pairing_with(audit.load_run(first))
    assert (pairing.by_digest, pairing.by_sample_id, pairing.only_a, pairing.only_b) == (
        N - 1,
        0,
        1,
        1,
    )

    # A run written before digests were stored: its parts lack the column and still read.
    for part in RunStore(second).parts("generations"):
        pd.read_parquet(part).drop(columns="image_sha256").to_parquet(part)
    (second / "samples.parquet").unlink()
    assert "image_sha256" not in RunStore.open(second).read("generations")
    pairing = audit.load_run(second).pairing_with(audit.load_run(first))
    assert (pairing.by_digest, pairing.by_sample_id, pairing.only_a, pairing.only_b) == (
        0,
        N,
        0,
        0,
    )


def test_pictures_copied_with_loss_pair_by_appearance(new_run: Path, tmp_path: Path) -> None:
    """A published copy re-encoded with loss has other digests: its pictures pair by the
    appearance of their thumbnails, all of them, each with its own (no label disagrees)."""
    generations = RunStore.open(new_run).read("generations")
    lossy = tmp_path / "lossy"
    shutil.copytree(new_run.parents[1] / "fairface", lossy)
    for i in range(N):
        path = lossy / "val" / f"{i}.jpg"
        Image.open(path).convert("RGB").save(path, "JPEG", quality=40)
    source = m4_parquet(tmp_path / "m4-bias-eval-fair-face.parquet", lossy, generations)
    invoke("import", str(source), "--preset", "m4-bias-eval", "--out", str(tmp_path / "runs"))
    imported = tmp_path / "runs" / "m4-bias-eval-fair-face-idefics-9b-instruct"
    pairing = audit.load_run(imported).pairing_with(audit.load_run(new_run))
    assert (pairing.by_digest, pairing.by_sample_id, pairing.by_appearance) == (0, 0, N)
    assert (pairing.only_a, pairing.only_b) == (0, 0)
    assert all(axis.disagree == 0 for axis in pairing.axes)


def test_stable_bias_groups_the_name_table_would_merge_stay_apart(tmp_path: Path) -> None:
    """Stable Bias holds both ``Latino`` and ``Hispanic``: the table's FairFace entry would
    merge them into ``Latino_Hispanic``, so they stay as they are, and the report says so."""
    ethnicities = ["Latino", "Hispanic", "Black", "Pacific Islander"]
    genders = ["man", "woman", "non-binary"]
    n = 24
    rows: dict[str, list] = {"image": [], "gender_phrase": [], "ethnicity_phrase": []}
    for i in range(n):
        png = io.BytesIO()
        picture(100 + i).save(png, "PNG")
        rows["image"].append({"bytes": png.getvalue(), "path": None})
        rows["gender_phrase"].append(genders[i % 3])
        rows["ethnicity_phrase"].append(ethnicities[i % 4])
    for prompt in M4_PROMPTS:
        rows[f"9B_{prompt}"] = [f"{prompt} {i}" for i in range(n)]
    source = tmp_path / "m4-bias-eval-stable-bias.parquet"
    pd.DataFrame(rows).to_parquet(source)
    for out in ("one", "two"):
        invoke("import", str(source), "--preset", "m4-bias-eval", "--out", str(tmp_path / out))
    name = "m4-bias-eval-stable-bias-idefics-9b-instruct"
    base, other = (audit.load_run(tmp_path / out / name) for out in ("one", "two"))

    pairing = other.pairing_with(base)
    assert (pairing.paired, pairing.by_digest) == (n, n)
    ethnicity = next(axis for axis in pairing.axes if axis.a == "ethnicity")
    assert (ethnicity.name, ethnicity.b) == ("ethnicity", "ethnicity")
    assert ethnicity.merged_a == ethnicity.merged_b == ["Hispanic", "Latino"]
    assert (ethnicity.unmapped_a, ethnicity.unmapped_b, ethnicity.disagree) == ([], [], 0)
    agreement = other.agreement_with(base)
    groups = agreement[(agreement["axis"] == "ethnicity") & (agreement["prompt_id"] == "resume")]
    assert sorted(groups["group"]) == sorted(ethnicities)
    assert set(groups["n"]) == {n // 4} and set(groups["value"]) == {1.0}
