"""What the model is shown around each image, settled before a run starts.

The probe's preamble becomes what can be shown: its example images loaded, or, where they are
missing and the probe allows it, the system prompt alone. The card script's split template is
described by what its construction does to the input. The manifest keeps the result
(``prompt_layout``), so a report says exactly what the model saw.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from audit.backends.base import Preamble, PreamblePart, SplitTemplate, Turn
from audit.errors import ProbeError, RunDirError
from audit.spec import PreamblePartSpec, ProbeSpec, SplitTemplateSpec

_LITERAL_IMAGE = re.compile(r"^<image:[^>]*>$")
_IMAGE_TOKEN = "<image>"


def prepare_preamble(spec: ProbeSpec, origin: str) -> tuple[Preamble, dict[str, Any]]:
    """The preamble to give the backend, and the manifest's ``prompt_layout`` record."""
    record: dict[str, Any] = {
        "classification_context": {t.id: t.context for t in spec.classification},
        "order": spec.generation.order,
    }
    if spec.generation.stop_tokens:
        record["stop_tokens"] = list(spec.generation.stop_tokens)
    if spec.split_template is not None:
        template = spec.split_template
        split = SplitTemplate(template.text, template.separator, template.image_piece)
        return Preamble(split_template=split), {
            **record,
            "layout": "split_template",
            "preamble": "the card script's whole prompt, split and substituted",
            "quirks": split_template_quirks(template),
        }
    record["layout"] = "turns"
    if isinstance(spec.preamble, list):
        parts = tuple(
            _load_part(spec, f"preamble[{i}]", part, origin) for i, part in enumerate(spec.preamble)
        )
        described = (
            f"{len(parts)} parts before the user turn"
            if parts
            else "no preamble: the image and the prompt in one user turn"
        )
        return Preamble(parts=parts), {**record, "preamble": described, "preamble_complete": True}
    dialogue = spec.preamble
    missing = [
        (key, str(spec.resolve_path(file)))
        for key, file in spec.preamble_images()
        if not spec.resolve_path(file).is_file()
    ]
    if missing and dialogue.if_images_missing == "error":
        raise ProbeError(
            "\n".join(f"{origin}: {key}: no such image file '{path}'" for key, path in missing)
        )
    if missing:
        return Preamble(system=dialogue.system), {
            **record,
            "preamble": "system prompt only: the example exchanges need images that are missing",
            "preamble_complete": False,
            "missing_images": [path for _, path in missing],
        }
    turns = tuple(
        Turn(
            tuple(
                _load_part(spec, f"preamble.turns[{t}].user[{i}]", part, origin)
                for i, part in enumerate(turn.user)
            ),
            turn.assistant,
        )
        for t, turn in enumerate(dialogue.turns)
    )
    n_images = len(spec.preamble_images())
    described = (
        f"system prompt and {len(turns)} example exchanges ({n_images} images)"
        if turns
        else "system prompt"
    )
    preamble = Preamble(system=dialogue.system, turns=turns)
    return preamble, {**record, "preamble": described, "preamble_complete": True}


def served_contexts(layout: dict[str, Any]) -> list[str]:
    """Where a backend cannot lay out the card's classification context (a chat endpoint wraps
    every request in its chat template), record what its tasks get instead: the server's
    template without the preamble (``served``). Returns the tasks changed."""
    contexts = layout.get("classification_context") or {}
    changed = [task for task, context in contexts.items() if context == "card"]
    for task in changed:
        contexts[task] = "served"
    return changed


def drop_preamble(layout: dict[str, Any], preamble: Preamble, model_type: str) -> bool:
    """Record that a model whose prompt has no turns is shown no preamble; whether the probe
    had one to drop."""
    if not (preamble.system or preamble.turns or preamble.parts):
        return False
    layout["preamble"] = (
        f"none: a {model_type} model's prompt has no turns or system prompt, so the probe's "
        f"preamble ({layout.get('preamble')}) is not shown"
    )
    layout["preamble_shown"] = False
    return True


def settle_card_context(layout: dict[str, Any], card_layout: dict[str, Any] | None) -> list[str]:
    """Record how the card's classification context is laid out for the loaded model (the
    image's text, whether a BOS is written); where the model cannot be shown the image and the
    text alone (``card_layout`` is ``None``), its tasks are scored in a chat and recorded so.
    Returns the tasks changed."""
    contexts = layout.get("classification_context") or {}
    tasks = [task for task, context in contexts.items() if context == "card"]
    if not tasks:
        return []
    if card_layout is not None:
        layout["card_layout"] = card_layout
        return []
    for task in tasks:
        contexts[task] = "chat"
    layout["card_context_unavailable"] = tasks
    return tasks


def check_same_layout(previous: dict[str, Any] | None, now: dict[str, Any], root: Path) -> None:
    """A run resumed with another preamble (example images added or removed since it started)
    would mix two settings in one table."""
    if previous and previous.get("preamble") != now.get("preamble"):
        raise RunDirError(
            f"{root}: the run started with preamble '{previous.get('preamble')}' and would now "
            f"run with '{now.get('preamble')}' (example images added or removed?); put the "
            "files back as they were to resume, or start a new run with --out or --fresh"
        )


def split_template_quirks(template: SplitTemplateSpec) -> list[str]:
    """What the card script's construction does to the input, read off the template."""
    pieces = template.text.split(template.separator)
    question = next(i for i, piece in enumerate(pieces) if "{prompt}" in piece)
    after = pieces[template.image_piece + 1] if template.image_piece + 1 < len(pieces) else ""
    quirks = [
        f"the image replaces piece {template.image_piece} of {len(pieces)} (the prompt split on "
        f"'{template.separator}') and is followed by {_opening(after)}; the audited question is "
        f"in piece {question}"
    ]
    texts = [piece for i, piece in enumerate(pieces) if i != template.image_piece]
    literal = [piece for piece in texts if _LITERAL_IMAGE.match(piece)]
    if literal:
        quirks.append(
            f"{len(literal)} example images stay literal text, never loaded: " + ", ".join(literal)
        )
    bare = sum(piece.count(_IMAGE_TOKEN) for piece in texts)
    if bare:
        quirks.append(
            f"{bare} '{_IMAGE_TOKEN}' token(s) in the text have no pixels: on transformers >= "
            "4.36 the tokens after them attend to no image; before that release (the card's "
            "run) they attended uniformly to the image's latents, which transformers 5 cannot "
            "reproduce"
        )
    return quirks


def _opening(text: str, n: int = 70) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def _load_part(spec: ProbeSpec, key: str, part: PreamblePartSpec, origin: str) -> PreamblePart:
    if part.text is not None:
        return PreamblePart(text=part.text)
    path = spec.resolve_path(part.image or "")
    try:
        with Image.open(path) as image:
            return PreamblePart(image=image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as error:
        raise ProbeError(f"{origin}: {key}.image: cannot read image '{path}' ({error})") from None
