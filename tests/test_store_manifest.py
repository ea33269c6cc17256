"""The manifest is declared once (``store.schema.Manifest``): every producer writes one, and a
damaged or mistyped manifest is a clear error naming the file and the key, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from audit.cli import app
from audit.ingest.simulate import write_simulated_run
from audit.store.schema import Producer, RunStatus
from audit.store.tables import RunStore


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_simulated_run(tmp_path_factory.mktemp("simulated") / "run", seed=1)


def test_a_simulation_says_what_produced_it(simulated: Path) -> None:
    manifest = RunStore.open(simulated).manifest()
    assert (manifest.producer, manifest.status) == (Producer.SIMULATION, RunStatus.COMPLETE)
    assert manifest.simulated and manifest.rows.generations == manifest.expected.generations


def test_a_manifest_without_a_producer_gets_one_from_what_it_holds(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run")
    store.write_manifest({"run_id": "old", "status": "imported"})
    data = json.loads(store.manifest_path.read_text())
    del data["producer"]  # as written before the field existed
    store.manifest_path.write_text(json.dumps(data))
    assert store.manifest().producer == Producer.IMPORT


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"group_axes": "gender"}, "manifest.json: group_axes: Input should be a valid list"),
        ({"status": "halfway"}, "manifest.json: status: Input should be 'running', 'partial'"),
        ({"rows": {"generations": "many"}}, "manifest.json: rows.generations: Input should be"),
        ({"prompts": [{"text": "no id"}]}, "manifest.json: prompts[0].id: required key is missing"),
    ],
)
def test_a_mistyped_manifest_names_the_key(
    simulated: Path, tmp_path: Path, change: dict, message: str
) -> None:
    run = tmp_path / "run"
    RunStore(run).write_manifest(RunStore.open(simulated).manifest())
    data = {**json.loads((run / "manifest.json").read_text()), **change}
    (run / "manifest.json").write_text(json.dumps(data))
    for command in ("status", "analyze"):
        result = CliRunner().invoke(app, [command, str(run)])
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output


def test_a_manifest_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text("[1, 2]")
    result = CliRunner().invoke(app, ["status", str(run)])
    assert result.exit_code == 2 and "expected a JSON object of keys, got list" in result.output
