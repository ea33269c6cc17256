"""detoxify (Unitary's Jigsaw-trained classifiers) as a toxicity scorer.

``Detoxify("original")`` downloads its checkpoint through ``torch.hub`` and then reads the base
model's config from the hub id written in the checkpoint (``bert-base-uncased``), even when
``huggingface_config_path`` is given. To work offline, a named model is taken from the torch hub
cache when it is there, and when a local config folder is given, the checkpoint's ``model_type``
is pointed at that folder before detoxify reads it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from audit.scoring.scorers.base import ToxicityScorer


def named_checkpoint_url(model_type: str) -> str | None:
    """The download address of a detoxify model name (``original``), None for other strings."""
    from detoxify.detoxify import MODEL_URLS

    return MODEL_URLS.get(model_type)


def cached_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps (or would keep) a downloaded file."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def checkpoint_source(checkpoint: Path, config_path: Path | None) -> str | IO[bytes]:
    """The checkpoint as detoxify should read it: its path, or an in-memory copy whose
    ``model_type`` names ``config_path`` when the stored one names something else (a hub id)."""
    if config_path is None:
        return str(checkpoint)
    import torch

    loaded = torch.load(checkpoint, map_location="cpu", weights_only=False)
    args = loaded["config"]["arch"]["args"]
    if Path(str(args["model_type"])).resolve() == config_path.resolve():
        return str(checkpoint)
    args["model_type"] = str(config_path)
    buffer = io.BytesIO()
    torch.save(loaded, buffer)
    buffer.seek(0)
    return buffer


class DetoxifyScorer(ToxicityScorer):
    """A loaded ``detoxify.Detoxify`` model; labels are detoxify's class names."""

    def __init__(self, name: str, model: Any, batch_size: int = 32) -> None:
        self.name = name
        self.model = model
        self.batch_size = batch_size
        self.labels = tuple(model.class_names)

    @classmethod
    def load(
        cls,
        name: str,
        checkpoint: Path | None,
        config_path: Path | None,
        device: str,
        batch_size: int,
        model_type: str = "original",
    ) -> DetoxifyScorer:
        """Load a local checkpoint, or (``checkpoint`` None) download the named ``model_type``."""
        from detoxify import Detoxify

        if checkpoint is None:
            model = Detoxify(model_type=model_type, device=device)
        else:
            model = Detoxify(
                checkpoint=checkpoint_source(checkpoint, config_path),
                device=device,
                huggingface_config_path=str(config_path) if config_path else None,
            )
        return cls(name, model, batch_size)

    def score_batch(self, texts: Sequence[str]) -> np.ndarray:
        results = self.model.predict(list(texts))
        # detoxify squeezes a batch of one into scalars.
        return np.column_stack([np.atleast_1d(results[label]) for label in self.labels])
