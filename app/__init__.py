"""The Streamlit dashboard (``audit dashboard``): ``Home.py`` and ``pages/``.

It reads run directories only and never loads a model.
"""
