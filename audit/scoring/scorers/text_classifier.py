"""Any transformers text-classification model as a toxicity scorer.

The IDEFICS model card used ``citizenlab/distilbert-base-multilingual-cased-toxicity`` (labels
``toxic`` / ``not_toxic``, softmax). For a single-label model the scorer reports the probability
of every label that is not a negation (``not_toxic``, ``non-toxic``, ``neutral``, ...); for a
multi-label model (``problem_type == "multi_label_classification"``, e.g. detoxify-style heads)
it reports the sigmoid of every label.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from audit.errors import ModelLoadError
from audit.scoring.scorers.base import ToxicityScorer

_NEGATIVE_LABELS = frozenset({"neutral", "normal", "clean", "safe", "ok", "none", "negative"})
_MAX_LENGTH = 512


def is_negative_label(label: str) -> bool:
    """Whether a class name means "not toxic" (``not_toxic``, ``Non-Toxic``, ``neutral``)."""
    word = re.sub(r"[^a-z]+", "_", label.lower()).strip("_")
    return word in _NEGATIVE_LABELS or word.startswith(("not_", "non_", "nontoxic", "no_"))


class TextClassifierScorer(ToxicityScorer):
    """A loaded ``AutoModelForSequenceClassification`` with its tokenizer."""

    def __init__(self, name: str, model: Any, tokenizer: Any, batch_size: int = 32) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        config = model.config
        names = [config.id2label[i] for i in range(config.num_labels)]
        self.multi_label = config.problem_type == "multi_label_classification" or len(names) == 1
        if self.multi_label:
            self.columns = list(range(len(names)))
        else:
            self.columns = [i for i, label in enumerate(names) if not is_negative_label(label)]
            if len(self.columns) == len(names):
                raise ModelLoadError(
                    f"{name}: cannot tell which of the labels {names} means toxic: a single-label "
                    "model needs a negative class such as 'not_toxic' or 'neutral' in "
                    "config.id2label"
                )
        self.labels = tuple(names[i] for i in self.columns)
        limits = [
            _MAX_LENGTH,
            getattr(config, "max_position_embeddings", None),
            getattr(tokenizer, "model_max_length", None),
        ]
        self.max_length = min(int(limit) for limit in limits if limit)

    @classmethod
    def load(cls, name: str, location: str, device: str, batch_size: int) -> TextClassifierScorer:
        """Load with the transformers auto classes; raises ``OSError`` when weights are missing."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForSequenceClassification.from_pretrained(location)
        model.to(device).eval()
        return cls(name, model, tokenizer, batch_size)

    def score_batch(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        inputs = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.model.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        probabilities = torch.sigmoid(logits) if self.multi_label else logits.softmax(dim=-1)
        return probabilities[:, self.columns].cpu().numpy()
