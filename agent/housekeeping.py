"""``Housekeeping``: ``metrics.db``'s roll-ups and retention, at start and then once an hour,
on its own thread (a service of the daemon)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.periodic import Periodic
from inference.errors import EdgeAgentError
from monitoring.metrics_store import MetricsStore

log = logging.getLogger(__name__)


class Housekeeping(Periodic):
    thread_name = "housekeeping"
    tick_at_start = True

    def __init__(
        self, store: MetricsStore, interval: float = 3600.0, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(interval)
        self.store = store
        self.clock = clock
        self.failures = 0

    def tick(self) -> None:
        try:
            done = self.store.housekeeping(self.clock())
        except EdgeAgentError as err:  # a full or busy disk: the next tick tries again
            self.failures += 1
            log.warning("metrics.db housekeeping failed: %s; tried again in %.0f s", err, self.interval)
            return
        log.debug("metrics.db housekeeping: %s", done)
