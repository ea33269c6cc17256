"""Chat-template image-text models: Idefics2, Idefics3, and any ``AutoModelForImageTextToText``
whose processor ships a chat template.

The prompt is ``processor.apply_chat_template(messages, add_generation_prompt=True)``: the
probe's system prompt as a system message, its example exchanges as user and assistant messages,
its preamble parts at the start of the audited user message. A batch is then
``processor(text=[...], images=[[img], ...], padding="longest")``. The card's classification
context is the image as the family's template lays out one image (Qwen's
``<|vision_start|><|image_pad|><|vision_end|>``, LLaVA's ``<image>\n``, Gemma 3's
``<start_of_image>``: read off the template, not a list of names), then the text: no chat turn,
no preamble, no BOS of the template's (a processor may still write one: the manifest says).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar

from PIL import Image

from audit.backends.base import PreamblePart, ScoringContext
from audit.backends.hf.fast.image_features import FeatureCache, chat_image_inputs
from audit.backends.hf.model import HFBackend
from audit.backends.hf.prompt import WIDE, Prompt, as_rgb, stand_in_image
from audit.backends.hf.scoring import common_prefix_length
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

    def _messages(
        self, image: Image.Image, question: str | None
    ) -> tuple[list[dict[str, Any]], list[Image.Image]]:
        preamble, images = self._preamble, []

        def content(parts: Sequence[PreamblePart]) -> list[dict[str, str]]:
            out = []
            for part in parts:
                if part.image is not None:
                    out.append({"type": "image"})
                    images.append(as_rgb(part.image))
                else:
                    out.append({"type": "text", "text": str(part.text)})
            return out

        messages: list[dict[str, Any]] = []
        if preamble.system:
            messages.append(
                {"role": "system", "content": [{"type": "text", "text": preamble.system}]}
            )
        for turn in preamble.turns:
            messages.append({"role": "user", "content": content(turn.user)})
            messages.append(
                {"role": "assistant", "content": [{"type": "text", "text": turn.assistant}]}
            )
        final = [*content(preamble.parts), {"type": "image"}]
        images.append(as_rgb(image))
        if question is not None:
            final.append({"type": "text", "text": question})
        messages.append({"role": "user", "content": final})
        return messages, images

    def _prompt(self, image: Image.Image, question: str | None, answer: str) -> Prompt:
        messages, images = self._messages(image, question)
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

    def scoring_prompt(self, image: Image.Image, answer: str, context: ScoringContext) -> Prompt:
        image_text = self.card_image_text() if context == "card" else None
        if image_text is None:
            return self._prompt(image, None, answer)
        space = " " if self._spaces_after_image and not answer[:1].isspace() else ""
        return Prompt(
            text=f"{image_text}{space}{answer}",
            images=(as_rgb(image),),
            add_special_tokens=False,
        )

    def card_image_text(self) -> str | None:
        return self._card_image_text

    def image_and_bare_text(self) -> tuple[Prompt | None, str]:
        def render(content: list[dict[str, str]]) -> str:
            messages = [{"role": "user", "content": content}]
            return str(
                self.processor.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            )

        text = {"type": "text", "text": "x"}
        shown = render([{"type": "image"}, text])
        bos = self.processor.tokenizer.bos_token
        prompt = Prompt(
            shown,
            (stand_in_image(WIDE),),
            add_special_tokens=not (bos and shown.startswith(bos)),
        )
        return prompt, render([text])

    @cached_property
    def _card_image_text(self) -> str | None:
        """One image as the template lays it out: what a user turn of two images holds that
        one of one image lacks (templates may render a message differently when it holds an
        image at all, so both hold one)."""
        mark = "AUDITMARK"
        rendered = []
        for n in (1, 2):
            content = [*({"type": "image"} for _ in range(n)), {"type": "text", "text": mark}]
            try:
                rendered.append(
                    self.processor.apply_chat_template(
                        [{"role": "user", "content": content}], tokenize=False
                    )
                )
            except Exception:  # noqa: BLE001 (a template may refuse this shape: no card layout)
                return None
        one, two = rendered
        start = common_prefix_length(one, two)
        end = common_prefix_length(one[start:][::-1], two[start:][::-1])
        image_text = two[start : len(two) - end]
        return image_text if image_text.strip() and mark not in image_text else None

    @cached_property
    def _spaces_after_image(self) -> bool:
        """Whether the processor puts a space between an image and the text right after it
        (Idefics2 does). The card context writes that space itself, so that the prompt's text
        tokenized alone gives the processor's tokens after the image."""
        image_text = self._card_image_text
        if image_text is None:
            return False
        tokenizer = self.processor.tokenizer
        encoded = self.processor(
            text=[f"{image_text}x"], images=[[Image.new("RGB", (32, 32))]], add_special_tokens=False
        )
        spaced = list(tokenizer(" x", add_special_tokens=False).input_ids)
        return [int(i) for i in encoded["input_ids"][0][-len(spaced) :]] == spaced

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
