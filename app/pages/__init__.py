"""Dashboard pages (Streamlit lists every ``*.py`` here except this file)."""
