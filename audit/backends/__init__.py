"""Model backends: one small batched interface (``base.Backend``) over model families.

``load_backend`` picks the family from the checkpoint's ``config.model_type`` (never from its
name): ``idefics`` is IDEFICS v1's interleaved prompt lists; any other image-text-to-text model
is driven through its processor's chat template (Idefics2, Idefics3, ...). torch and
transformers are imported only here, when a backend is asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from audit.backends.base import (
    Backend,
    BackendInfo,
    Generation,
    GenerationRequest,
    GenerationSettings,
    LabelScoreRequest,
    LabelScores,
    PreamblePart,
)
from audit.errors import ModelLoadError

if TYPE_CHECKING:
    from audit.spec import ModelSpec

__all__ = [
    "Backend",
    "BackendInfo",
    "Generation",
    "GenerationRequest",
    "GenerationSettings",
    "LabelScoreRequest",
    "LabelScores",
    "PreamblePart",
    "load_backend",
]


def load_backend(location: str, model: ModelSpec, preamble: Sequence[PreamblePart] = ()) -> Backend:
    """The backend for the model at ``location`` (a local folder or a hub id, already resolved).

    Reads only the config now (so a wrong path, an uncached hub id offline or an unsupported
    family fails at once with a ``ModelLoadError``); weights load on first use.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from audit.backends.hf.chat import ChatBackend
    from audit.backends.hf.checkpoint import open_checkpoint
    from audit.backends.hf.idefics import IdeficsBackend

    checkpoint = open_checkpoint(location, model)
    model_type = checkpoint.model_type
    choice = model.backend
    if choice == "auto":
        choice = "idefics" if model_type in IdeficsBackend.model_types else "chat"
    if choice == "idefics":
        if model_type not in IdeficsBackend.model_types:
            raise ModelLoadError(
                f"model {location}: backend 'idefics' needs an IDEFICS v1 checkpoint "
                f"(config.model_type 'idefics'), this one is '{model_type}'"
            )
        return IdeficsBackend(checkpoint, preamble)
    if model_type in IdeficsBackend.model_types:
        raise ModelLoadError(
            f"model {location}: IDEFICS v1 has no chat template; use backend 'idefics' or 'auto'"
        )
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and not model.trust_remote_code:
        raise ModelLoadError(
            f"model {location}: unsupported model type '{model_type}': not an image-text-to-text "
            "model (supported: IDEFICS v1, Idefics2, Idefics3 and other chat-template "
            "image-text models)"
        )
    return ChatBackend(checkpoint, preamble)
