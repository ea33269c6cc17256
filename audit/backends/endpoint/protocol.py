"""The OpenAI chat-completions protocol as this backend speaks it: request bodies in, results out.

Pure functions, no network: images go as base64 PNG data URLs (lossless, so the server sees the
pixels the in-process backends see), the probe's system prompt and example exchanges as the
messages before the user turn and its loose parts at the start of it (as in-process), the
probe's decoding settings mapped onto the protocol's fields.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

from PIL import Image

from audit.backends.base import Generation, GenerationSettings, Preamble, PreamblePart

Message = dict[str, Any]


def image_url(image: Image.Image) -> str:
    """``data:image/png;base64,...``: lossless, so no compression artefact enters the audit."""
    buffer = io.BytesIO()
    (image if image.mode in {"RGB", "L"} else image.convert("RGB")).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_part(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def _content(parts: Sequence[PreamblePart]) -> list[dict[str, Any]]:
    return [
        {"type": "text", "text": part.text}
        if part.text is not None
        else _image_part(image_url(part.image))  # type: ignore[arg-type]
        for part in parts
    ]


def preamble_messages(preamble: Preamble) -> list[Message]:
    """The messages before the audited user turn: the system prompt, then each example
    exchange as a user message (its images as data URLs) and the assistant's answer."""
    messages: list[Message] = []
    if preamble.system:
        messages.append({"role": "system", "content": preamble.system})
    for turn in preamble.turns:
        messages.append({"role": "user", "content": _content(turn.user)})
        messages.append({"role": "assistant", "content": turn.assistant})
    return messages


def lead_parts(preamble: Preamble) -> list[dict[str, Any]]:
    """The preamble's loose parts, placed at the start of the user turn (as in-process)."""
    return _content(preamble.parts)


def user_message(
    image_data_url: str, text: str | None, lead: Sequence[dict[str, Any]] = ()
) -> Message:
    content: list[dict[str, Any]] = [*lead, _image_part(image_data_url)]
    if text:
        content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def sampling_fields(settings: GenerationSettings) -> dict[str, Any]:
    """The probe's decoding settings as chat-completions fields (also recorded in the manifest).

    Greedy is ``temperature: 0``. ``min_new_tokens`` has no OpenAI field: vLLM's ``min_tokens``
    is sent only when it is set, since other servers refuse unknown fields.
    """
    fields: dict[str, Any] = {"max_tokens": settings.max_new_tokens}
    if settings.do_sample:
        fields.update(temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed)
    else:
        fields["temperature"] = 0
    if settings.stop_strings:
        fields["stop"] = list(settings.stop_strings)
    if settings.min_new_tokens:
        fields["min_tokens"] = settings.min_new_tokens
    return fields


def with_token_field(fields: dict[str, Any], name: str) -> dict[str, Any]:
    """``fields`` with the new-token limit under the field the server takes (``name``)."""
    if name == "max_tokens" or "max_tokens" not in fields:
        return fields
    renamed = {k: v for k, v in fields.items() if k != "max_tokens"}
    return {name: fields["max_tokens"], **renamed}


def chat_body(model: str, messages: list[Message], fields: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "messages": messages, **fields}


class ProtocolError(ValueError):
    """A 2xx answer that does not have the shape the protocol promises."""


def first_choice(response: Any) -> dict[str, Any]:
    choices = response.get("choices") if isinstance(response, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProtocolError("the answer has no 'choices'")
    return choices[0]


def generation_of(response: Any) -> Generation:
    """A chat completion as a ``Generation``: the assistant's text (untrusted), the server's
    token count, ``length`` when it stopped at ``max_tokens``, else ``eos``."""
    choice = first_choice(response)
    message = choice.get("message") or {}
    text = message.get("content") if isinstance(message, dict) else None
    if text is not None and not isinstance(text, str):
        raise ProtocolError("the answer's 'message.content' is not text")
    usage = response.get("usage") or {}
    n_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return Generation(
        text=text or "",
        n_new_tokens=int(n_tokens) if isinstance(n_tokens, int) else 0,
        finish_reason="length" if choice.get("finish_reason") == "length" else "eos",
    )


def served_models(response: Any) -> list[str]:
    """The ids ``GET /v1/models`` lists."""
    data = response.get("data") if isinstance(response, dict) else None
    if not isinstance(data, list):
        return []
    return [str(item["id"]) for item in data if isinstance(item, dict) and "id" in item]
