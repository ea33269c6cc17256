"""Choosing and loading a backend: family from the config, lazy weights, provenance, and a
``ModelLoadError`` that says what to do for every user mistake."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit.backends import GenerationRequest, GenerationSettings, load_backend
from audit.demo.tiny_models import FAMILIES
from audit.errors import ModelLoadError
from audit.spec import ModelSpec

SETTINGS = GenerationSettings(max_new_tokens=4)


def request() -> list[GenerationRequest]:
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return [GenerationRequest(Image.fromarray(pixels), "Describe this person.")]


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def test_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_backend(str(missing), ModelSpec(id=str(missing)))


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a model folder: it has no config.json"):
        load_backend(str(tmp_path), ModelSpec(id=str(tmp_path)))


def test_uncached_hub_id_offline() -> None:
    with pytest.raises(ModelLoadError) as error:
        load_backend(
            "audit-tests/not-cached-anywhere", ModelSpec(id="audit-tests/not-cached-anywhere")
        )
    message = str(error.value)
    assert "is not in the local cache and HF_HUB_OFFLINE is set" in message
    assert "huggingface-cli download audit-tests/not-cached-anywhere" in message


def test_invalid_hub_id() -> None:
    with pytest.raises(ModelLoadError, match="neither an existing local folder nor a valid hub id"):
        load_backend("not a/valid id", ModelSpec(id="not a/valid id"))


def test_unsupported_model_type(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="unsupported model type 'bert'"):
        load_backend(str(tmp_path), ModelSpec(id=str(tmp_path)))


def test_unknown_model_type(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no_such_vlm"}))
    with pytest.raises(ModelLoadError, match="unsupported model type"):
        load_backend(str(tmp_path), ModelSpec(id=str(tmp_path)))


def test_remote_code_needs_permission(tmp_path: Path) -> None:
    config = {"model_type": "custom_vlm", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="trust_remote_code: true"):
        load_backend(str(tmp_path), ModelSpec(id=str(tmp_path)))


@pytest.mark.parametrize(
    ("family", "backend", "message"),
    [
        ("idefics2", "idefics", "backend 'idefics' serves IDEFICS v1 .* this one is 'idefics2'"),
        ("idefics", "chat", "type 'idefics' is served by backend 'idefics'"),
    ],
)
def test_forced_backend_must_fit(
    model_dirs: dict[str, Path], family: str, backend: str, message: str
) -> None:
    folder = str(model_dirs[family])
    with pytest.raises(ModelLoadError, match=message):
        load_backend(folder, ModelSpec(id=folder, backend=backend))  # type: ignore[arg-type]


def test_weights_load_lazily(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(model_dirs["idefics2"], tmp_path / "model")
    (folder / "model.safetensors").unlink()
    backend = load_backend(str(folder), ModelSpec(id=str(folder)))  # the config is enough
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        backend.generate(request(), SETTINGS)


def test_chat_model_without_template(model_dirs: dict[str, Path], tmp_path: Path) -> None:
    folder = copy_model(model_dirs["idefics3"], tmp_path / "model")
    (folder / "chat_template.jinja").unlink()
    backend = load_backend(str(folder), ModelSpec(id=str(folder)))
    with pytest.raises(ModelLoadError, match="has no chat template"):
        backend.load()


@pytest.mark.parametrize("family", FAMILIES)
def test_info_records_provenance(model_dirs: dict[str, Path], family: str) -> None:
    import transformers

    folder = str(model_dirs[family])
    backend = load_backend(folder, ModelSpec(id=folder))
    before = backend.info()  # what loading will choose, without loading anything
    assert (before.dtype, before.device, before.image_processor) == ("float32", "cpu", "")
    backend.load()
    info = backend.info()
    assert info.model_id == folder
    assert info.model_type == family
    assert info.revision is None  # a local folder has no hub commit
    assert (info.dtype, info.device) == ("float32", "cpu")
    assert info.image_processor.endswith("ImageProcessorPil")  # no torchvision here
    assert info.extra["transformers_version"] == transformers.__version__


def test_hub_cache_load_records_commit(model_dirs: dict[str, Path]) -> None:
    """A hub id found in the (test) cache loads offline, and its commit hash is recorded."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(constants.HF_HUB_CACHE) / "models--audit-tests--tiny-idefics2"
    shutil.copytree(model_dirs["idefics2"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    backend = load_backend("audit-tests/tiny-idefics2", ModelSpec(id="audit-tests/tiny-idefics2"))
    info = backend.info()
    assert info.revision == commit
    assert backend.generate(request(), SETTINGS)[0].n_new_tokens >= 1


def test_explicit_dtype(model_dirs: dict[str, Path]) -> None:
    folder = str(model_dirs["idefics"])
    backend = load_backend(folder, ModelSpec(id=folder, dtype="bfloat16"))
    assert backend.info().dtype == "bfloat16"
    assert next(backend.model.parameters()).dtype == torch.bfloat16  # type: ignore[attr-defined]
    assert backend.generate(request(), SETTINGS)[0].n_new_tokens >= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_asked_without_a_gpu(model_dirs: dict[str, Path]) -> None:
    folder = str(model_dirs["idefics2"])
    backend = load_backend(folder, ModelSpec(id=folder, device="cuda"))
    with pytest.raises(ModelLoadError, match="torch sees no CUDA device"):
        backend.info()


def test_device_map_auto_loads(model_dirs: dict[str, Path]) -> None:
    folder = str(model_dirs["idefics3"])
    backend = load_backend(folder, ModelSpec(id=folder, device_map="auto"))
    backend.load()
    assert "device_map" in backend.info().extra
    assert backend.generate(request(), SETTINGS)[0].n_new_tokens >= 1


def test_importing_backends_does_not_import_torch() -> None:
    code = (
        "import sys, audit.backends, audit.demo.tiny_models; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
