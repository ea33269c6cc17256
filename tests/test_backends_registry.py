"""Backends are chosen from a registry by ``config.model_type``; a probe naming an unknown
backend, or needing what its backend cannot do, is refused before any model loads."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from typer.testing import CliRunner

from audit.backends.hf.chat import ChatBackend
from audit.backends.registry import BACKENDS, BackendEntry, backend_names, choose_backend
from audit.cli import app
from audit.errors import ModelLoadError
from tests.runs import write_probe


class GenerationOnlyBackend(ChatBackend):
    """A chat-template backend that declares it cannot score labels."""

    name: ClassVar[str] = "generation-only"
    supports_label_scoring: ClassVar[bool] = False


def test_auto_picks_the_backend_made_for_the_model_type() -> None:
    assert choose_backend("auto", "idefics", "m").name == "idefics"
    assert choose_backend("auto", "idefics3", "m").name == "chat"
    assert choose_backend("auto", "qwen2_vl", "m").name == "chat"
    assert choose_backend("auto", "paligemma", "m").name == "paligemma"
    with pytest.raises(ModelLoadError, match="unknown backend 'vllm'"):
        choose_backend("vllm", "idefics3", "m")
    assert backend_names() == ("auto", "idefics", "paligemma", "chat", "endpoint")
    assert BACKENDS["endpoint"].remote  # a served model is named, never guessed by auto


def test_an_unknown_backend_is_a_probe_error(tmp_path: Path) -> None:
    probe = write_probe(tmp_path, "some/model")
    data = yaml.safe_load(probe.read_text())
    data["model"]["backend"] = "nonsense"
    probe.write_text(yaml.safe_dump(data))
    for command in (["validate", str(probe)], ["run", str(probe), "--out", str(tmp_path / "r")]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, result.output
        assert (
            f"{probe}: model.backend: unknown backend 'nonsense' "
            "(expected one of: auto, idefics, paligemma, chat, endpoint)" in result.output
        )


def test_a_probe_its_backend_cannot_serve_is_refused_before_the_weights_load(
    model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = BackendEntry(
        "generation-only",
        f"{__name__}:GenerationOnlyBackend",
        ("idefics3",),
        "Idefics3, generation only",
    )
    monkeypatch.setitem(BACKENDS, entry.name, entry)
    model = shutil.copytree(model_dirs["idefics3"], tmp_path / "model")
    (model / "model.safetensors").unlink()  # loading the weights would fail another way
    probe = write_probe(tmp_path, model)
    result = CliRunner().invoke(app, ["run", str(probe), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert (
        f"{probe}: classification (backend 'generation-only' cannot score labels)" in result.output
    )
    assert not (tmp_path / "run" / "manifest.json").exists()
