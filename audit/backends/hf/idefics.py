"""IDEFICS v1 (``model_type: idefics``): interleaved prompt lists of strings and images.

The instruct format is ``["User:", image, "<text><end_of_utterance>", "\\nAssistant:"]``, with the
probe's preamble interleaved in front. The v1 processor is called as
``processor(text=[parts, ...], add_end_of_utterance_token=False)``: its first positional argument
is now ``images``, and it no longer adds ``<end_of_utterance>`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

from PIL import Image

from audit.backends.hf.fast.cross_attention import projections_remembered
from audit.backends.hf.fast.image_features import FeatureCache, idefics_image_inputs
from audit.backends.hf.fast.label_prefix import idefics_label_inputs
from audit.backends.hf.model import HFBackend
from audit.backends.hf.prompt import Prompt, as_rgb

_FAKE = "<fake_token_around_image>"
_IMAGE = "<image>"


class IdeficsBackend(HFBackend):
    """IDEFICS v1 (idefics-9b, idefics-80b and their instruct versions)."""

    name: ClassVar[str] = "idefics"

    def decoding(self) -> AbstractContextManager[Any]:
        if not self.fast_paths.on("image_latents"):
            return nullcontext()
        return projections_remembered(self.model)

    def _preamble_parts(self) -> list[str | Image.Image]:
        parts: list[str | Image.Image] = []
        for part in self._preamble:
            if part.image is not None:
                parts.append(as_rgb(part.image))
            elif part.text is not None:
                parts.append(part.text)
        return parts

    def _prompt(self, parts: list[str | Image.Image]) -> Prompt:
        images = tuple(p for p in parts if isinstance(p, Image.Image))
        return Prompt(
            text=self._render(parts), images=images, parts=tuple(parts), add_special_tokens=False
        )

    def _render(self, parts: Sequence[str | Image.Image]) -> str:
        """The string the v1 processor tokenizes for ``parts`` (mirrors its layout rules)."""
        text = str(self.processor.tokenizer.bos_token)
        last_was_image = False
        for part in parts:
            if isinstance(part, str):
                text += part.strip(" ")
                last_was_image = False
            else:
                text += f"{_IMAGE}{_FAKE}" if last_was_image else f"{_FAKE}{_IMAGE}{_FAKE}"
                last_was_image = True
        return text

    def generation_prompt(self, image: Image.Image, prompt: str) -> Prompt:
        return self._prompt(
            [
                *self._preamble_parts(),
                "User:",
                as_rgb(image),
                f"{prompt}<end_of_utterance>",
                "\nAssistant:",
            ]
        )

    def scoring_prompt(self, image: Image.Image, answer: str) -> Prompt:
        return self._prompt(
            [
                *self._preamble_parts(),
                "User:",
                as_rgb(image),
                "<end_of_utterance>",
                f"\nAssistant:{answer}",
            ]
        )

    def encode(self, prompts: Sequence[Prompt], padding_side: str) -> Any:
        inputs = self.processor(
            text=[list(p.parts) for p in prompts],
            add_end_of_utterance_token=False,
            padding="longest",
            padding_side=padding_side,
            return_tensors="pt",
        )
        return self._to_model(inputs)

    def with_shared_images(
        self, prompts: Sequence[Prompt], inputs: Any, cache: FeatureCache
    ) -> Any:
        """Pixels replaced by each distinct image's embeddings, encoded once per call."""
        shared = idefics_image_inputs(self.model, [p.images for p in prompts], inputs, cache)
        return inputs if shared is None else shared

    def append_tokens(self, inputs: Any, token_ids: Sequence[int]) -> dict[str, Any]:
        """Appended tokens attend to the last image, like the tokens ``generate`` appends."""
        import torch

        extended = super().append_tokens(inputs, token_ids)
        image_mask = extended["image_attention_mask"]
        last = image_mask[:, -1:, :].expand(-1, len(token_ids), -1)
        extended["image_attention_mask"] = torch.cat([image_mask, last], dim=1)
        return extended

    def continuation_inputs(
        self, prefix_inputs: Any, prefix_output: Any, rows: Any, width: int
    ) -> dict[str, Any]:
        """Label tokens attend to the last image, like the tokens ``generate`` appends."""
        return idefics_label_inputs(self.model, prefix_inputs, prefix_output, rows, width)
