"""The dashboard from the repository's top, as ``streamlit run app/streamlit_app.py`` and a
Hugging Face Space (or Streamlit Community Cloud) start it.

It shows the run directories named by ``AUDIT_RUN_DIRS`` (as ``audit dashboard`` sets it), or
else every run directory in the folder ``AUDIT_RUNS_FOLDER`` (default ``runs/``). Served this
way the runs are fixed: the sidebar offers no box to open other folders of the machine, so a
Space serves its folder of runs read-only. The pages are the package's own
(``audit/dashboard/app``).
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st

from audit.dashboard.launch import FIXED_RUNS_ENV, RUN_DIRS_ENV, app_entry, run_dirs_env

RUNS_FOLDER_ENV = "AUDIT_RUNS_FOLDER"

if not os.environ.get(RUN_DIRS_ENV):
    folder = Path(os.environ.get(RUNS_FOLDER_ENV, "runs"))
    runs = (
        sorted(p for p in folder.iterdir() if (p / "manifest.json").is_file())
        if folder.is_dir()
        else []
    )
    os.environ[RUN_DIRS_ENV] = run_dirs_env(runs)
os.environ[FIXED_RUNS_ENV] = "1"

home = app_entry()
pages = sorted((home.parent / "pages").glob("[0-9]*.py"))
st.navigation([st.Page(home, default=True), *(st.Page(page) for page in pages)]).run()
