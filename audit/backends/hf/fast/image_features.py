"""Vision features computed once per distinct image and reused by every request showing it.

Within one ``generate`` call the runner sends each image with every prompt of the probe; the
vision encoder (and resampler) output depends on the image alone, so it is computed the first
time an image object is met and looked up by ``id(image)`` afterwards. The prompts of the call
hold the images alive, so an id cannot be reused by another image while the cache exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from PIL import Image

#: Features of one image as the model consumes them, keyed by ``id(image)`` (for chat models,
#: with whether the model's encoder hands them out in a tuple).
FeatureCache = dict[int, Any]


def new_images(prompts_images: Sequence[Sequence[Image.Image]], cache: FeatureCache) -> list[Any]:
    """Images not in ``cache`` yet, each once, in order of first appearance."""
    seen: dict[int, Image.Image] = {}
    for images in prompts_images:
        for image in images:
            if id(image) not in cache:
                seen.setdefault(id(image), image)
    return list(seen.values())


def chat_image_inputs(
    model: Any,
    image_processor: Any,
    images: Sequence[Sequence[Image.Image]],
    inputs: Any,
    cache: FeatureCache,
    to_model: Any,
) -> dict[str, Any]:
    """``inputs`` with pixels replaced by cached ``mm_encoder_outputs``.

    Each new image is preprocessed alone (its own tiles) and encoded with the other new images
    of the batch by ``model.get_image_features``, given what the image processor returned that
    it takes (``pixel_attention_mask``, ``image_sizes``, ``image_grid_thw``...); the batch's
    features are its images' in prompt order, in the container the model's encoder returns (a
    tensor or a tuple), as the model scatters them into its image tokens. What the model reads
    besides pixels (a grid, sizes) stays in ``inputs``.
    """
    import inspect

    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    takes = inspect.signature(model.get_image_features).parameters
    fresh = new_images(images, cache)
    if fresh:
        blocks, as_tuple = _encode(model, image_processor, fresh, takes, to_model)
        if len(blocks) != len(fresh):  # a block per tile, not per image: one image at a time
            blocks = [
                torch.cat(_encode(model, image_processor, [image], takes, to_model)[0])
                for image in fresh
            ]
        for image, features in zip(fresh, blocks, strict=True):
            cache[id(image)] = (features, as_tuple)
    cached = [cache[id(image)] for row in images for image in row]
    ordered = [features for features, _ in cached]
    # The container the model's own encoder returns: a tensor it splits itself, or a tuple.
    features: Any = tuple(ordered) if cached[0][1] else torch.cat(ordered)
    pixel_keys = {k for k in takes if k.startswith("pixel_")}
    shared = {k: v for k, v in inputs.items() if k not in pixel_keys}
    shared["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
    return shared


def _encode(
    model: Any, image_processor: Any, images: Sequence[Image.Image], takes: Any, to_model: Any
) -> tuple[list[Any], bool]:
    """The features of ``images`` (each preprocessed alone) as blocks, and whether the model
    returned them as a tuple (else one tensor, split here along its first dimension)."""
    import torch

    pixels = to_model(image_processor(images=[[image] for image in images], return_tensors="pt"))
    with torch.inference_mode():
        encoded = model.get_image_features(**{k: v for k, v in pixels.items() if k in takes})
    output = encoded.pooler_output
    return list(output), isinstance(output, (list, tuple))


def idefics_image_inputs(
    model: Any, images: Sequence[Sequence[Image.Image]], inputs: Any, cache: FeatureCache
) -> dict[str, Any] | None:
    """``inputs`` with pixels replaced by cached image states (IDEFICS v1), or ``None``.

    Slot ``k`` of row ``r`` of the processor's ``pixel_values`` is image ``k`` of prompt ``r``;
    rows with different image counts (zero-padded slots) are left to the model (``None``).
    The states go in under the key ``generate`` itself feeds back on later steps
    (``idefics_image_key``): resampled latents up to transformers 5.23, the vision encoder's
    states from 5.24 on.
    """
    import torch

    from audit.backends.hf.fast.transformers_api import idefics_image_key

    pixel_values = inputs["pixel_values"]
    if any(len(row) != pixel_values.shape[1] for row in images):
        return None
    key = idefics_image_key(model)
    first_slot = {}
    for r, row in enumerate(images):
        for k, image in enumerate(row):
            if id(image) not in cache:
                first_slot.setdefault(id(image), (r, k))
    if first_slot:
        fresh = torch.stack([pixel_values[r, k] for r, k in first_slot.values()])
        inner = model.model
        with torch.inference_mode():
            states = inner.vision_model(
                pixel_values=fresh.to(dtype=inner.dtype), interpolate_pos_encoding=False
            ).last_hidden_state
            if key == "perceiver_embeddings":
                states = inner.perceiver_resampler(states)
        for image_id, features in zip(first_slot, states, strict=True):
            cache[image_id] = features
    embeddings = torch.stack([torch.stack([cache[id(image)] for image in row]) for row in images])
    shared = {k: v for k, v in inputs.items() if k != "pixel_values"}
    shared[key] = embeddings
    return shared
