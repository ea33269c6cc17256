"""A prompt as one model family lays it out: the text its processor tokenizes, and its images."""

from __future__ import annotations

from dataclasses import dataclass, replace

from PIL import Image


@dataclass(frozen=True)
class Prompt:
    """One encoded-to-be input.

    ``text`` is exactly what the processor tokenizes before it expands image placeholders, so
    tokenizing ``text`` alone gives the same tokens after the last image as the full encoding
    (label scoring relies on this to find a continuation's tokens without re-encoding images).
    ``parts`` is the interleaved list of strings and images for processors that take one
    (IDEFICS v1); chat processors use ``text`` and ``images``.
    """

    text: str
    images: tuple[Image.Image, ...]
    parts: tuple[str | Image.Image, ...] = ()
    add_special_tokens: bool = True
    #: Text the processor encodes as the answer to ``text`` (PaliGemma's ``suffix``: causal,
    #: after the bidirectional prefix); ``None`` where the answer, if any, is part of ``text``.
    answer: str | None = None

    def with_images(self, images: tuple[Image.Image, ...]) -> Prompt:
        """The same prompt showing ``images`` (as many as it shows now) instead."""
        if len(images) != len(self.images):
            raise ValueError(f"{len(self.images)} images expected, got {len(images)}")
        swap = iter(images)
        parts = tuple(next(swap) if isinstance(p, Image.Image) else p for p in self.parts)
        return replace(self, images=tuple(images), parts=parts)


def answer_start(prefix: str) -> str:
    """Text placed right after the generation prompt (``Assistant:``) when scoring labels.

    The model would answer with a space first, so a non-empty prefix gets one; the label's own
    leading space (``" male"``) stays on the label, so the label's tokens start on a boundary.
    """
    return f" {prefix}" if prefix else ""


def as_rgb(image: Image.Image) -> Image.Image:
    """Processors expect three channels; greyscale or RGBA face images are common."""
    return image if image.mode == "RGB" else image.convert("RGB")


#: A stand-in wide enough that processors which tile an image write their row, column and
#: line-break tokens for it.
WIDE = (112, 56)


def stand_in_image(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A plain grey picture, where only the layout of an image's tokens matters."""
    return Image.new("RGB", size, (128, 128, 128))
