"""Which shard and which GPU a launcher's process gets, from the launcher's environment.

torchrun and ``accelerate launch`` start one process per GPU with ``RANK``/``WORLD_SIZE`` (the
shard, read by ``Shard.from_env``) and ``LOCAL_RANK`` (the GPU on this machine). SLURM gives
each array task its own GPUs through ``CUDA_VISIBLE_DEVICES``; Ray does the same for an actor
with ``num_gpus=1``: there ``cuda`` already is the right GPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from audit.errors import AuditError
from audit.spec import ProbeSpec

_PER_RANK_REQUESTS = ("auto", "cuda")


def device_for_rank(requested: str, env: Mapping[str, str], cuda_count: int) -> str:
    """The device for this process: ``auto``/``cuda`` become ``cuda:<LOCAL_RANK>`` under a
    launcher that sets ``LOCAL_RANK`` when there are GPUs; anything else is kept."""
    if requested not in _PER_RANK_REQUESTS or cuda_count < 1 or "LOCAL_RANK" not in env:
        return requested
    raw = env["LOCAL_RANK"]
    if not raw.isdigit():
        raise AuditError(f"LOCAL_RANK: expected a non-negative integer, got '{raw}'")
    local_rank = int(raw)
    if cuda_count == 1:
        return "cuda"  # the launcher already gave each process its own GPU (or they share one)
    if local_rank >= cuda_count:
        raise AuditError(
            f"LOCAL_RANK is {local_rank} but this process sees {cuda_count} GPUs: start at most "
            f"{cuda_count} processes per machine (torchrun --nproc-per-node {cuda_count})"
        )
    return f"cuda:{local_rank}"


def place_on_local_gpu(spec: ProbeSpec, env: Mapping[str, str] | None = None) -> ProbeSpec:
    """The probe with its device chosen for this launcher rank (unchanged without a launcher)."""
    env = os.environ if env is None else env
    if "LOCAL_RANK" not in env or spec.model.device not in _PER_RANK_REQUESTS:
        return spec
    if spec.model.device_map == "auto":
        return spec  # the model is spread over every GPU on purpose; do not pin it to one
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = device_for_rank(spec.model.device, env, count)
    return spec.model_copy(update={"model": spec.model.model_copy(update={"device": device})})


def launcher_name(env: Mapping[str, str] | None = None) -> str:
    """Which launcher started this process, for the shard record (``cli`` if none)."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env:
        return "slurm-array"
    if "RANK" in env and "WORLD_SIZE" in env:
        if any(name.startswith("ACCELERATE_") for name in env):
            return "accelerate"
        return "torchrun" if "TORCHELASTIC_RUN_ID" in env or "LOCAL_RANK" in env else "rank-env"
    return "cli"
