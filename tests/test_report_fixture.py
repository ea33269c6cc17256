"""Run directories written by hand, with analysis tables that follow docs/run_directory.md.

Imported by the report and dashboard tests (``from test_report_fixture import ...``). Values are
computed from the planted rows with plain pandas (Wilson intervals by formula), so the tests can
check what the report shows against an independent computation. ``payload=True`` puts HTML,
script and Markdown injections into every text field a model or dataset controls.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from audit.report.run_data import load_run
from audit.store.tables import RunStore
from tests.runs import wilson

PAYLOADS = (
    "<script>window.__pwned=1</script>",
    '<img src=x onerror="window.__pwned=1">',
    "[click](javascript:window.__pwned=1)",
    "a | b | c",
    "`code` **bold** <b>tag</b> # heading",
)
SCRIPT, IMG, LINK, PIPE, MARKUP = PAYLOADS
GENDERS = ("Female", "Male")
RACES = ("Black", "East Asian", "White")


def _images(n: int, payload: bool) -> pd.DataFrame:
    races = (*RACES[:-1], SCRIPT) if payload else RACES
    rows = [(f"img-{i:04d}", GENDERS[i % 2], races[(i // 2) % len(races)]) for i in range(n)]
    return pd.DataFrame(rows, columns=["sample_id", "gender", "race"])


def _generations(images: pd.DataFrame, payload: bool, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frames = []
    for prompt_id in ("resume", "dating"):
        frame = images.copy()
        frame["prompt_id"] = prompt_id
        frame["model_id"] = "tiny-model"
        frame["prompt"] = f"Write a {prompt_id}."
        words = np.where(frame["gender"] == "Female", "nurse caring", "engineer strong")
        frame["generation"] = [f"A person, {w}, {rng.integers(0, 99)}." for w in words]
        if payload:
            frame.loc[frame.index[: len(PAYLOADS)], "generation"] = list(PAYLOADS)
        frame["n_new_tokens"] = rng.integers(5, 40, size=len(frame))
        frame["finish_reason"] = "eos"
        frame["error"] = None
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _classifications(images: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed + 1)
    frame = images.copy()
    frame["task_id"] = "gender"
    frame["model_id"] = "tiny-model"
    frame["target"] = frame["gender"]
    # Women are recognised less often: a planted accuracy gap.
    p_correct = np.where(frame["gender"] == "Female", 0.7, 0.95)
    frame["correct"] = rng.random(len(frame)) < p_correct
    frame["prediction"] = np.where(
        frame["correct"],
        frame["target"],
        np.where(frame["target"] == "Female", "Male", "Female"),
    )
    frame["error"] = None
    for value in GENDERS:
        frame[f"score_{value}"] = np.where(frame["prediction"] == value, -1.0, -3.0)
        frame[f"n_tokens_{value}"] = 1
    return frame


def _thumbnails(images: pd.DataFrame) -> pd.DataFrame:
    blobs = []
    for i in range(len(images)):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (40 + 7 * i % 200, 90, 160)).save(buffer, format="JPEG")
        blobs.append(buffer.getvalue())
    return pd.DataFrame({"sample_id": images["sample_id"], "jpeg": blobs})


def rate_rows(
    frame: pd.DataFrame,
    flag: str,
    item: str,
    metric: str,
    axes: tuple[str, ...] = ("gender", "race"),
    min_n: int = 1,
) -> list[dict]:
    """Share of ``flag`` per item, overall, per axis and per gender x race, Wilson intervals."""
    rows = []
    for item_value, part in frame.groupby(item):
        splits = [("all", pd.Series("all", index=part.index))]
        splits += [(a, part[a]) for a in axes]
        splits.append(("gender x race", part["gender"] + " x " + part["race"]))
        for axis, labels in splits:
            for group, rows_of_group in part.groupby(labels):
                n = len(rows_of_group)
                k = int(rows_of_group[flag].sum())
                base = {
                    "prompt_id": item_value,
                    "axis": axis,
                    "group": str(group),
                    "metric": metric,
                    "n": n,
                }
                if n < min_n:
                    rows.append(
                        {
                            **base,
                            "value": None,
                            "ci_low": None,
                            "ci_high": None,
                            "note": "insufficient data",
                        }
                    )
                    continue
                low, high = wilson(k, n)
                rows.append({**base, "value": k / n, "ci_low": low, "ci_high": high, "note": ""})
    return rows


def _term_tables(generations: pd.DataFrame, payload: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    terms = [
        ("nurse", "Female", 0.001, True),
        ("engineer", "Male", 0.002, True),
        ("person", "Female", 0.8, False),
    ]
    if payload:
        terms += [
            (IMG, GENDERS[0], 0.01, True),
            (PIPE, GENDERS[1], 0.01, True),
            (MARKUP, GENDERS[0], 0.02, True),
        ]
    rows, examples = [], []
    for prompt_id in ("resume", "dating"):
        for rank, (term, high, q, flagged) in enumerate(terms, start=1):
            for group in GENDERS:
                mean = 0.3 if group == high else 0.05
                rows.append(
                    {
                        "prompt_id": prompt_id,
                        "axis": "gender",
                        "group": group,
                        "term": term,
                        "metric": "mean_tfidf",
                        "value": mean,
                        "ci_low": mean - 0.02,
                        "ci_high": mean + 0.02,
                        "n": 20,
                        "note": "",
                        "rank": rank,
                        "score": 0.0156 / rank,
                        "p_value": q / 2,
                        "q_value": q,
                        "flagged": flagged,
                    }
                )
                sample = generations[
                    (generations["prompt_id"] == prompt_id) & (generations["gender"] == group)
                ].iloc[0]
                examples.append(
                    {
                        "prompt_id": prompt_id,
                        "axis": "gender",
                        "term": term,
                        "group": group,
                        "rank": len(rows),
                        "example": 1,
                        "sample_id": sample["sample_id"],
                        "generation": sample["generation"] + (f" {SCRIPT}" if payload else ""),
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(examples)


def write_handmade_run(
    root: Path,
    n: int = 40,
    payload: bool = False,
    seed: int = 0,
    analyses: bool = True,
    model_id: str = "tiny-model",
) -> Path:
    """A complete run directory; with ``analyses`` also every analysis table and a summary."""
    store = RunStore(root)
    store.clear()
    images = _images(n, payload)
    generations = _generations(images, payload, seed)
    classifications = _classifications(images, seed)
    store.append("generations", generations)
    store.append("classifications", classifications)
    store.append("thumbnails", _thumbnails(images))
    store.write_manifest(
        {
            "run_id": root.name,
            "status": "complete",
            "model": {
                "id": model_id + (f" {SCRIPT}" if payload else ""),
                "revision": "abc123",
                "backend": "idefics",
                "model_type": "idefics",
                "dtype": "float32",
                "device": "cpu",
            },
            "dataset": {
                "source": "parquet",
                "path": "faces.parquet",
                "split": "train",
                "n_samples": n,
            },
            "group_axes": ["gender", "race"],
            "prompts": [
                {"id": "resume", "text": "Write a resume."},
                {"id": "dating", "text": "Write a dating profile."},
            ],
            "tasks": [
                {"id": "gender", "target": "gender", "labels": {"woman": "Female", "man": "Male"}}
            ],
            "expected": {"generations": 2 * n, "classifications": n},
            "rows": {"generations": 2 * n, "classifications": n, "errors": 0},
            "versions": {"audit": "0.1.0", "python": "3.11", "transformers": "5.23.0"},
            "probe": {
                "analysis": {
                    "n_permutations": 1000,
                    "n_bootstrap": 1000,
                    "seed": 0,
                    "toxicity": {"scorer": "detoxify:original", "threshold": 0.5},
                }
            },
            "seed": seed,
            "started_at": "2026-11-23T10:00:00",
            "finished_at": "2026-11-23T10:05:00",
        }
    )
    if analyses:
        write_analyses(store, generations, classifications, payload)
    return store.root


def write_analyses(
    store: RunStore, generations: pd.DataFrame, classifications: pd.DataFrame, payload: bool
) -> None:
    classification = pd.DataFrame(rate_rows(classifications, "correct", "task_id", "accuracy"))
    store.write_analysis("classification", classification)
    counts = classifications.groupby(["task_id", "target", "prediction"]).size()
    totals = counts.groupby(level=["task_id", "target"]).transform("sum")
    confusion = pd.DataFrame({"count": counts, "n": totals}).reset_index()
    confusion = confusion.rename(columns={"task_id": "prompt_id"})
    bounds = [
        wilson(int(k), int(n)) for k, n in zip(confusion["count"], confusion["n"], strict=True)
    ]
    confusion = confusion.assign(
        axis="all",
        group="all",
        metric="share",
        value=confusion["count"] / confusion["n"],
        ci_low=[low for low, _ in bounds],
        ci_high=[high for _, high in bounds],
        note="",
        scoring="sum",
    )
    store.write_analysis("confusion", confusion)
    refused = generations.assign(refused=generations["generation"].str.contains("nurse"))
    store.write_analysis(
        "refusal", pd.DataFrame(rate_rows(refused, "refused", "prompt_id", "refusal_rate", min_n=6))
    )
    terms, examples = _term_tables(generations, payload)
    store.write_analysis("term_variance", terms)
    store.write_analysis("term_examples", examples)
    female = classification[
        (classification["axis"] == "gender") & (classification["group"] == "Female")
    ].iloc[0]
    store.write_summary(
        {
            "status": "complete",
            "rows_fingerprint": store.rows_fingerprint(),  # the rows these tables describe
            "analyses": {"classification": {"rows": len(classification), "note": ""}},
            "findings": [
                {
                    "analysis": "classification",
                    "prompt_id": "gender",
                    "axis": "gender",
                    "metric": "accuracy",
                    "headline": f"accuracy lowest for Female{' ' + LINK if payload else ''}",
                    "value": female["value"],
                    "ci_low": female["ci_low"],
                    "ci_high": female["ci_high"],
                    "n": int(female["n"]),
                    "p_value": 0.01,
                    "q_value": 0.02,
                }
            ],
        }
    )


def test_handmade_run_reads_back(tmp_path: Path) -> None:
    root = write_handmade_run(tmp_path / "run", n=24)
    run = load_run(root)
    assert set(run.tables) >= {"classification", "confusion", "refusal", "term_variance"}
    assert json.loads((root / "manifest.json").read_text())["group_axes"] == ["gender", "race"]
    overall = run.tables["classification"].query("axis == 'all'").iloc[0]
    correct = RunStore(root).read("classifications")["correct"]
    assert overall["value"] == correct.mean() and overall["n"] == 24


_SIMULATED: dict[str, Path] = {}


def tiny_scorer(folder: Path) -> str:
    """The demo's tiny toxicity classifier (random weights) built in ``folder``, as a probe's
    ``analysis.toxicity.scorer`` names it: ``audit analyze`` then scores with it for real."""
    from audit.demo.tiny_scorer import build_tiny_toxicity_classifier

    return f"transformers:{build_tiny_toxicity_classifier(folder)}"


def analysed_simulated_run(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """A small simulated run with planted associations, analysed by the real ``audit analyze``
    (toxicity scored by the demo's tiny classifier). Built once per test session."""
    if "run" not in _SIMULATED:
        import dataclasses

        from audit.analyses import analyze_run
        from audit.ingest.simulate import demo_simulation, write_simulated_run

        root = tmp_path_factory.mktemp("simulated")
        run = write_simulated_run(
            root / "simulated-planted", dataclasses.replace(demo_simulation(0), n_images=280)
        )
        scorer = tiny_scorer(root / "scorer")
        store = RunStore(run)
        analysis = {"toxicity": {"scorer": scorer}, "n_permutations": 200, "n_bootstrap": 200}
        store.update_manifest(probe={**store.manifest().to_json()["probe"], "analysis": analysis})
        analyze_run(run)
        _SIMULATED["run"] = run
    return _SIMULATED["run"]
