"""`audit card`: the Bias Evaluation section of a model card on one page, its numbers as JSON, and
`model-index` metadata that the Hub's own parser reads back to the same values."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from audit.cli import app
from audit.store.tables import RunStore


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def three_runs(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("card-runs")
    runs = []
    for name in ("model-a", "model-b", "model-c"):
        shutil.copytree(tiny_run, root / name)
        runs.append(root / name)
    return runs


def test_a_card_of_three_runs_fits_on_a_page_and_leads_with_what_holds(
    three_runs: list[Path], model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    code, output = _invoke("card", *map(str, three_runs), "--out", str(tmp_path))
    assert code == 0, output
    card = (tmp_path / "card.md").read_text(encoding="utf-8")
    lines = card.splitlines()
    assert len(lines) <= 80, len(lines)
    assert lines[0] == "## Bias evaluation"
    # The demo's models have random weights: said first; no path of this machine anywhere.
    assert "random weights" in card.split("### Findings")[0]
    assert str(model_dirs["idefics2"]) not in card and "idefics2 \\(local\\)" in card
    findings = card.split("### Findings")[1].split("###")[0]
    listed = [line for line in findings.splitlines() if re.match(r"\d+\. ", line)]
    assert len(listed) <= 8
    for line in listed:
        assert "q=" in line and re.search(r"\(n=\d+\)|n=\d+", line), line
    assert "accuracy (std)" in card and "### Method" in card
    assert len(list(tmp_path.glob("model-index-*.yaml"))) == 3


def test_model_index_round_trips_through_the_hub_parser(tiny_run: Path, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    assert _invoke("card", str(tiny_run), "--out", str(tmp_path))[0] == 0
    text = (tmp_path / "model-index.yaml").read_text(encoding="utf-8")
    index = yaml.safe_load(text)["model-index"]
    name, results = model_index_to_eval_results(index)
    parsed = ModelCard(f"---\n{text}---\n\n# card\n").data.eval_results
    assert [r.metric_value for r in parsed] == [r.metric_value for r in results]
    assert name == "idefics2 (local)"

    table = RunStore(tiny_run).read_analysis("classification")
    overall = table[
        (table["axis"] == "all") & (table["metric"] == "accuracy") & (table["scoring"] == "sum")
    ]
    accuracy = {r.metric_name: r for r in results if r.metric_type == "accuracy"}
    for row in overall.itertuples():
        result = accuracy[f"{row.prompt_id} accuracy"]
        assert result.metric_value == pytest.approx(row.value, abs=1e-6)
        assert result.metric_args["ci_low"] == pytest.approx(row.ci_low, abs=1e-6)
        assert result.metric_args["n"] == row.n
        assert result.task_type == "zero-shot-image-classification"
    assert any(r.metric_type == "refusal_rate" for r in results)


def test_the_json_holds_every_headline_number(tiny_run: Path, tmp_path: Path) -> None:
    assert _invoke("card", str(tiny_run), "--out", str(tmp_path))[0] == 0
    numbers = json.loads((tmp_path / "card.json").read_text(encoding="utf-8"))
    findings = RunStore(tiny_run).read_summary()["findings"]
    (run,) = numbers["runs"]
    assert len(run["findings"]) == len(findings)
    for stored, written in zip(findings, run["findings"], strict=True):
        for key in ("value", "ci_low", "ci_high", "n", "p_value", "q_value"):
            assert written[key] == stored.get(key)


def test_a_stale_run_is_refused(tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    (run / "analysis" / "summary.json").unlink()
    code, output = _invoke("card", str(run))
    assert code == 2 and "not analysed yet" in output


def test_the_card_of_the_injection_corpus_renders_as_text_on_github(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from payloads import payload_run
    from test_injection_corpus import REPORT_TAGS, _gfm

    run, _ = payload_run(tmp_path_factory)
    out = tmp_path_factory.mktemp("card-payloads")
    assert _invoke("card", str(run), "--out", str(out))[0] == 0
    rendered = _gfm((out / "card.md").read_text(encoding="utf-8"))
    # The card's one link, to the full report, is its own.
    links = re.findall(r'<a href="([^"]*)"', rendered)
    assert len(links) == 1 and links[0].endswith("report.html") and "://" not in links[0]
    rendered = re.sub(r"<a href=[^>]*>|</a>", "", rendered)
    tags = set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", rendered))
    assert tags <= REPORT_TAGS, f"markup from data: {tags - REPORT_TAGS}"
    assert "href=" not in rendered and "src=" not in rendered.replace("src=x", "")


def test_without_out_the_card_lands_in_the_first_run_directory(
    tiny_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    code, output = _invoke("card", str(run))
    assert code == 0, output
    for name in ("card.md", "card.json", "model-index.yaml"):
        assert (run / name).is_file() and f"wrote {run / name}" in output
    # The report written beside it is linked, relative to the card.
    assert "[report.html](report.html)" in (run / "card.md").read_text(encoding="utf-8")


def test_settings_from_a_shared_run_directory_are_text(tiny_run: Path, tmp_path: Path) -> None:
    from test_injection_corpus import REPORT_TAGS, _gfm

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    store = RunStore(run)
    probe = store.manifest().probe
    payload = "<img src=x onerror=alert(1)>"
    store.update_manifest(probe={**probe, "generation": {"max_new_tokens": payload}})
    assert _invoke("card", str(run), "--out", str(tmp_path / "out"))[0] == 0
    card = (tmp_path / "out" / "card.md").read_text(encoding="utf-8")
    rendered = re.sub(r"<a href=[^>]*>|</a>", "", _gfm(card))  # its own link to the report
    assert set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", rendered)) <= REPORT_TAGS
    assert "<img" not in rendered and "onerror=alert" in rendered.replace("\\\\", "")
