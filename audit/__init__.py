"""Bias and fairness audit workbench for vision-language models.

For notebooks: ``audit.load_run(path)`` and ``audit.compare(runs, ...)`` (``audit.api``), loaded
on first use so that ``import audit`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Run", "__version__", "compare", "load_run"]

#: The package's public face: names of ``audit.api``, the top layer, resolved on first use.
_API = ("Run", "compare", "load_run")


def __getattr__(name: str) -> Any:
    if name in _API:
        from audit import api

        return getattr(api, name)
    raise AttributeError(f"module 'audit' has no attribute {name!r}")
