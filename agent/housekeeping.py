"""``Housekeeping``: ``metrics.db``'s roll-ups and retention, at start and then once an hour,
on its own thread (a service of the daemon)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from inference.errors import EdgeAgentError
from monitoring.metrics_store import MetricsStore

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(
        self, store: MetricsStore, interval: float = 3600.0, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.interval = interval
        self.clock = clock
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        try:
            done = self.store.housekeeping(self.clock())
        except EdgeAgentError as err:  # a full or busy disk: the next hour tries again
            self.failures += 1
            log.warning("metrics.db housekeeping failed: %s; tried again in %.0f s", err, self.interval)
            return
        log.debug("metrics.db housekeeping: %s", done)

    def _run(self) -> None:
        self.tick()
        while not self._stop.wait(self.interval):
            self.tick()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
