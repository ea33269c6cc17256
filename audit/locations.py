"""Where a model, a dataset or a scorer lives, as a reader of a report or a card is told it.

Reports and cards are shared beyond the machine that made them: a hub id is shown as it is, a
local folder by its name marked ``(local)``, never by a path of that machine. A scorer is named
with its kind in front (``transformers:toxicity (local)``, ``detoxify:original``).
"""

from __future__ import annotations

import re
from pathlib import Path

#: ``kind:location`` as a scorer is named (``transformers:...``, ``detoxify:...``).
_KIND = re.compile(r"^([a-z][a-z0-9_]*):(.+)$")


def is_local_path(location: str) -> bool:
    """Whether ``location`` names a folder or file of this machine rather than a hub id."""
    return (
        location.startswith(("/", ".", "~"))
        or Path(location).is_absolute()
        or location.count("/") > 1
        or Path(location).exists()
    )


def public_name(location: str) -> str:
    """``location`` as a shared document may say it: a hub id (or a scorer's built-in name) as
    it is; a local path by its last part, marked ``(local)``."""
    kind = _KIND.match(location)
    if kind and not Path(location).exists():
        return f"{kind.group(1)}:{public_name(kind.group(2))}"
    if not is_local_path(location):
        return location
    name = Path(location.rstrip("/\\")).name
    return f"{name} (local)" if name else "(local)"
