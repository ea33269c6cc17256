"""Generation settings per model family: what each family's own published evaluation used.

A probe that leaves ``generation.max_new_tokens`` or ``generation.batch_size`` unset gets the
family's preset, chosen from ``config.model_type``; the manifest records what applied and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audit.spec import ProbeSpec


@dataclass(frozen=True)
class FamilyPreset:
    max_new_tokens: int
    #: Images per batch, each with all its prompts in one ``generate``.
    batch_size: int
    #: The published evaluation the numbers come from.
    source: str


PRESETS: dict[str, FamilyPreset] = {
    "idefics": FamilyPreset(
        256,
        16,
        "the IDEFICS model card's bias evaluation (idefics-9b-instruct: 256 new tokens, "
        "16 images x 3 prompts per generate)",
    ),
    "idefics2": FamilyPreset(
        512, 8, "the Idefics2 bias-evaluation script (idefics2-8b: 512 new tokens, batch 8)"
    ),
}
DEFAULT_PRESET = FamilyPreset(
    256, 16, "no published bias evaluation of this family is known: the IDEFICS card's settings"
)


def apply_preset(spec: ProbeSpec, model_type: str) -> tuple[ProbeSpec, dict[str, Any]]:
    """``spec`` with the generation settings it leaves unset filled from the family's preset,
    and the record of what was filled (empty when the probe set everything)."""
    preset = PRESETS.get(model_type, DEFAULT_PRESET)
    generation = spec.generation
    filled: dict[str, Any] = {}
    if generation.max_new_tokens is None:
        filled["max_new_tokens"] = preset.max_new_tokens
    if generation.batch_size is None:
        filled["batch_size"] = preset.batch_size
    if not filled:
        return spec, {}
    resolved = spec.model_copy(update={"generation": generation.model_copy(update=filled)})
    return resolved, {"model_type": model_type, "settings": filled, "from": preset.source}
