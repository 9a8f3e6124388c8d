"""``Periodic``: call ``tick()`` every ``interval`` seconds on a daemon thread until ``stop()``."""

from __future__ import annotations

import threading
from typing import TypeVar

P = TypeVar("P", bound="Periodic")


class Periodic:
    thread_name = "periodic"
    tick_at_start = False  # one tick as soon as the thread starts

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        if self.tick_at_start:
            self.tick()
        while not self._stop.wait(self.interval):
            self.tick()

    def start(self: P) -> P:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
