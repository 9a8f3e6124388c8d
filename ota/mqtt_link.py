"""The broker connection: MQTT v5 over paho-mqtt 2.x, TLS, last will, persistent session, back-off.

One link thread owns the paho client and every socket operation: it connects (``clean_start``
False + SessionExpiryInterval, so QoS 1 messages wait at the broker while the device is away),
runs paho's loop, and after a refused CONNACK or a drop waits an exponential back-off with jitter
before the next attempt. Other threads only queue work (``publish``, ``subscribe``): an external
write callback is registered with paho so it never writes to the socket from the caller's thread.

``connected`` is True only between a CONNACK whose reason code is success and the next drop (not
when paho has merely opened the socket or received a refusal). After each successful CONNACK the
remembered filters are subscribed again (QoS 1 by default), then the ``on_connect`` listeners run.

Publications: ``publish`` returns a ``Publication``; ``wait(timeout)`` is True only once the
PUBACK came back with a success reason code. A drop fails every pending publication (the caller,
e.g. ``ota.outbox.OutboxPump``, publishes again after the next connect); paho's own copies are
dropped so nothing is sent twice behind the caller's back.

Locking: paho calls ``on_publish`` and ``on_disconnect`` while it may hold its internal mutexes,
and ``publish`` holds ``_lock`` while calling into paho. So those two callbacks never take ``_lock``:
they queue an event that the link thread handles after ``loop()`` returns, holding no paho lock.
This also settles the race where a PUBACK is processed before ``publish`` has recorded its mid.
``on_connect`` and ``on_message`` run outside paho's mutexes and are handled directly, so the
connection is marked up (and re-subscribed) before any message of the resumed session is handled.

Problems become errors of the project's tree, kept in ``last_error`` and logged once per change:
``ConfigError`` when the settings cannot work (bad credentials, not authorised, an untrusted or
missing certificate), ``TransientError`` for the network; the link keeps retrying either way.
"""

from __future__ import annotations

import logging
import math
import queue
import random
import socket
import ssl
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ota.errors import ConfigError, EdgeAgentError, TransientError

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
ClientFactory = Callable[[str], mqtt.Client]

#: How long one ``loop()`` call may block; publish/subscribe/stop wake it at once anyway.
_LOOP_TIMEOUT_S = 1.0

#: CONNACK reason codes that no retry will cure: the settings (or the broker's) must change.
_CONFIG_REASONS = {
    0x84: "the broker does not accept MQTT v5",
    0x85: "the client id is not accepted",
    0x86: "bad user name or password",
    0x87: "bad credentials, or not allowed",
    0x8A: "this client is banned",
    0x8C: "bad authentication method",
    0x90: "the last will topic is not valid",
    0x95: "packet too large",
    0x99: "the last will payload format is not valid",
    0x9A: "retained messages are not supported (the last will is retained)",
    0x9B: "QoS 1 is not supported (the last will uses QoS 1)",
}


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to connect; see the contract's "MqttLink API"."""

    url: str  # mqtt://host[:1883] or mqtts://host[:8883]
    client_id: str
    ca: Path | None = None  # CA bundle for the broker's certificate (mqtts; system CAs when None)
    cert: Path | None = None  # client certificate (mutual TLS)
    key: Path | None = None  # client key
    username: str | None = None
    password_file: Path | None = None  # first line is the password
    keepalive: int = 30
    session_expiry_s: int = 7 * 86400  # with clean_start False: QoS 1 messages wait while away
    clean_start: bool = False
    will_topic: str | None = None
    will_payload: bytes | None = None  # retained, QoS 1
    backoff_min_s: float = 0.5
    backoff_max_s: float = 60.0
    max_packet_bytes: int = 256 * 1024  # MQTT v5 Maximum Packet Size announced in CONNECT


def parse_mqtt_url(url: str) -> tuple[bool, str, int]:
    """``(tls, host, port)`` from ``mqtt://host[:port]`` (1883) or ``mqtts://host[:port]`` (8883)."""
    fix = "write mqtt://HOST[:1883] or mqtts://HOST[:8883]"
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"MQTT url {url!r}: unsupported scheme {parts.scheme!r}; {fix}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"MQTT url {url!r}: credentials do not belong in the url; set username and password_file"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"MQTT url {url!r}: no path, query or fragment allowed; {fix}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"MQTT url {url!r}: bad port ({exc}); {fix}") from None
    if not parts.hostname:
        raise ConfigError(f"MQTT url {url!r}: no host; {fix}")
    tls = parts.scheme == "mqtts"
    if port is None:
        port = 8883 if tls else 1883
    if port == 0:
        raise ConfigError(f"MQTT url {url!r}: port 0 is not a port; {fix}")
    return tls, parts.hostname, port


def backoff_delay(attempt: int, min_s: float, max_s: float, r: float) -> float:
    """Seconds to wait before retry number ``attempt`` (0-based): uniform in [min_s, ceiling],
    ceiling = min(max_s, min_s * 2**(attempt+1)); ``r`` in [0, 1) is the jitter draw."""
    ceiling = min(max_s, min_s * math.pow(2.0, min(attempt + 1, 62)))
    return min_s + min(max(r, 0.0), 1.0) * max(ceiling - min_s, 0.0)


def default_client_factory(client_id: str) -> mqtt.Client:
    """paho client, callback API v2, MQTT v5."""
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)


def _read_password(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"MQTT password_file {path}: cannot read it ({exc}); the password goes there"
        ) from None
    lines = text.splitlines()
    password = lines[0].strip() if lines else ""
    if not password:
        raise ConfigError(f"MQTT password_file {path}: the first line is empty; write the password there")
    return password


class Publication:
    """One publish: ``wait(timeout)`` is True once acknowledged with a success reason code.

    ``refused`` is True when the broker answered with a failure code (e.g. not authorised): sending
    the same message again will not help. Otherwise a False result means the connection dropped."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.mid: int | None = None
        self._done = threading.Event()
        self._ok = False
        self._refused = False
        self._reason: str | None = None
        self._callbacks: list[Callable[[Publication], None]] = []
        self._cb_lock = threading.Lock()

    def wait(self, timeout: float) -> bool:
        self._done.wait(timeout)
        return self._ok

    @property
    def done(self) -> bool:
        return self._done.is_set()

    @property
    def ok(self) -> bool:
        return self._ok

    @property
    def refused(self) -> bool:
        return self._refused

    @property
    def reason(self) -> str | None:
        """Why it failed (None while pending or after success)."""
        return self._reason

    def add_done_callback(self, fn: Callable[[Publication], None]) -> None:
        """Call ``fn(self)`` once settled (at once if already settled)."""
        with self._cb_lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _settle(self, ok: bool, reason: str | None = None, *, refused: bool = False) -> None:
        with self._cb_lock:
            if self._done.is_set():
                return
            self._ok, self._reason, self._refused = ok, reason, refused
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)


@dataclass(frozen=True)
class _Acked:
    mid: int
    reason: ReasonCode


@dataclass(frozen=True)
class _Dropped:
    reason: ReasonCode


_Event = _Acked | _Dropped


def _share_stripped(topic_filter: str) -> str:
    """``$share/group/a/b`` matches like ``a/b``."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else topic_filter
    return topic_filter


def _no_write_from_callers(_client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
    """Registered as paho's socket-register-write hook: with it, a publish from another thread
    only queues the packet and wakes the link thread's select() instead of writing itself."""


class MqttLink:
    """The device's (or the fleet's) connection to the broker; see the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_factory: ClientFactory | None = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._tls, self._host, self._port = parse_mqtt_url(settings.url)
        self._where = f"{self._host}:{self._port}"
        self._check_settings(settings)
        password = _read_password(settings.password_file) if settings.password_file else None
        self._rand = rand

        self._client = (client_factory or default_client_factory)(settings.client_id)
        self._configure_client(self._client, password)

        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._up = threading.Event()
        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._session_up = False  # under _lock: a successful CONNACK was handled, no drop yet
        self._socket_open = False  # under _lock: connect() returned, the loop is running
        self._disconnect_sent = False
        self._pending: dict[int, Publication] = {}
        self._subs: dict[str, tuple[MessageHandler, int]] = {}
        self._connect_listeners: list[Callable[[], None]] = []
        self._disconnect_listeners: list[Callable[[], None]] = []
        self._attempt_errors: list[str] = []  # paho's error log lines during this attempt
        self._refusal: EdgeAgentError | None = None  # a refused CONNACK during this attempt
        self._attempt_up = False  # a successful CONNACK during this attempt
        self._last_error: EdgeAgentError | None = None
        self._logged: str | None = None
        self._failures = 0
        self.handler_errors = 0

    # ------------------------------------------------------------ configuration

    def _check_settings(self, s: MqttSettings) -> None:
        if not s.client_id:
            raise ConfigError("MQTT client_id is empty; use the device id")
        if s.keepalive <= 0 or s.keepalive > 65535:
            raise ConfigError(f"MQTT keepalive {s.keepalive}: must be 1..65535 seconds")
        if s.session_expiry_s < 0 or s.session_expiry_s > 0xFFFFFFFF:
            raise ConfigError(f"MQTT session_expiry_s {s.session_expiry_s}: must be 0..4294967295")
        if not 0 < s.backoff_min_s <= s.backoff_max_s:
            raise ConfigError(
                f"MQTT back-off {s.backoff_min_s}..{s.backoff_max_s} s: need 0 < backoff_min_s <= max"
            )
        if (s.will_topic is None) != (s.will_payload is None):
            raise ConfigError("MQTT last will: set both will_topic and will_payload, or neither")
        if s.will_topic is not None and (not s.will_topic or any(c in s.will_topic for c in "+#\0")):
            raise ConfigError(f"MQTT last will topic {s.will_topic!r}: a topic name, without + # or NUL")
        if s.password_file is not None and s.username is None:
            raise ConfigError("MQTT password_file is set without username; set username too")
        if (s.cert is None) != (s.key is None):
            raise ConfigError("MQTT client certificate: set both cert and key, or neither")
        if not self._tls and (s.ca or s.cert):
            raise ConfigError(f"MQTT url {s.url!r} is not TLS but ca/cert are set; use mqtts://")
        for name, path in (("ca", s.ca), ("cert", s.cert), ("key", s.key)):
            if path is not None and not path.is_file():
                raise ConfigError(f"MQTT {name} {path}: no such file")

    def _configure_client(self, client: mqtt.Client, password: str | None) -> None:
        s = self.settings
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_log = self._on_log
        client.on_socket_register_write = _no_write_from_callers
        if s.username is not None:
            client.username_pw_set(s.username, password)
        if s.will_topic is not None:
            try:
                client.will_set(s.will_topic, s.will_payload, qos=1, retain=True)
            except ValueError as exc:
                raise ConfigError(f"MQTT last will topic {s.will_topic!r}: {exc}") from None
        if self._tls:
            try:
                client.tls_set(
                    ca_certs=str(s.ca) if s.ca else None,
                    certfile=str(s.cert) if s.cert else None,
                    keyfile=str(s.key) if s.key else None,
                )
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ConfigError(
                    f"MQTT TLS files (ca={s.ca}, cert={s.cert}, key={s.key}) cannot be used: {exc}; "
                    "give PEM files, the key matching the certificate"
                ) from None

    # ------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        """True only between a successful CONNACK and the next drop."""
        return self._up.is_set()

    @property
    def last_error(self) -> EdgeAgentError | None:
        """Why the last attempt failed or the connection dropped (None once connected)."""
        return self._last_error

    @property
    def failed_attempts(self) -> int:
        """Connection attempts that failed since the last successful CONNACK."""
        return self._failures

    def wait_connected(self, timeout: float) -> bool:
        return self._up.wait(timeout)

    def start(self) -> None:
        """Start the link thread (non-blocking); it connects with back-off."""
        if self._thread is not None:
            raise RuntimeError("MqttLink.start() called twice")
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-link-{self.settings.client_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Clean DISCONNECT (the broker drops the will), then join the link thread."""
        self._stop.set()
        with self._lock:
            self._send_disconnect_locked()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("MQTT link %s: thread still running %.1f s after stop()", self._where, timeout)

    def subscribe(self, topic_filter: str, handler: MessageHandler, qos: int = 1) -> None:
        """Remember ``handler`` for ``topic_filter``; subscribed now if connected and after every CONNACK."""
        if not topic_filter or qos not in (0, 1, 2):
            raise ValueError(f"bad subscription {topic_filter!r} qos {qos}")
        with self._lock:
            subs = dict(self._subs)
            subs[topic_filter] = (handler, qos)
            self._subs = subs
            if self._session_up:
                self._client.subscribe(topic_filter, qos)

    def on_connect(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on the link thread after every successful CONNACK (after re-subscribing)."""
        with self._lock:
            self._connect_listeners = [*self._connect_listeners, fn]

    def on_disconnect(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` on the link thread when an established connection ends."""
        with self._lock:
            self._disconnect_listeners = [*self._disconnect_listeners, fn]

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> Publication:
        """Queue a message; ``TransientError`` when not connected. ValueError for a bad topic or QoS."""
        pub = Publication(topic)
        with self._lock:
            if not (self._session_up and self._up.is_set()):
                raise TransientError(
                    f"MQTT not connected to {self._where}: {self._last_error or 'connecting'}"
                )
            info = self._client.publish(topic, payload, qos=qos, retain=retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                raise TransientError(f"MQTT publish to {topic}: {mqtt.error_string(info.rc)}")
            # NO_CONN: the socket just went; the queued drop event fails this publication.
            pub.mid = info.mid
            old = self._pending.pop(info.mid, None)
            self._pending[info.mid] = pub
        if old is not None:
            old._settle(False, "message id reused before its PUBACK")
        return pub

    # ------------------------------------------------------------ link thread

    def _run(self) -> None:
        attempt = 0
        try:
            while not self._stop.is_set():
                if self._session():
                    attempt = 0
                if self._stop.is_set():
                    break
                delay = backoff_delay(
                    attempt, self.settings.backoff_min_s, self.settings.backoff_max_s, self._rand()
                )
                attempt += 1
                log.debug("MQTT %s: next attempt in %.2f s", self._where, delay)
                if self._stop.wait(delay):
                    break
        finally:
            self._handle_drop(None)

    def _session(self) -> bool:
        """One connection attempt and, if it succeeds, its loop; True if a CONNACK succeeded."""
        self._attempt_errors = []
        self._refusal = None
        self._attempt_up = False
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.settings.session_expiry_s
        # the broker drops (and never buffers here) a message bigger than this: jobs are <= 16 KiB
        props.MaximumPacketSize = self.settings.max_packet_bytes
        try:
            rc = self._client.connect(
                self._host,
                self._port,
                keepalive=self.settings.keepalive,
                clean_start=self.settings.clean_start,
                properties=props,
            )
        except OSError as exc:
            self._report(self._socket_error(exc))
            return False
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._report(TransientError(f"MQTT connect to {self._where}: {mqtt.error_string(rc)}"))
            return False
        with self._lock:
            self._socket_open = True
            self._disconnect_sent = False
            if self._stop.is_set():
                self._send_disconnect_locked()
        try:
            while True:
                rc = self._client.loop(_LOOP_TIMEOUT_S)
                self._drain_events()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
        finally:
            with self._lock:
                self._socket_open = False
            self._drain_events()
            self._handle_drop(None)
        if self._stop.is_set():
            return self._attempt_up
        if self._refusal is not None:
            self._report(self._refusal)
        elif self._attempt_up:
            self._report(
                TransientError(f"MQTT connection to {self._where} lost: {self._detail() or rc.name}")
            )
        else:
            self._report(self._closed_before_connack())
        return self._attempt_up

    def _send_disconnect_locked(self) -> None:
        if self._socket_open and not self._disconnect_sent:
            self._disconnect_sent = True
            self._client.disconnect()

    def _drain_events(self) -> None:
        """Handle the queued PUBACKs and drops, in order."""
        while True:
            try:
                ev = self._events.get_nowait()
            except queue.Empty:
                return
            if isinstance(ev, _Acked):
                with self._lock:
                    pub = self._pending.pop(ev.mid, None)
                if pub is not None:
                    if ev.reason.is_failure:
                        pub._settle(False, f"broker answered {ev.reason}", refused=True)
                    else:
                        pub._settle(True)
            else:
                self._handle_drop(ev.reason)

    def _handle_connack(self) -> None:
        self._attempt_up = True
        with self._lock:
            self._session_up = True
            subs = self._subs
            if subs:
                self._client.subscribe([(f, q) for f, (_h, q) in subs.items()])
            self._up.set()
            listeners = self._connect_listeners
        if self._logged is not None or self._failures:
            log.info("MQTT connected to %s after %d failed attempt(s)", self._where, self._failures)
        else:
            log.info("MQTT connected to %s as %s", self._where, self.settings.client_id)
        self._logged = None
        self._failures = 0
        self._last_error = None
        for fn in listeners:
            self._call_handler(fn)

    def _handle_drop(self, reason: ReasonCode | None) -> bool:
        """Mark the connection down and fail pending publications; True if it had been up."""
        self._up.clear()
        with self._lock:
            was_up, self._session_up = self._session_up, False
            pending, self._pending = self._pending, {}
            listeners = self._disconnect_listeners if was_up else []
        self._client.drop_out_messages()
        why = f"connection lost ({reason})" if reason is not None else "connection closed"
        for pub in pending.values():
            pub._settle(False, why)
        for fn in listeners:
            self._call_handler(fn)
        return was_up

    def _call_handler(self, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:  # a listener's bug must not take the link down (contract)
            self.handler_errors += 1
            log.exception("MQTT link %s: listener %r failed", self._where, fn)

    # ------------------------------------------------------------ errors

    def _report(self, err: EdgeAgentError) -> None:
        self._failures += 1
        self._last_error = err
        text = str(err)
        if text != self._logged:
            self._logged = text
            level = logging.ERROR if isinstance(err, ConfigError) else logging.WARNING
            log.log(level, "%s (retrying with back-off)", text)

    def _detail(self) -> str:
        return "; ".join(self._attempt_errors[-2:])

    def _refused_error(self, reason: ReasonCode) -> EdgeAgentError:
        s = self.settings
        code = reason.value
        if code in (0x86, 0x87):
            who = [f"client id {s.client_id!r}"]
            if s.username is not None:
                who.append(f"username {s.username!r} with the password in {s.password_file}")
            if s.cert is not None:
                who.append(f"certificate {s.cert} (its CN may be the username)")
            return ConfigError(
                f"MQTT broker {self._where} refused the connection: {reason} "
                f"({_CONFIG_REASONS[code]}); check {', '.join(who)} against the broker's passwords and ACL"
            )
        if code in _CONFIG_REASONS:
            return ConfigError(
                f"MQTT broker {self._where} refused the connection: {reason} ({_CONFIG_REASONS[code]})"
            )
        return TransientError(f"MQTT broker {self._where} refused the connection for now: {reason}")

    def _socket_error(self, exc: OSError) -> EdgeAgentError:
        where = self._where
        if isinstance(exc, ssl.SSLCertVerificationError):
            return ConfigError(
                f"MQTT broker {where}: its TLS certificate is not trusted ({exc.verify_message or exc}); "
                f"set ca to the CA that signed it (ca={self.settings.ca})"
            )
        if isinstance(exc, ssl.SSLError):
            return self._tls_refusal(str(exc))
        if isinstance(exc, ConnectionRefusedError):
            return TransientError(f"MQTT broker {where}: connection refused (is the broker running?)")
        if isinstance(exc, socket.gaierror):
            return TransientError(f"MQTT broker {where}: cannot resolve {self._host!r} ({exc})")
        if isinstance(exc, TimeoutError):
            return TransientError(f"MQTT broker {where}: connection timed out")
        return TransientError(f"MQTT broker {where}: {exc}")

    def _tls_refusal(self, detail: str) -> EdgeAgentError:
        if self.settings.cert is None:
            hint = "it probably requires a client certificate and none is set: set cert and key"
        else:
            hint = f"it probably does not accept the client certificate {self.settings.cert}"
        return ConfigError(f"MQTT broker {self._where} ended the TLS session ({detail}): {hint}")

    def _closed_before_connack(self) -> EdgeAgentError:
        detail = self._detail()
        if self._tls and any(k in detail for k in ("SSL", "EOF", "alert", "certificate")):
            return self._tls_refusal(detail)
        return TransientError(f"MQTT broker {self._where} closed the connection before CONNACK ({detail})")

    # ------------------------------------------------------------ paho callbacks (link thread)

    def _on_connect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._refusal = self._refused_error(reason)  # paho closes the socket next
        else:
            self._handle_connack()

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _props: Properties | None,
    ) -> None:
        self._up.clear()  # no publish() may start on a dead connection
        self._events.put(_Dropped(reason))

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, reason: ReasonCode, _props: Properties
    ) -> None:
        self._events.put(_Acked(mid, reason))

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _mid: int,
        reasons: list[ReasonCode],
        _props: Properties | None,
    ) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("MQTT broker %s refused a subscription: %s (check its ACL)", self._where, failed)

    def _on_log(self, _client: mqtt.Client, _userdata: Any, level: int, buf: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:
            self._attempt_errors = [*self._attempt_errors[-4:], buf]
        log.debug("paho: %s", buf)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("MQTT: dropped a message whose topic is not UTF-8")
            return
        payload = bytes(msg.payload)
        for topic_filter, (handler, _qos) in self._subs.items():
            if not mqtt.topic_matches_sub(_share_stripped(topic_filter), topic):
                continue
            try:
                handler(topic, payload)
            except Exception:  # a handler's bug must not take the link down (contract)
                self.handler_errors += 1
                log.exception("MQTT handler for %s failed on a message on %s", topic_filter, topic)
