"""Toxicity of the generations per group, with intervals and the largest gap."""

from __future__ import annotations

import streamlit as st

from audit.dashboard.views import metric_page

st.set_page_config(page_title="Toxicity", layout="wide")
metric_page("toxicity")
