"""Chat-template image-text models: Idefics2, Idefics3, and any ``AutoModelForImageTextToText``
whose processor ships a chat template.

The prompt is ``processor.apply_chat_template(messages, add_generation_prompt=True)`` with the
preamble at the start of the user message; a batch is then
``processor(text=[...], images=[[img], ...], padding="longest")``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from audit.backends.hf.fast.image_features import FeatureCache, chat_image_inputs
from audit.backends.hf.model import HFBackend
from audit.backends.hf.prompt import Prompt, as_rgb
from audit.errors import ModelLoadError


class ChatBackend(HFBackend):
    """Any image-text model driven through its processor's chat template."""

    name: ClassVar[str] = "chat"

    def _check_processor(self, processor: Any) -> None:
        if not getattr(processor, "chat_template", None):
            raise ModelLoadError(
                f"model {self._checkpoint.location} (type '{self._checkpoint.model_type}') has no "
                "chat template in its processor, so the chat backend cannot lay out prompts; "
                "supported: IDEFICS v1 and image-text models whose processor has a chat template"
            )
        if getattr(processor, "image_processor", None) is None:
            raise ModelLoadError(
                f"model {self._checkpoint.location}: its processor has no image processor"
            )

    def _prompt(self, image: Image.Image, question: str | None, answer: str) -> Prompt:
        content: list[dict[str, str]] = []
        images: list[Image.Image] = []
        for part in self._preamble:
            if part.image is not None:
                content.append({"type": "image"})
                images.append(as_rgb(part.image))
            elif part.text is not None:
                content.append({"type": "text", "text": part.text})
        content.append({"type": "image"})
        images.append(as_rgb(image))
        if question is not None:
            content.append({"type": "text", "text": question})
        messages = [{"role": "user", "content": content}]
        text = (
            self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            + answer
        )
        bos = self.processor.tokenizer.bos_token
        # A template that writes its own BOS (Idefics3) must not get a second one.
        return Prompt(
            text=text, images=tuple(images), add_special_tokens=not (bos and text.startswith(bos))
        )

    def generation_prompt(self, image: Image.Image, prompt: str) -> Prompt:
        return self._prompt(image, prompt, "")

    def scoring_prompt(self, image: Image.Image, answer: str) -> Prompt:
        return self._prompt(image, None, answer)

    def cut_after_image(self, prompt: Prompt) -> tuple[Prompt, str] | None:
        image_token = getattr(self.processor, "image_token", None)
        if not isinstance(image_token, str) or not image_token:
            return None
        cut = prompt.text.rfind(image_token)
        if cut < 0:
            return None
        end = cut + len(image_token)
        head = Prompt(
            prompt.text[:end], prompt.images, add_special_tokens=prompt.add_special_tokens
        )
        return head, prompt.text[end:]

    def encode(self, prompts: Sequence[Prompt], padding_side: str) -> Any:
        flags = {p.add_special_tokens for p in prompts}
        if len(flags) != 1:
            raise ValueError("a batch mixes prompts with and without a template-written BOS")
        inputs = self.processor(
            text=[p.text for p in prompts],
            images=[list(p.images) for p in prompts],
            padding="longest",
            padding_side=padding_side,
            add_special_tokens=flags.pop(),
            return_tensors="pt",
        )
        return self._to_model(inputs)

    def with_shared_images(
        self, prompts: Sequence[Prompt], inputs: Any, cache: FeatureCache
    ) -> Any:
        """Pixels replaced by each distinct image's features, encoded once per call."""
        return chat_image_inputs(
            self.model,
            self.processor.image_processor,
            [p.images for p in prompts],
            inputs,
            cache,
            self._to_model,
        )
