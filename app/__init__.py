"""The Streamlit dashboard (``audit dashboard``): ``Home.py`` and ``pages/``; reads run directories only."""
