"""Names that changed across transformers releases, looked up on the model in hand.

transformers 5.24 renamed the key/value cache from ``past_key_values`` to ``cache``: as a
keyword of ``forward`` and ``generate`` (the old name still works until 5.40, with a
``FutureWarning``) and as a field of model outputs (the old name warns once). The fast paths
pass and read caches themselves, so they ask the model which name it takes rather than guess
from a version number: a model family that is renamed later keeps working in between.
docs/compatibility.md lists every private API the fast paths use.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any

_NEW, _OLD = "cache", "past_key_values"


def cache_keyword(model: Any) -> str:
    """The keyword ``model``'s ``forward`` and ``generate`` take a key/value cache under."""
    # ``inspect.signature`` follows ``functools.wraps`` through transformers' decorators.
    parameters = inspect.signature(model.forward).parameters
    return _NEW if _NEW in parameters else _OLD


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """Keyword arguments passing ``cache`` to ``model`` (``forward`` or ``generate``)."""
    return {cache_keyword(model): cache}


def returned_cache(output: Any) -> Any:
    """The key/value cache in a model or ``generate`` output, under whichever name it has."""
    if dataclasses.is_dataclass(output):
        names = {field.name for field in dataclasses.fields(output)}
        if _NEW in names:
            return getattr(output, _NEW)
    return getattr(output, _OLD)


def without_cache(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` without a cache under either name."""
    return {k: v for k, v in inputs.items() if k not in (_NEW, _OLD)}


def given_cache(inputs: dict[str, Any]) -> Any:
    """The cache ``inputs`` carries under either name, or ``None``."""
    return inputs.get(_NEW, inputs.get(_OLD))


def idefics_image_states(inputs: Any, output: Any, use_resampler: bool) -> tuple[str, Any]:
    """IDEFICS v1: image states that a later pass over the same prompts can take instead of
    pixels, and the keyword it takes them under.

    Taken from ``inputs`` when they carry states already; otherwise from the model's ``output``,
    which holds the resampled latents up to 5.23 (``image_hidden_states``) and the vision
    encoder's states from 5.24 on (``image_outputs``).
    """
    for key in ("image_encoder_embeddings", "perceiver_embeddings"):
        if inputs.get(key) is not None:
            return key, inputs[key]
    if "image_outputs" in {field.name for field in dataclasses.fields(output)}:
        return "image_encoder_embeddings", output.image_outputs.last_hidden_state
    key = "perceiver_embeddings" if use_resampler else "image_encoder_embeddings"
    return key, output.image_hidden_states


def idefics_image_key(model: Any) -> str:
    """IDEFICS v1: the keyword ``generate`` feeds the image states back under at every step,
    so image states given up front must go in under it (else the model gets two kinds).

    From 5.24 the model's outputs carry ``image_outputs`` and ``generate`` feeds the vision
    encoder's states back as ``image_encoder_embeddings``; before, it fed the resampled latents
    back as ``perceiver_embeddings`` (with a resampler).
    """
    if _idefics_outputs_carry_image_outputs(model):
        return "image_encoder_embeddings"
    return "perceiver_embeddings" if model.config.use_resampler else "image_encoder_embeddings"


def idefics_latent_inputs(model: Any, latents: Any) -> dict[str, Any]:
    """IDEFICS v1: resampled image latents ``(prompts, images, latents, hidden)`` as forward
    inputs. Up to 5.23 the forward takes them per prompt; from 5.24 flattened over (prompt,
    image), since it reads the number of latents from their second dimension."""
    if _idefics_outputs_carry_image_outputs(model):
        latents = latents.flatten(0, 1)
    return {"perceiver_embeddings": latents}


def _idefics_outputs_carry_image_outputs(model: Any) -> bool:
    """Whether IDEFICS v1's outputs are the 5.24 multimodal ones (``image_outputs``)."""
    module = sys.modules[type(model).__module__]
    output_class = getattr(module, "IdeficsCausalLMOutputWithPast", None)
    fields = dataclasses.fields(output_class) if dataclasses.is_dataclass(output_class) else ()
    return "image_outputs" in {field.name for field in fields}
