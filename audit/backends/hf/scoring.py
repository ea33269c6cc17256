"""Rank classification: the summed log-likelihood of each candidate continuation.

Two ways, equal to float tolerance:

- ``score_plain``: one right-padded sequence (image + prompt + label) per (request, label) pair,
  one forward pass per batch of pairs. Simple; costs k full passes for k labels.
- ``score_shared_prefix``: image + prompt encoded once per request (left padded, positions from
  the attention mask, as ``generate`` does); the prompt's key/value cache is then repeated over the
  request's labels and only the labels' tokens are run, attending to it. k labels cost about one
  prompt prefill.

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

from audit.backends.base import LabelScoreRequest, LabelScores
from audit.backends.batching import BatchCeiling, length_order, map_in_batches, restore_order
from audit.backends.hf.fast.shared_prefix import (
    PromptSplit,
    map_shared_prefixes,
    positions_from_mask,
)
from audit.backends.hf.fast.transformers_api import returned_cache, with_cache
from audit.backends.hf.prompt import Prompt, answer_start

ScoringMethod = Literal["auto", "shared_prefix", "plain"]

logger = logging.getLogger(__name__)


class PromptEncoder(Protocol):
    """What scoring needs from a backend."""

    @property
    def model(self) -> Any: ...

    def scoring_prompt(self, image: Image.Image, answer: str) -> Prompt: ...

    def text_ids(self, prompt: Prompt) -> list[int]: ...

    def encode(self, prompts: Sequence[Prompt], padding_side: str) -> Any: ...

    def continuation_inputs(
        self, prefix_inputs: Any, prefix_output: Any, rows: Any, width: int
    ) -> dict[str, Any]: ...

    def shared_prefix_splits(self, prompts: Sequence[Prompt]) -> list[PromptSplit] | None: ...


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
        start = answer_start(request.prefix)
        prefix = encoder.scoring_prompt(request.image, start)
        prefix_ids = encoder.text_ids(prefix)
        fulls, labels, on_boundary = [], [], True
        for continuation in request.continuations:
            full = encoder.scoring_prompt(request.image, start + continuation)
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


def score_shared_prefix(
    encoder: PromptEncoder,
    jobs: Sequence[ScoringJob],
    batch_size: int,
    ceiling: BatchCeiling | None = None,
) -> list[LabelScores]:
    """Prompt encoded once per request; labels scored against its repeated key/value cache."""
    results: list[LabelScores | None] = [None] * len(jobs)
    plain = [i for i, job in enumerate(jobs) if not job.on_boundary]
    for i, scores in zip(
        plain, score_plain(encoder, [jobs[i] for i in plain], batch_size, ceiling), strict=True
    ):
        results[i] = scores
    shared = [i for i, job in enumerate(jobs) if job.on_boundary]
    splits = encoder.shared_prefix_splits([jobs[i].prefix for i in shared])
    if splits is not None:
        scores = _score_with_shared_images(
            encoder, [jobs[i] for i in shared], splits, batch_size, ceiling
        )
    else:
        order = length_order([jobs[i].n_prefix_tokens for i in shared])
        ordered = [jobs[shared[k]] for k in order]
        scores = restore_order(
            order,
            map_in_batches(
                ordered, batch_size, lambda batch: _shared_batch(encoder, batch), ceiling
            ),
        )
    for i, score in zip(shared, scores, strict=True):
        results[i] = score
    return results  # type: ignore[return-value]


def _score_with_shared_images(
    encoder: PromptEncoder,
    jobs: Sequence[ScoringJob],
    splits: Sequence[PromptSplit],
    batch_size: int,
    ceiling: BatchCeiling | None,
) -> list[LabelScores]:
    """Requests showing the same image share its prefilled prefix (``shared_prefix``): one
    forward pass over each request's text after the image, then its labels."""
    import torch

    def run_rows(inputs: dict[str, Any], cache: Any, indices: list[int]) -> list[LabelScores]:
        cached = cache.get_seq_length()
        mask = inputs["attention_mask"]
        with torch.inference_mode():
            output = encoder.model(
                input_ids=inputs["input_ids"][:, cached:],
                attention_mask=mask,
                position_ids=positions_from_mask(mask)[:, cached:],
                **with_cache(encoder.model, cache),
                use_cache=True,
                logits_to_keep=1,
            )
        return _label_scores(encoder, [jobs[i] for i in indices], {"attention_mask": mask}, output)

    return map_shared_prefixes(
        encoder,
        splits,
        lambda prompt: len(encoder.text_ids(prompt)),
        batch_size,
        ceiling or BatchCeiling(),
        run_rows,
    )


def _shared_batch(encoder: PromptEncoder, jobs: Sequence[ScoringJob]) -> list[LabelScores]:
    import torch

    inputs = encoder.encode([job.prefix for job in jobs], "left")
    mask = inputs["attention_mask"]
    with torch.inference_mode():
        prefix_output = encoder.model(
            **inputs, position_ids=positions_from_mask(mask), use_cache=True, logits_to_keep=1
        )
    return _label_scores(encoder, jobs, inputs, prefix_output)


def _label_scores(
    encoder: PromptEncoder, jobs: Sequence[ScoringJob], inputs: Any, prefix_output: Any
) -> list[LabelScores]:
    """Each job's label scores from its prompt's forward pass: the last position predicts
    every label's first token, the cache serves the rest (``inputs``: the prompts' mask)."""
    import torch

    with torch.inference_mode():
        first = torch.log_softmax(prefix_output.logits[:, -1].float(), dim=-1)
        rows = [
            (r, j)
            for r, job in enumerate(jobs)
            for j, label in enumerate(job.label_ids)
            if len(label) > 1
        ]
        rest = _score_label_tails(encoder, jobs, inputs, prefix_output, rows) if rows else {}
    results = []
    for r, job in enumerate(jobs):
        sums = tuple(
            float(first[r, label[0]]) + rest.get((r, j), 0.0) if label else 0.0
            for j, label in enumerate(job.label_ids)
        )
        results.append(LabelScores(sums, tuple(len(label) for label in job.label_ids)))
    return results


def _score_label_tails(
    encoder: PromptEncoder,
    jobs: Sequence[ScoringJob],
    inputs: Any,
    prefix_output: Any,
    rows: list[tuple[int, int]],
) -> dict[tuple[int, int], float]:
    """Log-likelihood of each label's tokens after its first, one row per (request, label)."""
    import torch

    mask = inputs["attention_mask"]
    width = max(len(jobs[r].label_ids[j]) for r, j in rows) - 1
    tokens = torch.zeros((len(rows), width), dtype=torch.long, device=mask.device)
    label_mask = torch.zeros((len(rows), width), dtype=mask.dtype, device=mask.device)
    for n, (r, j) in enumerate(rows):
        fed = jobs[r].label_ids[j][:-1]  # the last token is only predicted, never fed
        tokens[n, : len(fed)] = torch.tensor(fed, device=mask.device)
        label_mask[n, : len(fed)] = 1
    source = torch.tensor([r for r, _ in rows], device=mask.device)
    cache = returned_cache(prefix_output)
    cache.batch_select_indices(source)
    full_mask = torch.cat([mask[source], label_mask], dim=1)
    extra = encoder.continuation_inputs(inputs, prefix_output, source, width)
    logits = encoder.model(
        input_ids=tokens,
        attention_mask=full_mask,
        position_ids=positions_from_mask(full_mask)[:, -width:],
        **with_cache(encoder.model, cache),
        use_cache=True,
        **extra,
    ).logits
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    tails = {}
    for n, (r, j) in enumerate(rows):
        targets = torch.tensor(jobs[r].label_ids[j][1:], device=mask.device)
        picked = logprobs[n, : len(targets)].gather(-1, targets[:, None])
        tails[(r, j)] = float(picked.sum())
    return tails
