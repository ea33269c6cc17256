"""Imports run down the layers of docs/architecture.md, never up or sideways between stages."""

from __future__ import annotations

import ast
from pathlib import Path

AUDIT = Path(__file__).resolve().parents[1] / "audit"

#: Top to bottom, as docs/architecture.md draws them; stages on one line do not import each
#: other.
LAYERS = (
    ("cli", "api"),
    ("demo",),
    ("dashboard",),
    ("report",),
    ("analyses",),
    ("run", "ingest", "scoring"),
    ("backends", "datasets"),
    ("store",),
    ("spec",),
    ("errors", "terminal", "locations", ""),  # "": the package itself (its version)
)
RANK = {stage: rank for rank, line in enumerate(LAYERS) for stage in line}
#: The one import allowed to climb: the package's public face (``audit.load_run``) resolving
#: ``audit.api`` on first use.
FACADE = {("audit.__init__", "audit.api")}


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("audit"):
            found.append(node.module)
            if node.module == "audit":  # ``from audit import api``: a module of the package
                found += [f"audit.{alias.name}" for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("audit")]
    return found


def test_every_stage_is_in_the_picture() -> None:
    stages = {p.stem if p.is_file() else p.name for p in AUDIT.iterdir() if p.name != "__pycache__"}
    stages -= {"__init__", "py"}
    assert stages <= set(RANK) | {"__init__.py", "py.typed"}, sorted(stages - set(RANK))


def test_imports_only_run_down() -> None:
    wrong = []
    for path in sorted(AUDIT.rglob("*.py")):
        module = ".".join(path.relative_to(AUDIT.parent).with_suffix("").parts)
        here = stage_of(module.removesuffix(".__init__"))
        for target in imports(path):
            there = stage_of(target)
            if (module, target) in FACADE:
                continue
            if there != here and RANK.get(there, RANK[""]) <= RANK[here]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "imports that climb or cross the layers:\n" + "\n".join(wrong)
