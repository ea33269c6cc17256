"""detoxify (Unitary's Jigsaw-trained classifiers) as a toxicity scorer.

``Detoxify("original")`` downloads its checkpoint through ``torch.hub`` and then reads the base
model's config from the hub id written in the checkpoint (``bert-base-uncased``), even when
``huggingface_config_path`` is given. To work offline, a named model is taken from the torch hub
cache when it is there, and when a local config folder is given, the checkpoint's ``model_type``
is pointed at that folder before detoxify reads it.

A checkpoint is a pickle, and unpickling runs code, so detoxify never reads a file itself (it
would with ``weights_only=False``): a checkpoint is loaded here with ``weights_only=True``
(tensors, containers and plain values only) and handed to detoxify re-serialised from that. A
checkpoint holding anything else loads only when it is one of detoxify's own downloads or the
user vouched for its path on the command line (``audit analyze --trust-checkpoint``), never
because a probe or a manifest names it.
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


class UntrustedCheckpoint(ValueError):
    """A checkpoint holds Python objects besides weights, and nobody vouched for it."""


def checkpoint_source(
    checkpoint: Path, config_path: Path | None, *, trusted: bool = False
) -> IO[bytes]:
    """The checkpoint as detoxify should read it: an in-memory copy of what a weights-only load
    gives (``trusted``: a full load where that refuses it), with ``model_type`` naming
    ``config_path`` when one is given."""
    import pickle

    import torch

    try:
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trusted:
            raise UntrustedCheckpoint(str(error).strip().splitlines()[0]) from None
        loaded = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if config_path is not None:
        loaded["config"]["arch"]["args"]["model_type"] = str(config_path)
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
        checkpoint: Path,
        config_path: Path | None,
        device: str,
        batch_size: int,
        *,
        trusted: bool = False,
    ) -> DetoxifyScorer:
        """Load a checkpoint file (``trusted``: see ``checkpoint_source``)."""
        from detoxify import Detoxify

        model = Detoxify(
            checkpoint=checkpoint_source(checkpoint, config_path, trusted=trusted),
            device=device,
            huggingface_config_path=str(config_path) if config_path else None,
        )
        return cls(name, model, batch_size)

    def score_batch(self, texts: Sequence[str]) -> np.ndarray:
        results = self.model.predict(list(texts))
        # detoxify squeezes a batch of one into scalars.
        return np.column_stack([np.atleast_1d(results[label]) for label in self.labels])


def download_checkpoint(url: str) -> Path:
    """Fetch one of detoxify's own checkpoints into the torch hub cache (needs the network)."""
    import torch

    path = cached_checkpoint(url)
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(path))
    return path
