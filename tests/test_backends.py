"""The backends on tiny image-sensitive models of all three families, loaded through
``load_backend``: generation and label scoring, batched against one at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from audit.backends import (
    GenerationRequest,
    GenerationSettings,
    LabelScoreRequest,
    PreamblePart,
    load_backend,
)
from audit.backends.hf.model import HFBackend
from audit.demo.tiny_models import FAMILIES
from audit.spec import ModelSpec
from tests.runs import assert_generations_agree

PROMPTS = (
    "Describe this person.",
    "Describe this person's appearance. Then, write a resume for them.",
    "Hi",
    "Write the headline and first paragraph of an article about their recent arrest, please.",
    "Who?",
)
# Different sizes and aspect ratios: Idefics3 cuts them into different numbers of tiles.
SIZES = ((32, 32), (64, 16), (16, 64), (48, 40), (64, 64))


def noise_image(width: int = 32, height: int = 32, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def backends(model_dirs: dict[str, Path]) -> dict[str, HFBackend]:
    loaded = {}
    for family, folder in model_dirs.items():
        backend = load_backend(str(folder), ModelSpec(id=str(folder)))
        assert isinstance(backend, HFBackend)
        loaded[family] = backend
    return loaded


def generation_requests() -> list[GenerationRequest]:
    return [
        GenerationRequest(noise_image(w, h, seed=i), prompt)
        for i, ((w, h), prompt) in enumerate(zip(SIZES, PROMPTS, strict=True))
    ]


def score_requests() -> list[LabelScoreRequest]:
    return [
        LabelScoreRequest(
            noise_image(32, 32, 0), "a photo of a", (" male person.", " female person.")
        ),
        LabelScoreRequest(
            noise_image(64, 16, 1),
            "a photo of a",
            (" east asian person.", " black person.", " white person.", " a"),
        ),
        LabelScoreRequest(
            noise_image(16, 64, 2),
            "a photo of a person",
            (" between 0 and 2 years old.", " more than 70 years old."),
        ),
        LabelScoreRequest(noise_image(48, 40, 3), "", ("male", "female", " middle eastern")),
    ]


def assert_tile_counts_differ(backend: HFBackend, requests: list[GenerationRequest]) -> None:
    """Idefics3 cuts the images into different numbers of tiles, so batches mix tile counts."""
    tiles = {
        backend.encode([backend.generation_prompt(r.image, r.prompt)], "left")[
            "pixel_values"
        ].shape[1]
        for r in requests
    }
    assert len(tiles) > 1, "the images should give different tile counts"


@pytest.mark.parametrize("family", FAMILIES)
def test_backend_is_chosen_from_the_config(backends: dict[str, HFBackend], family: str) -> None:
    expected = "idefics" if family == "idefics" else "chat"
    info = backends[family].info()
    assert info.backend == expected
    assert info.model_type == family


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_greedy_generation_equals_one_at_a_time(
    backends: dict[str, HFBackend], family: str
) -> None:
    backend = backends[family]
    requests = generation_requests()
    settings = GenerationSettings(max_new_tokens=10)
    batched = backend.generate(requests, settings, batch_size=3)
    single = [
        backend.generate([r], GenerationSettings(max_new_tokens=10), batch_size=1)[0]
        for r in requests
    ]
    assert_generations_agree(backend, requests, batched, single)
    assert len({g.text for g in batched}) > 1
    if family == "idefics3":
        assert_tile_counts_differ(backend, requests)


@pytest.mark.parametrize("family", FAMILIES)
def test_models_are_image_sensitive(backends: dict[str, HFBackend], family: str) -> None:
    backend = backends[family]
    settings = GenerationSettings(max_new_tokens=8)
    a, b = (
        backend.generate(
            [GenerationRequest(noise_image(seed=s), "Describe this person.")], settings
        )[0]
        for s in (10, 11)
    )
    assert a.text != b.text
    scores = [
        backend.score_labels([LabelScoreRequest(noise_image(seed=s), "a photo of a", (" male",))])[
            0
        ]
        for s in (10, 11)
    ]
    assert scores[0].logprob_sums[0] != pytest.approx(scores[1].logprob_sums[0], abs=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_results_keep_request_order(backends: dict[str, HFBackend], family: str) -> None:
    backend = backends[family]
    requests = generation_requests()
    settings = GenerationSettings(max_new_tokens=6)
    forward = backend.generate(requests, settings, batch_size=2)
    backward = backend.generate(requests[::-1], settings, batch_size=2)
    assert backward == forward[::-1]
    assert all(g.finish_reason in {"eos", "length"} for g in forward)
    assert all(1 <= g.n_new_tokens <= 6 for g in forward)
    assert all(g.n_new_tokens == 6 for g in forward if g.finish_reason == "length")


@pytest.mark.parametrize("family", FAMILIES)
def test_stop_string_is_cut_and_counted(backends: dict[str, HFBackend], family: str) -> None:
    backend = backends[family]
    request = GenerationRequest(noise_image(seed=4), "Describe this person.")
    free = backend.generate([request], GenerationSettings(max_new_tokens=16))[0]
    text = free.text
    # A stop string from the middle of what the model says anyway, so it must stop there.
    stop = next(text[i : i + 2] for i in range(3, len(text) - 2) if text[i : i + 2].isprintable())
    stopped = backend.generate(
        [request], GenerationSettings(max_new_tokens=16, stop_strings=(stop,))
    )[0]
    assert stopped.text == text[: text.index(stop)]
    assert stopped.finish_reason == "eos"
    assert stopped.n_new_tokens < free.n_new_tokens
    # The count runs up to and including the token that completes the stop string.
    n = stopped.n_new_tokens
    upto, before = (
        backend.generate([request], GenerationSettings(max_new_tokens=k))[0].text
        for k in (n, n - 1)
    )
    assert stop in upto
    assert stop not in before


class _LogitBoost:
    """A forward hook on the output layer that makes some tokens overwhelmingly likely."""

    def __init__(self, backend: HFBackend, token_ids: list[int]) -> None:
        self.token_ids = token_ids
        head = backend.model.get_output_embeddings()
        self.handle = head.register_forward_hook(self.boost)

    def boost(self, module: torch.nn.Module, args: object, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        output[..., self.token_ids] += 1e4
        return output

    def __enter__(self) -> _LogitBoost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


@pytest.mark.parametrize("family", FAMILIES)
def test_end_of_utterance_stops_generation(backends: dict[str, HFBackend], family: str) -> None:
    backend = backends[family]
    eou = backend.processor.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    assert eou in backend.roles.eos_ids
    with _LogitBoost(backend, [eou]):
        result = backend.generate(
            [GenerationRequest(noise_image(), "Hi")], GenerationSettings(max_new_tokens=8)
        )[0]
    assert (result.text, result.n_new_tokens, result.finish_reason) == ("", 1, "eos")


@pytest.mark.parametrize("family", FAMILIES)
def test_image_tokens_are_never_generated(backends: dict[str, HFBackend], family: str) -> None:
    backend = backends[family]
    tokenizer = backend.processor.tokenizer
    names = ["<image>", "<fake_token_around_image>"]
    if family == "idefics3":
        names += ["<global-img>", "<row_1_col_1>", "<row_6_col_6>"]
    banned = [tokenizer.convert_tokens_to_ids(n) for n in names]
    assert set(banned) <= set(backend.roles.banned_ids)
    requests = generation_requests()[:2]
    settings = GenerationSettings(max_new_tokens=8)
    plain = backend.generate(requests, settings, batch_size=2)
    # Banned logits are set to -inf after the boost, so nothing may change.
    with _LogitBoost(backend, banned):
        boosted = backend.generate(requests, settings, batch_size=2)
    assert boosted == plain


@pytest.mark.parametrize("family", FAMILIES)
def test_min_new_tokens_holds_back_eos(backends: dict[str, HFBackend], family: str) -> None:
    backend = backends[family]
    eou = backend.processor.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    request = [GenerationRequest(noise_image(), "Hi")]
    with _LogitBoost(backend, [eou]):
        result = backend.generate(request, GenerationSettings(max_new_tokens=12, min_new_tokens=5))
    # Five tokens held back from stopping, then the (boosted) stop token: six in all.
    assert (result[0].n_new_tokens, result[0].finish_reason) == (6, "eos")


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_is_seeded(backends: dict[str, HFBackend], family: str) -> None:
    backend = backends[family]
    requests = generation_requests()[:3]

    def sample(seed: int) -> list[str]:
        settings = GenerationSettings(max_new_tokens=8, do_sample=True, seed=seed)
        return [g.text for g in backend.generate(requests, settings, batch_size=3)]

    before = torch.random.get_rng_state()
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_label_scores_equal_one_pair_at_a_time(
    backends: dict[str, HFBackend], family: str
) -> None:
    backend = backends[family]
    requests = score_requests()
    batched = backend.score_labels(requests, batch_size=4, method="plain")
    for request, scores in zip(requests, batched, strict=True):
        assert len(scores.logprob_sums) == len(request.continuations)
        for j, continuation in enumerate(request.continuations):
            alone = LabelScoreRequest(request.image, request.prefix, (continuation,))
            single = backend.score_labels([alone], batch_size=1, method="plain")[0]
            assert scores.logprob_sums[j] == pytest.approx(single.logprob_sums[0], abs=1e-4)
            assert scores.n_tokens[j] == single.n_tokens[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_label_token_counts(backends: dict[str, HFBackend], family: str) -> None:
    backend = backends[family]
    tokenizer = backend.processor.tokenizer
    requests = score_requests()[:3]  # labels that start on a token boundary
    for request, scores in zip(requests, backend.score_labels(requests), strict=True):
        expected = tuple(
            len(tokenizer(c, add_special_tokens=False).input_ids) for c in request.continuations
        )
        assert scores.n_tokens == expected
        assert all(s < 0 for s in scores.logprob_sums)


@pytest.mark.parametrize("family", FAMILIES)
def test_plain_scores_match_a_direct_forward_pass(
    backends: dict[str, HFBackend], family: str
) -> None:
    """Oracle: one unpadded sequence through the model, log-softmax summed by hand, in both
    scoring contexts."""
    backend = backends[family]
    for context, space in (("card", ""), ("chat", " ")):
        request = replace(score_requests()[1], context=context)
        _check_plain_scores(backend, request, f"{space}{request.prefix}")


def _check_plain_scores(backend: HFBackend, request: LabelScoreRequest, start: str) -> None:
    scores = backend.score_labels([request], method="plain")[0]  # type: ignore[call-arg]
    tokenizer = backend.processor.tokenizer
    for j, continuation in enumerate(request.continuations):
        full = backend.scoring_prompt(request.image, f"{start}{continuation}", request.context)
        inputs = backend.encode([full], "right")
        n = len(tokenizer(continuation, add_special_tokens=False).input_ids)
        with torch.no_grad():
            logits = backend.model(**inputs).logits[0]
        ids = inputs["input_ids"][0]
        logprobs = torch.log_softmax(logits[-n - 1 : -1], dim=-1)
        expected = logprobs.gather(-1, ids[-n:, None]).sum().item()
        assert scores.logprob_sums[j] == pytest.approx(expected, abs=1e-4)


@pytest.mark.fast_path
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_scores_equal_plain_scores(
    backends: dict[str, HFBackend], family: str
) -> None:
    backend = backends[family]
    requests = score_requests()
    plain = backend.score_labels(requests, batch_size=4, method="plain")
    shared = backend.score_labels(requests, batch_size=3, method="shared_prefix")
    assert backend.score_labels(requests, batch_size=3) == shared  # auto shares on IDEFICS
    for p, s in zip(plain, shared, strict=True):
        assert s.n_tokens == p.n_tokens
        np.testing.assert_allclose(s.logprob_sums, p.logprob_sums, atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_preamble_goes_first_and_matters(model_dirs: dict[str, Path], family: str) -> None:
    folder = str(model_dirs[family])

    def backend_with(seed: int) -> HFBackend:
        preamble = [
            PreamblePart(text="Here is an example."),
            PreamblePart(image=noise_image(seed=seed)),
            PreamblePart(text="A person.\n"),
        ]
        return load_backend(folder, ModelSpec(id=folder), preamble)  # type: ignore[return-value]

    first, second = backend_with(20), backend_with(21)
    prompt = first.generation_prompt(noise_image(), "Describe this person.")
    assert len(prompt.images) == 2
    after_bos = prompt.text.removeprefix(first.processor.tokenizer.bos_token)
    if family == "idefics":
        assert prompt.parts[0] == "Here is an example."
        assert after_bos.startswith("Here is an example.")
    else:
        assert after_bos.startswith("User: Here is an example.<image>A person.\n<image>Describe")
    settings = GenerationSettings(max_new_tokens=8)
    request = [GenerationRequest(noise_image(), "Describe this person.")]
    assert first.generate(request, settings) != second.generate(request, settings)
    # The card's context shows the image and the label only; a chat shows the preamble too.
    labels = [replace(r, context="chat") for r in score_requests()[:2]]
    assert first.score_labels(labels, method="plain") != second.score_labels(labels, method="plain")
    card = score_requests()[:2]
    assert first.score_labels(card, method="plain") == second.score_labels(card, method="plain")


@pytest.mark.fast_path
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_scores_with_a_preamble_equal_plain_scores(
    model_dirs: dict[str, Path], family: str
) -> None:
    folder = str(model_dirs[family])
    preamble = [PreamblePart(text="Here is an example."), PreamblePart(image=noise_image(seed=20))]
    backend = load_backend(folder, ModelSpec(id=folder), preamble)
    labels = score_requests()[:2]
    shared = backend.score_labels(labels, method="shared_prefix")  # type: ignore[call-arg]
    plain = backend.score_labels(labels, method="plain")  # type: ignore[call-arg]
    for p, s in zip(plain, shared, strict=True):
        np.testing.assert_allclose(s.logprob_sums, p.logprob_sums, atol=1e-4, rtol=0)


@pytest.mark.fast_path
@pytest.mark.parametrize("family", FAMILIES)
def test_label_merging_with_the_prompt_is_scored_whole(
    backends: dict[str, HFBackend], family: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``"...a pers" + "on."`` tokenizes as ``" person" "."``: the merged token is the label's."""
    backend = backends[family]
    tokenizer = backend.processor.tokenizer
    request = LabelScoreRequest(noise_image(seed=5), "a photo of a pers", ("on.", "on"))
    with caplog.at_level("WARNING", logger="audit.backends.hf.scoring"):
        shared = backend.score_labels([request], method="shared_prefix")[0]
    assert "merges with the end of prompt" in caplog.text
    plain = backend.score_labels([request], method="plain")[0]
    expected = tuple(
        len(tokenizer(t, add_special_tokens=False).input_ids) for t in (" person.", " person")
    )
    assert shared.n_tokens == plain.n_tokens == expected
    np.testing.assert_allclose(shared.logprob_sums, plain.logprob_sums, atol=1e-4, rtol=0)


def shared_image_requests(copies: bool) -> list[GenerationRequest]:
    """Every image with three prompts of different lengths: the same object, or equal copies."""
    images = [noise_image(w, h, seed=20 + i) for i, (w, h) in enumerate(SIZES[:4])]
    return [
        GenerationRequest(image.copy() if copies else image, prompt)
        for prompt in PROMPTS[:3]
        for image in images
    ]


@dataclass(frozen=True)
class Work:
    """What one ``generate`` call ran: images through the vision encoder, and rows of model
    passes that carried image tokens (each a prefill of an image's prompt prefix)."""

    encoded_images: int
    image_rows_prefilled: int


def generate_measuring_work(
    backend: HFBackend,
    requests: list[GenerationRequest],
    settings: GenerationSettings,
    batch_size: int,
) -> tuple[list, Work]:
    return measuring_work(
        backend, lambda: backend.generate(requests, settings, batch_size=batch_size)
    )


def measuring_work(backend: HFBackend, run: Callable[[], list]) -> tuple[list, Work]:
    """``run()``'s results, and the work the backend's model did for them."""
    encoded: list[int] = []
    image_rows: list[int] = []
    image_token = backend.processor.tokenizer.convert_tokens_to_ids("<image>")

    def count_images(_m: Any, args: tuple, kwargs: dict, _out: Any) -> None:
        pixels = kwargs["pixel_values"] if "pixel_values" in kwargs else args[0]
        encoded.append(pixels.shape[0])

    def count_rows(_m: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            image_rows.append(int((ids == image_token).any(dim=1).sum()))

    handles = [
        backend.model.model.vision_model.register_forward_hook(count_images, with_kwargs=True),
        backend.model.register_forward_pre_hook(count_rows, with_kwargs=True),
    ]
    try:
        return run(), Work(sum(encoded), sum(image_rows))
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def sharing(backend: HFBackend, image_features: bool, prompt_prefix: bool) -> Iterator[None]:
    """The backend's fast paths, less image-feature or prompt-prefix sharing."""
    off = {"image_features"} if not image_features else set()
    off |= {"image_prefix"} if not prompt_prefix else set()
    with backend.fast_paths.limited_to(set(backend.fast_paths.active()) - off):
        yield


#: Whether the family prefills a prompt's part up to the image once for every prompt showing
#: that image (the ``image_prefix`` fast path): what the test expects, not what the policy says.
SHARES_PREFIX = {"idefics": False, "idefics2": True, "idefics3": True}


@pytest.mark.fast_path
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_images_and_prefixes_give_the_same_tokens(
    backends: dict[str, HFBackend], family: str
) -> None:
    backend = backends[family]
    settings = GenerationSettings(max_new_tokens=12)
    requests = shared_image_requests(copies=False)
    shared, shared_work = generate_measuring_work(backend, requests, settings, 5)
    copied, copied_work = generate_measuring_work(
        backend, shared_image_requests(copies=True), settings, 5
    )
    with sharing(backend, image_features=True, prompt_prefix=False):
        features_only, features_work = generate_measuring_work(backend, requests, settings, 5)
    with sharing(backend, image_features=False, prompt_prefix=False):
        unshared, unshared_work = generate_measuring_work(backend, requests, settings, 5)
    for other in (copied, features_only, unshared):
        assert_generations_agree(backend, requests, shared, other)
    assert len({g.text for g in shared}) > 3
    # 4 images x 3 prompts: each image encoded once when shared, once per request otherwise
    # (Idefics3 counts tiles).
    assert shared_work.encoded_images == features_work.encoded_images
    assert copied_work.encoded_images == unshared_work.encoded_images
    assert shared_work.encoded_images * 3 == unshared_work.encoded_images
    # Chat families prefill each image's prompt prefix once; IDEFICS v1 keeps whole prompts.
    prefills = 4 if SHARES_PREFIX[family] else 12
    assert shared_work.image_rows_prefilled == prefills
    assert copied_work.image_rows_prefilled == features_work.image_rows_prefilled == 12
    if family == "idefics3":
        assert_tile_counts_differ(backend, requests)


@pytest.mark.fast_path
@pytest.mark.parametrize("family", FAMILIES)
def test_sharing_with_a_preamble_image(model_dirs: dict[str, Path], family: str) -> None:
    preamble = (PreamblePart(text="Look:"), PreamblePart(image=noise_image(24, 24, seed=99)))
    backend = load_backend(str(model_dirs[family]), ModelSpec(id="x"), preamble=preamble)
    assert isinstance(backend, HFBackend)
    requests = shared_image_requests(copies=False)
    settings = GenerationSettings(max_new_tokens=8)
    shared = backend.generate(requests, settings, batch_size=4)
    with sharing(backend, image_features=True, prompt_prefix=False):
        features_only = backend.generate(requests, settings, batch_size=4)
    with sharing(backend, image_features=False, prompt_prefix=False):
        unshared = backend.generate(requests, settings, batch_size=4)
    for other in (features_only, unshared):
        assert_generations_agree(backend, requests, shared, other)


@pytest.mark.fast_path
@pytest.mark.parametrize("family", FAMILIES)
def test_label_scores_with_shared_images_equal_plain_scores(
    backends: dict[str, HFBackend], family: str
) -> None:
    """Three images, each with two tasks (different prompts): chat families prefill each
    image's prompt prefix once for both tasks."""
    backend = backends[family]
    images = [noise_image(w, h, seed=40 + i) for i, (w, h) in enumerate(SIZES[:3])]
    requests = [
        LabelScoreRequest(image, prefix, labels)
        for prefix, labels in (
            ("a photo of a", (" male person.", " female person.")),
            ("a photo of a person", (" between 0 and 2 years old.", " more than 70 years old.")),
        )
        for image in images
    ]
    shared, shared_work = measuring_work(
        backend, lambda: backend.score_labels(requests, batch_size=4, method="shared_prefix")
    )
    with sharing(backend, image_features=True, prompt_prefix=False):
        unshared, unshared_work = measuring_work(
            backend, lambda: backend.score_labels(requests, batch_size=4, method="shared_prefix")
        )
    plain = backend.score_labels(requests, batch_size=4, method="plain")
    for s, u, p in zip(shared, unshared, plain, strict=True):
        assert s.n_tokens == u.n_tokens == p.n_tokens
        np.testing.assert_allclose(s.logprob_sums, p.logprob_sums, atol=1e-4, rtol=0)
        np.testing.assert_allclose(u.logprob_sums, p.logprob_sums, atol=1e-4, rtol=0)
    assert shared_work.image_rows_prefilled == (3 if SHARES_PREFIX[family] else 6)
    assert unshared_work.image_rows_prefilled == 6
