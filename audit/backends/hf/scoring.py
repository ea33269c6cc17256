"""Rank classification: the summed log-likelihood of each candidate continuation.

``score_plain`` runs one right-padded sequence (image + prompt + label) per (request, label)
pair, one forward pass per batch of pairs: simple, k full passes for k labels. The
``label_prefix`` fast path (``fast/label_prefix.py``) gives the same scores for about one prompt
prefill.

A label's tokens are found in the processor's own encoding of the prompt with and without it
(``LabelSpan``): processors write tokens of their own around the text (PaliGemma a BOS after the
image and a newline after the text, mllama a BOS after ``<|image|>``, templates an end-of-turn),
so the label is the part of the longer encoding that the shorter lacks, and whatever follows it
is not scored. When the label would merge with the prompt's last token (no token boundary
between them), the merged token is scored as part of the label and that request is scored the
plain way.
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


@dataclass(frozen=True)
class LabelSpan:
    """Where a continuation sits in the processor's encoding of the prompt that ends with it."""

    #: The continuation's token ids (with the prompt's last token where the two merge).
    label_ids: tuple[int, ...]
    #: Tokens the processor writes after it (not scored).
    n_after: int
    #: The prompt's own tokens are unchanged by the continuation (no merge across the boundary).
    on_boundary: bool


class PromptEncoder(Protocol):
    """What scoring needs from a backend."""

    @property
    def model(self) -> Any: ...

    def scoring_prompt(
        self, image: Image.Image, answer: str, context: ScoringContext
    ) -> Prompt: ...

    def text_ids(self, prompt: Prompt) -> list[int]: ...

    def encode(self, prompts: Sequence[Prompt], padding_side: str) -> Any: ...

    def label_span(self, prefix: Prompt, full: Prompt) -> LabelSpan: ...


@dataclass(frozen=True)
class ScoringJob:
    """One request, laid out: the prompt, each label's full prompt and scored token ids."""

    prefix: Prompt
    fulls: tuple[Prompt, ...]
    label_ids: tuple[tuple[int, ...], ...]
    n_prefix_tokens: int
    #: Every label follows the prompt's last token and ends the encoding, so the prompt can be
    #: encoded once and the labels run after it (``label_prefix``).
    on_boundary: bool
    #: Per label, the tokens the processor writes after it.
    n_after: tuple[int, ...] = ()


def common_prefix_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """How many leading elements ``a`` and ``b`` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def find_label_span(prefix_ids: Sequence[int], full_ids: Sequence[int]) -> LabelSpan:
    """The continuation in ``full_ids``: what ``prefix_ids`` lacks between their shared start
    and their shared end."""
    start = common_prefix_length(prefix_ids, full_ids)
    room = min(len(prefix_ids), len(full_ids)) - start
    end = common_prefix_length(prefix_ids[::-1], full_ids[::-1])
    end = min(end, room)
    return LabelSpan(
        label_ids=tuple(int(i) for i in full_ids[start : len(full_ids) - end]),
        n_after=end,
        on_boundary=start + end == len(prefix_ids),
    )


def prepare_jobs(encoder: PromptEncoder, requests: Sequence[LabelScoreRequest]) -> list[ScoringJob]:
    """Lay out each request and find each continuation's tokens in the processor's encoding."""
    jobs = []
    for request in requests:
        # In a chat the answer starts after "Assistant:" with a space; the card's context puts
        # the text right after the image.
        chat = request.context == "chat"
        start = answer_start(request.prefix) if chat else request.prefix
        prefix = encoder.scoring_prompt(request.image, start, request.context)
        fulls, spans = [], []
        for continuation in request.continuations:
            full = encoder.scoring_prompt(request.image, start + continuation, request.context)
            span = encoder.label_span(prefix, full)
            if not span.on_boundary:
                logger.warning(
                    "label %r merges with the end of prompt %r into one token; "
                    "the merged token is scored as part of the label",
                    continuation,
                    request.prefix,
                )
            fulls.append(full)
            spans.append(span)
        jobs.append(
            ScoringJob(
                prefix,
                tuple(fulls),
                tuple(s.label_ids for s in spans),
                len(encoder.text_ids(prefix)),
                all(s.on_boundary and not s.n_after for s in spans),
                tuple(s.n_after for s in spans),
            )
        )
    return jobs


def score_plain(
    encoder: PromptEncoder,
    jobs: Sequence[ScoringJob],
    batch_size: int,
    ceiling: BatchCeiling | None = None,
) -> list[LabelScores]:
    """One sequence per (request, label), right padded, batched over pairs."""
    pairs = [
        (job.fulls[j], job.label_ids[j], job.n_after[j] if job.n_after else 0)
        for job in jobs
        for j in range(len(job.fulls))
    ]
    order = length_order([len(p.text) + len(p.answer or "") for p, _, _ in pairs])
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
    encoder: PromptEncoder, pairs: Sequence[tuple[Prompt, tuple[int, ...], int]]
) -> list[float]:
    import torch

    inputs = encoder.encode([prompt for prompt, _, _ in pairs], "right")
    with torch.inference_mode():
        logits = encoder.model(**inputs, use_cache=False).logits
    lengths = inputs["attention_mask"].sum(-1).tolist()
    sums = []
    for row, ((_, label, n_after), length) in enumerate(zip(pairs, lengths, strict=True)):
        n, end = len(label), length - n_after
        if n == 0:
            sums.append(0.0)
            continue
        target = inputs["input_ids"][row, end - n : end]
        if target.tolist() != list(label):
            raise RuntimeError(
                f"the processor encoded label tokens {target.tolist()} where the prompt laid out "
                f"without this image gave {list(label)}: the label's tokens depend on the image"
            )
        logprobs = torch.log_softmax(logits[row, end - n - 1 : end - 1].float(), dim=-1)
        sums.append(float(logprobs.gather(-1, target[:, None]).sum()))
    return sums
