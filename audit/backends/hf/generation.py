"""One batch of transformers' ``generate`` with the settings that keep batched output exact.

Left padding and an attention mask come from the caller's encoding; here: the stop tokens
(eos and ``<end_of_utterance>``), the image tokens the model must never emit, stop strings,
and turning each row's new tokens into a ``Generation`` (text, token count, finish reason).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from audit.backends.base import Generation, GenerationSettings

#: Placeholder tokens of the IDEFICS family (and common names elsewhere) a model must not emit.
IMAGE_TOKEN_NAMES = (
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
    *(f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)),
)
END_OF_UTTERANCE = "<end_of_utterance>"
_PROCESSOR_IMAGE_ATTRIBUTES = (
    "image_token",
    "fake_image_token",
    "global_image_tag",
    "boi_token",
    "eoi_token",
)


@dataclass(frozen=True)
class TokenRoles:
    """Token ids with a job in generation."""

    eos_ids: tuple[int, ...]
    banned_ids: tuple[int, ...]
    pad_id: int
    bos_id: int | None


def _as_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def ensure_pad_token(tokenizer: Any) -> None:
    """Give the tokenizer a pad token distinct from eos/bos when it has none (unk if it can)."""
    specials = {tokenizer.eos_token, tokenizer.bos_token}
    if tokenizer.pad_token is not None and tokenizer.pad_token not in specials:
        return
    if tokenizer.unk_token is not None and tokenizer.unk_token not in specials:
        tokenizer.pad_token = tokenizer.unk_token
    elif tokenizer.pad_token is None:
        # Nothing better exists; rows are cut at their first eos, so the pad value is harmless.
        tokenizer.pad_token = tokenizer.eos_token


def token_roles(processor: Any, model: Any) -> TokenRoles:
    """Stop, banned and pad token ids for this processor + model."""
    tokenizer = processor.tokenizer
    vocab = tokenizer.get_vocab()
    eos = set(_as_tuple(tokenizer.eos_token_id))
    eos |= set(_as_tuple(getattr(model.generation_config, "eos_token_id", None)))
    if END_OF_UTTERANCE in vocab:
        eos.add(vocab[END_OF_UTTERANCE])
    names = set(IMAGE_TOKEN_NAMES)
    names |= {
        getattr(processor, a)
        for a in _PROCESSOR_IMAGE_ATTRIBUTES
        if isinstance(getattr(processor, a, None), str)
    }
    banned = {vocab[name] for name in names if name in vocab}
    image_token_id = getattr(processor, "image_token_id", None)
    if isinstance(image_token_id, int):
        banned.add(image_token_id)
    pad_id = int(tokenizer.pad_token_id)
    if pad_id not in eos:
        # Padding after a finished row must be unambiguous, so the model may never emit it.
        banned.add(pad_id)
    return TokenRoles(
        eos_ids=tuple(sorted(eos)),
        banned_ids=tuple(sorted(banned - eos)),
        pad_id=pad_id,
        bos_id=tokenizer.bos_token_id,
    )


def generation_config(settings: GenerationSettings, roles: TokenRoles) -> Any:
    """A fresh ``GenerationConfig``: the run's settings, not the checkpoint's defaults."""
    from transformers import GenerationConfig

    options: dict[str, Any] = {
        "max_new_tokens": settings.max_new_tokens,
        "min_new_tokens": settings.min_new_tokens,
        "do_sample": settings.do_sample,
        "eos_token_id": list(roles.eos_ids),
        "pad_token_id": roles.pad_id,
        "bos_token_id": roles.bos_id,
        "bad_words_ids": [[i] for i in roles.banned_ids] or None,
        "num_beams": 1,
    }
    if settings.do_sample:
        options.update(temperature=settings.temperature, top_p=settings.top_p, top_k=0)
    if settings.stop_strings:
        options["stop_strings"] = list(settings.stop_strings)
    return GenerationConfig(**options)


def generate_plain(
    model: Any, tokenizer: Any, inputs: Any, settings: GenerationSettings, roles: TokenRoles
) -> list[Generation]:
    """transformers' own ``generate`` for one encoded, left-padded batch; one ``Generation`` per
    row."""
    import torch

    config = generation_config(settings, roles)
    extra = {"tokenizer": tokenizer} if settings.stop_strings else {}
    with torch.inference_mode():
        output = model.generate(**inputs, generation_config=config, **extra)
    new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
    return [describe_new_tokens(row, tokenizer, roles, settings.stop_strings) for row in new_tokens]


def describe_new_tokens(
    ids: Sequence[int], tokenizer: Any, roles: TokenRoles, stop_strings: Sequence[str]
) -> Generation:
    """Text, count (up to and including the stop token) and finish reason of one row."""
    eos_at = next((i for i, token in enumerate(ids) if token in roles.eos_ids), None)
    if eos_at is not None:
        kept, reason = list(ids[: eos_at + 1]), "eos"
    else:
        kept, reason = _strip_padding(ids, roles.pad_id), "length"
        stop_at = _stop_string_end(kept, tokenizer, stop_strings)
        if stop_at is not None:
            kept, reason = kept[:stop_at], "eos"
    text = cut_at_stop_strings(tokenizer.decode(kept, skip_special_tokens=True), stop_strings)
    return Generation(
        text=text,
        n_new_tokens=len(kept),
        finish_reason=reason,  # type: ignore[arg-type]
        token_ids=tuple(int(token) for token in kept),
    )


def _strip_padding(ids: Sequence[int], pad_id: int) -> list[int]:
    end = len(ids)
    while end > 0 and ids[end - 1] == pad_id:
        end -= 1
    return list(ids[:end])


def _stop_string_end(ids: list[int], tokenizer: Any, stop_strings: Sequence[str]) -> int | None:
    """Number of tokens up to the one that completes the first stop string, if any does."""
    if not stop_strings:
        return None
    if not any(s in tokenizer.decode(ids) for s in stop_strings):
        return None
    for n in range(1, len(ids) + 1):
        if any(s in tokenizer.decode(ids[:n]) for s in stop_strings):
            return n
    return None


def cut_at_stop_strings(text: str, stop_strings: Sequence[str]) -> str:
    """The text before the first stop string (the stop text itself is not returned)."""
    cuts = [i for i in (text.find(s) for s in stop_strings if s) if i >= 0]
    return text[: min(cuts)] if cuts else text
