"""Rank classification: the summed log-likelihood of each candidate continuation.

``score_plain`` runs one right-padded sequence (image + prompt + label) per (request, label)
pair, one forward pass per batch of pairs: simple, k full passes for k labels. The
``label_prefix`` fast path (``fast/label_prefix.py``) gives the same scores for about one prompt
prefill.

A label's tokens are found by tokenizing the prompt text with and without it and diffing. When
the label would merge with the prompt's last token (no token boundary between them), the merged
token is scored as part of the label and that request is scored the plain way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from PIL import Image

from audit.backends.base import LabelScoreRequest, LabelScores, ScoringContext
from audit.backends.batching import BatchCeiling, length_order, map_in_batches, restore_order
from audit.backends.hf.prompt import Prompt, answer_start

ScoringMethod = Literal["auto", "shared_prefix", "plain"]

logger = logging.getLogger(__name__)


class PromptEncoder(Protocol):
    """What scoring needs from a backend."""

    @property
    def model(self) -> Any: ...

    def scoring_prompt(
        self, image: Image.Image, answer: str, context: ScoringContext
    ) -> Prompt: ...

    def text_ids(self, prompt: Prompt) -> list[int]: ...

    def encode(self, prompts: Sequence[Prompt], padding_side: str) -> Any: ...


@dataclass(frozen=True)
class ScoringJob:
    """One request, laid out: the prompt, each label's full prompt and scored token ids."""

    prefix: Prompt
    fulls: tuple[Prompt, ...]
    label_ids: tuple[tuple[int, ...], ...]
    n_prefix_tokens: int
    on_boundary: bool


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def prepare_jobs(encoder: PromptEncoder, requests: Sequence[LabelScoreRequest]) -> list[ScoringJob]:
    """Lay out each request and find each continuation's tokens by diffing tokenizations."""
    jobs = []
    for request in requests:
        # In a chat the answer starts after "Assistant:" with a space; the card's context puts
        # the text right after the image.
        chat = request.context == "chat"
        start = answer_start(request.prefix) if chat else request.prefix
        prefix = encoder.scoring_prompt(request.image, start, request.context)
        prefix_ids = encoder.text_ids(prefix)
        fulls, labels, on_boundary = [], [], True
        for continuation in request.continuations:
            full = encoder.scoring_prompt(request.image, start + continuation, request.context)
            full_ids = encoder.text_ids(full)
            shared = _common_prefix_length(prefix_ids, full_ids)
            if shared < len(prefix_ids):
                on_boundary = False
                logger.warning(
                    "label %r merges with the end of prompt %r into one token; "
                    "the merged token is scored as part of the label",
                    continuation,
                    request.prefix,
                )
            fulls.append(full)
            labels.append(tuple(full_ids[shared:]))
        jobs.append(ScoringJob(prefix, tuple(fulls), tuple(labels), len(prefix_ids), on_boundary))
    return jobs


def score_plain(
    encoder: PromptEncoder,
    jobs: Sequence[ScoringJob],
    batch_size: int,
    ceiling: BatchCeiling | None = None,
) -> list[LabelScores]:
    """One sequence per (request, label), right padded, batched over pairs."""
    pairs = [(job.fulls[j], job.label_ids[j]) for job in jobs for j in range(len(job.fulls))]
    order = length_order([len(p.text) for p, _ in pairs])
    sums = map_in_batches(
        [pairs[i] for i in order], batch_size, lambda batch: _plain_batch(encoder, batch), ceiling
    )
    flat = iter(restore_order(order, sums))
    return [
        LabelScores(
            logprob_sums=tuple(next(flat) for _ in job.label_ids),
            n_tokens=tuple(len(label) for label in job.label_ids),
        )
        for job in jobs
    ]


def _plain_batch(
    encoder: PromptEncoder, pairs: Sequence[tuple[Prompt, tuple[int, ...]]]
) -> list[float]:
    import torch

    inputs = encoder.encode([prompt for prompt, _ in pairs], "right")
    with torch.inference_mode():
        logits = encoder.model(**inputs, use_cache=False).logits
    lengths = inputs["attention_mask"].sum(-1).tolist()
    sums = []
    for row, ((_, label), length) in enumerate(zip(pairs, lengths, strict=True)):
        n = len(label)
        if n == 0:
            sums.append(0.0)
            continue
        target = inputs["input_ids"][row, length - n : length]
        if target.tolist() != list(label):
            raise RuntimeError(
                f"the processor encoded label tokens {target.tolist()} where the tokenizer gave "
                f"{list(label)}: the prompt layout and the processor disagree"
            )
        logprobs = torch.log_softmax(logits[row, length - n - 1 : length - 1].float(), dim=-1)
        sums.append(float(logprobs.gather(-1, target[:, None]).sum()))
    return sums
