"""sd_notify, spoken directly over the unix datagram socket systemd names in ``NOTIFY_SOCKET``.

    READY=1        the first model is loaded and the source is open
    STATUS=...     one human line shown by ``systemctl status``
    WATCHDOG=1     "still alive": sent by ``Watchdog`` only while the inference loop's
                   heartbeat is fresh, so a stuck loop stops the pings and systemd
                   (``WatchdogSec=``) restarts the service
    STOPPING=1     shutting down

Without ``NOTIFY_SOCKET`` every call is a no-op. ``NOTIFY_SOCKET`` may be a path or an
abstract socket name starting with ``@``. Sending never raises: a lost notification is
logged, the agent goes on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping

from agent.periodic import Periodic

log = logging.getLogger(__name__)


def _address(path: str) -> str | bytes:
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    return path


class Notifier:
    """Sends sd_notify messages to ``socket_path`` (``None``: every call is a no-op)."""

    def __init__(self, socket_path: str | None = None) -> None:
        self.socket_path = socket_path or None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0

    @classmethod
    def from_env(cls, env: MutableMapping[str, str] | None = None, unset: bool = True) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET``; with ``unset`` the variable is removed so that
        child processes (model validation) cannot send notifications on the agent's behalf."""
        env = os.environ if env is None else env
        path = env.get("NOTIFY_SOCKET")
        if unset and path is not None:
            env.pop("NOTIFY_SOCKET", None)
        return cls(path)

    @property
    def enabled(self) -> bool:
        return self.socket_path is not None

    def send(self, *fields: str) -> bool:
        """Send ``fields`` as one datagram (newline-separated ``KEY=value`` lines)."""
        if self.socket_path is None:
            return False
        message = "\n".join(fields).encode("utf-8", "replace")
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message, _address(self.socket_path))
            except OSError as err:
                self.failed += 1
                if self.failed in (1, 10, 100) or self.failed % 1000 == 0:
                    log.warning("sd_notify to %s failed (%d so far): %s", self.socket_path, self.failed, err)
                return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text.replace(chr(10), ' ')}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask systemd for more start/stop time (``EXTEND_TIMEOUT_USEC``)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


def watchdog_timeout(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """systemd's watchdog timeout in seconds (``$WATCHDOG_USEC``), or ``None`` when none is set
    or it is meant for another process (``$WATCHDOG_PID``)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    want_pid = env.get("WATCHDOG_PID", "")
    if want_pid.isdigit() and int(want_pid) != (os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6


class Watchdog(Periodic):
    """Pings ``WATCHDOG=1`` every ``timeout / 2`` seconds while ``heartbeat()`` is fresh.

    ``heartbeat`` returns the monotonic time the inference loop last proved alive; it is
    fresh when younger than ``max_age`` (default: the watchdog timeout). Set the
    ``heartbeat`` attribute to switch source (e.g. "always fresh" during start-up, where
    ``TimeoutStartSec=`` guards instead, then the pipeline's heartbeat).
    """

    def __init__(
        self,
        notifier: Notifier,
        timeout: float,
        heartbeat: Callable[[], float],
        *,
        max_age: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(timeout / 2)
        self.notifier = notifier
        self.max_age = timeout if max_age is None else max_age
        self.heartbeat = heartbeat
        self.pings = 0
        self.withheld = 0
        self._clock = clock

    thread_name = "watchdog"
    tick_at_start = True

    def tick(self) -> None:
        self.check()

    def check(self) -> bool:
        """One tick: ping if the heartbeat is fresh. Returns whether it pinged."""
        age = self._clock() - self.heartbeat()
        if age <= self.max_age:
            self.notifier.watchdog()
            self.pings += 1
            if self.withheld:
                log.info("inference loop is alive again after %.1f s; watchdog pings resume", age)
                self.withheld = 0
            return True
        if self.withheld == 0:
            log.error(
                "inference loop has shown no sign of life for %.1f s; withholding watchdog pings "
                "so that systemd restarts the agent",
                age,
            )
            self.notifier.status(f"inference loop stuck for {age:.0f} s")
        self.withheld += 1
        return False
