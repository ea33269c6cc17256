"""Label scoring with each prompt encoded once (the ``label_prefix`` fast path).

The prompt is encoded once per request (left padded, positions from the attention mask, as
``generate`` does); its key/value cache is then repeated over the request's labels and only the
labels' tokens are run, attending to it: k labels cost about one prompt prefill. Where requests
showing the same image share their prompt prefix (``image_prefix``), that prefix is prefilled
once for all of them. Requests whose label merges with the prompt's last token are scored the
plain way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from audit.backends.base import LabelScores
from audit.backends.batching import BatchCeiling, length_order, map_in_batches, restore_order
from audit.backends.hf.fast.shared_prefix import (
    PromptSplit,
    map_shared_prefixes,
    positions_from_mask,
)
from audit.backends.hf.fast.transformers_api import (
    idefics_image_states,
    idefics_latent_inputs,
    returned_cache,
    with_cache,
)
from audit.backends.hf.prompt import Prompt
from audit.backends.hf.scoring import PromptEncoder, ScoringJob, score_plain


class PrefixScorer(PromptEncoder, Protocol):
    """What scoring against a cached prompt needs from a backend, beyond plain scoring."""

    def continuation_inputs(
        self, prefix_inputs: Any, prefix_output: Any, rows: Any, width: int
    ) -> dict[str, Any]: ...

    def shared_prefix_splits(self, prompts: Sequence[Prompt]) -> list[PromptSplit] | None: ...


def score_shared_prefix(
    encoder: PrefixScorer,
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
    encoder: PrefixScorer,
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


def _shared_batch(encoder: PrefixScorer, jobs: Sequence[ScoringJob]) -> list[LabelScores]:
    import torch

    inputs = encoder.encode([job.prefix for job in jobs], "left")
    mask = inputs["attention_mask"]
    with torch.inference_mode():
        prefix_output = encoder.model(
            **inputs, position_ids=positions_from_mask(mask), use_cache=True, logits_to_keep=1
        )
    return _label_scores(encoder, jobs, inputs, prefix_output)


def _label_scores(
    encoder: PrefixScorer, jobs: Sequence[ScoringJob], inputs: Any, prefix_output: Any
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
    encoder: PrefixScorer,
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


def idefics_label_inputs(
    model: Any, prefix_inputs: Any, prefix_output: Any, rows: Any, width: int
) -> dict[str, Any]:
    """IDEFICS v1's inputs for ``width`` label tokens of prompt rows ``rows`` run against the
    prompts' cache: an image attention mask continuing the prompt's last row, and the image
    states taken from the prompt's inputs or else its output, so nothing is encoded again."""
    import torch

    image_mask = prefix_inputs["image_attention_mask"][rows][:, -1:, :]
    inputs = {"image_attention_mask": image_mask.expand(-1, width, -1)}
    use_resampler = model.config.use_resampler
    key, states = idefics_image_states(prefix_inputs, prefix_output, use_resampler)
    # States may come flattened over (prompt, image); here they are per prompt.
    n_images = prefix_inputs["image_attention_mask"].shape[-1]
    states = states.reshape(-1, n_images, *states.shape[-2:])
    if key == "image_encoder_embeddings" and use_resampler:
        # Resampled once per prompt here rather than once per label row by the model.
        with torch.inference_mode():
            latents = model.model.perceiver_resampler(states.flatten(0, 1))
        latents = latents.reshape(states.shape[0], n_images, *latents.shape[-2:])
        return {**inputs, **idefics_latent_inputs(model, latents[rows])}
    return {**inputs, key: states[rows]}
