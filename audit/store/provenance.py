"""What a manifest records about the software and machine that produced a run."""

from __future__ import annotations

import os
import platform
import sys
from datetime import UTC, datetime
from importlib import metadata

_PACKAGES = (
    "vlm-bias-audit",
    "torch",
    "transformers",
    "tokenizers",
    "datasets",
    "accelerate",
    "pillow",
    "torchvision",
    "numpy",
    "pandas",
    "pyarrow",
    "scikit-learn",
    "detoxify",
)


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hardware() -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
