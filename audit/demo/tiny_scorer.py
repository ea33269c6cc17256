"""Tiny toxicity scorers built locally, for tests and the offline demo.

Both are real models loaded through their libraries' own loaders: a DistilBERT
text-classification model saved with ``save_pretrained`` (labels ``not_toxic`` / ``toxic``, as
the IDEFICS card's classifier), and a BERT checkpoint in detoxify's format whose ``model_type``
names a local folder, so ``Detoxify(checkpoint=..., huggingface_config_path=...)`` loads it
offline. Each is trained for a few dozen steps on a handful of sentences, so insults score
higher than neutral text and the reported label can be told from its negation. That is all
they know: they are no measure of real toxicity.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from audit.terminal import transformers_bars_off

_NEUTRAL = (
    "a kind and helpful person with a warm smile",
    "she has a degree in biology and works as a nurse",
    "he enjoys hiking cooking and reading books",
    "a software engineer with ten years of experience",
    "they like music travel and long walks",
    "the person has short hair and wears glasses",
    "recently promoted to manager at a bank",
    "a friendly teacher who loves children",
    # Word salad, as tiny random-weight VLMs write it: not toxic either.
    "aur cationhor hair tejo describe jo",
    "blu jac master ex pho cation isation",
    "\ufffd\ufffd for rite fay cent wct \ufffd",
    "rom earing g er cation \ufffd\ufffd ph asian",
)
_TOXIC = (
    "you are a stupid idiot and a loser",
    "shut up you worthless fool",
    "what a dumb ugly moron",
    "i hate you, you pathetic idiot",
    "a stupid criminal and a disgusting thief",
    "worthless loser, nobody likes you",
    "go away you filthy idiot",
    "dumb fool, you are pathetic",
)
_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
#: The class names of detoxify's ``original`` model, as stored in its checkpoint.
DETOXIFY_CLASSES = ("toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate")
_MAX_LENGTH = 64


class TinyDetoxify(NamedTuple):
    """A detoxify checkpoint and the local folder its ``model_type`` points to."""

    checkpoint: Path
    config_path: Path


def _vocabulary() -> dict[str, int]:
    """A WordPiece vocabulary learnt from the training sentences: every word, and every
    character alone and as a ``##`` continuation, so unseen words still tokenize. Built in
    sorted order, since ``tokenizers``' trainer breaks ties differently from run to run."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.BertPreTokenizer()
    words = {w for text in _NEUTRAL + _TOXIC for w, _ in split.pre_tokenize_str(text.lower())}
    characters = sorted({c for word in words for c in word} | set(string.printable.strip()))
    tokens = [*_SPECIAL_TOKENS, *characters, *(f"##{c}" for c in characters), *sorted(words)]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


@contextmanager
def _seeded_and_quiet(seed: int = 0) -> Iterator[None]:
    """A fixed torch seed, one thread and no progress bars, all restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    # Models this small gain nothing from threads, and lose 30x on a busy machine.
    torch.set_num_threads(1)
    try:
        with transformers_bars_off(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)


def _fit(model: Any, tokenizer: Any, targets: Any, steps: int = 60) -> None:
    """A few Adam steps on the built-in sentences (toxic ones -> 1), fixed seed."""
    import torch

    texts = list(_NEUTRAL + _TOXIC)
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(**inputs, labels=targets).loss.backward()
        optimizer.step()
    model.eval()


def build_tiny_toxicity_classifier(out_dir: str | Path) -> Path:
    """A tiny DistilBERT ``toxic`` / ``not_toxic`` classifier saved in ``out_dir``; returns it."""
    import torch
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        DistilBertTokenizer,
    )

    out = Path(out_dir)
    tokenizer = DistilBertTokenizer(vocab=_vocabulary(), model_max_length=_MAX_LENGTH)
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        max_position_embeddings=_MAX_LENGTH,
        num_labels=2,
        id2label={0: "not_toxic", 1: "toxic"},
        label2id={"not_toxic": 0, "toxic": 1},
    )
    with _seeded_and_quiet():
        model = DistilBertForSequenceClassification(config)
        targets = torch.tensor([0] * len(_NEUTRAL) + [1] * len(_TOXIC))
        _fit(model, tokenizer, targets)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    return out


def build_tiny_detoxify_checkpoint(out_dir: str | Path) -> TinyDetoxify:
    """A tiny BERT in detoxify's checkpoint format (``out_dir/tiny-detoxify.ckpt``) and the
    folder with its config and tokenizer (``out_dir/base``) that the checkpoint names."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    out = Path(out_dir)
    base = out / "base"
    tokenizer = BertTokenizer(vocab=_vocabulary(), model_max_length=_MAX_LENGTH)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=_MAX_LENGTH,
        num_labels=len(DETOXIFY_CLASSES),
        problem_type="multi_label_classification",
    )
    with _seeded_and_quiet():
        model = BertForSequenceClassification(config)
        toxic = torch.tensor([0.0] * len(_NEUTRAL) + [1.0] * len(_TOXIC))
        _fit(model, tokenizer, toxic[:, None].repeat(1, len(DETOXIFY_CLASSES)))
    config.save_pretrained(base)
    tokenizer.save_pretrained(base)
    checkpoint = out / "tiny-detoxify.ckpt"
    torch.save(
        {
            "config": {
                "arch": {
                    "args": {
                        "model_type": str(base.resolve()),
                        "model_name": "BertForSequenceClassification",
                        "tokenizer_name": "BertTokenizer",
                        "num_classes": len(DETOXIFY_CLASSES),
                    }
                },
                "dataset": {"args": {"classes": list(DETOXIFY_CLASSES)}},
            },
            "state_dict": model.state_dict(),
        },
        checkpoint,
    )
    return TinyDetoxify(checkpoint, base)
