"""Speedups that reach into transformers internals, behind one policy (``policy``) and checked
against the plain path on each run's first batch (``self_check``). docs/compatibility.md lists
the private APIs each one uses."""
