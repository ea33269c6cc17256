"""Where a model's files are, what family it is, and how to load it onto a device.

Every way a load can fail for a user reason (missing folder, offline without a cached copy,
unsupported family, remote code not allowed) becomes a ``ModelLoadError`` that says what to do.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit.errors import ModelLoadError
from audit.spec import ModelSpec

_TRUTHY = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class Checkpoint:
    """A resolved model location and its config (read at once: it is small)."""

    location: str
    is_local: bool
    spec: ModelSpec
    config: Any
    #: The hub commit actually used; None for a local folder.
    revision: str | None = None

    @property
    def model_type(self) -> str:
        return str(self.config.model_type)


@dataclass(frozen=True)
class LoadedModel:
    """Weights and processor on their device."""

    model: Any
    processor: Any
    device: str
    dtype: Any


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or its transformers alias) forbids network calls."""
    return any(
        os.environ.get(name, "").strip().lower() in _TRUTHY
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _looks_local(location: str) -> bool:
    return (
        Path(location).expanduser().exists()
        or location.startswith((".", "~", os.sep))
        or (os.altsep is not None and os.altsep in location)
        or location.count("/") > 1
    )


def _hub_kwargs(spec: ModelSpec, is_local: bool) -> dict[str, Any]:
    """Loader options: a pinned revision for hub ids; remote code only when the probe allows it."""
    kwargs: dict[str, Any] = {}
    if spec.trust_remote_code:
        kwargs["trust_remote_code"] = True
    if not is_local and spec.revision:
        kwargs["revision"] = spec.revision
    return kwargs


def _explain_failure(location: str, spec: ModelSpec, is_local: bool, error: Exception) -> str:
    text = str(error)
    if "trust_remote_code" in text:
        return (
            f"model {location} ships its own code; set 'model.trust_remote_code: true' in the "
            "probe only if you trust that repository"
        )
    revision = f" at revision {spec.revision}" if spec.revision else ""
    if not is_local and hub_offline():
        pin = f" --revision {spec.revision}" if spec.revision else ""
        return (
            f"model {location}{revision} is not in the local cache and HF_HUB_OFFLINE is set: "
            f"download it first with `huggingface-cli download {location}{pin}` or pass a local "
            f"folder (there is no folder named {location} either)"
        )
    if not is_local:
        return (
            f"model {location}{revision} could not be loaded from the hub: {text.splitlines()[0]}"
        )
    return f"model folder {location} could not be loaded: {text.splitlines()[0]}"


def _check_hub_id(location: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(location)
    except HFValidationError:
        raise ModelLoadError(
            f"model '{location}' is neither an existing local folder nor a valid hub id "
            "(expected a folder written by save_pretrained, or an id such as "
            "HuggingFaceM4/idefics-9b-instruct)"
        ) from None


def open_checkpoint(location: str, spec: ModelSpec) -> Checkpoint:
    """Resolve ``location`` (a local folder or a hub id) and read its config."""
    from transformers import AutoConfig

    is_local = _looks_local(location)
    if is_local:
        folder = Path(location).expanduser()
        if not folder.exists():
            raise ModelLoadError(f"model folder {location} does not exist")
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"{location} is not a model folder: it has no config.json (expected a folder "
                "written by save_pretrained, or a hub id such as HuggingFaceM4/idefics-9b-instruct)"
            )
        location = str(folder)
    else:
        _check_hub_id(location)
    try:
        config = AutoConfig.from_pretrained(location, **_hub_kwargs(spec, is_local))
    except (OSError, ValueError, KeyError) as error:
        text = str(error)
        unknown_type = "model type" in text or "model_type" in text
        if "trust_remote_code" not in text and (unknown_type or isinstance(error, KeyError)):
            raise ModelLoadError(
                f"model {location}: unsupported model type ({text.splitlines()[0]})"
            ) from None
        raise ModelLoadError(_explain_failure(location, spec, is_local, error)) from None
    revision = None if is_local else _cached_commit(location, spec.revision)
    return Checkpoint(location, is_local, spec, config, revision)


def not_image_text(config: Any) -> str:
    """Why a type transformers does not load as an image-text-to-text model is not one."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if str(config.model_type) not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "not an image-text-to-text model"
    if any(
        getattr(config, name, None) is not None
        for name in ("vision_config", "image_token_id", "image_token_index", "vision_lora")
    ):
        return (
            "an image-text model that transformers registers only as a causal language model "
            "(AutoModelForCausalLM), whose processor and forward pass take images in a layout "
            "of their own, not as an image-text-to-text model"
        )
    return "a text-only causal language model, not an image-text-to-text model"


def _cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit of the cached snapshot the config was read from (the cache path names it)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    match = re.search(r"snapshots/([0-9a-f]{40})/", str(path).replace(os.sep, "/"))
    return match.group(1) if isinstance(path, str) and match else revision


def choose_device(requested: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else CPU; an unusable request is a user error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device '{requested}' was asked for, but torch sees no CUDA device")
    return requested


def choose_dtype(requested: str, device: str) -> Any:
    """``auto`` is bfloat16 on CUDA and float32 elsewhere (CPU bfloat16 is slow and lossy)."""
    import torch

    if requested == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, requested)


def load_checkpoint(checkpoint: Checkpoint) -> LoadedModel:
    """Load processor and weights (``device_map="auto"`` when the probe asks for it)."""
    from transformers import AutoModelForImageTextToText

    from audit.backends.hf.processors import load_processor, missing_package_error

    spec = checkpoint.spec
    device = choose_device(spec.device)
    dtype = choose_dtype(spec.dtype, device)
    kwargs = _hub_kwargs(spec, checkpoint.is_local)
    try:
        processor = load_processor(checkpoint.location, checkpoint.model_type, **kwargs)
        if spec.device_map == "auto":
            model = AutoModelForImageTextToText.from_pretrained(
                checkpoint.location, dtype=dtype, device_map="auto", **kwargs
            )
        else:
            model = AutoModelForImageTextToText.from_pretrained(
                checkpoint.location, dtype=dtype, **kwargs
            ).to(device)
    except ImportError as error:  # a package the model's code needs (timm, einops, ...)
        raise missing_package_error(checkpoint.location, checkpoint.model_type, error) from None
    except pickle.UnpicklingError:
        raise ModelLoadError(
            f"model {checkpoint.location}: its pickled weights hold Python objects besides "
            "weights; they were not loaded, since loading them could run code from the files "
            "(save the model with safetensors instead)"
        ) from None
    except (OSError, ValueError) as error:
        if "Unrecognized" in str(error) or "model type" in str(error):
            raise ModelLoadError(
                f"model {checkpoint.location}: type '{checkpoint.model_type}' cannot be loaded as "
                f"an image-text-to-text model ({str(error).splitlines()[0]})"
            ) from None
        raise ModelLoadError(
            _explain_failure(checkpoint.location, spec, checkpoint.is_local, error)
        ) from None
    model.eval()
    return LoadedModel(model=model, processor=processor, device=str(model.device), dtype=dtype)
