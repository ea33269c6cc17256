"""What every dashboard page shares: the runs it was started with, cached loading, filters.

Pages read run directories only (never a backend or torch). Loading is cached with
``st.cache_data`` keyed by the run directory and a token of its files' modification times, so a
page rerun after a widget change costs no disk read, and a re-analysed run is picked up.
Run text is shown only through ``st.dataframe``/``st.text`` or Markdown-escaped.
"""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from audit.dashboard.launch import FIXED_RUNS_ENV, run_dirs_from_env
from audit.errors import AuditError
from audit.report.formatting import NOT_ANALYSED, escape_markdown
from audit.report.run_data import (
    RunData,
    load_run,
    read_generations,
    read_thumbnails,
    with_distinct_labels,
)
from audit.store.tables import RunStore

_EXTRA_RUNS = "extra_run_dirs"
GENERATION_COLUMNS = (
    "sample_id",
    "prompt_id",
    "generation",
    "n_new_tokens",
    "finish_reason",
    "error",
)


def run_token(run_dir: str) -> str:
    """Changes whenever a file the dashboard reads is written (cache key part)."""
    return RunStore(run_dir).change_token()


@st.cache_data(show_spinner="Loading run…", max_entries=32)
def cached_run(run_dir: str, token: str) -> RunData:
    del token  # part of the cache key only
    return load_run(run_dir)


@st.cache_data(show_spinner="Loading generations…", max_entries=8)
def cached_generations(run_dir: str, token: str, axes: tuple[str, ...]) -> pd.DataFrame:
    del token
    frame = read_generations(load_run(run_dir, analyses=()), [*GENERATION_COLUMNS, *axes])
    for column in ("sample_id", "prompt_id", *axes):
        if column in frame:
            frame[column] = frame[column].astype(str)
    return frame


@st.cache_data(max_entries=64)
def cached_thumbnails(run_dir: str, token: str, sample_ids: tuple[str, ...]) -> dict[str, bytes]:
    del token
    return read_thumbnails(load_run(run_dir, analyses=()), sample_ids)


@st.cache_data(max_entries=32)
def cached_staleness(run_dir: str, token: str) -> str | None:
    del token
    try:
        return RunStore(run_dir).analysis_staleness()
    except AuditError as error:  # a damaged part: say which, like every page does
        return str(error)


def staleness(run: RunData) -> str | None:
    """Why the run's analyses do not describe its rows now (``None`` when they do)."""
    key = str(run.root)
    return cached_staleness(key, run_token(key))


def generations(run: RunData) -> pd.DataFrame:
    """The run's generations (cached), group columns as strings; a damaged table is a message
    naming the file and a stop."""
    key = str(run.root)
    try:
        return cached_generations(key, run_token(key), tuple(run.group_axes))
    except AuditError as error:
        st.error(escape_markdown(str(error)))
        st.stop()


def thumbnails(run: RunData, sample_ids: list[str]) -> dict[str, bytes]:
    """The samples' thumbnails (cached); none, with a warning, when they cannot be read."""
    key = str(run.root)
    try:
        return cached_thumbnails(key, run_token(key), tuple(sorted(set(sample_ids))))
    except AuditError as error:
        st.warning(escape_markdown(str(error)))
        return {}


def _add_run_box() -> None:
    """The sidebar's box to add a run directory. Drawn before the runs load, so the run added
    is there on the same click; one that cannot be loaded says why at once and is not kept."""
    with st.sidebar.form("add_run", clear_on_submit=True):
        path = st.text_input("Add a run directory", placeholder="runs/fairface-idefics-9b")
        submitted = st.form_submit_button("Add")
    path = path.strip()
    if not (submitted and path):
        return
    try:
        cached_run(path, run_token(path))
    except AuditError as error:
        st.sidebar.error(escape_markdown(str(error)))  # paths are user text
        return
    extra = st.session_state.setdefault(_EXTRA_RUNS, [])
    if path not in extra:
        extra.append(path)


def loaded_runs() -> list[RunData]:
    """The runs given to ``audit dashboard`` plus any added in the sidebar (where runs are not
    fixed, ``FIXED_RUNS_ENV``); problems shown."""
    if not os.environ.get(FIXED_RUNS_ENV):
        _add_run_box()
    paths = [str(p) for p in run_dirs_from_env()] + list(st.session_state.get(_EXTRA_RUNS, []))
    runs = []
    for path in dict.fromkeys(paths):
        try:
            runs.append(cached_run(path, run_token(path)))
        except AuditError as error:
            st.sidebar.error(escape_markdown(str(error)))  # paths are user text
    return with_distinct_labels(runs)


def require_runs() -> list[RunData]:
    """Loaded runs, or an explanation and a stop when there are none."""
    runs = loaded_runs()
    if not runs:
        st.info(
            "No run directory loaded. Start with `audit dashboard RUN_DIR [RUN_DIR ...]` "
            "or add one in the sidebar."
        )
        st.stop()
    return runs


def require_table(run: RunData, name: str) -> pd.DataFrame:
    """The run's analysis table ``name``, or a note on how to make it and a stop."""
    table = run.table(name)
    if table is None:
        st.warning(f"{NOT_ANALYSED.capitalize()}: run `audit analyze` on this run directory.")
        st.stop()
    if table.empty:  # analysed, with nothing to analyse (an import holds no classification)
        st.info(f"The run holds nothing for the {name.replace('_', ' ')} analysis.")
        st.stop()
    return table


def choose_run(runs: list[RunData], key: str = "run") -> RunData:
    """A run picker in the sidebar (no picker for a single run)."""
    if len(runs) == 1:
        return runs[0]
    labels = [run.label for run in runs]
    chosen = st.sidebar.selectbox("Run", labels, key=key)
    return runs[labels.index(chosen)]


def group_values(run: RunData) -> dict[str, list[str]]:
    """Each group axis's values, as the run's analysis tables name them."""
    values: dict[str, set[str]] = {axis: set() for axis in run.group_axes}
    for table in run.tables.values():
        if {"axis", "group"} <= set(table.columns):
            pairs = table[["axis", "group"]].astype(str).drop_duplicates()
            for axis, group in pairs.itertuples(index=False):
                # Rows about a whole axis (gaps, tests) carry group "all": not a group.
                if axis in values and group != "all":
                    values[axis].add(group)
    return {axis: sorted(found) for axis, found in values.items() if found}


Selection = dict[str, set[str]]


def group_selection(run: RunData) -> Selection:
    """One sidebar multiselect per group axis (call once per page run)."""
    selection = {}
    for axis, values in group_values(run).items():
        chosen = st.sidebar.multiselect(
            # Widget labels render Markdown; axis names come from the run.
            escape_markdown(f"{axis} groups"),
            values,
            default=values,
            key=f"groups_{run.label}_{axis}",
        )
        selection[axis] = set(chosen)
    return selection


def filter_groups(frame: pd.DataFrame, selection: Selection) -> pd.DataFrame:
    """Rows of selected groups. Overall rows (``axis == 'all'``) always stay; intersection rows
    stay when every part of their group is selected."""
    if frame.empty or "axis" not in frame or not selection:
        return frame
    keep = [
        _keep(str(a), str(g), selection) for a, g in zip(frame["axis"], frame["group"], strict=True)
    ]
    return frame[keep]


def _keep(axis: str, group: str, selected: dict[str, set[str]]) -> bool:
    if axis in selected:
        return group in selected[axis]
    parts, groups = axis.split(" x "), group.split(" x ")
    if len(parts) > 1 and len(parts) == len(groups):
        return all(g in selected.get(p, {g}) for p, g in zip(parts, groups, strict=True))
    return True


def caption(text: str) -> None:
    """A caption whose content may come from a run (Markdown-escaped)."""
    st.caption(escape_markdown(text))
