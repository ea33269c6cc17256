"""Model backends: one small batched interface (``base.Backend``) over model families.

``load_backend`` picks the backend from the registry (``registry.BACKENDS``) by the
checkpoint's ``config.model_type``, never by its name: ``idefics`` is IDEFICS v1's interleaved
prompt lists; any other image-text-to-text model is driven through its processor's chat template
(Idefics2, Idefics3, ...). torch and transformers are imported only here, when a backend is
asked for.
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
from audit.backends.registry import BACKENDS, choose_backend
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
    family fails at once with a ``ModelLoadError``); weights load with ``Backend.load``. A served
    model (``backend: endpoint``) has no config or weights here: ``location`` is its name.
    """
    if model.backend == "endpoint":
        from audit.backends.endpoint.backend import EndpointBackend

        return EndpointBackend(model, preamble)
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    from audit.backends.hf.checkpoint import not_image_text, open_checkpoint

    checkpoint = open_checkpoint(location, model)
    model_type = checkpoint.model_type
    entry = choose_backend(model.backend, model_type, location)
    if (
        not entry.model_types
        and model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
        and not model.trust_remote_code
    ):
        raise ModelLoadError(
            f"model {location}: unsupported model type '{model_type}': "
            f"{not_image_text(checkpoint.config)} (docs/models.md; supported: "
            + "; ".join(f"{e.name}: {e.serves}" for e in BACKENDS.values())
            + ")"
        )
    return entry.backend_class()(checkpoint, preamble)  # type: ignore[call-arg]
