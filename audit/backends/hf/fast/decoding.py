"""Decoding with the decoding fast paths: room reserved ahead in the key/value cache, and rows
that stopped leaving their batch (``Decoding``); with neither, transformers' own ``generate``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from audit.backends.base import Generation, GenerationSettings
from audit.backends.hf.fast.kv_cache import growing_cache, reserve_room
from audit.backends.hf.fast.transformers_api import given_cache, returned_cache, with_cache
from audit.backends.hf.generation import (
    TokenRoles,
    describe_new_tokens,
    generate_plain,
    generation_config,
)


@dataclass(frozen=True)
class Decoding:
    """The decoding fast paths one ``run_generate`` call uses (``audit.backends.hf.fast.policy``).

    ``reserve_cache``: decode into a key/value cache with room for the new tokens reserved up
    front (``kv_cache.growing_cache``) instead of transformers' default, which copies itself at
    every step. ``drop_finished``: ``generate`` pauses whenever a quarter of its rows have
    stopped and resumes from its cache with the others alone. ``pause_every_step`` (self-check
    only): pause and resume after every token, so a short check exercises resuming.
    """

    reserve_cache: bool = False
    drop_finished: bool = False
    pause_every_step: bool = False


def run_generate(
    model: Any,
    tokenizer: Any,
    inputs: Any,
    settings: GenerationSettings,
    roles: TokenRoles,
    decoding: Decoding = Decoding(),  # noqa: B008 (frozen: never mutated)
) -> list[Generation]:
    """Generate for one encoded, left-padded batch; one ``Generation`` per row.

    A batch decodes until its last row stops, so rows that stop early idle; with
    ``decoding.drop_finished`` (for models whose decoding needs only the key/value cache once
    prefilled) they leave the batch instead.
    """
    inputs = dict(inputs)
    if decoding.reserve_cache and given_cache(inputs) is None:
        inputs.update(with_cache(model, growing_cache(model, reserve=settings.max_new_tokens)))
    if not decoding.drop_finished:
        return generate_plain(model, tokenizer, inputs, settings, roles)
    return _generate_dropping_finished(
        model, tokenizer, inputs, settings, roles, decoding.pause_every_step
    )


def _generate_dropping_finished(
    model: Any,
    tokenizer: Any,
    call: dict[str, Any],
    settings: GenerationSettings,
    roles: TokenRoles,
    pause_every_step: bool,
) -> list[Generation]:
    import torch
    from transformers import StoppingCriteriaList

    config = generation_config(settings, roles)
    extra = {"tokenizer": tokenizer} if settings.stop_strings else {}
    n_rows = call["input_ids"].shape[0]
    new_tokens: list[list[int]] = [[] for _ in range(n_rows)]
    active = list(range(n_rows))  # the batch row of each row still decoding
    done = 0
    while True:
        prompt_length = call["input_ids"].shape[1]
        enough = 0 if pause_every_step else -(-len(active) // 4)
        pause = _PauseWhenRowsStop(prompt_length, roles.eos_ids, enough)
        config.max_new_tokens = settings.max_new_tokens - done
        config.min_new_tokens = max(0, settings.min_new_tokens - done)
        config.return_dict_in_generate = True
        with torch.inference_mode():
            output = model.generate(
                **call,
                generation_config=config,
                stopping_criteria=StoppingCriteriaList([pause]),
                **extra,
            )
        sequences = output.sequences
        step = sequences[:, prompt_length:]
        done += step.shape[1]
        for k, row in enumerate(active):
            new_tokens[row] += step[k].tolist()
        going = [
            k
            for k, row in enumerate(active)
            if describe_new_tokens(
                new_tokens[row], tokenizer, roles, settings.stop_strings
            ).finish_reason
            == "length"
        ]
        if not going or done >= settings.max_new_tokens:
            break
        keep = torch.tensor(going, device=sequences.device)
        cache = returned_cache(output)
        cache.batch_select_indices(keep)
        reserve_room(cache, settings.max_new_tokens - done)
        mask = call["attention_mask"]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], step.shape[1]))], dim=1)
        # Resuming from a cache, ``generate`` runs only the last token of each sequence.
        call = {
            "input_ids": sequences[keep],
            "attention_mask": mask[keep],
            **with_cache(model, cache),
        }
        active = [active[k] for k in going]
    return [describe_new_tokens(row, tokenizer, roles, settings.stop_strings) for row in new_tokens]


class _PauseWhenRowsStop:
    """A stopping criterion: every row is done once ``enough`` rows have produced an eos."""

    def __init__(self, prompt_length: int, eos_ids: Sequence[int], enough: int) -> None:
        self.prompt_length = prompt_length
        self.eos_ids = list(eos_ids)
        self.enough = enough

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        new = input_ids[:, self.prompt_length :]
        stopped = torch.isin(new, torch.tensor(self.eos_ids, device=new.device)).any(dim=1)
        if int(stopped.sum()) >= self.enough:
            return torch.ones_like(stopped)
        return torch.zeros_like(stopped)
