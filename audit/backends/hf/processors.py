"""A checkpoint's processor: ``AutoProcessor``, or the same processor for images only.

transformers 5 builds a video processor into every processor of a family that takes video
(Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA-OneVision, InternVL, SmolVLM), and video processors need
torchvision. The images of a probe never go through it, and each family's image processor has a
PIL variant that ``AutoImageProcessor`` picks when torchvision is absent. So where loading the
whole processor fails for lack of torchvision, the same processor class is built from the
checkpoint's tokenizer, image processor and settings with no video processor. Pixtral's
processor (Mistral 3) needs torchvision at import; ``ImageOnlyPixtralProcessor`` lays images out
the way it does.

Any other missing package is a ``ModelLoadError`` naming it, the model type and the command
that installs it.
"""

from __future__ import annotations

import re
from typing import Any

from audit.errors import ModelLoadError

#: Import names whose pip package is called otherwise.
_PIP_NAMES = {"PIL": "pillow", "cv2": "opencv-python", "sklearn": "scikit-learn"}
_MISSING = (
    re.compile(r"No module named '([\w.]+)'"),
    re.compile(r"requires the (\w+) library", re.IGNORECASE),
    re.compile(r"Package `?([\w-]+)`? is required", re.IGNORECASE),
    re.compile(r"pip install ([\w-]+)"),
)


def missing_package(error: ImportError) -> str | None:
    """The pip name of the package an ``ImportError`` says is missing, if it says one."""
    name = getattr(error, "name", None)
    if not name:
        for pattern in _MISSING:
            match = pattern.search(str(error))
            if match:
                name = match.group(1)
                break
    if not name:
        return None
    top = name.split(".")[0]
    return _PIP_NAMES.get(top, top.lower())


def missing_package_error(location: str, model_type: str, error: ImportError) -> ModelLoadError:
    """One paragraph: which package, for which model type, and how to install it."""
    package = missing_package(error)
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if package is None:
        return ModelLoadError(
            f"model {location} (type '{model_type}') needs a package this install lacks: {first}"
        )
    advice = (
        "torchvision must match the installed torch build (for a CUDA torch: pip install "
        "torchvision from the same index as torch); "
        if package == "torchvision"
        else ""
    )
    return ModelLoadError(
        f"model {location} (type '{model_type}') needs the package '{package}', which this "
        f"install lacks ({first}); {advice}install it into this environment with: "
        f"pip install {package}"
    )


def needs_torchvision(error: Exception) -> bool:
    """Whether loading failed only for lack of torchvision (an ``ImportError``, or the
    ``ValueError`` ``AutoVideoProcessor`` raises)."""
    if isinstance(error, ImportError):
        return missing_package(error) == "torchvision"
    return "requires `torchvision`" in str(error) or "requires the Torchvision" in str(error)


def load_processor(location: str, model_type: str, **kwargs: Any) -> Any:
    """``AutoProcessor.from_pretrained(location)``, or the image-only processor where the full one
    needs torchvision; ``ModelLoadError`` for any other missing package."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(location, **kwargs)
    except (ImportError, ValueError) as error:
        if not needs_torchvision(error):
            if isinstance(error, ImportError):
                raise missing_package_error(location, model_type, error) from None
            raise
        try:
            return image_only_processor(location, model_type, **kwargs)
        except ImportError as second:
            raise missing_package_error(location, model_type, second) from None
        except _CannotBuild:
            raise missing_package_error(
                location, model_type, ImportError("requires the torchvision library")
            ) from None


class _CannotBuild(Exception):
    """The processor has parts besides a tokenizer, an image and a video processor."""


class NoVideoProcessor(dict):
    """Stands where a processor keeps its video processor, which needs torchvision: it holds
    the checkpoint's video settings (some processors read them while laying out a chat; a
    dict, so the processor still serialises) and refuses video. An unset setting reads as
    ``None``."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.get(name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("this processor was loaded without its video processor (torchvision)")

    def to_dict(self) -> dict[str, Any]:
        return dict(self)


def image_only_processor(location: str, model_type: str, **kwargs: Any) -> Any:
    """The checkpoint's processor class with its tokenizer, its image processor (the PIL
    variant, as ``AutoImageProcessor`` picks without torchvision) and no video processor."""
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import (
        PROCESSOR_MAPPING_NAMES,
        processor_class_from_name,
    )

    if model_type in ("mistral3", "pixtral"):
        from audit.backends.hf.pixtral_processor import ImageOnlyPixtralProcessor

        return ImageOnlyPixtralProcessor.from_pretrained(location, **kwargs)
    name = PROCESSOR_MAPPING_NAMES.get(model_type)
    cls = processor_class_from_name(name) if isinstance(name, str) else None
    if cls is None or not hasattr(cls, "get_attributes"):
        raise _CannotBuild
    attributes = cls.get_attributes()
    if any(a not in ("tokenizer", "image_processor", "video_processor") for a in attributes):
        raise _CannotBuild
    processor_dict, extra = cls.get_processor_dict(location, **kwargs)
    video = processor_dict.get("video_processor")
    parts = {
        "tokenizer": AutoTokenizer.from_pretrained(location, **kwargs),
        "image_processor": AutoImageProcessor.from_pretrained(location, **kwargs),
        "video_processor": NoVideoProcessor(video if isinstance(video, dict) else {}),
    }
    image_only = type(cls.__name__, (cls,), {"check_argument_for_proper_class": _allow_no_video})
    if hasattr(image_only, "from_dict"):  # transformers 5.25 on: parts as keywords
        return image_only.from_dict(processor_dict, **{a: parts[a] for a in attributes}, **extra)
    return image_only.from_args_and_dict([parts[a] for a in attributes], processor_dict, **extra)


def _allow_no_video(self: Any, argument_name: str, argument: Any) -> Any:
    if isinstance(argument, NoVideoProcessor):
        return NoVideoProcessor
    return super(type(self), self).check_argument_for_proper_class(argument_name, argument)
