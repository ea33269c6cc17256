"""The one interface every toxicity scorer sits behind: texts in, one score column per label out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import pandas as pd


class ToxicityScorer(ABC):
    """A loaded text classifier that scores how toxic each text is.

    ``score`` returns one row per text, in the given order, and one column per entry of
    ``labels`` holding a probability in [0, 1]. Subclasses score one batch at a time; batching
    (longest texts first, so padding stays small) and restoring the order happen here.
    """

    #: The scorer as the probe names it (``detoxify:original``); stored in the score cache.
    name: str
    #: The score columns, in order (``toxic`` or detoxify's ``toxicity``, ``insult``, ...).
    labels: tuple[str, ...]
    batch_size: int = 32

    @abstractmethod
    def score_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Probabilities of shape ``(len(texts), len(labels))`` for one batch."""

    def score(self, texts: Sequence[str]) -> pd.DataFrame:
        """Score every text; one row per text (same order), one column per label."""
        texts = [str(text) for text in texts]
        scores = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        # Longest first: similar lengths share a batch, so little compute goes to padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = np.asarray(self.score_batch([texts[i] for i in rows]), dtype=np.float64)
            scores[rows] = batch.reshape(len(rows), len(self.labels))
        return pd.DataFrame(scores, columns=list(self.labels))


def pick_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
