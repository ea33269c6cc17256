"""``audit demo``: the whole workflow offline, on tiny random-weight models (``tiny_models``), a
tiny toxicity scorer (``tiny_scorer``) and synthetic faces; the tests use the same pieces."""
