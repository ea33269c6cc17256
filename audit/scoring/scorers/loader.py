"""Choose and load a toxicity scorer from the probe's ``analysis.toxicity`` section.

``scorer`` strings: ``detoxify:original|unbiased|multilingual|original-small|unbiased-small``,
``detoxify:PATH.ckpt`` (a local checkpoint, relative to the probe), or ``transformers:MODEL`` (a
hub id or a local folder). Weights that cannot be loaded (offline, missing file) raise
``ModelLoadError`` saying how to provide them; a missing package raises
``MissingDependencyError``.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Sequence
from pathlib import Path

from audit.errors import MissingDependencyError, ModelLoadError, ProbeError
from audit.scoring.scorers.base import ToxicityScorer, pick_device
from audit.spec import ToxicitySpec

_KEY = "analysis.toxicity.scorer"
_KINDS = ("detoxify", "transformers")


def parse_scorer(scorer: str, origin: str = "probe") -> tuple[str, str]:
    """Split ``KIND:WHAT`` into its kind and target; ``ProbeError`` for anything else."""
    kind, _, target = scorer.partition(":")
    if kind not in _KINDS or not target:
        raise ProbeError(
            f"{origin}: {_KEY}: '{scorer}' is not a scorer; expected 'detoxify:original' "
            "(or unbiased, multilingual, a local .ckpt path) or 'transformers:MODEL' "
            "(a hub id or a local folder)"
        )
    return kind, target


def _local(path: str, probe_dir: Path) -> Path:
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else Path(probe_dir) / candidate


def _require(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        raise MissingDependencyError(
            f"the toxicity scorer needs '{package}'; install with: pip install {package}"
        )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def load_scorer(
    spec: ToxicitySpec,
    probe_dir: str | Path,
    *,
    origin: str = "probe",
    device: str | None = None,
    trusted: Sequence[Path] = (),
) -> ToxicityScorer:
    """The scorer the probe names, loaded and ready (on the GPU when there is one).

    ``trusted``: checkpoint files the user vouched for on the command line; a detoxify
    checkpoint holding more than weights loads only from one of these (or detoxify's own
    download), never because a probe or manifest names it.
    """
    kind, target = parse_scorer(spec.scorer, origin)
    _require(kind)
    device = device or pick_device()
    if kind == "transformers":
        return _load_text_classifier(spec, target, Path(probe_dir), origin, device)
    vouched = {Path(p).resolve() for p in trusted}
    return _load_detoxify(spec, target, Path(probe_dir), origin, device, vouched)


def _load_text_classifier(
    spec: ToxicitySpec, target: str, probe_dir: Path, origin: str, device: str
) -> ToxicityScorer:
    from audit.scoring.scorers.text_classifier import TextClassifierScorer

    local = _local(target, probe_dir)
    location = str(local) if local.exists() else target
    try:
        return TextClassifierScorer.load(spec.scorer, location, device, spec.batch_size)
    except pickle.UnpicklingError:
        raise ModelLoadError(
            f"{origin}: {_KEY}: '{target}' holds pickled weights with Python objects besides "
            "weights; they were not loaded, since loading them could run code from the files "
            "(save the model with safetensors instead)"
        ) from None
    except (OSError, ValueError) as error:
        raise ModelLoadError(
            f"{origin}: {_KEY}: cannot load the text-classification model '{target}' "
            f"({_first_line(error)}). Download it once where there is internet with "
            f"'hf download {target}' (then set HF_HUB_OFFLINE=1), or save it with "
            "save_pretrained and set the scorer to 'transformers:/path/to/folder'"
        ) from None


def _load_detoxify(
    spec: ToxicitySpec,
    target: str,
    probe_dir: Path,
    origin: str,
    device: str,
    vouched: set[Path],
) -> ToxicityScorer:
    from audit.scoring.scorers.detoxify_scorer import (
        DetoxifyScorer,
        UntrustedCheckpoint,
        cached_checkpoint,
        download_checkpoint,
        named_checkpoint_url,
    )

    config_path = _config_folder(spec, probe_dir, origin)
    url = named_checkpoint_url(target)
    checkpoint = cached_checkpoint(url) if url else _local(target, probe_dir)
    if url is None and not checkpoint.is_file():
        raise ModelLoadError(f"{origin}: {_KEY}: no such detoxify checkpoint: {checkpoint}")
    if url is not None and not checkpoint.is_file() and _offline():
        raise ModelLoadError(_detoxify_download_hint(origin, target, url, checkpoint))
    # detoxify's own downloads come from its fixed addresses; any other file needs the user.
    trusted = url is not None or checkpoint.resolve() in vouched
    try:
        if url is not None:
            checkpoint = download_checkpoint(url)
        return DetoxifyScorer.load(
            spec.scorer, checkpoint, config_path, device, spec.batch_size, trusted=trusted
        )
    except UntrustedCheckpoint as error:
        raise ModelLoadError(
            f"{origin}: {_KEY}: {checkpoint} holds Python objects besides weights "
            f"(a weights-only load refused it: {error}); loading it could run code from the "
            f"file. If you trust it, pass --trust-checkpoint {checkpoint} to audit analyze"
        ) from None
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        hint = (
            _detoxify_download_hint(origin, target, url, checkpoint)
            if url and not checkpoint.is_file()
            else f"{origin}: {_KEY}: cannot load detoxify checkpoint {checkpoint}"
        )
        raise ModelLoadError(
            f"{hint} ({_first_line(error)}). Its base model's config and tokenizer come from the "
            "hub unless analysis.toxicity.huggingface_config_path names a local folder holding "
            "them (config.json with the checkpoint's number of labels, tokenizer files)"
        ) from None


def _config_folder(spec: ToxicitySpec, probe_dir: Path, origin: str) -> Path | None:
    if spec.huggingface_config_path is None:
        return None
    folder = _local(spec.huggingface_config_path, probe_dir)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(
            f"{origin}: analysis.toxicity.huggingface_config_path: {folder} does not hold a "
            "config.json (expected the base model's config and tokenizer files)"
        )
    return folder


def _detoxify_download_hint(origin: str, target: str, url: str, cached: Path) -> str:
    return (
        f"{origin}: {_KEY}: the detoxify '{target}' checkpoint is not on this machine and "
        f"cannot be downloaded offline. Download it where there is internet with "
        f'\'python -c "import torch; torch.hub.load_state_dict_from_url(\\"{url}\\")"\' '
        f"(it lands in {cached}), or set the scorer to 'detoxify:/path/to/checkpoint.ckpt'"
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
