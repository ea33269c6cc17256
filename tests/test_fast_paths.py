"""Fast paths can make a run slower, never wrong or broken: each one, broken on purpose the way
an upstream release could break it, is caught by the self-check on the run's first batch and
turned off, and the run stores the plain path's results."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import transformers
import yaml
from PIL import Image

from audit.backends import (
    Generation,
    GenerationRequest,
    GenerationSettings,
    LabelScores,
    load_backend,
)
from audit.backends.hf.fast.policy import (
    ENVIRONMENT_SWITCH,
    FAST_PATH_NAMES,
    VERIFIED_TRANSFORMERS,
    FastPathPolicy,
)
from audit.backends.hf.fast.self_check import generation_difference
from audit.spec import ModelSpec
from audit.store.tables import RunStore
from tests.runs import run_cli, write_probe


def noise_image(seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _raise(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (simulated upstream change)")


@contextmanager
def _raising_context(*_args: Any, **_kwargs: Any) -> Iterator[None]:
    _raise()
    yield


def _shuffled(function: Callable[..., Any], keys: tuple[str, ...]) -> Callable[..., Any]:
    """``function`` whose returned image states have their features rotated: a fast path that
    gives other numbers (a rescaling would not do: the resampler's layer norms undo it)."""

    def shuffled(*args: Any, **kwargs: Any) -> Any:
        inputs = function(*args, **kwargs)
        for key in keys:
            if isinstance(inputs, dict) and key in inputs:
                inputs[key] = inputs[key].roll(1, dims=-1)
        return inputs

    return shuffled


def _off_by_half(function: Callable[..., list[LabelScores]]) -> Callable[..., list[LabelScores]]:
    def shifted(*args: Any, **kwargs: Any) -> list[LabelScores]:
        return [
            LabelScores(tuple(s + 0.5 for s in r.logprob_sums), r.n_tokens)
            for r in function(*args, **kwargs)
        ]

    return shifted


def _break(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Break fast path ``name`` as an upstream change could: other numbers, or an exception."""
    import audit.backends.hf.fast.decoding as decoding
    import audit.backends.hf.fast.kv_cache as kv_cache
    import audit.backends.hf.fast.shared_prefix as shared_prefix
    import audit.backends.hf.idefics as idefics
    import audit.backends.hf.model as hf

    if name == "image_features":
        keys = ("image_encoder_embeddings", "perceiver_embeddings")
        shuffled = _shuffled(idefics.idefics_image_inputs, keys)
        monkeypatch.setattr(idefics, "idefics_image_inputs", shuffled)
    elif name == "image_latents":
        monkeypatch.setattr(idefics, "projections_remembered", _raising_context)
    elif name == "reserved_cache":
        update = kv_cache.GrowingLayer.update

        def skewed(self: Any, keys: Any, values: Any, *args: Any, **kwargs: Any) -> Any:
            stored_keys, stored_values = update(self, keys, values, *args, **kwargs)
            return stored_keys * 1.5, stored_values

        monkeypatch.setattr(kv_cache.GrowingLayer, "update", skewed)
    elif name == "image_prefix":
        monkeypatch.setattr(shared_prefix, "prefix_then_suffix_inputs", _raise)
    elif name == "drop_finished":
        monkeypatch.setattr(decoding._PauseWhenRowsStop, "__call__", _raise)
    elif name == "label_prefix":
        monkeypatch.setattr(hf, "score_shared_prefix", _off_by_half(hf.score_shared_prefix))
    else:
        raise AssertionError(f"no way to break {name}")


#: Each fast path, on a family that uses it.
CASES = [
    ("image_features", "idefics"),
    ("image_latents", "idefics"),
    ("reserved_cache", "idefics3"),
    ("image_prefix", "idefics3"),
    ("drop_finished", "idefics2"),
    ("label_prefix", "idefics2"),
]


def fast_path_warnings(output: str) -> list[str]:
    """The run's warning lines about its fast paths: each one turned off, and a model type or a
    transformers release they are not verified on (any other warning is not one)."""
    lines = [line for line in output.splitlines() if line.startswith("warning: ")]
    unexpected = [line for line in lines if not line.startswith(FAST_PATH_WARNINGS)]
    assert not unexpected, unexpected
    # On a release not in the verified list, one more line says so; it is not a disagreement.
    return [line for line in lines if not line.startswith(UNVERIFIED_RELEASE)]


FAST_PATH_WARNINGS = ("warning: fast path '", "warning: transformers ")
UNVERIFIED_RELEASE = "warning: transformers "


def test_every_fast_path_has_a_case() -> None:
    assert sorted(name for name, _ in CASES) == sorted(FAST_PATH_NAMES)


def stored(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    store = RunStore.open(run_dir)
    generations = store.read("generations").sort_values(["sample_id", "prompt_id"])
    classifications = store.read("classifications").sort_values(["sample_id", "task_id"])
    return generations.reset_index(drop=True), classifications.reset_index(drop=True)


@pytest.mark.fast_path
@pytest.mark.parametrize(("name", "family"), CASES)
def test_a_broken_fast_path_is_turned_off_and_the_run_stores_plain_results(
    name: str,
    family: str,
    model_dirs: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    probe = write_probe(tmp_path, model_dirs[family], generation={"max_new_tokens": 12})
    code, _ = run_cli("run", str(probe), "--out", str(tmp_path / "plain"), "--no-fast-paths")
    assert code == 0
    _break(name, monkeypatch)
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "broken"))
    assert code == 0, output
    assert "Traceback" not in output
    warnings = fast_path_warnings(output)
    assert len(warnings) == 1, output
    assert f"fast path '{name}' is off" in warnings[0]
    assert f"transformers {transformers.__version__}" in warnings[0]

    manifest = json.loads((tmp_path / "broken" / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    paths = manifest["fast_paths"]["paths"]
    assert manifest["fast_paths"]["transformers"] == transformers.__version__
    assert paths[name]["on"] is False and "self-check" in paths[name]["note"]
    others = [n for n, state in paths.items() if n != name and state["on"]]
    assert others, "the other fast paths stay on"
    assert all("gave the plain path's results" in paths[n]["note"] for n in others)

    code, status = run_cli("status", str(tmp_path / "broken"))
    assert code == 0 and f"fast paths (transformers {transformers.__version__}): on: " in status
    assert f"  {name}: off; self-check on transformers" in status

    plain_generations, plain_classifications = stored(tmp_path / "plain")
    generations, classifications = stored(tmp_path / "broken")
    pd.testing.assert_frame_equal(generations, plain_generations)
    assert len({*generations["generation"]}) > 3  # an image-sensitive model said different things
    assert classifications["prediction"].tolist() == plain_classifications["prediction"].tolist()
    score_columns = [c for c in classifications if c.startswith("score_")]
    np.testing.assert_allclose(
        classifications[score_columns].to_numpy(dtype=float),
        plain_classifications[score_columns].to_numpy(dtype=float),
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.fast_path
def test_fast_paths_that_agree_stay_on_and_are_recorded(
    model_dirs: dict[str, Path], tmp_path: Path
) -> None:
    probe = write_probe(tmp_path, model_dirs["idefics3"])
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "run"))
    assert code == 0 and not fast_path_warnings(output), output
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    paths = manifest["fast_paths"]["paths"]
    expected_on = {
        "image_features",
        "reserved_cache",
        "image_prefix",
        "drop_finished",
        "label_prefix",
    }
    assert {n for n, state in paths.items() if state["on"]} == expected_on
    assert "not verified on model type 'idefics3'" in paths["image_latents"]["note"]
    shard = json.loads(next((tmp_path / "run" / "shards").glob("*.json")).read_text())
    assert shard["fast_paths"] == manifest["fast_paths"]


@pytest.mark.parametrize("how", ["flag", "probe", "environment"])
def test_fast_paths_can_be_turned_off(
    how: str, model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = write_probe(tmp_path, model_dirs["idefics2"])
    if how == "probe":
        data = yaml.safe_load(probe.read_text())
        data["model"]["fast_paths"] = False
        probe.write_text(yaml.safe_dump(data))
    # Nothing may reach a fast path's code: a run touching one would fail.
    for name, _ in CASES:
        _break(name, monkeypatch)
    if how == "environment":
        monkeypatch.setenv(ENVIRONMENT_SWITCH, "off")
    flag = ["--no-fast-paths"] if how == "flag" else []
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "run"), *flag)
    assert code == 0 and "warning:" not in output, output
    paths = json.loads((tmp_path / "run" / "manifest.json").read_text())["fast_paths"]["paths"]
    assert not any(state["on"] for state in paths.values())
    assert all("turned off by the user" in state["note"] for state in paths.values())


def test_a_model_type_the_fast_paths_are_not_verified_on_starts_plain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENVIRONMENT_SWITCH, raising=False)
    policy = FastPathPolicy("fuyu")
    assert policy.active() == ()
    assert all("not verified on model type 'fuyu'" in policy.state(n).note for n in FAST_PATH_NAMES)


def test_a_broken_plain_path_is_one_error_paragraph(
    model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import audit.backends.hf.model as hf
    import audit.backends.hf.scoring as scoring

    probe = write_probe(tmp_path, model_dirs["idefics"])
    monkeypatch.setattr(hf, "run_generate", _raise)
    monkeypatch.setattr(scoring, "_plain_batch", _raise)
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "run"))
    assert code == 2, output
    assert "Traceback" not in output
    error = output[output.index("error: ") :]
    assert error.startswith("error: every request of the first batch failed")
    assert "first error: RuntimeError: mat1 and mat2 shapes cannot be multiplied" in error
    assert f"transformers {transformers.__version__}" in error and "type 'idefics'" in error
    assert "try: " in error and "requirements.lock" in error


@pytest.mark.parametrize("family", ["idefics", "idefics2", "idefics3"])
def test_teacher_forced_plain_path_predicts_what_generate_chose(
    family: str, model_dirs: dict[str, Path]
) -> None:
    backend = load_backend(str(model_dirs[family]), ModelSpec(id="x"))
    request = GenerationRequest(noise_image(3), "Describe this person.")
    generated = backend.generate([request], GenerationSettings(max_new_tokens=6))[0]
    assert len(generated.token_ids) == generated.n_new_tokens > 1
    for k, token in enumerate(generated.token_ids):
        logprobs = backend.next_token_logprobs(request, generated.token_ids[:k])
        assert int(logprobs.argmax()) == token


def test_generations_agree_up_to_a_near_tie_and_no_further(model_dirs: dict[str, Path]) -> None:
    backend = load_backend(str(model_dirs["idefics2"]), ModelSpec(id="x"))
    request = GenerationRequest(noise_image(4), "Describe this person.")
    expected = backend.generate([request], GenerationSettings(max_new_tokens=6))[0]
    n = 2  # the generations part after two tokens
    logprobs = backend.next_token_logprobs(request, expected.token_ids[:n])
    ranked = logprobs.argsort(descending=True).tolist()
    runner_up, unlikely = ranked[1], ranked[-1]
    gap = float(logprobs[ranked[0]] - logprobs[runner_up])

    def parting(token: int) -> Generation:
        ids = (*expected.token_ids[:n], token)
        return Generation("other text", len(ids), "length", ids)

    assert generation_difference(backend, request, expected, expected, 0.0) is None
    assert generation_difference(backend, request, parting(runner_up), expected, gap * 1.01) is None
    too_far = generation_difference(backend, request, parting(runner_up), expected, gap * 0.99)
    assert too_far is not None and "token 3 differs" in too_far
    assert generation_difference(backend, request, parting(unlikely), expected, gap * 1.01)
    shorter = Generation("x", n, "eos", expected.token_ids[:n])
    assert "stops after 2 tokens" in str(
        generation_difference(backend, request, shorter, expected, 1)
    )


@pytest.mark.fast_path
def test_a_transformers_release_not_verified_is_said_and_checked(
    model_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # transformers swaps its lazy module in sys.modules on import: patch the one in use.
    monkeypatch.setattr(sys.modules["transformers"], "__version__", "5.99.0")
    probe = write_probe(tmp_path, model_dirs["idefics"])
    code, output = run_cli("run", str(probe), "--out", str(tmp_path / "run"))
    assert code == 0, output
    warnings = [line for line in output.splitlines() if line.startswith("warning: ")]
    assert warnings == [
        "warning: transformers 5.99.0 is not a release the fast paths were verified on "
        f"({', '.join(VERIFIED_TRANSFORMERS)}): each is checked against the plain path on this "
        "run's first samples before it is used"
    ]
    paths = json.loads((tmp_path / "run" / "manifest.json").read_text())["fast_paths"]["paths"]
    assert {n for n, state in paths.items() if state["on"]} == {
        "image_features",
        "image_latents",
        "reserved_cache",
        "label_prefix",
    }


def test_the_verified_releases_are_the_ones_ci_tests() -> None:
    """The lock's transformers and the lowest release pyproject.toml admits are among the
    releases the fast paths name as verified (CI runs their tests on both), and every verified
    release is in the declared range."""
    from packaging.version import Version

    root = Path(__file__).resolve().parents[1]
    locked = re.search(r"^transformers==(\S+)$", (root / "requirements.lock").read_text(), re.M)
    lowest = re.search(r'"transformers>=([0-9.]+)"', (root / "pyproject.toml").read_text())
    assert locked and lowest
    assert {locked.group(1), lowest.group(1)} <= set(VERIFIED_TRANSFORMERS)
    assert all(Version(v) >= Version(lowest.group(1)) for v in VERIFIED_TRANSFORMERS)
