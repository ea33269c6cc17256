"""Speedups that reach into transformers internals, and the one policy that says which are on.

Each fast path computes what transformers' plain path computes with less work, using parts of
transformers that are not its public API (docs/compatibility.md lists them). A release may
change those parts, so a fast path runs only where all of these hold:

- it is verified by the tests on the model's ``config.model_type``;
- the user has not turned fast paths off (``audit run --no-fast-paths``, the probe's
  ``model.fast_paths: false``, or ``AUDIT_FAST_PATHS=off`` in the environment);
- in a run, it gave the plain path's results on the run's first samples (``self_check``); a
  disagreement or an exception turns it off for the rest of the run.

So an upstream change can make a run slower, never wrong or broken.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

_ALL_IDEFICS = ("idefics", "idefics2", "idefics3")
_QWEN = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_LLAVA = ("llava", "llava_next", "llava_onevision")
#: Every chat family of the conformance matrix (tests/test_model_matrix.py).
_CHAT_FAMILIES = (
    *_QWEN,
    *_LLAVA,
    "gemma3",
    "mllama",
    "internvl",
    "smolvlm",
    "mistral3",
    "aya_vision",
)
#: Families whose prompt positions run 1, 2, 3... (Qwen's are 3-D, mllama's label tokens need
#: a cross-attention mask of their own) and whose caches hold the whole prompt (Gemma 3's and
#: Aya Vision's sliding-window layers keep its end only).
_PREFIX_CACHEABLE = (*_LLAVA, "internvl", "smolvlm", "mistral3")
#: Families whose encoder takes what their image processor returns for one image (Mistral 3's
#: processor resizes with a patch size of its own; Qwen3-VL's features carry deepstack layers).
_IMAGE_FEATURES = (
    "qwen2_vl",
    "qwen2_5_vl",
    *_LLAVA,
    "gemma3",
    "internvl",
    "smolvlm",
    "aya_vision",
)


@dataclass(frozen=True)
class FastPath:
    """One speedup, and the model types the tests verify it on."""

    name: str
    model_types: tuple[str, ...]


FAST_PATHS: tuple[FastPath, ...] = (
    # Each distinct image is encoded once per batch.
    FastPath("image_features", (*_ALL_IDEFICS, *_IMAGE_FEATURES)),
    # IDEFICS v1's image latents and cross-attention keys/values, once per generate call.
    FastPath("image_latents", ("idefics",)),
    # Decoding writes into key/value room reserved ahead.
    FastPath("reserved_cache", (*_ALL_IDEFICS, *_CHAT_FAMILIES, "paligemma")),
    # Requests showing the same image share its prefilled prompt prefix.
    FastPath("image_prefix", ("idefics2", "idefics3", *_PREFIX_CACHEABLE)),
    # Rows that stopped leave their batch.
    FastPath("drop_finished", ("idefics2", "idefics3", *_CHAT_FAMILIES, "paligemma")),
    # Labels are scored against their prompt's cached prefix.
    FastPath("label_prefix", (*_ALL_IDEFICS, *_PREFIX_CACHEABLE, "gemma3", "aya_vision")),
)
FAST_PATH_NAMES: tuple[str, ...] = tuple(path.name for path in FAST_PATHS)

#: transformers releases on which every fast path's tests passed: the lock and the lowest
#: release of the range pyproject.toml declares (CI runs them there on every change), and newer
#: releases the range script found every fast path agreeing on. Elsewhere the self-check alone
#: vouches for them.
VERIFIED_TRANSFORMERS: tuple[str, ...] = ("5.23.0", "5.24.0", "5.25.0")

#: Set to ``off`` to turn every fast path off for a whole job, as ``--no-fast-paths`` does.
ENVIRONMENT_SWITCH = "AUDIT_FAST_PATHS"
TURNED_OFF = (
    f"turned off by the user (--no-fast-paths, model.fast_paths: false or {ENVIRONMENT_SWITCH}=off)"
)
NOT_CHECKED = "on; not checked against the plain path yet"
VERIFIED = "on; gave the plain path's results on this run's first samples"


@dataclass(frozen=True)
class FastPathState:
    """Whether a fast path is on for this backend, and why."""

    on: bool
    note: str


class FastPathPolicy:
    """Which fast paths a backend uses; starts from the model type and the user's choice."""

    def __init__(self, model_type: str, enabled: bool = True) -> None:
        self.model_type = model_type
        switch = os.environ.get(ENVIRONMENT_SWITCH, "on").strip().lower()
        self.enabled = enabled and switch not in {"off", "0", "false", "no"}
        self._states: dict[str, FastPathState] = {}
        for path in FAST_PATHS:
            if not self.enabled:
                state = FastPathState(False, TURNED_OFF)
            elif model_type not in path.model_types:
                state = FastPathState(False, f"off; not verified on model type '{model_type}'")
            else:
                state = FastPathState(True, NOT_CHECKED)
            self._states[path.name] = state
        self._only: frozenset[str] | None = None
        #: True while the self-check runs: decoding then pauses and resumes at every step, so
        #: a few new tokens exercise what row dropping does over a whole run.
        self.checking = False

    def on(self, name: str) -> bool:
        """Whether fast path ``name`` is used now."""
        state = self._states[name]  # KeyError for a name that is not a fast path
        return state.on and (self._only is None or name in self._only)

    def active(self) -> tuple[str, ...]:
        """The fast paths that are on (whatever ``limited_to`` says)."""
        return tuple(name for name, state in self._states.items() if state.on)

    def state(self, name: str) -> FastPathState:
        return self._states[name]

    def set_state(self, name: str, on: bool, note: str) -> None:
        self._states[name] = FastPathState(on, note)

    @contextmanager
    def limited_to(self, names: Iterable[str], *, checking: bool = False) -> Iterator[None]:
        """Use only ``names`` (of those that are on) for the duration: ``()`` is the plain
        transformers path."""
        names = frozenset(names)
        unknown = names - set(FAST_PATH_NAMES)
        if unknown:
            raise KeyError(f"not fast paths: {sorted(unknown)}")
        before = self._only, self.checking
        self._only, self.checking = names, checking
        try:
            yield
        finally:
            self._only, self.checking = before

    def record(self) -> dict[str, dict[str, Any]]:
        """For the manifest: every fast path, on or off, and why."""
        return {name: {"on": s.on, "note": s.note} for name, s in self._states.items()}
