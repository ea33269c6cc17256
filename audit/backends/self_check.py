"""Fast paths checked against transformers' plain path on a run's own first samples.

Before the first batch of a run (of each process of a sharded run), the backend answers a few
of that batch's requests twice: with every fast path off, which is transformers' plain path,
and with those that are on. Generation must give the same tokens; label scoring the same
scores to a tolerance. A fast path that disagrees or raises is turned off for the run. When the
combination disagrees, each fast path is tried alone, so one broken path does not take the
others with it. The checked generations are short (``CHECK_NEW_TOKENS``) and pause at every
step, so resuming from the cache, which row dropping does over a whole run, is exercised too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from audit.backends.base import (
    Generation,
    GenerationRequest,
    GenerationSettings,
    LabelScoreRequest,
    LabelScores,
)
from audit.backends.fast_paths import (
    FAST_PATHS,
    VERIFIED,
    VERIFIED_TRANSFORMERS,
    FastPathPolicy,
)

CHECK_NEW_TOKENS = 8
#: Largest difference of a summed label log-likelihood between the two paths, by the model's
#: dtype: float32 arithmetic agrees to ~1e-5 (measured on the three families); half precision
#: rounds each logit to 3 significant digits, so sums over a few tokens differ by ~1e-2.
SCORE_TOLERANCE = {"float32": 1e-4, "float64": 1e-6, "bfloat16": 0.1, "float16": 0.05}


@dataclass(frozen=True)
class CheckRequests:
    """What the self-check sends through both paths: a few of the run's first requests."""

    generation: tuple[GenerationRequest, ...]
    scoring: tuple[LabelScoreRequest, ...]
    settings: GenerationSettings


@dataclass(frozen=True)
class _Answers:
    generations: list[Generation]
    scores: list[LabelScores]


class _Checker:
    """Runs the check requests under a choice of fast paths and compares with the plain path."""

    def __init__(
        self,
        policy: FastPathPolicy,
        generate: Callable[[Sequence[GenerationRequest], GenerationSettings], list[Generation]],
        score: Callable[[Sequence[LabelScoreRequest]], list[LabelScores]],
        requests: CheckRequests,
        tolerance: float,
    ) -> None:
        self.policy = policy
        self._generate, self._score = generate, score
        self.requests = requests
        self.tolerance = tolerance

    def answers(self, names: Sequence[str]) -> _Answers:
        with self.policy.limited_to(names, checking=True):
            return _Answers(
                self._generate(self.requests.generation, self.requests.settings)
                if self.requests.generation
                else [],
                self._score(self.requests.scoring) if self.requests.scoring else [],
            )

    def disagreement(self, names: Sequence[str], plain: _Answers) -> str | None:
        """Why the answers with fast paths ``names`` differ from ``plain`` (``None``: agree)."""
        try:
            fast = self.answers(names)
        except Exception as error:  # any failure of a fast path is a reason to turn it off
            return f"it raised {type(error).__name__}: {_short(str(error))}"
        pairs = zip(fast.generations, plain.generations, strict=True)
        for i, (got, expected) in enumerate(pairs, start=1):
            if got != expected:
                return f"generation {i} was {_short(got.text)!r}, not {_short(expected.text)!r}"
        for i, (got_s, expected_s) in enumerate(zip(fast.scores, plain.scores, strict=True), 1):
            if got_s.n_tokens != expected_s.n_tokens:
                return f"label token counts of request {i} differ"
            sums = zip(got_s.logprob_sums, expected_s.logprob_sums, strict=True)
            gap = max((abs(a - b) for a, b in sums), default=0.0)
            if not gap <= self.tolerance:  # NaN fails too
                return f"label scores of request {i} differ by {gap:.2g} (> {self.tolerance:g})"
        return None


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_fast_paths(
    policy: FastPathPolicy,
    generate: Callable[[Sequence[GenerationRequest], GenerationSettings], list[Generation]],
    score: Callable[[Sequence[LabelScoreRequest]], list[LabelScores]],
    requests: CheckRequests,
    *,
    dtype: str,
    transformers_version: str,
) -> list[str]:
    """Turn off the fast paths of ``policy`` that disagree with the plain path on ``requests``.

    ``generate`` and ``score`` are the backend's own methods, which consult ``policy``. Returns
    one line per thing the user should know: each fast path turned off (naming it and the
    transformers version), and a transformers release outside the verified ones.
    """
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
    checker = _Checker(
        policy,
        generate,
        score,
        dataclasses.replace(requests, settings=short),
        SCORE_TOLERANCE.get(dtype, SCORE_TOLERANCE["bfloat16"]),
    )
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
        policy.set_state(
            name, False, f"off; self-check on transformers {transformers_version}: {reason}"
        )
        lines.append(
            f"fast path '{name}' is off for this run: on transformers {transformers_version} "
            f"{reason} against the plain path; the run goes on without it (slower, same results)"
        )
    together = checker.disagreement(kept, plain) if len(kept) > 1 else None
    for name in kept:
        on = together is None
        note = VERIFIED if on else f"off; disagreed in combination: {together}"
        policy.set_state(name, on, note)
    if together is not None:
        lines.append(
            f"fast paths {', '.join(kept)} are off for this run: each agreed with the plain path "
            f"alone but not together on transformers {transformers_version} ({together})"
        )
    return lines
