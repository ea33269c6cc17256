"""Files named by data are data: a planted pickle is never unpickled, wherever a probe, a
manifest or an imported dataset can name a path. Only a path the user vouches for on the
command line (``audit analyze --trust-checkpoint``) may load a checkpoint that is more than
weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from audit.demo.tiny_scorer import build_tiny_toxicity_classifier
from audit.ingest.simulate import write_simulated_run
from audit.store.tables import RunStore
from tests.runs import run_cli, write_probe


class WritesMarker:
    """Unpickling this writes a marker file: the proof that a file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "code from a file ran"))


def plant(path: Path, marker: Path) -> Path:
    """A checkpoint-looking pickle that writes ``marker`` when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": {"arch": {"args": {}}}, "payload": WritesMarker(marker)}, path)
    return path


@pytest.fixture
def simulated(tmp_path: Path) -> RunStore:
    return RunStore(write_simulated_run(tmp_path / "run", seed=3))


def set_scorer(store: RunStore, **toxicity: str) -> None:
    probe = store.manifest().probe
    analysis = {**probe.get("analysis", {}), "toxicity": toxicity}
    store.update_manifest(probe={**probe, "analysis": analysis})


def test_a_detoxify_checkpoint_named_by_a_run_directory_is_not_unpickled(
    simulated: RunStore, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    checkpoint = plant(tmp_path / "shared" / "model.ckpt", marker)
    set_scorer(simulated, scorer=f"detoxify:{checkpoint}")
    code, output = run_cli("analyze", str(simulated.root), "--only", "toxicity")
    assert code == 2 and "Traceback" not in output
    assert "holds Python objects besides weights" in output
    assert f"--trust-checkpoint {checkpoint}" in output
    assert not marker.exists()
    # The user's own word on the command line, and only that, lets it load.
    run_cli(
        "analyze", str(simulated.root), "--only", "toxicity", "--trust-checkpoint", str(checkpoint)
    )
    assert marker.exists()


def test_a_probe_naming_a_detoxify_checkpoint_does_not_unpickle_it(tmp_path: Path) -> None:
    """The probe's folder is where relative scorer paths resolve: plant one there."""
    marker = tmp_path / "marker"
    plant(tmp_path / "probe" / "scorer.ckpt", marker)
    run = RunStore(write_simulated_run(tmp_path / "run", seed=4))
    run.update_manifest(probe_path=str(tmp_path / "probe" / "probe.yaml"))
    set_scorer(run, scorer="detoxify:scorer.ckpt")
    code, output = run_cli("analyze", str(run.root), "--only", "toxicity")
    assert code == 2 and "holds Python objects besides weights" in output
    assert not marker.exists()


def test_a_text_classifier_folder_with_pickled_weights_is_not_unpickled(
    simulated: RunStore, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    folder = build_tiny_toxicity_classifier(tmp_path / "classifier")
    (folder / "model.safetensors").unlink()
    plant(folder / "pytorch_model.bin", marker)
    set_scorer(simulated, scorer=f"transformers:{folder}")
    code, output = run_cli("analyze", str(simulated.root), "--only", "toxicity")
    assert code == 2 and "Traceback" not in output
    assert "pickled weights with Python objects besides weights" in output
    assert not marker.exists()


def test_a_config_folder_beside_a_planted_pickle_loads_nothing_from_it(
    simulated: RunStore, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    config = tmp_path / "config"
    config.mkdir()
    (config / "config.json").write_text(json.dumps({"model_type": "bert"}))
    plant(config / "pytorch_model.bin", marker)
    plant(tmp_path / "model.ckpt", marker)
    set_scorer(
        simulated, scorer=f"detoxify:{tmp_path / 'model.ckpt'}", huggingface_config_path=str(config)
    )
    code, _ = run_cli("analyze", str(simulated.root), "--only", "toxicity")
    assert code == 2 and not marker.exists()


def test_a_model_folder_with_pickled_weights_is_not_unpickled(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    model = shutil.copytree(model_dirs["idefics3"], tmp_path / "model")
    (model / "model.safetensors").unlink()
    plant(model / "pytorch_model.bin", marker)
    probe = write_probe(tmp_path, model)
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "out"))
    assert code == 2 and "Traceback" not in output
    assert "pickled weights hold Python objects besides weights" in output
    assert not marker.exists()
