"""Zero-shot classification over an endpoint, by one of two methods that are not comparable.

``loglikelihood``: the label as the assistant's answer, the server asked to score the prompt
(vLLM's ``prompt_logprobs``) and to end it right after the answer (``continue_final_message``),
so the label's tokens are the prompt's last ones: the in-process backends' method and layout
(image, then the answer ``" " + prefix + label``), with the server's tokenizer and template.

``choice``: for servers that return no prompt log-probs (``transformers serve``, most hosted
APIs): the model is shown the candidate sentences and asked to answer with one; an answer that
names exactly one label is that label, any other answer is invalid (no prediction, counted).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from audit.backends.base import LabelScoreRequest, LabelScores
from audit.backends.endpoint.protocol import Message, ProtocolError, first_choice

#: Fields that make vLLM score the prompt and stop the template after the assistant's answer.
LOGLIKELIHOOD_FIELDS: dict[str, Any] = {
    "max_tokens": 1,
    "temperature": 0,
    "prompt_logprobs": 1,
    "add_generation_prompt": False,
    "continue_final_message": True,
}
CHOICE_QUESTION = (
    "Which one of these sentences describes the image best? Answer with that sentence only.\n"
)
CHOICE_FIELDS: dict[str, Any] = {"temperature": 0, "max_tokens": 32}


def answer_text(request: LabelScoreRequest, continuation: str) -> str:
    """What the assistant says when scored: the in-process layout (``prompt.answer_start``)."""
    return (f" {request.prefix}" if request.prefix else "") + continuation


def loglikelihood(request: LabelScoreRequest, continuation: str, user: Message) -> list[Message]:
    return [user, {"role": "assistant", "content": answer_text(request, continuation)}]


def label_scores(response: Any, continuation: str) -> tuple[float, int]:
    """The summed log-prob of ``continuation``'s tokens at the end of the scored prompt, and
    their count. A token that spans the boundary between prompt and label counts as the
    label's (as in the in-process backends). ``ProtocolError`` when the server's answer has no
    prompt log-probs or its prompt does not end with the label."""
    entries = response.get("prompt_logprobs") if isinstance(response, dict) else None
    if entries is None:  # vLLM's /v1/completions puts them on the choice
        entries = first_choice(response).get("prompt_logprobs")
    if not isinstance(entries, list) or not entries:
        raise ProtocolError("the answer has no 'prompt_logprobs'")
    wanted = _squeeze(continuation)
    text, total, count = "", 0.0, 0
    for entry in reversed(entries):
        token, logprob = _prompt_token(entry)
        text, total, count = token + text, total + logprob, count + 1
        if len(_squeeze(text)) >= len(wanted):
            break
    if not _squeeze(text).endswith(wanted):
        raise ProtocolError(
            f"the scored prompt does not end with the label {continuation!r}: the server may "
            "not support continue_final_message; use label_scoring: choice"
        )
    return total, count


def _prompt_token(entry: Any) -> tuple[str, float]:
    """The prompt's own token at one position: vLLM lists it with the top-ranked token when
    they differ, so it is the single entry, or the one not ranked first."""
    if not isinstance(entry, dict) or not entry:
        raise ProtocolError("a prompt token has no log-prob")
    candidates = list(entry.values())
    if len(candidates) > 1:
        candidates = [c for c in candidates if isinstance(c, dict) and c.get("rank") != 1]
    if len(candidates) != 1 or not isinstance(candidates[0], dict):
        raise ProtocolError("cannot tell the prompt's token from the top-ranked ones")
    token, logprob = candidates[0].get("decoded_token"), candidates[0].get("logprob")
    if not isinstance(token, str) or not isinstance(logprob, int | float):
        raise ProtocolError("a prompt log-prob lacks 'decoded_token' or 'logprob'")
    return token, float(logprob)


def _squeeze(text: str) -> str:
    """Whitespace does not count: tokenizers write spaces differently in decoded tokens."""
    return "".join(text.split())


# -- choice ------------------------------------------------------------------------------------
def sentences(request: LabelScoreRequest) -> list[str]:
    return [f"{request.prefix}{c}".strip() for c in request.continuations]


def choice_question(request: LabelScoreRequest) -> str:
    return CHOICE_QUESTION + "\n".join(f"- {s}" for s in sentences(request))


def chosen_label(answer: str, request: LabelScoreRequest) -> int | None:
    """The one label the answer names, or ``None`` (none, or more than one). A label is named
    when the part of its sentence that differs from the others appears as whole words."""
    keys = _distinguishing(sentences(request))
    normal = _normal(answer)
    named = [
        i
        for i, key in enumerate(keys)
        if key and re.search(rf"(?<!\w){re.escape(key)}(?!\w)", normal)
    ]
    if len(named) > 1:  # "east asian" also names "asian"; "male or female" names two
        exact = [i for i in named if _normal(sentences(request)[i]) == normal]
        if exact:
            named = exact
        elif _nested(keys, named):
            named = [max(named, key=lambda i: len(keys[i]))]
    return named[0] if len(named) == 1 else None


def _nested(keys: Sequence[str], named: Sequence[int]) -> bool:
    """The longest named key contains every other named one (``asian`` in ``east asian``)."""
    longest = max((keys[i] for i in named), key=len)
    return all(re.search(rf"(?<!\w){re.escape(keys[i])}(?!\w)", longest) for i in named)


def _distinguishing(texts: Sequence[str]) -> list[str]:
    """Each text without the words every text starts and ends with."""
    words = [_normal(t).split() for t in texts]
    head = 0
    while all(len(w) > head for w in words) and len({w[head] for w in words}) == 1:
        head += 1
    tail = 0
    while all(len(w) > head + tail for w in words) and len({w[-1 - tail] for w in words}) == 1:
        tail += 1
    return [" ".join(w[head : len(w) - tail]) for w in words]


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def choice_scores(request: LabelScoreRequest, answer: str) -> LabelScores:
    n = len(request.continuations)
    return LabelScores(
        logprob_sums=(math.nan,) * n,
        n_tokens=(0,) * n,
        method="choice",
        chosen=chosen_label(answer, request),
        answer=answer,
    )
