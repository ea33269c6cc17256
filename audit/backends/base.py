"""The one small interface every model family sits behind.

A list of requests in, a list of results out, in the same order, so a backend may sort,
batch and pad inside as it likes. Requests and results are separate immutable records.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from PIL import Image

FinishReason = Literal["eos", "length", "error"]
#: Where a label is scored: ``card`` right after the image, nothing else around it (no BOS, no
#: chat wrapper, no preamble), as the IDEFICS evaluation did; ``chat`` as an answer in a chat.
ScoringContext = Literal["card", "chat"]
#: How a classification row's label was chosen (docs/run_directory.md, ``scoring_method``).
ScoringMethod = Literal["loglikelihood", "choice"]
DEFAULT_BATCH_SIZE = 16


@dataclass(frozen=True)
class GenerationRequest:
    """One image and one open-ended prompt (the probe's preamble is the backend's concern)."""

    image: Image.Image
    prompt: str


@dataclass(frozen=True)
class Generation:
    """The decoded new tokens only, never the prompt."""

    text: str
    n_new_tokens: int
    finish_reason: FinishReason
    #: The new tokens' ids (empty where a backend does not see tokens).
    token_ids: tuple[int, ...] = ()
    #: Why the request failed (``finish_reason == "error"``): stored as the row's error.
    error: str | None = None


@dataclass(frozen=True)
class LabelScoreRequest:
    """Rank classification: score each continuation given image + prefix.

    ``prefix`` is the text before the label (e.g. ``"a photo of a"``); ``continuations`` are the
    candidate texts that follow it (e.g. ``"male person."``, ``"female person."``).
    """

    image: Image.Image
    prefix: str
    continuations: tuple[str, ...]
    context: ScoringContext = "card"


@dataclass(frozen=True)
class LabelScores:
    """Summed log-likelihood of each continuation's tokens and their token counts, in order.

    A backend that cannot score labels some other way says how it chose instead (``method``):
    ``"choice"`` holds no scores, only the label the model named (``chosen``, ``None`` when its
    answer named none) and its answer as given (untrusted text).
    """

    logprob_sums: tuple[float, ...]
    n_tokens: tuple[int, ...]
    #: ``None``: the backend's only method, label log-likelihood, not recorded per row; else
    #: ``"loglikelihood"`` or ``"choice"``, stored per row as ``scoring_method``.
    method: ScoringMethod | None = None
    chosen: int | None = None
    answer: str | None = None
    #: Why the request failed: stored as the row's error.
    error: str | None = None


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings shared by every request of one call."""

    max_new_tokens: int = 256
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stop_strings: tuple[str, ...] = ()
    #: Texts that are each one token: generation ends on that token, which stays in the text.
    stop_tokens: tuple[str, ...] = ()
    #: ``length``: sorted by prompt length inside a call; ``dataset``: in request order.
    order: Literal["length", "dataset"] = "length"


@dataclass(frozen=True)
class PreamblePart:
    """One element of a probe's preamble: text, or an image (already loaded)."""

    text: str | None = None
    image: Image.Image | None = None


@dataclass(frozen=True)
class Turn:
    """One example exchange of a few-shot dialogue."""

    user: tuple[PreamblePart, ...]
    assistant: str


@dataclass(frozen=True)
class SplitTemplate:
    """The card script's construction: ``text`` split on ``separator``, the image in place of
    piece ``image_piece``, the other pieces passed as text."""

    text: str
    separator: str
    image_piece: int

    def pieces(self, prompt: str) -> list[str]:
        return self.text.replace("{prompt}", prompt).split(self.separator)


@dataclass(frozen=True)
class Preamble:
    """What comes before the audited turn: a system prompt and example exchanges, or parts
    placed at the start of the user turn; or the card script's whole-string construction."""

    system: str = ""
    turns: tuple[Turn, ...] = ()
    parts: tuple[PreamblePart, ...] = ()
    split_template: SplitTemplate | None = None

    @classmethod
    def of(cls, value: Preamble | Sequence[PreamblePart]) -> Preamble:
        return value if isinstance(value, Preamble) else cls(parts=tuple(value))


@dataclass(frozen=True)
class BackendInfo:
    """What the manifest records about the model that produced a run."""

    backend: str
    model_id: str
    model_type: str
    revision: str | None
    dtype: str
    device: str
    image_processor: str
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """An image-text model. Construction is cheap; weights load with ``load`` (or on first use).

    What a backend can do is declared on its class and checked before any work: a probe whose
    tasks a backend cannot serve is refused before a model loads.
    """

    name: ClassVar[str]
    #: Open-ended generation (``generate``).
    supports_generation: ClassVar[bool] = True
    #: Rank classification by label log-likelihood (``score_labels``).
    supports_label_scoring: ClassVar[bool] = True
    #: The IDEFICS card script's split-and-substitute construction (``Preamble.split_template``).
    supports_split_template: ClassVar[bool] = False
    #: A system prompt and example exchanges before the audited turn (a model whose prompt has
    #: no turns is shown the image and the prompt alone, and the manifest says so).
    supports_preamble: ClassVar[bool] = True
    #: Labels scored right after the image with nothing around it (``ScoringContext`` "card");
    #: a chat endpoint always wraps a request in its chat template.
    supports_card_context: ClassVar[bool] = True

    def load(self) -> None:  # noqa: B027 (a backend without weights has nothing to load)
        """Load weights and processor now (idempotent)."""

    @abstractmethod
    def generate(
        self,
        requests: Sequence[GenerationRequest],
        settings: GenerationSettings,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[Generation]:
        """Greedy or sampled generation; one result per request, same order. ``batch_size``:
        the most sequences the model runs at once (a backend may use fewer, never more)."""

    @abstractmethod
    def score_labels(
        self, requests: Sequence[LabelScoreRequest], *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> list[LabelScores]:
        """Log-likelihood of each candidate continuation; one result per request, same order.
        ``batch_size`` as for ``generate``."""

    @abstractmethod
    def info(self) -> BackendInfo:
        """Provenance for the manifest: what was loaded, or before ``load`` what will be (it
        never loads anything itself)."""

    def check_fast_paths(
        self,
        generation: Sequence[GenerationRequest],
        scoring: Sequence[LabelScoreRequest],
        settings: GenerationSettings,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> list[str]:
        """Check this backend's speedups against its plain path on a few of a run's first
        requests and turn off those that disagree; returns one line per thing to tell the user.
        A backend without speedups has nothing to check."""
        return []

    def card_layout(self) -> dict[str, Any] | None:
        """How the card's classification context is laid out for this model, for the manifest
        (after ``load``): ``image`` (the text the image is given as, as the family's template
        lays out an image), ``bos`` (whether the encoding holds a BOS). ``None`` where this
        model cannot be shown the image and the text alone: its tasks are scored in a chat."""
        return None

    def check_settings(self, settings: GenerationSettings) -> None:  # noqa: B027
        """Raise ``ValueError`` for settings this model cannot honour (after ``load``)."""

    def fast_path_record(self) -> dict[str, Any]:
        """For the manifest: which speedups are on and why (empty: the backend has none)."""
        return {}
