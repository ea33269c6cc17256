"""Toxicity scorers, for real: tiny models built here and loaded through their libraries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from audit.demo.tiny_scorer import (
    DETOXIFY_CLASSES,
    TinyDetoxify,
    build_tiny_detoxify_checkpoint,
    build_tiny_toxicity_classifier,
)
from audit.errors import ModelLoadError, ProbeError
from audit.scoring.scorers import load_scorer
from audit.spec import ToxicitySpec

TEXTS = [
    "you are a stupid idiot and a loser",
    "a friendly teacher who loves children",
    "",
    "words the scorers never saw: zygote quark",
    "what a dumb ugly moron",
]
DETOXIFY_LABELS = ("toxicity", "severe_toxicity", "obscene", "threat", "insult", "identity_attack")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_toxicity_classifier(tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="module")
def detoxify_model(tmp_path_factory: pytest.TempPathFactory) -> TinyDetoxify:
    return build_tiny_detoxify_checkpoint(tmp_path_factory.mktemp("detoxify"))


def test_text_classifier_reports_the_toxic_label(classifier: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer = load_scorer(ToxicitySpec(scorer=f"transformers:{classifier}", batch_size=2), ".")
    assert scorer.labels == ("toxic",)
    scores = scorer.score(TEXTS)
    assert list(scores.columns) == ["toxic"] and len(scores) == len(TEXTS)
    # Oracle: the model's own softmax probability of the class named "toxic", one text at a time.
    model = AutoModelForSequenceClassification.from_pretrained(classifier).eval()
    tokenizer = AutoTokenizer.from_pretrained(classifier)
    toxic = model.config.label2id["toxic"]
    with torch.no_grad():
        expected = [
            model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0, toxic].item()
            for text in TEXTS
        ]
    np.testing.assert_allclose(scores["toxic"].to_numpy(), expected, atol=1e-5)
    assert scores["toxic"][0] > 0.5 > scores["toxic"][1]


def test_batch_size_and_order_do_not_change_scores(classifier: Path) -> None:
    one = load_scorer(ToxicitySpec(scorer=f"transformers:{classifier}", batch_size=1), ".")
    many = load_scorer(ToxicitySpec(scorer=f"transformers:{classifier}", batch_size=64), ".")
    reversed_scores = many.score(TEXTS[::-1])["toxic"].to_numpy()[::-1]
    np.testing.assert_allclose(one.score(TEXTS)["toxic"], reversed_scores, atol=1e-5)


def test_relative_model_folder_resolves_from_probe_dir(classifier: Path) -> None:
    spec = ToxicitySpec(scorer=f"transformers:{classifier.name}")
    assert load_scorer(spec, classifier.parent).labels == ("toxic",)


def test_detoxify_checkpoint_matches_detoxify_predict(detoxify_model: TinyDetoxify) -> None:
    from detoxify import Detoxify

    spec = ToxicitySpec(
        scorer=f"detoxify:{detoxify_model.checkpoint}",
        huggingface_config_path=str(detoxify_model.config_path),
        batch_size=2,
    )
    scorer = load_scorer(spec, ".")
    assert scorer.labels == DETOXIFY_LABELS
    scores = scorer.score(TEXTS)
    reference = Detoxify(
        checkpoint=str(detoxify_model.checkpoint),
        huggingface_config_path=str(detoxify_model.config_path),
    ).predict(TEXTS)
    for label in DETOXIFY_LABELS:
        np.testing.assert_allclose(scores[label], reference[label], atol=1e-5)
    assert scores["toxicity"][0] > 0.5 > scores["toxicity"][1]
    assert scorer.score(["just one text"]).shape == (1, len(DETOXIFY_LABELS))


def test_detoxify_checkpoint_naming_a_hub_model_loads_offline_with_config_path(
    detoxify_model: TinyDetoxify, tmp_path: Path
) -> None:
    """Real detoxify checkpoints name ``bert-base-uncased``: the local config folder stands in."""
    import torch

    loaded = torch.load(detoxify_model.checkpoint, weights_only=False)
    loaded["config"]["arch"]["args"]["model_type"] = "bert-base-uncased"
    checkpoint = tmp_path / "as-published.ckpt"
    torch.save(loaded, checkpoint)
    with_config = ToxicitySpec(
        scorer=f"detoxify:{checkpoint}", huggingface_config_path=str(detoxify_model.config_path)
    )
    assert load_scorer(with_config, ".").labels == DETOXIFY_LABELS
    with pytest.raises(ModelLoadError, match="huggingface_config_path"):
        load_scorer(ToxicitySpec(scorer=f"detoxify:{checkpoint}"), ".")


def test_named_detoxify_model_offline_says_how_to_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(ModelLoadError) as raised:
        load_scorer(ToxicitySpec(scorer="detoxify:unbiased"), ".", origin="probe.yaml")
    message = str(raised.value)
    assert message.startswith("probe.yaml: analysis.toxicity.scorer:")
    assert "torch.hub.load_state_dict_from_url" in message
    assert "toxic_debiased" in message
    assert "detoxify:/path/to/checkpoint.ckpt" in message


def test_missing_models_and_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="hf download someone/not-here"):
        load_scorer(ToxicitySpec(scorer="transformers:someone/not-here"), tmp_path)
    with pytest.raises(ModelLoadError, match="no such detoxify checkpoint"):
        load_scorer(ToxicitySpec(scorer="detoxify:missing.ckpt"), tmp_path)
    with pytest.raises(ProbeError, match="'perspective:api' is not a scorer"):
        load_scorer(ToxicitySpec(scorer="perspective:api"), tmp_path)
    spec = ToxicitySpec(scorer="detoxify:original", huggingface_config_path="nowhere")
    with pytest.raises(ModelLoadError, match="does not hold a config.json"):
        load_scorer(spec, tmp_path)


def test_classifier_without_a_negative_label_is_refused(classifier: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "generic-labels"
    shutil.copytree(classifier, copy)
    config = json.loads((copy / "config.json").read_text())
    config["id2label"] = {"0": "LABEL_0", "1": "LABEL_1"}
    config["label2id"] = {"LABEL_0": 0, "LABEL_1": 1}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="cannot tell which of the labels"):
        load_scorer(ToxicitySpec(scorer=f"transformers:{copy}"), ".")


def test_tiny_detoxify_uses_detoxify_class_names(detoxify_model: TinyDetoxify) -> None:
    import torch

    stored = torch.load(detoxify_model.checkpoint, weights_only=False)
    assert stored["config"]["dataset"]["args"]["classes"] == list(DETOXIFY_CLASSES)
    assert (
        Path(stored["config"]["arch"]["args"]["model_type"]) == detoxify_model.config_path.resolve()
    )


def test_tiny_classifier_builds_the_same_model_every_time(classifier: Path, tmp_path: Path) -> None:
    again = build_tiny_toxicity_classifier(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (
        classifier / "model.safetensors"
    ).read_bytes()
    assert (again / "tokenizer.json").read_text() == (classifier / "tokenizer.json").read_text()
