"""Decode the next batches' images in background threads while the model works on this one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

_DONE = object()


def prefetch(
    batches: Iterable[list[In]],
    load: Callable[[In], Out],
    *,
    depth: int = 2,
    workers: int = 2,
) -> Iterator[list[Out]]:
    """Yield ``[load(x) for x in batch]`` per batch, keeping up to ``depth`` batches ready.

    Exceptions from ``batches`` (not from ``load``, which must not raise) reach the consumer.
    """
    ready: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for batch in batches:
                    if stop.is_set():
                        return
                    ready.put(list(pool.map(load, batch)))
            ready.put(_DONE)
        except BaseException as error:  # handed to the consumer, which re-raises it
            ready.put(error)

    thread = threading.Thread(target=produce, name="audit-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                ready.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
