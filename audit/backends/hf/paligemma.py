"""PaliGemma (``model_type: paligemma``): a prefix language model with no chat template.

Its processor writes ``<image>`` x n, a BOS, the prompt (the *prefix*) and a newline; the model
attends to the whole prefix both ways, and the answer (the *suffix*) follows causally. So a
prompt is the image and the probe's question, and a label is scored as the answer: passed as the
processor's ``suffix``, which marks its tokens causal (``token_type_ids``). There are no turns,
so a probe's system prompt and example exchanges are not shown (the manifest says so), and the
card's classification context (the image and the template with nothing around them) cannot be
laid out: the template is scored as the answer to an empty prefix, PaliGemma's captioning form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from PIL import Image

from audit.backends.base import ScoringContext
from audit.backends.hf.model import HFBackend
from audit.backends.hf.prompt import WIDE, Prompt, as_rgb, stand_in_image
from audit.errors import ModelLoadError


class PaliGemmaBackend(HFBackend):
    """PaliGemma and PaliGemma 2 (pt and mix checkpoints)."""

    name: ClassVar[str] = "paligemma"
    supports_preamble: ClassVar[bool] = False

    def _check_processor(self, processor: Any) -> None:
        if not isinstance(getattr(processor, "image_token", None), str):
            raise ModelLoadError(
                f"model {self._checkpoint.location}: its processor names no image token"
            )

    def _image(self) -> str:
        return str(self.processor.image_token)

    def generation_prompt(self, image: Image.Image, prompt: str) -> Prompt:
        return Prompt(text=f"{self._image()}{prompt}", images=(as_rgb(image),))

    def scoring_prompt(self, image: Image.Image, answer: str, context: ScoringContext) -> Prompt:
        # Both contexts score the text as the answer: the card's cannot be laid out.
        return Prompt(text=self._image(), images=(as_rgb(image),), answer=answer.lstrip(" "))

    def image_and_bare_text(self) -> tuple[Prompt | None, str]:
        shown = self.generation_prompt(stand_in_image(WIDE), "x")
        return shown, "x\n"

    def encode(self, prompts: Sequence[Prompt], padding_side: str) -> Any:
        answers = {p.answer is None for p in prompts}
        if len(answers) != 1:
            raise ValueError("a batch mixes prompts with and without an answer")
        suffix = None if answers == {True} else [str(p.answer) for p in prompts]
        from transformers import BatchFeature

        # As NumPy arrays: the processor copies its ids with np.array, which a torch tensor
        # answers with a deprecation warning under NumPy 2.
        inputs = self.processor(
            text=[p.text for p in prompts],
            images=[list(p.images) for p in prompts],
            suffix=suffix,
            padding="longest",
            padding_side=padding_side,
            return_tensors="np",
        )
        inputs.pop("labels", None)  # training targets, which would make a forward pass a loss
        return self._to_model(BatchFeature(dict(inputs), tensor_type="pt"))

    def text_ids(self, prompt: Prompt) -> list[int]:
        tokenizer = self.processor.tokenizer
        text = f"{prompt.text}\n{prompt.answer or ''}"
        return list(tokenizer(text, add_special_tokens=False).input_ids)
