"""Cached loading keeps a 100,000-generation run responsive in the dashboard."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from audit.dashboard.launch import RUN_DIRS_ENV, app_entry, run_dirs_env
from audit.ingest.simulate import Simulation, write_simulated_run


def test_generations_page_on_100k_generations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = write_simulated_run(tmp_path / "big", Simulation(n_images=33_334, classification_axes=()))
    monkeypatch.setenv(RUN_DIRS_ENV, run_dirs_env([run]))
    app = AppTest.from_file(str(app_entry()), default_timeout=120).run()
    app.switch_page("pages/5_Generations.py")
    started = time.perf_counter()
    app.run()
    first_s = time.perf_counter() - started
    assert not app.exception, [e.value for e in app.exception]
    assert "of 100,002 generations match" in app.caption[-1].value
    started = time.perf_counter()
    app.text_input(key="browse_text").set_value("sorry").run()
    app.selectbox(key="browse_prompt").set_value("story").run()
    rerun_s = (time.perf_counter() - started) / 2
    assert not app.exception
    matched = int(app.caption[-1].value.split(" of ")[0].replace(",", ""))
    assert len(app.dataframe[-1].value) == min(500, matched)
    # Generous bounds for a loaded 2-core machine; measured about 0.5 s and 0.15 s.
    assert first_s < 15, f"first load took {first_s:.1f} s"
    assert rerun_s < 3, f"a filter change took {rerun_s:.1f} s"
