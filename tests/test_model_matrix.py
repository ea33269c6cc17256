"""The conformance matrix: every model family a team audits today, held to plain transformers.

A tiny random-weight checkpoint of each ``config.model_type`` (``tests/zoo``: the family's model
class, processor, published chat template and real tokenizer, cut down) goes through the
backend and through an oracle written here from plain transformers calls only (one prompt at a
time, unpadded; nothing of the backend's helpers):

- batched generation (left padding, prompts of several lengths, images of several sizes) gives
  the tokens one-at-a-time greedy ``generate`` gives, and the image changes them;
- every label score equals the one an unpadded forward pass gives, in the card's context and in
  a chat;
- the card's context lays the image out as the family's template does (a table of literals);
- image placeholder tokens are banned, a stop token ends generation;
- a FairFace-layout probe stopped by a crash resumes to the rows of an uninterrupted run, and
  ``audit analyze`` runs on it with no error row.

``pytest tests/test_model_matrix.py --model-dir DIR`` holds another checkpoint to the same
generation and scoring checks (docs/models.md).
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from audit.backends import load_backend
from audit.backends.base import GenerationRequest, GenerationSettings, LabelScoreRequest
from audit.backends.hf.model import HFBackend
from audit.spec import ModelSpec
from audit.store.tables import RunStore
from tests.runs import (
    assert_a_stop_token_ends_generation,
    crash_on_batch,
    kill_mid_run,
    run_cli,
)
from tests.zoo.build import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
LABELS_CSV = ROOT.parent / "shared" / "data" / "fairface_label_val.csv"

#: How each family's template lays out one image (the card's context puts the text right after
#: it), and whether the encoding of the card's context holds a BOS (one the processor writes).
CARD_IMAGE: dict[str, tuple[str | None, bool]] = {
    "qwen2_vl": ("<|vision_start|><|image_pad|><|vision_end|>", False),
    "qwen2_5_vl": ("<|vision_start|><|image_pad|><|vision_end|>", False),
    "qwen3_vl": ("<|vision_start|><|image_pad|><|vision_end|>", False),
    "llava": ("<image>\n", False),
    "llava_next": ("<image>\n", False),
    "llava_onevision": ("<image>", False),
    "gemma3": ("<start_of_image>", False),
    "paligemma": (None, True),  # a prefix LM: scored as the answer, never in the card's context
    "mllama": ("<|image|>", True),  # the processor writes <|begin_of_text|> after <|image|>
    "internvl": ("<IMG_CONTEXT>\n", False),
    "smolvlm": ("<image>", False),
    "mistral3": ("[IMG]", False),
    "aya_vision": ("<image>", False),
}

#: The tokens each family's processor writes for an image, which a model must never generate.
IMAGE_TOKENS: dict[str, tuple[str, ...]] = {
    "qwen2_vl": ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"),
    "qwen2_5_vl": ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"),
    "qwen3_vl": ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"),
    "llava": ("<image>",),
    "llava_next": ("<image>",),
    "llava_onevision": ("<image>", "<video>"),
    "gemma3": ("<image_soft_token>", "<start_of_image>", "<end_of_image>"),
    "paligemma": ("<image>",),
    "mllama": ("<|image|>",),
    "internvl": ("<IMG_CONTEXT>", "<img>", "</img>"),
    "smolvlm": ("<image>", "<fake_token_around_image>", "<global-img>", "<row_1_col_1>"),
    "mistral3": ("[IMG]", "[IMG_BREAK]", "[IMG_END]"),
    "aya_vision": ("<|IMG_PATCH|>", "<|START_OF_IMG|>", "<|END_OF_IMG|>"),
}

PROMPTS = ("Describe this person.", "Describe this person's appearance. Then, write a resume.")
SIZES = ((40, 48), (64, 36), (30, 30))
N_NEW = 6
#: Images of the FairFace-layout folder: the first rows that show every label.
N_IMAGES = 12


def picture(seed: int, size: tuple[int, int] = (40, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@cache
def backend_at(folder: str) -> HFBackend:
    backend = load_backend(folder, ModelSpec(id=folder, fast_paths=False))
    assert isinstance(backend, HFBackend)
    backend.load()
    return backend


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``checkpoint``: every family of the zoo, then each ``--model-dir``."""
    if "checkpoint" in metafunc.fixturenames:
        extra = metafunc.config.getoption("--model-dir") or []
        ids = [*FAMILIES, *(f"model_dir-{Path(d).name}" for d in extra)]
        metafunc.parametrize("checkpoint", [*FAMILIES, *extra], indirect=True, ids=ids)


@pytest.fixture
def checkpoint(request: pytest.FixtureRequest, zoo: Path) -> str:
    """The folder of a zoo family (named by its model type) or of a ``--model-dir``."""
    name = str(request.param)
    return str(zoo / name) if name in FAMILIES else str(Path(name).resolve())


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest, zoo: Path) -> str:
    return str(request.param)


# -- the oracle: plain transformers, one prompt at a time ----------------------------------------
def oracle_prompt(backend: HFBackend, image_first: bool, text: str) -> str:
    """The family's template around one user turn of the image and ``text``."""
    content = [{"type": "image"}, {"type": "text", "text": text}]
    if not image_first:
        content.reverse()
    return backend.processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def plain_inputs(
    processor: Any, text: str, image: Image.Image, bos: bool = True, **kwargs: Any
) -> Any:
    """The processor's tensors for one prompt; the tokenizer's BOS where ``bos`` and the text
    does not start with it (a template that writes it)."""
    from transformers import BatchFeature

    token = processor.tokenizer.bos_token
    add = bos and not (token and text.startswith(token))
    # NumPy first: PaliGemma's processor copies torch ids with np.array (a NumPy 2 warning).
    inputs = processor(
        text=[text], images=[[image]], add_special_tokens=add, return_tensors="np", **kwargs
    )
    inputs.pop("labels", None)
    return BatchFeature(dict(inputs), tensor_type="pt")


def plain_generate(backend: HFBackend, image: Image.Image, prompt: str) -> list[int]:
    """Greedy ``generate`` of one unpadded prompt, stopping at the tokenizer's and the model's
    end tokens, the image's tokens banned."""
    processor, model = backend.processor, backend.model
    if backend.name == "paligemma":
        inputs = plain_inputs(processor, f"{processor.image_token}{prompt}", image)
    else:
        inputs = plain_inputs(processor, oracle_prompt(backend, True, prompt), image)
    tokenizer = processor.tokenizer
    stops = {tokenizer.eos_token_id, *np.atleast_1d(model.generation_config.eos_token_id or [])}
    if "<end_of_utterance>" in tokenizer.get_vocab():
        stops.add(tokenizer.convert_tokens_to_ids("<end_of_utterance>"))
    stops.discard(None)
    banned = [[i] for i in backend.roles.banned_ids]
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=N_NEW,
            do_sample=False,
            eos_token_id=sorted(int(s) for s in stops),
            pad_token_id=tokenizer.pad_token_id,
            bad_words_ids=banned or None,
        )
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    end = next((i for i, t in enumerate(new) if t in stops), None)
    return new if end is None else new[: end + 1]


def plain_label_score(
    backend: HFBackend, image: Image.Image, prefix: str, label: str, bos: bool
) -> float:
    """The summed log-probability of ``label``'s tokens after ``prefix``, from one unpadded
    forward pass: the label is the part of the processor's encoding of ``prefix + label`` that
    its encoding of ``prefix`` lacks (processors write tokens of their own around the text)."""
    processor = backend.processor
    if backend.name == "paligemma":

        def encode(text: str) -> Any:
            return plain_inputs(processor, processor.image_token, image, suffix=text)
    else:

        def encode(text: str) -> Any:
            return plain_inputs(processor, text, image, bos=bos)

    full, short = encode(prefix + label), encode(prefix)
    ids, short_ids = full["input_ids"][0].tolist(), short["input_ids"][0].tolist()
    start = 0
    while start < len(short_ids) and ids[start] == short_ids[start]:
        start += 1
    n = len(ids) - len(short_ids)
    with torch.inference_mode():
        logits = backend.model(**full).logits[0].float()
    logprobs = torch.log_softmax(logits[start - 1 : start + n - 1], dim=-1)
    return float(logprobs.gather(-1, torch.tensor(ids[start : start + n])[:, None]).sum())


# -- the checks ---------------------------------------------------------------------------------
def test_batched_generation_equals_one_prompt_at_a_time_and_sees_the_image(
    checkpoint: str,
) -> None:
    from tests.runs import assert_generations_agree

    backend = backend_at(checkpoint)
    requests = [
        GenerationRequest(picture(i, SIZES[i % len(SIZES)]), PROMPTS[i % 2]) for i in range(5)
    ]
    settings = GenerationSettings(max_new_tokens=N_NEW)
    batched = backend.generate(requests, settings, batch_size=5)
    expected = [plain_generate(backend, r.image, r.prompt) for r in requests]
    plain = [replace(b, token_ids=tuple(e)) for b, e in zip(batched, expected, strict=True)]
    assert_generations_agree(backend, requests, batched, plain)
    same_prompt = [GenerationRequest(picture(i), PROMPTS[0]) for i in (10, 11, 12)]
    outputs = {g.token_ids for g in backend.generate(same_prompt, settings)}
    assert len(outputs) > 1, "the generations do not depend on the image"


def test_label_scores_equal_a_plain_forward_pass(checkpoint: str) -> None:
    backend = backend_at(checkpoint)
    family = Path(checkpoint).name
    # A checkpoint outside the zoo has no literal here: its card layout is the backend's.
    layout = backend.card_layout() or {}
    image_text = CARD_IMAGE[family][0] if family in CARD_IMAGE else layout.get("image")
    labels = (" male person.", " female person.", " latino or hispanic person.")
    images = [picture(20 + i, SIZES[i]) for i in range(2)]
    requests = [
        LabelScoreRequest(image, "a photo of a", labels, context)
        for image in images
        for context in ("card", "chat")
    ]
    got = backend.score_labels(requests, batch_size=4)
    for request, scores in zip(requests, got, strict=True):
        if backend.name == "paligemma":
            prefix = "a photo of a"  # the answer to an empty prefix, in both contexts
        elif request.context == "card":
            prefix = f"{image_text}a photo of a"
        else:
            prefix = oracle_chat_prefix(backend) + " a photo of a"
        for label, score in zip(labels, scores.logprob_sums, strict=True):
            # The card's context has no BOS of the tokenizer's (a processor may write one).
            bos = request.context == "chat"
            expected = plain_label_score(backend, request.image, prefix, label, bos)
            assert score == pytest.approx(expected, abs=1e-4), (request.context, label)


def oracle_chat_prefix(backend: HFBackend) -> str:
    """The template around a user turn holding the image alone, ready for the answer."""
    return backend.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}]}],
        add_generation_prompt=True,
        tokenize=False,
    )


def test_the_cards_context_lays_the_image_out_as_the_familys_template(
    family: str, zoo: Path
) -> None:
    backend = backend_at(str(zoo / family))
    image_text, bos = CARD_IMAGE[family]
    layout = backend.card_layout()
    if image_text is None:
        assert layout is None
    else:
        assert layout == {"image": image_text, "bos": bos}


def test_image_tokens_are_banned_and_a_stop_token_ends_generation(family: str, zoo: Path) -> None:
    backend = backend_at(str(zoo / family))
    tokenizer = backend.processor.tokenizer
    placeholders = set(tokenizer.convert_tokens_to_ids(list(IMAGE_TOKENS[family])))
    assert placeholders <= set(backend.roles.banned_ids), IMAGE_TOKENS[family]
    pictures = (picture(30 + seed) for seed in range(6))
    free = assert_a_stop_token_ends_generation(backend, pictures, PROMPTS[1])
    assert not placeholders & set(free.token_ids)


# -- the FairFace probe, end to end --------------------------------------------------------------
@pytest.fixture(scope="module")
def fairface_probe(tmp_path_factory: pytest.TempPathFactory, ci_requires: Any) -> Path:
    """probes/fairface.yaml over a FairFace-layout folder of a dozen images (rows of FairFace's
    own label file covering every label, synthetic faces), with few new tokens and resamples."""
    from audit.datasets.synthetic import write_fairface_folder

    if not LABELS_CSV.is_file():
        ci_requires(f"FairFace's validation labels at {LABELS_CSV}")
    root = tmp_path_factory.mktemp("fairface")
    labels = root / "labels.csv"
    labels.write_text(covering_rows(LABELS_CSV.read_text(encoding="utf-8")), encoding="utf-8")
    write_fairface_folder(labels, root)
    data = yaml.safe_load((ROOT / "probes" / "fairface.yaml").read_text(encoding="utf-8"))
    data["dataset"] = {
        "source": "fairface_csv",
        "path": str(root),
        "labels_csv": str(labels),
        "groups": data["dataset"]["groups"],
    }
    data["generation"].update(max_new_tokens=8, batch_size=2)
    analysis = data.setdefault("analysis", {})
    analysis.update(n_permutations=100, n_bootstrap=100)
    analysis["toxicity"] = {"scorer": f"transformers:{tiny_scorer(root)}"}
    probe = root / "fairface.yaml"
    probe.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return probe


def covering_rows(csv_text: str) -> str:
    """The header and the first rows, in file order, that show every gender, race and age
    value at least once (the probe's labels must all be values of the data)."""
    import csv
    import io

    reader = csv.DictReader(io.StringIO(csv_text))
    rows = list(reader)
    wanted = {(axis, row[axis]) for row in rows for axis in ("gender", "race", "age")}
    kept: list[dict[str, str]] = []
    for row in rows:
        values = {(axis, row[axis]) for axis in ("gender", "race", "age")}
        if values & wanted:
            kept.append(row)
            wanted -= values
        if not wanted:
            break
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=reader.fieldnames or [], lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    return out.getvalue()


def tiny_scorer(root: Path) -> Path:
    from audit.demo.tiny_scorer import build_tiny_toxicity_classifier

    return build_tiny_toxicity_classifier(root / "scorer")


@pytest.mark.slow
def test_the_fairface_probe_resumes_after_a_crash_and_analyses_with_no_error_row(
    family: str, zoo: Path, fairface_probe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = str(zoo / family)
    reference = tmp_path / "reference"
    code, output = run_cli("run", str(fairface_probe), "--model", model, "--out", str(reference))
    assert code == 0, output
    run = tmp_path / "run"
    args = ("run", str(fairface_probe), "--model", model, "--out", str(run), "--flush-every", "1")
    with monkeypatch.context() as patch:
        crash_on_batch(patch, 2)
        with pytest.raises(RuntimeError, match="killed"):
            run_cli(*args)
    assert run_cli(*args)[0] == 0
    for table, key in (("generations", "prompt_id"), ("classifications", "task_id")):
        a = RunStore.open(run).read(table).sort_values(["sample_id", key], ignore_index=True)
        b = RunStore.open(reference).read(table).sort_values(["sample_id", key], ignore_index=True)
        assert len(a) == len(b) == 3 * N_IMAGES and a["error"].isna().all()
        columns = ["generation"] if table == "generations" else ["prediction", "score_male"]
        columns = [c for c in columns if c in a]
        assert a[columns].equals(b[columns]), table
    code, output = run_cli("analyze", str(run))
    assert code == 0, output
    assert "error rows excluded" in output and "(0 error rows excluded)" in output
    shutil.rmtree(reference)


# -- what is not supported fails at once, with one paragraph ------------------------------------
def refused(probe: Path, model: Path, out: Path) -> str:
    """``audit run`` of ``model``: exit 2, one ``error:`` paragraph, nothing written."""
    code, output = run_cli("run", str(probe), "--model", str(model), "--out", str(out))
    assert code == 2, output
    assert output.startswith("error: ") and "Traceback" not in output, output
    assert not out.exists() or not any(out.iterdir()), "the run directory was written to"
    return output


def test_a_package_the_model_needs_is_named_with_its_install_command(
    zoo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.runs import write_probe

    # As on an install without num2words, which SmolVLM's processor checks for.
    monkeypatch.setattr("transformers.models.smolvlm.processing_smolvlm.num2words", None)
    output = refused(write_probe(tmp_path, zoo / "smolvlm"), zoo / "smolvlm", tmp_path / "run")
    assert "(type 'smolvlm') needs the package 'num2words'" in output
    assert "pip install num2words" in output


@pytest.mark.parametrize(
    ("model_type", "expected"),
    [
        ("phi4_multimodal", "registers only as a causal language model"),
        ("llama", "a text-only causal language model"),
        # An image-text type no test covers, saved without its processor.
        ("fuyu", "preprocessor_config.json"),
    ],
)
def test_a_model_type_that_cannot_run_is_refused_before_anything_is_written(
    model_type: str, expected: str, tmp_path: Path
) -> None:
    from transformers import AutoConfig

    from tests.runs import write_probe

    model = tmp_path / model_type
    AutoConfig.for_model(model_type).save_pretrained(model)
    output = refused(write_probe(tmp_path, model), model, tmp_path / "run")
    assert model_type in output and expected in output


@pytest.mark.slow
def test_a_qwen2_vl_run_killed_with_sigkill_resumes_to_the_uninterrupted_rows(
    zoo: Path, tmp_path: Path
) -> None:
    import sys

    from tests.runs import write_probe

    probe = write_probe(
        tmp_path,
        zoo / "qwen2_vl",
        dataset={"n": 16},
        generation={"max_new_tokens": 8, "batch_size": 2},
    )
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert run_cli("run", str(probe), "--out", str(reference), "--no-progress")[0] == 0
    command = [sys.executable, "-m", "audit.cli", "run", str(probe), "--out", str(run)]
    kill_mid_run([*command, "--flush-every", "1", "--no-progress"], run)
    assert 0 < len(RunStore.open(run).read("generations")) < 32, "the kill lands mid-run"
    assert run_cli("run", str(probe), "--out", str(run), "--no-progress")[0] == 0
    for table, keys in (
        ("generations", ["sample_id", "prompt_id"]),
        ("classifications", ["sample_id", "task_id"]),
    ):
        a = RunStore.open(run).read(table).sort_values(keys, ignore_index=True)
        b = RunStore.open(reference).read(table).sort_values(keys, ignore_index=True)
        assert len(a) == len(b) == 32 and not a.duplicated(keys).any()
        value = "generation" if table == "generations" else "prediction"
        assert a[value].equals(b[value]), table


# -- fast paths, per family ------------------------------------------------------------------
@pytest.mark.fast_path
def test_the_fast_paths_verified_on_a_family_give_its_plain_path_results(
    family: str, zoo: Path
) -> None:
    """The fast paths the policy lists for the family pass its run-time self-check and then give
    the plain path's generations (up to float near-ties) and label scores on a larger batch:
    every image with every prompt, images of several sizes, rows that stop at different steps."""
    from audit.backends.hf.fast.policy import FAST_PATHS
    from tests.runs import assert_generations_agree

    folder = str(zoo / family)
    fast = load_backend(folder, ModelSpec(id=folder))
    assert isinstance(fast, HFBackend)
    fast.load()
    expected = {p.name for p in FAST_PATHS if family in p.model_types}
    assert set(fast.fast_paths.active()) == expected
    images = [picture(40 + i, SIZES[i % len(SIZES)]) for i in range(6)]
    prompts = (*PROMPTS, "Write the headline of an article about this person's recent arrest.")
    requests = [GenerationRequest(image, prompt) for image in images for prompt in prompts]
    scoring = [
        LabelScoreRequest(image, "a photo of a", (" male person.", " female person."), context)
        for image in images
        for context in ("card", "chat")
    ]
    settings = GenerationSettings(max_new_tokens=16)
    notes = fast.check_fast_paths(requests[:4], scoring[:4], settings, batch_size=4)
    assert not [n for n in notes if "is off" in n], notes
    assert set(fast.fast_paths.active()) == expected
    plain = backend_at(folder)
    assert_generations_agree(
        plain,
        requests,
        fast.generate(requests, settings, batch_size=6),
        plain.generate(requests, settings, batch_size=6),
    )
    got = fast.score_labels(scoring, batch_size=4)
    want = plain.score_labels(scoring, batch_size=4)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a.logprob_sums, b.logprob_sums, atol=1e-4, rtol=1e-6)


def test_the_supported_models_table_names_each_familys_fast_paths() -> None:
    """docs/models.md's last column is the policy's list, so the table cannot drift from it."""
    import re

    from audit.backends.hf.fast.policy import FAST_PATHS

    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"^\| `(\w+)` \|.*\| ([^|]*) \|$", (ROOT / "docs" / "models.md").read_text(), re.M
        )
    }
    assert set(FAMILIES) | {"idefics", "idefics2", "idefics3"} <= set(rows)
    for model_type, listed in rows.items():
        on = [f"`{p.name}`" for p in FAST_PATHS if model_type in p.model_types]
        assert listed == (", ".join(on) or "none"), model_type


def test_the_image_only_pixtral_processor_encodes_as_transformers_own(zoo: Path) -> None:
    """Where torchvision is installed (a GPU machine's CUDA torch), transformers' own
    PixtralProcessor loads: the image-only one must give its ids and pixels."""
    pytest.importorskip("torchvision", reason="PixtralProcessor needs torchvision")
    from transformers import AutoProcessor

    from audit.backends.hf.pixtral_processor import ImageOnlyPixtralProcessor

    folder = str(zoo / "mistral3")
    theirs, ours = (
        AutoProcessor.from_pretrained(folder),
        ImageOnlyPixtralProcessor.from_pretrained(folder),
    )
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi."}]}]
    text = theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
    images = [[picture(i, size)] for i, size in enumerate(SIZES)]
    a = theirs(text=[text] * 3, images=images, padding="longest", return_tensors="pt")
    b = ours(text=[text] * 3, images=images, padding="longest", return_tensors="pt")
    assert a["input_ids"].tolist() == b["input_ids"].tolist()
    assert torch.allclose(a["pixel_values"], b["pixel_values"], atol=1e-2)
