"""IDEFICS v1: the images' latents and their cross-attention keys and values computed once per
``generate`` call.

transformers' IDEFICS v1 projects the image latents to keys and values in every gated
cross-attention layer at every decoding step, though they cannot change during generation. With
64 latents per image that is 64 tokens' worth of projections per row and step: more than the new
token's own compute, and on a GPU it turns memory-bound decoding compute-bound. Since 5.24 it
also runs the perceiver resampler again at every step, on the vision states it feeds back.

While ``projections_remembered`` is active, the resampler and each of those projections keep
their last input and output and answer again when handed the same tensor (same storage, shape,
strides and dtype). They hold the input alive, so no other tensor can be allocated at that
address meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class RememberedProjection:
    """A projection's ``forward`` that recomputes only for a new input tensor."""

    def __init__(self, forward: Callable[[Any], Any]) -> None:
        self._forward = forward
        self._input: Any = None
        self._output: Any = None
        #: How many times the projection really ran.
        self.computed = 0

    def __call__(self, x: Any) -> Any:
        if self._input is None or not _same_tensor(x, self._input):
            self._output = self._forward(x)
            self._input = x
            self.computed += 1
        return self._output


def _same_tensor(a: Any, b: Any) -> bool:
    same = (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
    )
    if same and not (a.is_inference() or b.is_inference()):
        # Outside inference mode an in-place write shows in the version counter.
        same = a._version == b._version
    return same


def cross_attention_projections(model: Any) -> list[Any]:
    """The key and value projections of ``model``'s gated cross-attention layers (v1 only)."""
    layers = getattr(getattr(model, "model", None), "gated_cross_attn_layers", None) or []
    return [proj for layer in layers for proj in (layer.cross_attn.k_proj, layer.cross_attn.v_proj)]


def image_latent_modules(model: Any) -> list[Any]:
    """Modules whose output depends only on the images during generation: the perceiver
    resampler (where the model has one) and the cross-attention key/value projections."""
    resampler = getattr(getattr(model, "model", None), "perceiver_resampler", None)
    return [*([resampler] if resampler is not None else []), *cross_attention_projections(model)]


@contextmanager
def projections_remembered(model: Any) -> Iterator[list[RememberedProjection]]:
    """Remember the resampler and cross-attention key/value projections of ``model`` for the
    duration."""
    patched = []
    for proj in image_latent_modules(model):
        # An instance-level forward (accelerate's device hooks) is wrapped, then put back.
        previous = proj.__dict__.get("forward")
        memo = RememberedProjection(proj.forward)
        proj.forward = memo
        patched.append((proj, previous, memo))
    try:
        yield [memo for _, _, memo in patched]
    finally:
        for proj, previous, _ in patched:
            if previous is None:
                del proj.forward
            else:
                proj.forward = previous
