"""The run directory has one owner: no module outside ``audit.store`` builds a path inside one."""

from __future__ import annotations

import re
from pathlib import Path

from audit.store import RUN_DIR_ENTRIES

AUDIT = Path(__file__).resolve().parents[1] / "audit"


def test_only_the_store_joins_paths_inside_a_run_directory() -> None:
    names = "|".join(re.escape(name) for name in RUN_DIR_ENTRIES)
    joins = [
        re.compile(rf"/\s*f?[\"'](?:{names})\b"),  # folder / "manifest.json"
        re.compile(rf"[\"'](?:{names})/"),  # "analysis/summary.json"
        re.compile(r"\.root\s*/"),  # store.root / anything
        re.compile(r"os\.path\.join\("),
    ]
    offenders = []
    for path in sorted(AUDIT.rglob("*.py")):
        if path.relative_to(AUDIT).parts[0] == "store":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if any(join.search(line) for join in joins):
                offenders.append(f"{path.relative_to(AUDIT.parent)}:{number}: {line.strip()}")
    assert not offenders, "paths built inside a run directory outside audit.store:\n" + "\n".join(
        offenders
    )


def test_the_check_sees_a_join_it_forbids() -> None:
    names = "|".join(re.escape(name) for name in RUN_DIR_ENTRIES)
    join = re.compile(rf"/\s*f?[\"'](?:{names})\b")
    assert join.search('summary = root / "analysis" / "summary.json"')
    assert not join.search('label = f"{prompt} / {axis}"')
