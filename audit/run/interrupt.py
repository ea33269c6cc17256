"""SIGINT and SIGTERM during a run: stop cleanly, keep every computed row.

Ctrl-C sends SIGINT; SLURM and Kubernetes send SIGTERM some time before they kill a job. While
batches run, the first signal asks the run to stop once the batch in flight is done (its rows are
written with the rest); a second one stops it at once, dropping that batch. Before batches run
(the model loading) there is nothing to keep, and a signal stops at once. A signal never cuts a
write to the run store short: one arriving during a write takes effect after it, so no row is
lost or written twice.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signal_name`` (raised where it cannot stop cleanly)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopSignals:
    """The signals a run received, and what each one does (see the module docstring)."""

    def __init__(self, announce: Callable[[str], None]) -> None:
        self._announce = announce
        self.received: list[str] = []
        self._deferring = False
        self._writing = 0
        self._pending: str | None = None

    @property
    def stop_requested(self) -> bool:
        return bool(self.received)

    @property
    def first(self) -> str | None:
        """The signal that asked the run to stop (``SIGINT``, ``SIGTERM``), if any."""
        return self.received[0] if self.received else None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        name = signal.Signals(signum).name
        self.received.append(name)
        if self._deferring and len(self.received) == 1:
            again = "Ctrl-C" if name == "SIGINT" else name
            self._announce(
                f"{name}: stopping after the batch in flight, keeping every row computed; "
                f"{again} again stops at once"
            )
            return
        if self._writing:
            self._pending = name
            return
        raise Interrupted(name)

    @contextmanager
    def installed(self) -> Iterator[StopSignals]:
        """Handle the signals in this block (the main thread only: elsewhere, as before)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        for s in SIGNALS:
            signal.signal(s, self._handle)
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """While batches run: the first signal asks to stop after the batch in flight."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False

    @contextmanager
    def writing(self) -> Iterator[None]:
        """A write to the run store: a signal arriving now takes effect once it is done."""
        self._writing += 1
        try:
            yield
        finally:
            self._writing -= 1
        if not self._writing and self._pending:
            name, self._pending = self._pending, None
            raise Interrupted(name)
