"""Tiny random-weight models: real architectures and processors, saved and loaded back through the
Auto classes, built fast and only once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from audit.demo.tiny_models import FAMILIES, MARKER_FILE, build_tiny_model
from audit.errors import ModelLoadError

MODEL_CLASSES = {
    "idefics": "IdeficsForVisionText2Text",
    "idefics2": "Idefics2ForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
}


def noise_image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("family", FAMILIES)
def test_builds_and_loads_through_the_auto_classes(tmp_path: Path, family: str) -> None:
    folder = build_tiny_model(family, tmp_path / family)
    assert folder == tmp_path / family
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    assert type(model).__name__ == MODEL_CLASSES[family]
    assert model.config.model_type == family
    assert 550 <= len(processor.tokenizer) <= 650
    tokenizer = processor.tokenizer
    assert tokenizer.pad_token_id not in {tokenizer.eos_token_id, tokenizer.bos_token_id}
    specials = ["<image>", "<fake_token_around_image>", "<end_of_utterance>"]
    if family == "idefics3":
        specials += ["<global-img>", "<row_1_col_1>", "<row_6_col_6>"]
    for token in specials:
        ids = tokenizer(token, add_special_tokens=False).input_ids
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, token
    assert (processor.chat_template is None) == (family == "idefics")
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2_000_000


def test_idefics3_template_gives_one_bos(tmp_path: Path) -> None:
    """The template writes ``<|begin_of_text|>`` and the tokenizer adds BOS like Llama 3's."""
    processor = AutoProcessor.from_pretrained(build_tiny_model("idefics3", tmp_path / "m"))
    tokenizer = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|begin_of_text|>User:<image>Hi<end_of_utterance>\nAssistant:")
    assert tokenizer("Hi").input_ids[0] == tokenizer.bos_token_id
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids.count(tokenizer.bos_token_id) == 1


def test_build_is_idempotent(tmp_path: Path) -> None:
    folder = build_tiny_model("idefics2", tmp_path / "m")
    weights = folder / "model.safetensors"
    before = weights.stat().st_mtime_ns
    build_tiny_model("idefics2", folder)
    assert weights.stat().st_mtime_ns == before
    marker = json.loads((folder / MARKER_FILE).read_text())
    assert marker["family"] == "idefics2" and marker["seed"] == 0


def test_other_parameters_rebuild(tmp_path: Path) -> None:
    folder = build_tiny_model("idefics", tmp_path / "m")
    first = (folder / "model.safetensors").read_bytes()
    build_tiny_model("idefics", folder, seed=1)
    assert (folder / "model.safetensors").read_bytes() != first
    build_tiny_model("idefics", folder, image_sensitive=False)
    config = json.loads((folder / "config.json").read_text())
    assert config["alpha_initializer"] == "zeros"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no staging folder left behind


def test_same_seed_same_weights(tmp_path: Path) -> None:
    a = build_tiny_model("idefics3", tmp_path / "a", seed=7)
    b = build_tiny_model("idefics3", tmp_path / "b", seed=7)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()


def test_refuses_to_overwrite_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="not a tiny model folder"):
        build_tiny_model("idefics", tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_unknown_family(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="family must be one of"):
        build_tiny_model("llava", tmp_path / "m")  # type: ignore[arg-type]


def _first_logits(folder: Path, image: Image.Image) -> torch.Tensor:
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder)
    inputs = processor(
        text=[["User:", image, "Hi<end_of_utterance>", "\nAssistant:"]],
        add_end_of_utterance_token=False,
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**inputs).logits[0, -1]


def test_image_sensitivity_is_what_the_flag_says(tmp_path: Path) -> None:
    """With IDEFICS v1's default closed gates the image cannot matter; opened, it does."""
    blind = build_tiny_model("idefics", tmp_path / "blind", image_sensitive=False)
    seeing = build_tiny_model("idefics", tmp_path / "seeing")
    a, b = noise_image(1), noise_image(2)
    assert torch.equal(_first_logits(blind, a), _first_logits(blind, b))
    assert not torch.allclose(_first_logits(seeing, a), _first_logits(seeing, b), atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_small_size_for_benchmarks(tmp_path: Path, family: str) -> None:
    folder = build_tiny_model(family, tmp_path / family, size="small")
    config = json.loads((folder / "config.json").read_text())
    text = config.get("text_config", config)
    vision = config["vision_config"]
    assert text["hidden_size"] == 256 and text["num_hidden_layers"] == 4
    assert vision["image_size"] == 224
    processor = AutoProcessor.from_pretrained(folder)
    output = processor.image_processor([noise_image(0)], return_tensors="pt")
    pixels = output if isinstance(output, torch.Tensor) else output["pixel_values"]  # v1: a tensor
    assert pixels.shape[-1] == 224
