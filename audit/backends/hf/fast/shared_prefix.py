"""Each image's prompt prefix prefilled once and shared by every request showing that image.

The runner sends every image with each of the probe's prompts and classification tasks. A
chat-template prompt puts the image before the question (``User:<image tokens>question
<end_of_utterance>\\nAssistant:``), so all requests for one image start with the same tokens, and
for Idefics3 (several tiles of image tokens) that prefix is most of the prompt. Here each
distinct prefix runs through the model once; its key/value cache rows go to every request of
that image, which runs only its own suffix: ``generate`` for an open-ended prompt, one forward
pass and the labels for a classification.

A batch is laid out ``[padding][prefix][padding][suffix]`` with the padding masked, positions
taken from the attention mask (as ``generate`` does), so every token keeps the position it has in
the unshared prompt and results equal unshared ones to float tolerance.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from audit.backends.base import Generation, GenerationSettings
from audit.backends.batching import BatchCeiling, length_order, map_in_batches, restore_order
from audit.backends.hf.fast.decoding import Decoding, run_generate
from audit.backends.hf.fast.transformers_api import returned_cache, with_cache
from audit.backends.hf.generation import TokenRoles
from audit.backends.hf.prompt import Prompt

Result = TypeVar("Result")
#: Runs one batch: ``input_ids`` and ``attention_mask`` laid out prefix-then-suffix, the
#: batch's own copy of the prefixes' key/value cache, and the split indices of its rows.
RowsRunner = Callable[[dict[str, Any], Any, list[int]], list[Result]]


@dataclass(frozen=True)
class PromptSplit:
    """A prompt cut after its last image: the prefix to prefill, and the suffix's token ids."""

    prefix: Prompt
    suffix_ids: tuple[int, ...]

    @property
    def prefix_key(self) -> Hashable:
        """Equal for prompts whose prefixes tokenize alike: same text, same image objects."""
        prompt = self.prefix
        return prompt.text, tuple(id(image) for image in prompt.images), prompt.add_special_tokens


class PrefixEncoder(Protocol):
    """What prefix sharing needs from a backend."""

    @property
    def model(self) -> Any: ...

    @property
    def processor(self) -> Any: ...

    @property
    def roles(self) -> TokenRoles: ...

    def encode(self, prompts: Sequence[Prompt], padding_side: str) -> Any: ...

    def decoding_fast_paths(self) -> Decoding: ...


def positions_from_mask(mask: Any) -> Any:
    """Position ids that skip padding (what ``generate`` computes for padded batches)."""
    positions = mask.long().cumsum(-1) - 1
    return positions.masked_fill(mask == 0, 1)


def map_shared_prefixes(
    encoder: PrefixEncoder,
    splits: Sequence[PromptSplit],
    prefix_length: Callable[[Prompt], int],
    batch_size: int,
    ceiling: BatchCeiling,
    run_rows: RowsRunner[Result],
) -> list[Result]:
    """``run_rows`` over batches of the splits, each prefix prefilled once; results in order.

    Up to ``batch_size`` distinct prefixes (longest first) are prefilled together, then their
    requests run in batches of up to ``batch_size`` rows, sorted by suffix length. On
    out-of-memory the group of prefixes is halved and redone (``map_in_batches``), so no request
    is lost.
    """
    groups: dict[Hashable, list[int]] = {}
    for i, split in enumerate(splits):
        groups.setdefault(split.prefix_key, []).append(i)
    members = list(groups.values())
    order = length_order([prefix_length(splits[rows[0]].prefix) for rows in members])

    def run_groups(chunk: Sequence[list[int]]) -> list[list[Result]]:
        rows_per_batch = ceiling.limit(batch_size)
        prefix_inputs, prefilled = _prefill(encoder, [splits[rows[0]].prefix for rows in chunk])
        # (group, request) pairs, longest suffix first, so a batch mostly holds one prompt.
        pairs = [(g, i) for g, rows in enumerate(chunk) for i in rows]
        pairs.sort(key=lambda pair: -len(splits[pair[1]].suffix_ids))
        done: dict[int, Result] = {}
        for start in range(0, len(pairs), rows_per_batch):
            batch = pairs[start : start + rows_per_batch]
            inputs = prefix_then_suffix_inputs(prefix_inputs, batch, splits, encoder.roles.pad_id)
            cache = cache_rows(prefilled, inputs["input_ids"].new_tensor([g for g, _ in batch]))
            indices = [i for _, i in batch]
            done.update(zip(indices, run_rows(inputs, cache, indices), strict=True))
        return [[done[i] for i in rows] for rows in chunk]

    per_group = restore_order(
        order, map_in_batches([members[k] for k in order], batch_size, run_groups, ceiling)
    )
    results: list[Result | None] = [None] * len(splits)
    for rows, group_results in zip(members, per_group, strict=True):
        for i, result in zip(rows, group_results, strict=True):
            results[i] = result
    return results  # type: ignore[return-value]


def _prefill(encoder: PrefixEncoder, prefixes: Sequence[Prompt]) -> tuple[Any, Any]:
    """The prefixes encoded (left padded) and their key/value cache."""
    import torch

    from audit.backends.hf.fast.kv_cache import new_cache

    inputs = encoder.encode(prefixes, "left")
    model = encoder.model
    cache = new_cache(model, reserved=encoder.decoding_fast_paths().reserve_cache)
    with torch.inference_mode():
        output = model(
            **inputs,
            **with_cache(model, cache),
            position_ids=positions_from_mask(inputs["attention_mask"]),
            use_cache=True,
            logits_to_keep=1,
        )
    return inputs, returned_cache(output)


def generate_with_shared_prefixes(
    encoder: PrefixEncoder,
    splits: Sequence[PromptSplit],
    settings: GenerationSettings,
    batch_size: int,
    prefix_length: Callable[[Prompt], int],
    ceiling: BatchCeiling,
    roles: TokenRoles,
) -> list[Generation]:
    """One ``Generation`` per split, in order (``batch_size``: see ``map_shared_prefixes``;
    ``roles``: the stop tokens of this call)."""
    from audit.backends.hf.fast.kv_cache import reserve_room

    def run_rows(inputs: dict[str, Any], cache: Any, _indices: list[int]) -> list[Generation]:
        reserve_room(cache, settings.max_new_tokens)
        return run_generate(
            encoder.model,
            encoder.processor.tokenizer,
            {**inputs, **with_cache(encoder.model, cache)},
            settings,
            roles,
            encoder.decoding_fast_paths(),
        )

    return map_shared_prefixes(encoder, splits, prefix_length, batch_size, ceiling, run_rows)


def prefix_then_suffix_inputs(
    prefix_inputs: Any,
    batch: Sequence[tuple[int, int]],
    splits: Sequence[PromptSplit],
    pad_id: int,
) -> dict[str, Any]:
    """``input_ids`` and ``attention_mask`` for ``batch`` ((prefix row, split) pairs): each row's
    prefix, then its suffix, padding in between."""
    import torch

    prefix_ids = prefix_inputs["input_ids"]
    prefix_mask = prefix_inputs["attention_mask"]
    device = prefix_ids.device
    source = torch.tensor([g for g, _ in batch], device=device)
    suffixes = [splits[i].suffix_ids for _, i in batch]
    width = max(len(ids) for ids in suffixes)
    suffix_ids = torch.full((len(batch), width), pad_id, dtype=prefix_ids.dtype, device=device)
    suffix_mask = torch.zeros((len(batch), width), dtype=prefix_mask.dtype, device=device)
    for row, ids in enumerate(suffixes):
        suffix_ids[row, width - len(ids) :] = torch.tensor(ids, device=device)
        suffix_mask[row, width - len(ids) :] = 1
    return {
        "input_ids": torch.cat([prefix_ids[source], suffix_ids], dim=1),
        "attention_mask": torch.cat([prefix_mask[source], suffix_mask], dim=1),
    }


def cache_rows(cache: Any, rows: Any) -> Any:
    """A new cache holding ``rows`` of ``cache`` (repeats allowed); ``cache`` stays as it was.

    ``generate`` grows the cache it is given, so every batch gets its own; the layers' row
    selection replaces their tensors rather than writing into them.
    """
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(rows)
    return selected
