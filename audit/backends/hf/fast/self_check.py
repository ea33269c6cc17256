"""Fast paths checked against transformers' plain path on a run's own first samples.

Before the first batch of a run (of each process of a sharded run), the backend answers a few
of that batch's requests twice: with every fast path off, which is transformers' plain path,
and with those that are on. A fast path that disagrees or raises is turned off for the run.
When the combination disagrees, each fast path is tried alone, so one broken path does not take
the others with it. The checked generations are short (``CHECK_NEW_TOKENS``) and pause at every
step, so resuming from the cache, which row dropping does over a whole run, is exercised too.

What "agree" means is the same everywhere results of two paths are compared (here, in the
tests, in the benchmarks): generations have the same tokens, or the same tokens up to their
first difference, where the plain path's log-probabilities of the two tokens are within
``TIE_TOLERANCE`` of each other: a near-tie that float arithmetic (batch composition, padding,
kernel choice) may break either way. Label scores agree within ``score_tolerance``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from audit.backends.base import (
    Generation,
    GenerationRequest,
    GenerationSettings,
    LabelScoreRequest,
    LabelScores,
)
from audit.backends.hf.fast.policy import (
    FAST_PATHS,
    VERIFIED,
    VERIFIED_TRANSFORMERS,
    FastPathPolicy,
)

CHECK_NEW_TOKENS = 4
#: Largest gap, in nats, between the plain path's log-probabilities of two tokens that still
#: counts as a tie, by the model's dtype. Measured in float32: the next-token log-probabilities
#: of a prompt alone and in a left-padded batch of 16 differ by up to 3.9e-4 (Idefics2), so a
#: gap between two tokens moves by up to twice that. bfloat16 keeps 3 significant digits: a
#: logit of 10 is rounded by up to 0.04.
TIE_TOLERANCE = {"float64": 1e-6, "float32": 2e-3, "float16": 0.1, "bfloat16": 0.25}
#: (absolute, relative) tolerance of a summed label log-likelihood, by dtype. Measured on the
#: three families' random-weight models, plain against prefix-shared scoring, 24 requests of
#: FairFace's tasks: float32 differs by at most 6.8e-5 on sums near 190, bfloat16 by 0.29.
_SCORE_TOLERANCE = {
    "float64": (1e-8, 1e-8),
    "float32": (1e-4, 1e-6),
    "float16": (0.02, 2e-3),
    "bfloat16": (0.05, 4e-3),
}


def score_tolerance(dtype: str, score: float) -> float:
    """How far two label scores near ``score`` may be apart and still agree."""
    absolute, relative = _SCORE_TOLERANCE.get(dtype, _SCORE_TOLERANCE["bfloat16"])
    return absolute + relative * abs(score)


class CheckedBackend(Protocol):
    """What the self-check needs from a backend."""

    fast_paths: FastPathPolicy

    def generate(
        self,
        requests: Sequence[GenerationRequest],
        settings: GenerationSettings,
        *,
        batch_size: int = ...,
    ) -> list[Generation]: ...

    def score_labels(
        self, requests: Sequence[LabelScoreRequest], *, batch_size: int = ...
    ) -> list[LabelScores]: ...

    def next_token_logprobs(self, request: GenerationRequest, token_ids: Sequence[int]) -> Any: ...


def generation_difference(
    backend: CheckedBackend,
    request: GenerationRequest,
    got: Generation,
    expected: Generation,
    tolerance: float,
) -> str | None:
    """``None`` where ``got`` and ``expected`` agree (the same tokens, or the same up to a
    near-tie of the plain path at their first difference); otherwise what differs."""
    if got == expected:
        return None
    a, b = got.token_ids, expected.token_ids
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    if n == len(a) or n == len(b):
        return f"one stops after {n} tokens where the other goes on"
    with backend.fast_paths.limited_to(()):
        logprobs = backend.next_token_logprobs(request, a[:n])
    gap = abs(float(logprobs[a[n]]) - float(logprobs[b[n]]))
    if gap <= tolerance:
        return None
    return f"token {n + 1} differs, {gap:.2g} nats apart under the plain path (> {tolerance:g})"


@dataclass(frozen=True)
class CheckRequests:
    """What the self-check sends through both paths: a few of the run's first requests."""

    generation: tuple[GenerationRequest, ...]
    scoring: tuple[LabelScoreRequest, ...]
    settings: GenerationSettings
    batch_size: int


@dataclass(frozen=True)
class _Answers:
    generations: list[Generation]
    scores: list[LabelScores]


class _Checker:
    """Runs the check requests under a choice of fast paths and compares with the plain path."""

    def __init__(self, backend: CheckedBackend, requests: CheckRequests, dtype: str) -> None:
        self.backend = backend
        self.requests = requests
        self.dtype = dtype

    def answers(self, names: Sequence[str]) -> _Answers:
        backend, requests = self.backend, self.requests
        with backend.fast_paths.limited_to(names, checking=True):
            batch = requests.batch_size
            generations = (
                backend.generate(requests.generation, requests.settings, batch_size=batch)
                if requests.generation
                else []
            )
            scoring = requests.scoring
            scores = backend.score_labels(scoring, batch_size=batch) if scoring else []
        return _Answers(generations, scores)

    def disagreement(self, names: Sequence[str], plain: _Answers) -> str | None:
        """Why the answers with fast paths ``names`` differ from ``plain`` (``None``: agree)."""
        try:
            fast = self.answers(names)
        except Exception as error:  # any failure of a fast path is a reason to turn it off
            return f"it raised {type(error).__name__}: {_short(str(error))}"
        tie = TIE_TOLERANCE.get(self.dtype, TIE_TOLERANCE["bfloat16"])
        pairs = zip(self.requests.generation, fast.generations, plain.generations, strict=True)
        for i, (request, got, expected) in enumerate(pairs, start=1):
            difference = generation_difference(self.backend, request, got, expected, tie)
            if difference is not None:
                return f"in generation {i}, {difference}"
        for i, (got_s, expected_s) in enumerate(zip(fast.scores, plain.scores, strict=True), 1):
            if got_s.n_tokens != expected_s.n_tokens:
                return f"label token counts of request {i} differ"
            for a, b in zip(got_s.logprob_sums, expected_s.logprob_sums, strict=True):
                limit = score_tolerance(self.dtype, b)
                if not abs(a - b) <= limit:  # NaN fails too
                    return f"label scores of request {i} differ by {abs(a - b):.2g} (> {limit:.2g})"
        return None


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_fast_paths(
    backend: CheckedBackend,
    requests: CheckRequests,
    *,
    dtype: str,
    transformers_version: str,
) -> list[str]:
    """Turn off the fast paths of ``backend`` that disagree with the plain path on
    ``requests``. Returns one line per thing the user should know: each fast path turned off
    (naming it and the transformers version), a model type or a transformers release the fast
    paths were not verified on."""
    policy = backend.fast_paths
    lines = []
    verified_types = sorted({t for path in FAST_PATHS for t in path.model_types})
    if policy.enabled and policy.model_type not in verified_types:
        lines.append(
            f"model type '{policy.model_type}' is not one the fast paths are verified on "
            f"({', '.join(verified_types)}): transformers' plain path runs"
        )
    elif policy.enabled and transformers_version not in VERIFIED_TRANSFORMERS:
        lines.append(
            f"transformers {transformers_version} is not a release the fast paths were verified "
            f"on ({', '.join(VERIFIED_TRANSFORMERS)}): each is checked against the plain path on "
            "this run's first samples before it is used"
        )
    candidates = policy.active()
    if not candidates or not (requests.generation or requests.scoring):
        return lines
    short = dataclasses.replace(
        requests.settings,
        max_new_tokens=min(requests.settings.max_new_tokens, CHECK_NEW_TOKENS),
        min_new_tokens=0,
        do_sample=False,
    )
    checker = _Checker(backend, dataclasses.replace(requests, settings=short), dtype)
    try:
        plain = checker.answers(())
    except Exception as error:  # the run itself will meet this error and report it
        note = f"off; the self-check's plain path failed ({type(error).__name__})"
        for name in candidates:
            policy.set_state(name, False, note)
        return [*lines, f"fast paths off for this run: {note}: {_short(str(error), 200)}"]
    if checker.disagreement(candidates, plain) is None:
        for name in candidates:
            policy.set_state(name, True, VERIFIED)
        return lines
    kept = []
    for name in candidates:
        reason = checker.disagreement((name,), plain)
        if reason is None:
            kept.append(name)
            continue
        note = f"off; self-check on transformers {transformers_version}: {reason}"
        policy.set_state(name, False, note)
        lines.append(
            f"fast path '{name}' is off for this run: on transformers {transformers_version}, "
            f"against the plain path, {reason}; the run goes on without it (slower, same results)"
        )
    together = checker.disagreement(kept, plain) if len(kept) > 1 else None
    for name in kept:
        on = together is None
        policy.set_state(name, on, VERIFIED if on else f"off; disagreed in combination: {together}")
    if together is not None:
        lines.append(
            f"fast paths {', '.join(kept)} are off for this run: each agreed with the plain path "
            f"alone but not together on transformers {transformers_version} ({together})"
        )
    return lines
