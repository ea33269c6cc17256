"""Generation with each image's prompt prefix prefilled once and shared by its prompts.

The runner sends every image with each of the probe's prompts. A chat-template prompt puts the
image before the question (``User:<image tokens>question<end_of_utterance>\\nAssistant:``), so
all prompts of one image start with the same tokens, and for Idefics3 (several tiles of image
tokens) that prefix is most of the prompt. Here each distinct prefix runs through the model once;
its key/value cache rows are handed to ``generate`` for every prompt of that image, which then
runs only the question's tokens and the answer.

A generation batch is laid out ``[padding][prefix][padding][suffix]`` with the padding masked;
``generate`` takes positions from the attention mask, so every token keeps the position it has in
the unshared prompt and the output equals unshared generation to float tolerance.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from audit.backends.base import Generation, GenerationSettings
from audit.backends.batching import BatchCeiling, length_order, map_in_batches, restore_order
from audit.backends.generation import TokenRoles, run_generate
from audit.backends.prompt import Prompt
from audit.backends.scoring import positions_from_mask

logger = logging.getLogger(__name__)


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
    """What prefix-shared generation needs from a backend."""

    @property
    def model(self) -> Any: ...

    @property
    def processor(self) -> Any: ...

    @property
    def roles(self) -> TokenRoles: ...

    def encode(self, prompts: Sequence[Prompt], padding_side: str) -> Any: ...


def generate_with_shared_prefixes(
    encoder: PrefixEncoder,
    splits: Sequence[PromptSplit],
    settings: GenerationSettings,
    prefix_length: Callable[[Prompt], int],
    ceiling: BatchCeiling,
    *,
    drop_finished: bool = False,
) -> list[Generation]:
    """One ``Generation`` per split, in order (``drop_finished``: see ``run_generate``).

    Up to ``batch_size`` distinct prefixes are prefilled together, then their prompts generate
    in batches of up to ``batch_size`` rows, sorted by suffix length. On out-of-memory the group
    of prefixes is halved and redone (``map_in_batches``), so no prompt is lost.
    """
    groups: dict[Hashable, list[int]] = {}
    for i, split in enumerate(splits):
        groups.setdefault(split.prefix_key, []).append(i)
    members = list(groups.values())
    order = length_order([prefix_length(splits[rows[0]].prefix) for rows in members])

    def run_groups(chunk: Sequence[list[int]]) -> list[list[Generation]]:
        rows_per_batch = ceiling.limit(settings.batch_size)
        return _generate_groups(encoder, splits, chunk, settings, rows_per_batch, drop_finished)

    per_group = restore_order(
        order,
        map_in_batches([members[k] for k in order], settings.batch_size, run_groups, ceiling),
    )
    results: list[Generation | None] = [None] * len(splits)
    for rows, generations in zip(members, per_group, strict=True):
        for i, generation in zip(rows, generations, strict=True):
            results[i] = generation
    return results  # type: ignore[return-value]


def _generate_groups(
    encoder: PrefixEncoder,
    splits: Sequence[PromptSplit],
    groups: Sequence[list[int]],
    settings: GenerationSettings,
    rows_per_batch: int,
    drop_finished: bool,
) -> list[list[Generation]]:
    import torch

    from audit.backends.kv_cache import growing_cache, reserve_room

    prefix_inputs = encoder.encode([splits[rows[0]].prefix for rows in groups], "left")
    with torch.inference_mode():
        prefilled = encoder.model(
            **prefix_inputs,
            position_ids=positions_from_mask(prefix_inputs["attention_mask"]),
            past_key_values=growing_cache(encoder.model),
            use_cache=True,
            logits_to_keep=1,
        ).past_key_values
    # (group, request) pairs, longest suffix first, so a batch mostly holds one prompt.
    pairs = [(g, i) for g, rows in enumerate(groups) for i in rows]
    pairs.sort(key=lambda pair: -len(splits[pair[1]].suffix_ids))
    generated: dict[int, Generation] = {}
    for start in range(0, len(pairs), rows_per_batch):
        batch = pairs[start : start + rows_per_batch]
        inputs = _continuation_inputs(prefix_inputs, prefilled, batch, splits, encoder.roles.pad_id)
        reserve_room(inputs["past_key_values"], settings.max_new_tokens)
        outputs = run_generate(
            encoder.model,
            encoder.processor.tokenizer,
            inputs,
            settings,
            encoder.roles,
            drop_finished=drop_finished,
            reserve_cache=True,
        )
        generated.update(zip((i for _, i in batch), outputs, strict=True))
    return [[generated[i] for i in rows] for rows in groups]


def _continuation_inputs(
    prefix_inputs: Any,
    prefilled: Any,
    batch: Sequence[tuple[int, int]],
    splits: Sequence[PromptSplit],
    pad_id: int,
) -> dict[str, Any]:
    """``generate`` inputs: each row's prefix (cached) then its suffix, padding in between."""
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
        "past_key_values": cache_rows(prefilled, source),
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
