"""Pixtral's processor (Mistral 3) for images, without torchvision.

transformers' ``PixtralProcessor`` cannot be imported without torchvision, though its image
processor has a PIL variant. This one does what it does for images and text: the image
processor resizes each image to a multiple of ``patch_size x spatial_merge_size``, and each
image placeholder in the text becomes one row of ``[IMG]`` per patch row, each row closed by
``[IMG_BREAK]`` and the last by ``[IMG_END]``. ``tests/test_model_matrix.py`` holds it to
transformers' own processor where torchvision is installed and to the model everywhere (the
model refuses a placeholder count that differs from its image features).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class ImageOnlyPixtralProcessor:
    """The parts of ``PixtralProcessor`` a probe uses: chat template, images and text."""

    def __init__(
        self,
        image_processor: Any,
        tokenizer: Any,
        *,
        patch_size: int = 16,
        spatial_merge_size: int = 1,
        chat_template: str | None = None,
        image_token: str = "[IMG]",
        image_break_token: str = "[IMG_BREAK]",
        image_end_token: str = "[IMG_END]",
    ) -> None:
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.patch_size = patch_size
        self.spatial_merge_size = spatial_merge_size
        self.chat_template = chat_template
        self.image_token = image_token
        self.image_break_token = image_break_token
        self.image_end_token = image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    @classmethod
    def from_pretrained(cls, location: str, **kwargs: Any) -> ImageOnlyPixtralProcessor:
        from transformers import AutoImageProcessor, AutoTokenizer
        from transformers.processing_utils import ProcessorMixin

        settings, _ = ProcessorMixin.get_processor_dict(location, **kwargs)
        names = (
            "patch_size",
            "spatial_merge_size",
            "chat_template",
            "image_token",
            "image_break_token",
            "image_end_token",
        )
        return cls(
            AutoImageProcessor.from_pretrained(location, **kwargs),
            AutoTokenizer.from_pretrained(location, **kwargs),
            **{k: settings[k] for k in names if settings.get(k) is not None},
        )

    def apply_chat_template(self, messages: Any, **kwargs: Any) -> Any:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, **kwargs
        )

    def _expansion(self, height: int, width: int) -> str:
        step = self.patch_size * self.spatial_merge_size
        row = self.image_token * (width // step) + self.image_break_token
        text = row * (height // step)
        return text[: -len(self.image_break_token)] + self.image_end_token

    def __call__(
        self,
        text: Sequence[str],
        images: Sequence[Sequence[Any]] | None = None,
        *,
        return_tensors: str | None = "pt",
        **tokenizer_kwargs: Any,
    ) -> Any:
        from transformers import BatchFeature

        texts = [text] if isinstance(text, str) else list(text)
        flat = [image for group in images or () for image in group]
        data: dict[str, Any] = {}
        if flat:
            step = self.patch_size * self.spatial_merge_size
            features = self.image_processor(
                flat, patch_size={"height": step, "width": step}, return_tensors=return_tensors
            )
            data.update(features)
            expansions = iter(self._expansion(int(h), int(w)) for h, w in features["image_sizes"])
            texts = [self._expand(t, expansions) for t in texts]
            if next(expansions, None) is not None:
                raise ValueError("more images than image placeholders in the text")
        data.update(self.tokenizer(texts, return_tensors=return_tensors, **tokenizer_kwargs))
        return BatchFeature(data=data, tensor_type=return_tensors)

    def _expand(self, text: str, expansions: Any) -> str:
        pieces = text.split(self.image_token)
        out = [pieces[0]]
        for piece in pieces[1:]:
            expansion = next(expansions, None)
            if expansion is None:
                raise ValueError("more image placeholders in the text than images")
            out.extend((expansion, piece))
        return "".join(out)

    def decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.decode(*args, **kwargs)

    def batch_decode(self, *args: Any, **kwargs: Any) -> Any:
        return self.tokenizer.batch_decode(*args, **kwargs)
