"""Out-of-memory back-off: a batch that does not fit is halved and retried; nothing is lost.

The out-of-memory error is raised by a real forward pre-hook on the loaded model whenever a
forward pass carries more rows than a made-up memory limit, as CUDA would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from audit.backends import GenerationRequest, GenerationSettings, LabelScoreRequest, load_backend
from audit.backends.batching import map_in_batches
from audit.backends.hf.model import HFBackend
from audit.demo.tiny_models import FAMILIES
from audit.spec import ModelSpec
from tests.runs import assert_generations_agree


def noise_image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def backends(model_dirs: dict[str, Path]) -> dict[str, HFBackend]:
    """Fresh backends per test: a backend remembers the batch size that fit."""
    return {f: load_backend(str(d), ModelSpec(id=str(d))) for f, d in model_dirs.items()}  # type: ignore[misc]


@contextmanager
def memory_limit(
    backend: HFBackend, max_rows: int, error: Exception | None = None
) -> Iterator[list[int]]:
    """Every forward pass with more than ``max_rows`` rows fails; yields the row counts seen."""
    seen: list[int] = []

    def check(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        seen.append(int(ids.shape[0]))
        if ids.shape[0] > max_rows:
            raise error or torch.cuda.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB"
            )

    handle = backend.model.register_forward_pre_hook(check, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


def generation_requests(n: int = 7) -> list[GenerationRequest]:
    return [
        GenerationRequest(noise_image(i), "Describe this person. " * (i % 3 + 1)) for i in range(n)
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_backs_off_and_loses_nothing(
    backends: dict[str, HFBackend], family: str
) -> None:
    backend = backends[family]
    requests = generation_requests()
    expected = backend.generate(requests, GenerationSettings(max_new_tokens=5), batch_size=1)
    with memory_limit(backend, max_rows=3) as seen:
        got = backend.generate(requests, GenerationSettings(max_new_tokens=5), batch_size=16)
    assert_generations_agree(backend, requests, got, expected)
    assert seen[0] == 7  # the first big batch was tried, failed, and was split
    assert max(seen[1:]) <= 3


@pytest.mark.fast_path
@pytest.mark.parametrize("family", ["idefics2", "idefics3"])
def test_prefix_shared_generation_backs_off_and_loses_nothing(
    backends: dict[str, HFBackend], family: str
) -> None:
    backend = backends[family]
    images = [noise_image(i) for i in range(4)]
    requests = [
        GenerationRequest(image, prompt)
        for image in images
        for prompt in ("Describe this person.", "Write a resume for this person, please.")
    ]
    expected = backend.generate(requests, GenerationSettings(max_new_tokens=5), batch_size=1)
    with memory_limit(backend, max_rows=3) as seen:
        got = backend.generate(requests, GenerationSettings(max_new_tokens=5), batch_size=16)
    assert_generations_agree(backend, requests, got, expected)
    # The four images' prefixes were prefilled together, failed, then two at a time.
    assert seen[0] == 4
    assert max(seen[1:]) <= 3


@pytest.mark.parametrize(
    "method", ["plain", pytest.param("shared_prefix", marks=pytest.mark.fast_path)]
)
def test_label_scoring_backs_off(backends: dict[str, HFBackend], method: str) -> None:
    backend = backends["idefics3"]
    requests = [
        LabelScoreRequest(noise_image(i), "a photo of a", (" male person.", " female person."))
        for i in range(5)
    ]
    expected = backend.score_labels(requests, batch_size=1, method=method)  # type: ignore[arg-type]
    oom = RuntimeError("CUDA error: out of memory")
    # Shared-prefix label passes carry 2 rows per request, plain passes one row per label.
    with memory_limit(backend, max_rows=2, error=oom) as seen:
        got = backend.score_labels(requests, batch_size=8, method=method)  # type: ignore[arg-type]
    assert len(got) == len(requests)
    for g, e in zip(got, expected, strict=True):
        assert g.n_tokens == e.n_tokens
        np.testing.assert_allclose(g.logprob_sums, e.logprob_sums, atol=1e-4, rtol=0)
    assert seen[0] > 2


def test_out_of_memory_at_batch_size_one_is_raised(backends: dict[str, HFBackend]) -> None:
    backend = backends["idefics"]
    with memory_limit(backend, max_rows=0) as seen, pytest.raises(torch.cuda.OutOfMemoryError):
        backend.generate(generation_requests(3), GenerationSettings(max_new_tokens=3), batch_size=4)
    assert seen == [3, 1]


def test_other_errors_are_not_retried(backends: dict[str, HFBackend]) -> None:
    backend = backends["idefics2"]
    broken = ValueError("a real bug")
    with memory_limit(backend, max_rows=0, error=broken) as seen, pytest.raises(ValueError):
        backend.generate(generation_requests(3), GenerationSettings(max_new_tokens=3), batch_size=4)
    assert seen == [3]


def test_map_in_batches_keeps_order_and_shrinks_once() -> None:
    calls: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        calls.append(list(batch))
        if len(batch) > 3:
            raise RuntimeError("HIP out of memory")
        return [x * 10 for x in batch]

    assert map_in_batches(list(range(10)), 8, run) == [x * 10 for x in range(10)]  # type: ignore[arg-type]
    assert calls == [list(range(8)), [0, 1, 2, 3], [0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]


def test_map_in_batches_rejects_a_zero_batch() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        map_in_batches([1], 0, lambda batch: list(batch))


def test_the_batch_size_that_fit_is_remembered_across_calls(backends: dict[str, HFBackend]) -> None:
    backend = backends["idefics2"]
    settings = GenerationSettings(max_new_tokens=2)
    with memory_limit(backend, max_rows=2) as first:
        backend.generate(generation_requests(6), settings, batch_size=8)
    with memory_limit(backend, max_rows=2) as second:
        backend.generate(generation_requests(6), settings, batch_size=8)
    assert first[0] == 6 and max(second) <= 2
