"""Run directories made without running a model: generations made elsewhere (``audit import``)
and simulated runs with planted effects (``simulate``), written through the run store."""
