"""IDEFICS v1 (``model_type: idefics``): interleaved prompt lists of strings and images.

The instruct format is ``["User:", image, "<text><end_of_utterance>", "\\nAssistant:"]``, with the
probe's system prompt and example exchanges as ``User:``/``Assistant:`` lines in front. The v1
processor is called as ``processor(text=[parts, ...], add_end_of_utterance_token=False)``: its
first positional argument is now ``images``, and it no longer adds ``<end_of_utterance>`` itself.

Two layouts reproduce the IDEFICS evaluation itself: the card script's split template (its whole
prompt split on ``<fake_token_around_image>``, the face in place of piece 1), and the card's
classification context (the image, then the template; no BOS).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar
from urllib.parse import urlparse

from PIL import Image

from audit.backends.base import PreamblePart, ScoringContext
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
    supports_split_template: ClassVar[bool] = True

    def decoding(self) -> AbstractContextManager[Any]:
        if not self.fast_paths.on("image_latents"):
            return nullcontext()
        return projections_remembered(self.model)

    def _preamble_parts(self) -> list[str | Image.Image]:
        """Parts placed first, the system prompt, then each example as ``User:``/``Assistant:``."""
        preamble = self._preamble
        parts = [_part(p) for p in preamble.parts]
        if preamble.system:
            parts.append(f"{preamble.system}\n")
        for turn in preamble.turns:
            parts += ["User:", *(_part(p) for p in turn.user)]
            parts.append(f"<end_of_utterance>\nAssistant: {turn.assistant}<end_of_utterance>\n")
        return parts

    def _prompt(self, parts: list[str | Image.Image], bos: bool = True) -> Prompt:
        for part in parts:
            if isinstance(part, str) and _is_url(part):
                # The v1 processor downloads a text part that is a URL: probes are data.
                raise ValueError(
                    f"the prompt part {part!r} is a URL, which the IDEFICS v1 processor would "
                    "download; give images as local files"
                )
        images = tuple(p for p in parts if isinstance(p, Image.Image))
        return Prompt(
            text=self._render(parts, bos),
            images=images,
            parts=tuple(parts),
            add_special_tokens=False,
        )

    def _render(self, parts: Sequence[str | Image.Image], bos: bool = True) -> str:
        """The string the v1 processor tokenizes for ``parts`` (mirrors its layout rules);
        without ``bos``, what is left once ``encode`` drops the BOS the processor writes."""
        text = str(self.processor.tokenizer.bos_token) if bos else ""
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
        split = self._preamble.split_template
        if split is not None:
            parts: list[str | Image.Image] = list(split.pieces(prompt))
            parts[split.image_piece] = as_rgb(image)
            return self._prompt(parts)
        return self._prompt(
            [
                *self._preamble_parts(),
                "User:",
                as_rgb(image),
                f"{prompt}<end_of_utterance>",
                "\nAssistant:",
            ]
        )

    def scoring_prompt(self, image: Image.Image, answer: str, context: ScoringContext) -> Prompt:
        if context == "card":
            return self._prompt([as_rgb(image), answer], bos=False)
        return self._prompt(
            [
                *self._preamble_parts(),
                "User:",
                as_rgb(image),
                "<end_of_utterance>",
                f"\nAssistant:{answer}",
            ]
        )

    def card_image_text(self) -> str:
        return f"{_FAKE}{_IMAGE}{_FAKE}"

    def encode(self, prompts: Sequence[Prompt], padding_side: str) -> Any:
        inputs = self.processor(
            text=[list(p.parts) for p in prompts],
            add_end_of_utterance_token=False,
            padding="longest",
            padding_side=padding_side,
            return_tensors="pt",
        )
        with_bos = {p.text.startswith(self._bos) for p in prompts}
        if len(with_bos) != 1:
            raise ValueError("a batch mixes prompts with and without a BOS")
        if with_bos == {False}:
            inputs = _drop_first_token(inputs)
        return self._to_model(inputs)

    @property
    def _bos(self) -> str:
        return str(self.processor.tokenizer.bos_token)

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


def _part(part: PreamblePart) -> str | Image.Image:
    return as_rgb(part.image) if part.image is not None else str(part.text)


def _is_url(text: str) -> bool:
    """The v1 processor's own test (``is_url``): no space, a scheme and a host."""
    parsed = urlparse(text.strip(" "))
    return " " not in text.strip(" ") and bool(parsed.scheme and parsed.netloc)


def _drop_first_token(inputs: Any) -> Any:
    """The processor always writes a BOS; the card's classification context has none. Every row
    loses its first real token, so the batch is one column narrower and keeps its padding."""
    import torch

    firsts = inputs["attention_mask"].int().argmax(dim=1).tolist()
    for key in ("input_ids", "attention_mask", "image_attention_mask"):
        rows = zip(inputs[key], firsts, strict=True)
        inputs[key] = torch.stack([torch.cat([row[:at], row[at + 1 :]]) for row, at in rows])
    return inputs
