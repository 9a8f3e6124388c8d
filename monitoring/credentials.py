"""S3 credentials from a file the fleet rotates, in AWS ``credential_process`` JSON:

    {"Version": 1, "AccessKeyId": "...", "SecretAccessKey": "...",
     "SessionToken": "...", "Expiration": "2026-11-23T19:00:00Z"}

``SessionToken`` and ``Expiration`` may be absent (long-term keys). ``CredentialsFile.get()``
re-reads the file when its mtime or size changed, or when the cached credentials are within
``refresh_margin_s`` (5 min) of their expiry; between those it costs one ``stat``.

Errors: a missing or unreadable file and credentials past their expiry are ``TransientError``
(the fleet may write a fresh file; items wait), a file that is not such JSON is ``ConfigError``
naming the key. Nothing is cached from a bad read, so the next ``get()`` reads again.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inference.errors import ConfigError, TransientError

REFRESH_MARGIN_S = 300.0


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: float | None = None  # Unix time; None: does not expire


def parse_expiration(value: str) -> float:
    """ISO 8601 (``Z`` or an offset; no offset means UTC) → Unix time; ValueError when malformed."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def parse_credentials(data: Any, where: str) -> Credentials:
    """The credential_process document → Credentials; ConfigError naming ``where`` and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a JSON object with Version, AccessKeyId, SecretAccessKey")
    if data.get("Version") != 1:
        raise ConfigError(
            f"{where}: Version must be 1 (the credential_process format), got {data.get('Version')!r}"
        )
    values: dict[str, str | None] = {}
    for key, required in (
        ("AccessKeyId", True),
        ("SecretAccessKey", True),
        ("SessionToken", False),
        ("Expiration", False),
    ):
        value = data.get(key)
        if value is None and not required:
            values[key] = None
            continue
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: {key} must be a non-empty string")
        values[key] = value.strip()
    expiration = None
    if values["Expiration"] is not None:
        try:
            expiration = parse_expiration(values["Expiration"])
        except ValueError:
            raise ConfigError(
                f"{where}: Expiration {values['Expiration']!r} is not an ISO 8601 time "
                "(like 2026-11-23T19:00:00Z)"
            ) from None
    return Credentials(
        access_key_id=str(values["AccessKeyId"]),
        secret_access_key=str(values["SecretAccessKey"]),
        session_token=values["SessionToken"],
        expiration=expiration,
    )


class CredentialsFile:
    """The credentials in ``path``, re-read when it changes or they near expiry."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        refresh_margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._margin = refresh_margin_s
        self._cached: Credentials | None = None
        self._stamp: tuple[int, int] | None = None

    def invalidate(self) -> None:
        """Forget the cached credentials (e.g. the server refused them); the next get() reads again."""
        self._cached = None
        self._stamp = None

    def get(self) -> Credentials:
        now = self._clock()
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self.invalidate()
            raise TransientError(
                f"S3 credentials file {self.path} cannot be read ({exc.strerror or exc}); "
                "uploads wait until it is there (credentials_file in [upload])"
            ) from None
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cached
        if (
            cached is not None
            and stamp == self._stamp
            and (cached.expiration is None or now < cached.expiration - self._margin)
        ):
            return cached
        creds = self._read()
        self._cached, self._stamp = creds, stamp
        if creds.expiration is not None and now >= creds.expiration:
            expired = datetime.fromtimestamp(creds.expiration, tz=timezone.utc).isoformat()
            raise TransientError(
                f"S3 credentials in {self.path} expired at {expired}; uploads wait until the file is rotated"
            )
        return creds

    def _read(self) -> Credentials:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            self.invalidate()
            raise TransientError(f"S3 credentials file {self.path} cannot be read: {exc}") from None
        except UnicodeDecodeError:
            self.invalidate()
            raise ConfigError(f"{self.path}: not UTF-8 text (expected credential_process JSON)") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            self.invalidate()
            raise ConfigError(
                f"{self.path}: not valid JSON ({exc.msg} at line {exc.lineno}); expected credential_process "
                "JSON with Version, AccessKeyId, SecretAccessKey, SessionToken, Expiration"
            ) from None
        try:
            return parse_credentials(data, str(self.path))
        except ConfigError:
            self.invalidate()
            raise
