"""transformers backends: ``model.HFBackend`` (lazy loading, batched generation, label scoring)
and one module per prompt layout (``idefics`` for IDEFICS v1, ``chat`` for chat-template models).
The plain path is transformers' public API; speedups that reach into its internals live in
``fast/`` behind one policy."""
