"""``audit dashboard``: the Streamlit app over one or more run directories (reads them only,
never loads a model)."""
