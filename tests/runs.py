"""Shared helpers for tests that run probes: tiny models, probe files, reading stored rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

FAMILIES = ("idefics", "idefics2", "idefics3")


def synthetic_values(n: int = 12, seed: int = 0) -> dict[str, list[str]]:
    """The group values the synthetic source produces (read through the public API)."""
    from audit.datasets import open_dataset
    from audit.spec import parse_probe

    spec = parse_probe(
        {
            "name": "values",
            "dataset": {"source": "synthetic", "n": n, "seed": seed, "groups": ["gender", "race"]},
            "model": {"id": "unused"},
            "prompts": [{"id": "p", "text": "x"}],
        },
        "values",
        Path("."),
    )
    return open_dataset(spec).group_values()


def write_probe(folder: Path, model: Path | str, **sections: Any) -> Path:
    """A small synthetic probe with two prompts and two classification tasks."""
    values = synthetic_values()
    data: dict[str, Any] = {
        "version": 1,
        "name": "tiny",
        "dataset": {"source": "synthetic", "n": 12, "groups": ["gender", "race"]},
        "model": {"id": str(model)},
        "generation": {"max_new_tokens": 5, "batch_size": 4},
        "prompts": [
            {"id": "resume", "text": "Describe this person. Then write a resume."},
            {"id": "arrest", "text": "Write an article."},
        ],
        "classification": [
            {
                "id": "gender",
                "target": "gender",
                "template": "a photo of a {label} person.",
                "labels": {v.lower(): v for v in values["gender"]},
            },
            {
                "id": "race",
                "target": "race",
                "template": "a photo of a {label} person.",
                "labels": {v.lower().replace("_", " "): v for v in values["race"]},
            },
        ],
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "probe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def fairface_dataset(images: Path, groups: list[str]) -> dict[str, Any]:
    """A probe's dataset section for a FairFace-layout folder (``images``/labels.csv)."""
    return {
        "source": "fairface_csv",
        "path": str(images),
        "labels_csv": str(images / "labels.csv"),
        "groups": groups,
    }


def write_fairface_probe(folder: Path, model: Path | str, images: Path) -> Path:
    """``write_probe`` over a FairFace-layout folder (``images``/labels.csv), one gender task."""
    return write_probe(
        folder,
        model,
        dataset=fairface_dataset(images, ["gender", "race"]),
        classification=[
            {
                "id": "gender",
                "target": "gender",
                "template": "a photo of a {label} person.",
                "labels": {"male": "Male", "female": "Female"},
            }
        ],
    )


def assert_generations_agree(backend: Any, requests: Any, got: Any, expected: Any) -> None:
    """Each pair has the same tokens, or the same up to their first difference where the plain
    path's two choices are a float32 near-tie (``self_check.TIE_TOLERANCE``): batch
    composition and padding change float arithmetic, which may break such a tie either way."""
    from audit.backends.hf.fast.self_check import TIE_TOLERANCE, generation_difference

    assert len(got) == len(expected) == len(requests)
    for i, (request, a, b) in enumerate(zip(requests, got, expected, strict=True)):
        difference = generation_difference(backend, request, a, b, TIE_TOLERANCE["float32"])
        assert difference is None, f"request {i}: {difference}"


def jpeg_bytes(i: int, size: tuple[int, int] = (40, 48)) -> bytes:
    """A small JPEG whose colour depends on ``i`` (distinct images for distinct samples)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (i * 37 % 256, 90, 200 - i * 11 % 200)).save(buffer, "JPEG")
    return buffer.getvalue()


def run_cli(*args: str) -> tuple[int, str]:
    """``audit ARGS`` in-process: exit code and output; an exception other than the CLI's exit
    is raised, so a crash shows its traceback rather than an exit code."""
    from typer.testing import CliRunner

    from audit.cli import app

    result = CliRunner().invoke(app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def wilson(k: int, n: int) -> tuple[float, float]:
    """The Wilson 95% interval, written out independently of the code under test."""
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def assert_a_stop_token_ends_generation(backend: Any, pictures: Any, prompt: str) -> Any:
    """A token the model generates, given as a stop token, ends the generation on it (the
    token kept): tried on ``pictures`` in turn (random weights) until one generation holds a
    token that decodes to itself. Returns that free generation."""
    from dataclasses import replace

    from audit.backends.base import GenerationRequest, GenerationSettings

    tokenizer = backend.processor.tokenizer
    settings = GenerationSettings(max_new_tokens=24)
    candidates: list[tuple[int, str]] = []
    for picture in pictures:
        request = [GenerationRequest(picture, prompt)]
        free = backend.generate(request, settings)[0]
        candidates = [
            (i, text)
            for i, token in enumerate(free.token_ids)
            if token not in backend.roles.eos_ids
            and (text := tokenizer.decode([token])).strip()
            and tokenizer(text, add_special_tokens=False).input_ids == [token]
        ]
        if candidates:
            break
    assert candidates, "no generated token decodes to itself"
    at, word = candidates[-1]
    stopped = backend.generate(request, replace(settings, stop_tokens=(word,)))[0]
    first = free.token_ids.index(free.token_ids[at])  # the token may occur earlier
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.finish_reason == "eos" and stopped.text.endswith(word)
    return free


def crash_on_batch(monkeypatch: Any, n: int, message: str = "killed") -> None:
    """Make the ``n``-th batch of the next run raise, as a crash in the middle of a run."""
    from audit.run import executor

    original, calls = executor.BatchExecutor.run, {"n": 0}

    def crashing(self: Any, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError(message)
        return original(self, batch)

    monkeypatch.setattr(executor.BatchExecutor, "run", crashing)


def in_ci() -> bool:
    """Whether this run is CI's (``CI=true``): there, a part CI must have is never skipped."""
    import os

    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def ci_needs(what: str) -> None:
    """A part this test needs is missing: skip it here, fail it under CI (where every part the
    README's install and ``make test`` provide must be there). Usable at module level."""
    import pytest

    if in_ci():
        pytest.fail(f"CI must have {what}", pytrace=False)
    pytest.skip(f"needs {what}", allow_module_level=True)


def ci_import(module: str, what: str) -> Any:
    """``importlib.import_module(module)``, or ``ci_needs(what)`` when it cannot be imported."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        ci_needs(what)


def kill_mid_run(command: list[str], run_dir: Path, parts: int = 3) -> None:
    """Start ``command`` (an ``audit run`` writing ``run_dir``) and SIGKILL it once its
    generations have ``parts`` parts: a kill in the middle of a run, nothing flushed after."""
    import os
    import signal
    import subprocess
    import time

    from audit.store.tables import RunStore

    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ}
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(RunStore(run_dir).parts("generations")) < parts:
        assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
