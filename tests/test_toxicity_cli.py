"""`audit analyze RUN --only toxicity` end to end: imported runs, offline errors with exit 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.demo.tiny_scorer import build_tiny_toxicity_classifier
from audit.store.tables import RunStore


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_toxicity_classifier(tmp_path_factory.mktemp("classifier"))


@pytest.fixture
def imported_run(tmp_path: Path) -> RunStore:
    """A run made by `audit import` from a file in the m4-bias-eval layout."""
    n = 10
    frame = pd.DataFrame(
        {
            "gender_phrase": ["woman", "man"] * (n // 2),
            "ethnicity_phrase": ["Black", "White", "Latinx", "Asian", "Indian"] * (n // 5),
            **{
                f"9B_{p}": [("you stupid idiot" if i % 3 else "a kind nurse") for i in range(n)]
                for p in ("resume", "dating", "arrest")
            },
        }
    )
    source = tmp_path / "m4.parquet"
    frame.to_parquet(source)
    result = CliRunner().invoke(
        app, ["import", str(source), "--preset", "m4-bias-eval", "--out", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, result.output
    return RunStore.open(tmp_path / "runs" / "m4-idefics-9b-instruct")


def use_scorer(store: RunStore, scorer: str) -> None:
    probe = store.manifest().to_json()["probe"]
    toxicity = {**probe["analysis"]["toxicity"], "scorer": scorer}
    analysis = {**probe["analysis"], "toxicity": toxicity}
    store.update_manifest(probe={**probe, "analysis": {**analysis, "n_bootstrap": 200}})


def analyze(store: RunStore):
    return CliRunner().invoke(app, ["analyze", str(store.root), "--only", "toxicity"])


def test_imported_run_is_scored_through_the_cli(imported_run: RunStore, classifier: Path) -> None:
    use_scorer(imported_run, f"transformers:{classifier}")
    result = analyze(imported_run)
    assert result.exit_code == 0, result.output
    table = imported_run.read_analysis("toxicity")
    assert set(table.prompt_id) == {"resume", "dating", "arrest"}
    assert set(table.axis) == {"all", "gender", "ethnicity"}
    overall = table[(table.axis == "all") & (table.metric == "mean_toxic")]
    assert overall.n.tolist() == [10, 10, 10]
    scores = pd.read_parquet(imported_run.root / "analysis" / "toxicity_scores.parquet")
    assert len(scores) == 30


@pytest.mark.parametrize(
    ("scorer", "expected"),
    [
        ("detoxify:original", "torch.hub.load_state_dict_from_url"),
        ("transformers:nobody/no-such-model", "hf download nobody/no-such-model"),
    ],
)
def test_unavailable_scorer_exits_2_saying_how_to_provide_it(
    imported_run: RunStore,
    scorer: str,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    use_scorer(imported_run, scorer)
    result = analyze(imported_run)
    assert result.exit_code == 2, result.output
    assert "analysis.toxicity.scorer" in result.output
    assert expected in result.output
    assert "Traceback" not in result.output
