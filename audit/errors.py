"""User-facing errors: the CLI prints the message and exits with code 2, no traceback.

Anything that is not an ``AuditError`` is a bug and keeps its traceback.
"""

from __future__ import annotations


class AuditError(Exception):
    """A problem with the user's input or environment; the message says what to do next."""


class ProbeError(AuditError):
    """A probe file is malformed or inconsistent: ``file: key.path: what was expected``."""


class DatasetError(AuditError):
    """A dataset cannot be found, read, or lacks the columns a probe names."""


class ModelLoadError(AuditError):
    """Model or processor weights cannot be loaded (missing path, offline, unsupported family)."""


class RunDirError(AuditError):
    """A run directory is missing, incomplete, or not a run directory."""


class MissingDependencyError(AuditError):
    """An optional package is needed: the message says ``install with: pip install ...``."""
