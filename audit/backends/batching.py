"""Batches with out-of-memory back-off: halve the batch and retry, never drop a request."""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

logger = logging.getLogger(__name__)


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA (or other accelerator) out-of-memory errors, whatever their class."""
    import torch

    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def _release_accelerator_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass
class BatchCeiling:
    """The largest batch known to fit, learned from out-of-memory errors and kept across calls,
    so a backend asked for large batches (``--batch-size auto``) runs out of memory once, not in
    every call."""

    value: int | None = None

    def limit(self, batch_size: int) -> int:
        return batch_size if self.value is None else min(batch_size, self.value)


def map_in_batches(
    items: Sequence[Item],
    batch_size: int,
    run_batch: Callable[[Sequence[Item]], list[Result]],
    ceiling: BatchCeiling | None = None,
) -> list[Result]:
    """``run_batch`` over consecutive batches of ``items``; results concatenated in item order.

    On out-of-memory the failed batch is halved and retried, and later batches (of this call, and
    of later calls sharing ``ceiling``) keep the smaller size; a batch of one that still runs out
    of memory re-raises.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    ceiling = ceiling or BatchCeiling()
    results: list[Result] = []
    size = ceiling.limit(batch_size)
    start = 0
    while start < len(items):
        batch = items[start : start + size]
        try:
            batch_results = run_batch(batch)
        except Exception as error:
            if not is_out_of_memory(error) or len(batch) == 1:
                raise
            size = max(1, len(batch) // 2)
            ceiling.value = size
            logger.warning(
                "out of memory with a batch of %d; retrying with batches of %d", len(batch), size
            )
            # Leaving the except block drops the traceback's references to the batch's tensors.
        else:
            if len(batch_results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(batch_results)} results")
            results.extend(batch_results)
            start += len(batch)
            continue
        _release_accelerator_memory()
    return results


def length_order(lengths: Sequence[int]) -> list[int]:
    """Indices that sort items longest first (stable), so padding is small and OOM shows early."""
    return sorted(range(len(lengths)), key=lambda i: -lengths[i])


def restore_order(order: Sequence[int], results: Sequence[Result]) -> list[Result]:
    """Undo ``length_order``: ``results[k]`` belongs to item ``order[k]``."""
    restored: list[Result | None] = [None] * len(order)
    for position, index in enumerate(order):
        restored[index] = results[position]
    return restored  # type: ignore[return-value]
