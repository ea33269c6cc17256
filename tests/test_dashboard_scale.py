"""Cached loading keeps a 100,000-generation run responsive in the dashboard: the generations
are read once, and a filter change reads nothing again (the seconds it takes are measured by
benchmarks/dashboard_100k.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

import audit.dashboard.state as state
from audit.dashboard.launch import RUN_DIRS_ENV, app_entry, run_dirs_env
from audit.ingest.simulate import Simulation, write_simulated_run


def test_generations_page_on_100k_generations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = write_simulated_run(tmp_path / "big", Simulation(n_images=33_334, classification_axes=()))
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env([run]))
    reads: list[str] = []
    read = state.read_generations
    monkeypatch.setattr(
        state, "read_generations", lambda *a, **k: reads.append("x") or read(*a, **k)
    )
    state.cached_generations.clear()
    app = AppTest.from_file(str(app_entry()), default_timeout=120).run()
    app.switch_page("pages/5_Generations.py")
    app.run()
    assert not app.exception, [e.value for e in app.exception]
    assert "of 100,002 generations match" in app.caption[-1].value
    assert len(reads) == 1
    app.text_input(key="browse_text").set_value("sorry").run()
    app.selectbox(key="browse_prompt").set_value("story").run()
    assert not app.exception
    assert len(reads) == 1, "a filter change read the generations again"
    matched = int(app.caption[-1].value.split(" of ")[0].replace(",", ""))
    assert len(app.dataframe[-1].value) == min(500, matched)
