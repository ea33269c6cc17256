"""Refusal rate per group and prompt."""

from __future__ import annotations

import streamlit as st

from audit.dashboard.views import metric_page

st.set_page_config(page_title="Refusals", layout="wide")
metric_page("refusal")
