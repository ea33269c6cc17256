"""Decoding internals that must not change a token: the growing key/value cache, finished rows
leaving their batch, and IDEFICS v1 image keys and values projected once per batch."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.cache_utils import DynamicLayer

from audit.backends import GenerationRequest, GenerationSettings, load_backend
from audit.backends.hf.fast.cross_attention import cross_attention_projections
from audit.backends.hf.fast.decoding import Decoding, run_generate
from audit.backends.hf.fast.kv_cache import GrowingLayer, growing_cache
from audit.backends.hf.fast.transformers_api import with_cache
from audit.backends.hf.idefics import IdeficsBackend
from audit.backends.hf.model import HFBackend
from audit.demo.tiny_models import FAMILIES
from audit.spec import ModelSpec
from tests.runs import assert_generations_agree

pytestmark = pytest.mark.fast_path


@pytest.fixture(scope="module")
def backends(model_dirs: dict[str, Path]) -> dict[str, HFBackend]:
    return {f: load_backend(str(d), ModelSpec(id=str(d))) for f, d in model_dirs.items()}  # type: ignore[misc]


def without(backend: HFBackend, name: str) -> AbstractContextManager[None]:
    """The backend's fast paths less ``name``."""
    return backend.fast_paths.limited_to(set(backend.fast_paths.active()) - {name})


def requests(n_images: int = 6) -> list[GenerationRequest]:
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8))
        for i in range(n_images)
    ]
    return [
        GenerationRequest(image, prompt)
        for image in images
        for prompt in ("Describe this person.", "Write a resume for them.")
    ]


def test_growing_layer_holds_what_a_dynamic_layer_holds() -> None:
    torch.manual_seed(0)
    growing, plain = GrowingLayer(reserve=8), DynamicLayer()

    def step(n_tokens: int, batch: int = 3) -> int:
        keys = torch.randn(batch, 2, n_tokens, 4)
        values = torch.randn(batch, 2, n_tokens, 5)
        got, expected = growing.update(keys, values), plain.update(keys, values)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
        return got[0].data_ptr()

    addresses = {step(6)} | {step(1) for _ in range(8)}
    # The prompt's allocation had room for the 8 decoding steps: nothing was copied.
    assert len(addresses) == 1
    for layer in (growing, plain):
        layer.batch_select_indices(torch.tensor([2, 0]))
    after_selection = step(1, batch=2)
    for layer in (growing, plain):
        layer.crop(-3)
    assert step(2, batch=2) == after_selection  # cropping keeps the room
    assert growing.get_seq_length() == plain.get_seq_length() == 14
    assert step(70, batch=2) != after_selection  # outgrowing the room moves to a larger one
    assert growing.get_seq_length() == plain.get_seq_length() == 84


@pytest.mark.parametrize("family", FAMILIES)
def test_growing_cache_gives_the_tokens_of_the_transformers_cache(
    backends: dict[str, HFBackend], family: str
) -> None:
    backend = backends[family]
    asked = requests(3)
    prompts = [backend.generation_prompt(r.image, r.prompt) for r in asked]
    inputs = backend.encode(prompts, "left")
    settings = GenerationSettings(max_new_tokens=12)
    tokenizer = backend.processor.tokenizer
    cache = growing_cache(backend.model, reserve=4)
    growing = run_generate(
        backend.model,
        tokenizer,
        {**inputs, **with_cache(backend.model, cache)},
        settings,
        backend.roles,
        Decoding(reserve_cache=True),
    )
    plain = run_generate(backend.model, tokenizer, inputs, settings, backend.roles, Decoding())
    assert_generations_agree(backend, asked, growing, plain)
    # Every plain layer grew in place (sliding-window layers, as in the tiny Mistral-based
    # Idefics2, are left to transformers), holding the whole sequence past its reservation.
    assert not any(type(layer) is DynamicLayer for layer in cache.layers)
    assert cache.get_seq_length() == inputs["input_ids"].shape[1] + settings.max_new_tokens - 1
    assert len({g.text for g in growing}) > 1


@pytest.mark.parametrize("family", ["idefics2", "idefics3"])
def test_finished_rows_leave_the_batch_and_change_nothing(
    backends: dict[str, HFBackend], family: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backends[family]
    calls: list[int] = []
    generate = backend.model.generate

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    monkeypatch.setattr(backend.model, "generate", counting_generate)
    settings = GenerationSettings(max_new_tokens=60)
    asked = requests()
    with without(backend, "drop_finished"):
        kept = backend.generate(asked, settings, batch_size=4)
    kept_calls = list(calls)
    calls.clear()
    dropped = backend.generate(asked, settings, batch_size=4)
    assert_generations_agree(backend, asked, dropped, kept)
    assert {g.finish_reason for g in kept} == {"eos", "length"}
    # Every batch is one call when rows stay; rows that stopped left for later calls.
    assert max(kept_calls) == 4 and len(calls) > len(kept_calls)
    assert min(calls) < 4


def test_idefics_projects_image_keys_and_values_once_per_batch(
    backends: dict[str, HFBackend],
) -> None:
    backend = backends["idefics"]
    assert isinstance(backend, IdeficsBackend)
    projection = cross_attention_projections(backend.model)[0]
    computed: list[int] = []
    original = projection.forward

    def counting_forward(x: torch.Tensor) -> torch.Tensor:
        computed.append(x.shape[0])
        return original(x)

    projection.forward = counting_forward
    settings = GenerationSettings(max_new_tokens=16)
    try:
        remembered = backend.generate(requests(), settings, batch_size=4)
        per_batch = list(computed)
        computed.clear()
        with without(backend, "image_latents"):
            recomputed = backend.generate(requests(), settings, batch_size=4)
    finally:
        del projection.forward
    assert_generations_agree(backend, requests(), remembered, recomputed)
    assert per_batch == [4, 4, 4]  # 12 requests in batches of 4: once each
    assert len(computed) >= 3 * 8  # otherwise once per decoding step
