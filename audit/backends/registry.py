"""Which backend serves a model: a registry keyed by name and by ``config.model_type``.

Importing this module is cheap (no torch): each entry names its class, imported only when the
backend is chosen. ``auto`` picks the entry made for the checkpoint's ``config.model_type``,
else the one that serves any model of its kind; the family is never guessed from the name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from audit.errors import ModelLoadError, ProbeError

if TYPE_CHECKING:
    from audit.backends.base import Backend
    from audit.spec import ProbeSpec

AUTO = "auto"


@dataclass(frozen=True)
class BackendEntry:
    """A backend a probe's ``model.backend`` can name, and what it can do."""

    name: str
    #: ``module:Class``, imported when the backend is chosen.
    target: str
    #: The ``config.model_type`` values it is made for; empty: any model of its kind.
    model_types: tuple[str, ...]
    #: What models it serves, for messages.
    serves: str
    #: Talks to a model served elsewhere (no checkpoint here): chosen by name only, never by
    #: ``auto``.
    remote: bool = False

    def backend_class(self) -> type[Backend]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


BACKENDS: dict[str, BackendEntry] = {
    entry.name: entry
    for entry in (
        BackendEntry(
            "idefics",
            "audit.backends.hf.idefics:IdeficsBackend",
            ("idefics",),
            "IDEFICS v1 (interleaved prompt lists)",
        ),
        BackendEntry(
            "paligemma",
            "audit.backends.hf.paligemma:PaliGemmaBackend",
            ("paligemma",),
            "PaliGemma (a prefix language model with no chat template)",
        ),
        BackendEntry(
            "chat",
            "audit.backends.hf.chat:ChatBackend",
            (),
            "image-text-to-text models whose processor has a chat template (Idefics2, Idefics3, "
            "...)",
        ),
        BackendEntry(
            "endpoint",
            "audit.backends.endpoint.backend:EndpointBackend",
            (),
            "any model served over the OpenAI chat-completions protocol (vLLM, SGLang, TGI, "
            "transformers serve, hosted APIs)",
            remote=True,
        ),
    )
}


def backend_names() -> tuple[str, ...]:
    """What a probe's ``model.backend`` may say."""
    return (AUTO, *BACKENDS)


def check_backend_name(spec: ProbeSpec, origin: str) -> None:
    """``ProbeError`` naming the file and key when the probe asks for an unknown backend."""
    if spec.model.backend not in backend_names():
        raise ProbeError(
            f"{origin}: model.backend: unknown backend '{spec.model.backend}' "
            f"(expected one of: {', '.join(backend_names())})"
        )


def choose_backend(requested: str, model_type: str, location: str) -> BackendEntry:
    """The entry serving a checkpoint of ``model_type`` (``requested``: a name or ``auto``)."""
    made_for = next((e for e in BACKENDS.values() if model_type in e.model_types), None)
    if requested == AUTO:
        return made_for or next(e for e in BACKENDS.values() if not e.model_types and not e.remote)
    if requested not in BACKENDS:
        raise ModelLoadError(
            f"model {location}: unknown backend '{requested}' "
            f"(expected one of: {', '.join(backend_names())})"
        )
    entry = BACKENDS[requested]
    if entry.model_types and model_type not in entry.model_types:
        raise ModelLoadError(
            f"model {location}: backend '{entry.name}' serves {entry.serves} "
            f"(config.model_type {', '.join(repr(t) for t in entry.model_types)}); "
            f"this one is '{model_type}'"
        )
    if made_for is not None and made_for is not entry:
        raise ModelLoadError(
            f"model {location}: type '{model_type}' is served by backend '{made_for.name}' "
            f"({made_for.serves}); use backend '{made_for.name}' or 'auto'"
        )
    return entry
